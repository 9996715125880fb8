"""Speed and memory benchmarks: each one measures reidkit beside a plain reference implementation."""

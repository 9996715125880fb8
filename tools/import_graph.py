"""Measure reidkit's import graph from the source: every import, at module level or inside functions.

Usage: python tools/import_graph.py [--depth N] [--edges] [--from PKG] [--to PKG]
Each `import x` / `from x import y` (relative ones resolved) in reidkit/ is reduced to the
reidkit subpackage of importer and imported (depth 2: reidkit.models, reidkit.cli, ...).
Prints a table of package -> package edges with counts and whether any is at module level.
"""

from __future__ import annotations

import argparse
import ast
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "reidkit"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path):
    """(lineno, imported module, top_level) for each reidkit import in one file."""
    mod = module_name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top = {id(n) for n in tree.body}
    # statements directly in module body or in module-level if/try blocks count as top level
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            for sub in ast.walk(node):
                top.add(id(sub))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "reidkit":
                    yield node.lineno, a.name, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")
                if not is_pkg:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "reidkit":
                continue
            # `from pkg import name` imports pkg.name when that is a module, else pkg itself
            found = {f"{target}.{a.name}" if is_module(f"{target}.{a.name}") else target for a in node.names}
            for name in sorted(found):
                yield node.lineno, name, id(node) in top


def is_module(name: str) -> bool:
    """Whether a dotted reidkit name is a module or package in the source tree."""
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def trim(name: str, depth: int) -> str:
    return ".".join(name.split(".")[:depth])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--edges", action="store_true", help="print every import line")
    ap.add_argument("--src", default=None)
    ap.add_argument("--dst", default=None)
    args = ap.parse_args()
    edges = collections.defaultdict(list)
    for path in sorted(PKG.rglob("*.py")):
        src = module_name(path)
        for line, dst, top in imports(path):
            a, b = trim(src, args.depth), trim(dst, args.depth)
            if a == b:
                continue
            if args.src and a != args.src or args.dst and b != args.dst:
                continue
            edges[(a, b)].append((str(path.relative_to(ROOT)), line, dst, top))
    for (a, b), sites in sorted(edges.items()):
        kind = "top" if any(s[3] for s in sites) else "lazy"
        print(f"{a:28s} -> {b:28s} {len(sites):4d} {kind}")
        if args.edges:
            for f, line, dst, top in sites:
                print(f"      {f}:{line} {dst} {'' if top else '(in function)'}")


if __name__ == "__main__":
    main()

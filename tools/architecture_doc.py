"""The import contracts of pyproject.toml ([tool.importlinter]) as Markdown, for docs/architecture.md.

    python tools/architecture_doc.py           # exit 1 (with a diff) if the page's block differs
    python tools/architecture_doc.py --write   # rewrite the block between the markers

The page keeps its prose; only the block between BEGIN and END is generated. tests/test_architecture.py
runs the check, so the page cannot drift from the contracts that `lint-imports` enforces.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"
BEGIN = "<!-- BEGIN contracts: generated from pyproject.toml by tools/architecture_doc.py --write -->"
END = "<!-- END contracts -->"


def contracts(pyproject: Path = ROOT / "pyproject.toml") -> list[dict]:
    """The contracts of [tool.importlinter], in file order."""
    with open(pyproject, "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]["contracts"]


def _names(mods: list[str]) -> str:
    return ", ".join(f"`{m}`" for m in mods)


def render(items: list[dict]) -> str:
    """Markdown for the contracts: one section each, layers drawn top to bottom."""
    out: list[str] = []
    for c in items:
        out.append(f"### {c['name']}\n")
        out.append(f"Contract `{c['id']}` ({c['type']}).\n")
        if c["type"] == "layers":
            out.append(
                "A module may import from the layers below its own, never from one above, not even "
                "through a third module; `a | b` are siblings that must not import each other"
                + (", `a : b` siblings that may." if any(":" in layer for layer in c["layers"]) else ".")
                + "\n"
            )
            containers = ", ".join(f"`{x}`" for x in c.get("containers", []))
            out.append("```text")
            for i, layer in enumerate(c["layers"]):
                if i:
                    out.append("    ↓")
                out.append(layer)
            out.append("```\n")
            if containers:
                out.append(
                    f"Layers are the top-level modules of {containers}"
                    + (" and every one of them must be in a layer" if c.get("exhaustive") else "")
                    + (", except " + _names(c["exhaustive_ignores"]) if c.get("exhaustive_ignores") else "")
                    + ".\n"
                )
        elif c["type"] == "forbidden":
            how = "directly" if c.get("allow_indirect_imports") else "directly or through another module"
            out.append(f"{_names(c['source_modules'])} must not import {_names(c['forbidden_modules'])} ({how}).\n")
        elif c["type"] == "independence":
            out.append(f"{_names(c['modules'])} must not import each other.\n")
        else:
            raise ValueError(f"contract {c['id']}: no Markdown for type {c['type']!r}")
        if c.get("ignore_imports"):
            out.append("Known violations, allowed until fixed (`ignore_imports`):\n")
            out.extend(f"- `{imp}`" for imp in c["ignore_imports"])
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def block(text: str) -> str:
    """The generated block of the page (between the markers, exclusive)."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"{PAGE}: markers {BEGIN!r} ... {END!r} not found")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def check(page: Path = PAGE, pyproject: Path = ROOT / "pyproject.toml") -> str:
    """'' when the page lists exactly the contracts, else a unified diff (page -> contracts)."""
    have, want = block(page.read_text(encoding="utf-8")), render(contracts(pyproject))
    if have == want:
        return ""
    return "".join(
        difflib.unified_diff(
            have.splitlines(True), want.splitlines(True), f"{page.name} (page)", "pyproject.toml (contracts)"
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the page's generated block")
    args = ap.parse_args()
    if args.write:
        text = PAGE.read_text(encoding="utf-8")
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        PAGE.write_text(f"{head}{BEGIN}\n\n{render(contracts())}\n{END}{tail}", encoding="utf-8")
        return 0
    diff = check()
    if diff:
        sys.stderr.write(
            f"docs/architecture.md does not list the import contracts of pyproject.toml "
            f"(run: python tools/architecture_doc.py --write):\n{diff}"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

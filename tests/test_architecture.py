"""The architecture as a check: the import contracts of pyproject.toml hold, the tool that checks
them sees every import (also those inside functions), and docs/architecture.md lists exactly them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
importlinter = pytest.importorskip("importlinter", reason="import-linter is in the test extra")


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tools_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _contracts() -> list[dict]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]["contracts"]


def test_import_contracts_hold(capsys, monkeypatch):
    import importlinter.api  # noqa: F401  (configures import-linter's readers)
    from importlinter.application.use_cases import lint_imports

    monkeypatch.chdir(ROOT)
    ok = lint_imports(config_filename=str(ROOT / "pyproject.toml"), cache_dir=None, no_logo=True)
    out = capsys.readouterr().out
    assert ok, f"lint-imports: a contract is broken\n{out}"


def test_the_checker_sees_every_import():
    # grimp (under import-linter) must know every reidkit import that an AST walk finds, at module level
    # and inside functions: a lazy import inside a function is still a dependency.
    import grimp

    graph = grimp.build_graph("reidkit", cache_dir=None)
    walk = _tool("import_graph")
    missed, lazy = [], 0
    for path in sorted((ROOT / "reidkit").rglob("*.py")):
        src = walk.module_name(path)
        for line, dst, top in walk.imports(path):
            dst = dst if dst in graph.modules else dst.rsplit(".", 1)[0]  # `from pkg import name`
            lazy += not top
            if src != dst and not graph.direct_import_exists(importer=src, imported=dst):
                missed.append(f"{path.relative_to(ROOT)}:{line} {src} -> {dst}")
    assert lazy > 50, "the walk found almost no imports inside functions: is it still reading them?"
    assert not missed, "imports the checker does not see:\n" + "\n".join(missed)


def test_checkpoint_leaf_forbids_every_module_above_utils():
    import reidkit

    top = {
        p.stem
        for p in (ROOT / "reidkit").iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.stem != "__init__"
    }
    (leaf,) = [c for c in _contracts() if c["id"] == "checkpoint-leaf"]
    forbidden = {m.removeprefix("reidkit.").removesuffix(".*") for m in leaf["forbidden_modules"]}
    missing = top - forbidden - {"errors", "utils", "_lazy"}
    assert not missing, f"checkpoint-leaf should also forbid: {sorted(missing)}"
    assert "reidkit.models.*" in leaf["forbidden_modules"]
    assert reidkit.__name__ == "reidkit"


def test_import_config_loads_no_torch():
    code = "import sys, reidkit.config; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", f"import reidkit.config loaded torch: {out.stdout}"


def test_docs_architecture_page_lists_the_contracts():
    doc = _tool("architecture_doc")
    assert [c["id"] for c in doc.contracts()] == [c["id"] for c in _contracts()]
    diff = doc.check()
    assert not diff, (
        "docs/architecture.md does not list the contracts of pyproject.toml; "
        "run python tools/architecture_doc.py --write\n" + diff
    )


def test_the_readme_architecture_line_is_the_layers_contract():
    """The README names the layers top to bottom (`a` | `b` -> `c` ...); that line is the contract's list."""
    import re

    text = (ROOT / "README.md").read_text()
    para = text[text.index("## Architecture") :]
    para = para[para.index("The layers, top to bottom") : para.index(", where packages separated by")]
    chain = " ".join(para.split(":", 1)[1].split())
    said = [" | ".join(re.findall(r"`([\w.]+)`", part)) for part in chain.split("->")]
    layers = next(c for c in _contracts() if c["id"] == "layers")["layers"]
    assert said == [" | ".join(p.strip() for p in layer.split("|")) for layer in layers]


MAX_LINES = 600  # the project's rule: no file in reidkit/ over 600 lines (split along real seams)


def _long_files(root: Path, limit: int = MAX_LINES) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        n = path.read_bytes().count(b"\n")  # as `wc -l` counts
        if n > limit:
            out.append(f"{path.relative_to(root.parent)}: {n} lines")
    return out


def test_no_file_in_reidkit_over_600_lines():
    files = sorted((ROOT / "reidkit").rglob("*.py"))
    assert len(files) > 100, "the walk found almost no modules"
    long = _long_files(ROOT / "reidkit")
    assert not long, f"files over {MAX_LINES} lines (split them along their seams):\n" + "\n".join(long)


def test_the_size_check_finds_a_file_one_line_over(tmp_path):
    pkg = tmp_path / "reidkit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "ok.py").write_text("x = 1\n" * MAX_LINES)
    (pkg / "sub" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    assert _long_files(pkg) == [f"reidkit/sub/long.py: {MAX_LINES + 1} lines"]

"""The data package is built from public parts: no module of reidkit.data (scene.py, the dataset loaders)
reaches into another module's private names, so a dataset or generator written outside the package
can do everything the built-in ones do. Also: the painter, split into parts, draws the bytes it drew
as one function."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest

import reidkit

PKG = Path(reidkit.__file__).parent
# The generator's own modules (identity, camera, painter, render) share its palettes and stream tags;
# that is the only place a private name may cross a module boundary.
SHARED_INTERNALS = "reidkit.data.synthetic"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def private_uses(source: str, module: str, is_package: bool = False) -> list[str]:
    """`from x import _y` and `name._y` (name bound by an import) in ``source``, as readable strings."""
    tree = ast.parse(source)
    found, imported = [], set()
    here = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                base = f"{anchor}.{base}" if base else anchor
            for a in node.names:
                imported.add(a.asname or a.name)
                shared = _inside(base, SHARED_INTERNALS) and _inside(module, SHARED_INTERNALS)
                if _private(a.name) and base != module and not shared:
                    found.append(f"line {node.lineno}: from {base} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                imported.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in imported:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return sorted(found, key=lambda f: int(f.split(":")[0][5:]))


DATA_MODULES = sorted((PKG / "data").rglob("*.py"))


@pytest.mark.parametrize(
    "path", DATA_MODULES + [PKG / "models" / "transreid.py"], ids=lambda p: str(p.relative_to(PKG))
)
def test_no_private_name_of_another_module(path):
    uses = private_uses(path.read_text(), _module_name(path), path.name == "__init__.py")
    assert not uses, f"{path.relative_to(PKG.parent)} uses private names of other modules: {uses}"


def test_the_checker_finds_both_forms():
    src = (
        "from reidkit.data import synthetic as syn\nfrom reidkit.data.datasets.layout import _check_splits, root_dir\n"
        "from .layout import _listing\nimport reidkit.models.backbones as bb\n"
        "x = syn._draw_person(1)\ny = bb._accepted\nz = syn.draw_person\n"
    )
    uses = private_uses(src, "reidkit.data.datasets.market1501")
    assert uses == [
        "line 2: from reidkit.data.datasets.layout import _check_splits",
        "line 3: from reidkit.data.datasets.layout import _listing",
        "line 5: syn._draw_person",
        "line 6: bb._accepted",
    ]
    # the generator's modules may share internals among themselves, not with scene.py
    src = "from reidkit.data.synthetic.identity import _CLOTH\n"
    assert private_uses(src, "reidkit.data.synthetic.painter") == []
    assert private_uses(src, "reidkit.data.scene") == ["line 1: from reidkit.data.synthetic.identity import _CLOTH"]


def test_scene_uses_the_public_generator_parts():
    from reidkit.data import synthetic as syn

    tree = ast.parse((PKG / "data" / "scene.py").read_text())
    used = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "syn"
    }
    assert used and used <= set(syn.__all__), used - set(syn.__all__)
    for name in syn.__all__:
        assert hasattr(syn, name), name


def test_draw_person_pixels_are_those_of_the_one_function_painter():
    """Raw pixels (no JPEG) of draw_person for identities that between them have every garment, hair
    style, print and accessory, in every view: the split painter draws what `_draw_person` drew."""
    from PIL import Image

    from reidkit.data import synthetic as syn

    h = hashlib.sha256()
    seen = set()
    for key in (146, 397, 502, 1368, 1447):
        idt = syn.sample_identity(0, 0, key)
        seen |= {idt["hair_style"], idt["lower_type"], idt["upper_type"], idt["upper_tex"]}
        seen |= {f"{k}:{idt[k][0]}" for k in ("bag", "hat", "front_print", "back_print") if idt[k] is not None}
        seen |= {"backpack"} if idt["backpack"] is not None else set()
        for view in ("front", "back", "left", "right"):
            for phase in (0.4, 3.6):
                img = Image.new("RGB", (64, 128), (120, 124, 118))
                box = syn.draw_person(img, idt, view, phase, 32.0, 122.0, 112.0, -0.6)
                h.update(img.tobytes())
                h.update(repr(tuple(round(v, 6) for v in box)).encode())
    assert seen >= {
        "short",
        "long",
        "bun",
        "ponytail",
        "bald",
        "trousers",
        "shorts",
        "skirt",
        "tshirt",
        "longsleeve",
        "jacket",
        "plain",
        "hstripes",
        "vstripes",
        "checks",
        "dots",
        "bag:-1",
        "bag:1",
        "hat:cap",
        "hat:beanie",
        "front_print:circle",
        "front_print:rect",
        "front_print:band",
        "back_print:rect",
        "back_print:band",
        "backpack",
    }
    # sha256 of the same drawings by painter._draw_person at a4056de (one 236-line function)
    assert h.hexdigest() == "df0baf8b645477e470cf28d015a78a5cb4d15d35767ba01014bf048aa78e8b19"

"""YAML recipes, ``_base_`` inheritance and overrides: one resolver, one override path.

A recipe is a YAML file (or a dict) whose keys mirror :class:`~reidkit.config.schema.Config`.
``_base_: other.yaml`` (a path relative to the file, or the name of a packaged recipe; a list for
several) is resolved first and the recipe is deep-merged on top of it (dicts merge key by key,
everything else is replaced). Overrides come last, through one path whatever their form: CLI
strings ``["solver.base_lr=3.5e-4", "data.datasets.0.root=/data"]`` (values parsed as YAML) or a
mapping ``{"solver__base_lr": 3.5e-4, "solver": {"max_epochs": 5}}`` (``__`` or ``.`` for the dots);
both become (dotted key, value) pairs applied in order, so list indices resolve against the tree
merged so far. Unknown keys and values of the wrong type raise :class:`ReIDError` naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml

from reidkit.config.schema import Config
from reidkit.config.typed import build, plain
from reidkit.errors import ReIDError

__all__ = [
    "RECIPES_DIR",
    "config_from_dict",
    "deep_merge",
    "find_recipe",
    "list_recipes",
    "load_config",
    "load_yaml",
    "override_pairs",
    "parse_overrides",
    "parse_overrides_flat",
    "set_dotted",
]

# Packaged recipes live inside the package so an installed reidkit finds them; the top-level
# configs/ folder of the repository only points here.
RECIPES_DIR = Path(__file__).resolve().parent.parent / "configs"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`: dicts recursively, other values replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def find_recipe(name: str | Path, relative_to: Path | None = None) -> Path:
    """Resolve a recipe: an existing path, a path relative to `relative_to`, or a packaged recipe name."""
    cand = Path(name).expanduser()
    tries = [cand]
    if relative_to is not None and not cand.is_absolute():
        tries.insert(0, relative_to / cand)
    stem = cand.name if cand.suffix in (".yaml", ".yml") else cand.name + ".yaml"
    tries.append(RECIPES_DIR / stem)
    for path in tries:
        if path.is_file():
            return path.resolve()
    raise ReIDError(f"config file not found: {name} (packaged recipes: {', '.join(list_recipes())})")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ReIDError(f"{path}: invalid YAML: {exc}") from None
    except OSError as exc:
        raise ReIDError(f"{path}: cannot read: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ReIDError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    return data


def resolve_bases(
    tree: dict[str, Any], relative_to: Path | None = None, _seen: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """The one ``_base_`` resolver: ``tree`` merged over its bases (recursively), ``_base_`` removed."""
    tree = dict(tree)
    bases = tree.pop("_base_", None)
    if bases is None:
        return tree
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, (str, Path)) else list(bases):
        path = find_recipe(base, relative_to)
        if path in _seen:
            chain = " -> ".join(str(p) for p in (*_seen, path))
            raise ReIDError(f"circular _base_ inheritance: {chain}")
        merged = deep_merge(merged, resolve_bases(_read_yaml(path), path.parent, (*_seen, path)))
    return deep_merge(merged, tree)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe and its `_base_` chain into one merged dict."""
    path = find_recipe(path)
    return resolve_bases(_read_yaml(path), path.parent, (path,))


def parse_overrides_flat(items: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=1"]`` -> ``[("a.b", 1)]`` with YAML-parsed values."""
    out = []
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ReIDError(f"override '{item}' must look like key=value (e.g. solver.base_lr=3.5e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ReIDError(f"override '{item}': empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    return out


def override_pairs(overrides: list[str] | tuple[str, ...] | dict[str, Any] | None) -> list[tuple[str, Any]]:
    """CLI strings or a keyword mapping as (dotted key, value) pairs: the one override form."""
    if not overrides:
        return []
    if isinstance(overrides, dict):
        return [(str(k).replace("__", "."), v) for k, v in overrides.items()]
    return parse_overrides_flat(list(overrides))


def set_dotted(tree: dict[str, Any], key: str, value: Any, merge: bool = False) -> None:
    """Set ``tree[a][b][c] = value`` for key "a.b.c", creating dicts (or indexing lists) on the way.

    With ``merge``, a dict value merges into an existing dict instead of replacing it.
    """
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, key)]
            continue
        nxt = node.get(part)
        if not isinstance(nxt, (dict, list)):
            nxt = {}
            node[part] = nxt
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    elif merge and isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = deep_merge(node[last], value)
    else:
        node[last] = value


def _list_index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ReIDError(
            f"override key '{key}': '{part}' is not an index of a list of {len(node)} (valid: 0..{len(node) - 1})"
        )
    return int(part)


def apply_overrides(tree: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """A copy of ``tree`` with the overrides applied in order (dict values merge into dicts)."""
    out = cast(dict[str, Any], plain(tree))  # plain() copies a dict into a dict
    for key, value in override_pairs(overrides):
        set_dotted(out, key, plain(value), merge=True)
    return out


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1, 2]"]`` into a nested dict, values parsed as YAML."""
    return apply_overrides({}, list(items))


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Build a checked :class:`Config` from a nested dict (every section's ``check()`` runs)."""
    tree = dict(tree)
    tree.pop("_base_", None)
    cfg = cast(Config, build(Config, tree, ""))  # build(cls, ...) returns a cls
    cfg.check()
    return cfg


def load_config(
    source: str | Path | dict[str, Any] | Config | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Load a config from a YAML path, a packaged recipe name, a dict or a Config; apply overrides."""
    if source is None:
        tree: dict[str, Any] = {}
    elif isinstance(source, Config):
        tree = source.to_dict()
    elif isinstance(source, dict):
        tree = resolve_bases(source)
    else:
        tree = load_yaml(source)
    return config_from_dict(apply_overrides(tree, overrides))


def list_recipes() -> list[str]:
    """Names of the packaged recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))

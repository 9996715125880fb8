"""Typed experiment configuration: dataclasses, YAML recipes with ``_base_`` inheritance, dotted overrides.

A recipe is a YAML file whose keys mirror :class:`Config`. ``_base_: other.yaml`` (a path relative to
the file, or the name of a packaged recipe) is loaded first and the file is deep-merged on top of it
(dicts merge key by key, everything else is replaced). Overrides such as ``solver.base_lr=3.5e-4`` or
``model.backbone=resnet50_ibn_a`` are applied last; their values are parsed as YAML scalars/lists.
Unknown keys and values of the wrong type raise :class:`reidkit.errors.ReIDError` naming the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from reidkit.errors import ReIDError
from reidkit.losses.criterion import LossConfig
from reidkit.models.build import ModelConfig
from reidkit.engine.usl import UnsupervisedConfig

# Packaged recipes live inside the package so an installed reidkit finds them; the top-level
# configs/ folder of the repository only points here.
RECIPES_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class DatasetSpec:
    """One dataset: a registry name, its root folder and loader options (e.g. synthetic sizes)."""

    name: str = "market1501"
    root: str = "data"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Which datasets to train and validate on, and how images reach the model."""

    datasets: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec()])
    # None: validate on the query/gallery of every training dataset; [] switches validation off.
    val: list[DatasetSpec] | None = None
    size: list[int] = field(default_factory=lambda: [256, 128])
    cache_dir: str | None = None
    loader: Literal["cached", "pil"] = "cached"
    num_workers: int = 4
    # NHWC activations: faster convolutions with bf16 on GPUs (the model and batches both switch).
    channels_last: bool = False


@dataclass
class InputConfig:
    """Training augmentation (applied to batches on the device) and input normalisation."""

    pad: int = 10
    flip_p: float = 0.5
    erase_p: float = 0.5
    erase_area: list[float] = field(default_factory=lambda: [0.02, 0.4])
    erase_aspect: list[float] = field(default_factory=lambda: [0.3, 3.33])
    erase_fill: Literal["mean", "random"] = "mean"
    patch_p: float = 0.0
    jitter: float = 0.0
    # None: the normalisation the backbone's pretrained weights expect.
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class SamplerConfig:
    """Batch composition: P identities x K images."""

    type: Literal["pk", "camera", "dataset"] = "pk"
    p: int = 16
    k: int = 4
    # None: about one pass over the training images per epoch.
    epoch_batches: int | None = None


@dataclass
class SolverConfig:
    """Optimiser, learning-rate schedule, precision and the training-loop periods."""

    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    base_lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    scheduler: Literal["warmup_multistep", "cosine", "warmup_cosine"] = "warmup_multistep"
    # "epoch": the lr changes at epoch boundaries (as the BoT paper); "iter": every iteration.
    sched_unit: Literal["epoch", "iter"] = "epoch"
    warmup_epochs: int = 10
    warmup_factor: float = 0.1
    steps: list[int] = field(default_factory=lambda: [40, 70])
    gamma: float = 0.1
    min_lr_factor: float = 0.0
    max_epochs: int = 120
    backbone_lr_factor: float = 1.0
    head_lr_factor: float = 1.0
    bias_lr_factor: float = 1.0
    no_decay_norm: bool = False
    amp: Literal["none", "bf16", "fp16"] = "none"
    grad_clip: float = 0.0
    eval_period: int = 10
    checkpoint_period: int = 1
    log_period: int = 20


@dataclass
class TestConfig:
    """Evaluation settings (validation during training and `reidkit test`)."""

    flip: bool = False
    rerank: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    metric: Literal["cosine", "euclidean"] = "cosine"
    # None: the model's own `neck_feat`.
    neck_feat: Literal["after", "before"] | None = None
    batch_size: int = 256


@dataclass
class Config:
    """A whole experiment."""

    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    usl: UnsupervisedConfig = field(default_factory=UnsupervisedConfig)
    output_dir: str = "outputs/run"
    seed: int = 0
    device: str = "auto"
    # true: continue from <output_dir>/last.pt; "auto": the same when it exists, else start fresh;
    # any other string: that checkpoint file.
    resume: bool | str = False
    compile: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples) of the resolved configuration."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The resolved configuration as YAML; also written to `path` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if path is not None:
            Path(path).write_text(text)
        return text


# --------------------------------------------------------------------------------------------
# Type checking of plain values against dataclass field annotations


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` checked (and minimally converted: int -> float, list -> tuple) against `tp`."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return _build(tp, value, key)
        raise _Mismatch
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = args[0] if args else Any
        items = [_coerce_item(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept it where a float is expected.
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value


def _coerce_item(value: Any, tp: Any, key: str) -> Any:
    # Element errors name the element, not the whole list.
    try:
        return _coerce(value, tp, key)
    except _Mismatch:
        raise ReIDError(
            f"config key '{key}' expects {_type_name(tp)}, got {type(value).__name__} {value!r}"
        ) from None


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass `cls` from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ReIDError(f"config section '{prefix or '<root>'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            valid = ", ".join(fields)
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = f"in '{prefix}'" if prefix else "at the top level"
            raise ReIDError(f"unknown config key '{dotted}'{hint}; valid keys {where}: {valid}")
        tp = hints.get(key, Any)
        try:
            kwargs[key] = _coerce(value, tp, dotted)
        except _Mismatch:
            raise ReIDError(
                f"config key '{dotted}' expects {_type_name(tp)}, got {type(value).__name__} {value!r}"
            ) from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a section's own __post_init__ validation
        raise ReIDError(f"config section '{prefix or '<root>'}': {exc}") from None


# --------------------------------------------------------------------------------------------
# YAML files, inheritance and overrides


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
    available = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise ReIDError(f"config file not found: {name} (packaged recipes: {available})")


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe and its `_base_` chain into one merged dict."""
    path = find_recipe(path)
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ReIDError(f"circular _base_ inheritance: {chain}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ReIDError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ReIDError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    bases = data.pop("_base_", None)
    if bases is None:
        return data
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = deep_merge(merged, load_yaml(find_recipe(base, path.parent), (*_seen, path)))
    return deep_merge(merged, data)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1, 2]"]`` into a nested dict, values parsed as YAML."""
    out: dict[str, Any] = {}
    for key, value in parse_overrides_flat(list(items)):
        set_dotted(out, key, value, merge=True)
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any, merge: bool = False) -> None:
    """Set ``tree[a][b][c] = value`` for key "a.b.c", creating dicts (or indexing lists) on the way.

    With ``merge``, a dict value merges into an existing dict instead of replacing it.
    """
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[: i + 1])]
            continue
        nxt = node.get(part)
        if not isinstance(nxt, (dict, list)):
            nxt = {}
            node[part] = nxt
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, parts)] = value
    elif merge and isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = deep_merge(node[last], value)
    else:
        node[last] = value


def _list_index(node: list, part: str, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ReIDError(f"override key '{'.'.join(parts)}': '{part}' is not an index of a list of {len(node)}")
    return int(part)


def _apply_overrides(tree: dict[str, Any], overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    if not overrides:
        return tree
    if isinstance(overrides, (list, tuple)):
        return deep_merge(tree, parse_overrides(list(overrides)))
    # Python-API keyword overrides: "solver__base_lr" or "solver.base_lr" or nested dicts.
    out = tree
    for key, value in overrides.items():
        dotted = key.replace("__", ".")
        patch: dict[str, Any] = {}
        if "." in dotted:
            # Index into existing lists (data.datasets.0.root) needs the current tree.
            parts = dotted.split(".")
            node: Any = out
            for part in parts[:-1]:
                if isinstance(node, dict):
                    node = node.get(part)
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                else:
                    node = None
                if node is None:
                    break
            if isinstance(node, list) or any(p.isdigit() for p in parts):
                out = _plain(out)
                set_dotted(out, dotted, value)
                continue
        set_dotted(patch, dotted, value)
        out = deep_merge(out, patch)
    return out


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Build a checked :class:`Config` from a nested dict."""
    tree = dict(tree)
    tree.pop("_base_", None)
    cfg = _build(Config, tree, "")
    validate(cfg)
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
        tree = dict(source)
        bases = tree.pop("_base_", None)
        if bases is not None:
            merged: dict[str, Any] = {}
            for base in [bases] if isinstance(bases, str) else list(bases):
                merged = deep_merge(merged, load_yaml(base))
            tree = deep_merge(merged, tree)
    else:
        tree = load_yaml(source)
    if isinstance(overrides, (list, tuple)):
        tree = _apply_list_overrides(tree, list(overrides))
    else:
        tree = _apply_overrides(tree, overrides)
    return config_from_dict(tree)


def _apply_list_overrides(tree: dict[str, Any], items: list[str]) -> dict[str, Any]:
    # Dotted CLI overrides applied one by one so list indices (data.datasets.0.root) resolve
    # against the already-merged tree.
    out = _plain(tree)
    for key, value in parse_overrides_flat(items):
        set_dotted(out, key, value, merge=True)
    return out


def parse_overrides_flat(items: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=1"]`` -> ``[("a.b", 1)]`` with YAML-parsed values."""
    out = []
    for item in items:
        if "=" not in item:
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


def validate(cfg: Config) -> None:
    """Cross-field checks that a single type annotation cannot express."""
    # The model and loss sections check their own choices (backbone names, loss names, ...).
    for section in (cfg.model, cfg.loss):
        check = getattr(section, "validate", None)
        if callable(check):
            check()
    if len(cfg.data.size) != 2 or min(cfg.data.size) <= 0:
        raise ReIDError(f"config key 'data.size' expects [height, width] > 0, got {cfg.data.size}")
    if not cfg.data.datasets:
        raise ReIDError("config key 'data.datasets' needs at least one dataset")
    for key in ("p", "k"):
        if getattr(cfg.sampler, key) < 1:
            raise ReIDError(f"config key 'sampler.{key}' must be >= 1, got {getattr(cfg.sampler, key)}")
    if cfg.solver.max_epochs < 1:
        raise ReIDError(f"config key 'solver.max_epochs' must be >= 1, got {cfg.solver.max_epochs}")
    if cfg.solver.base_lr <= 0:
        raise ReIDError(f"config key 'solver.base_lr' must be > 0, got {cfg.solver.base_lr}")
    for key in ("eval_period", "checkpoint_period", "log_period"):
        if getattr(cfg.solver, key) < 1:
            raise ReIDError(f"config key 'solver.{key}' must be >= 1, got {getattr(cfg.solver, key)}")
    for key in ("erase_area", "erase_aspect"):
        lo_hi = getattr(cfg.input, key)
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1] or lo_hi[0] <= 0:
            raise ReIDError(f"config key 'input.{key}' expects [low, high] with 0 < low <= high, got {lo_hi}")
    for key in ("mean", "std"):
        val = getattr(cfg.input, key)
        if val is not None and len(val) != 3:
            raise ReIDError(f"config key 'input.{key}' expects 3 values (RGB) or null, got {val}")
    if sorted(cfg.solver.steps) != list(cfg.solver.steps):
        raise ReIDError(f"config key 'solver.steps' must be increasing, got {cfg.solver.steps}")


def list_recipes() -> list[str]:
    """Names of the packaged recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))

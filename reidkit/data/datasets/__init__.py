"""Person re-identification datasets in their official layouts, behind one registry.

Every loader returns a :class:`ReIDDataset` of :class:`Record` lists (absolute path, the
dataset's own pid, 0-based camera id). ``load_dataset(name, root, **options)`` is the one
entry point; ``DATASETS`` maps each name to its loader, so a new dataset is one function plus
one registry line. Loaders only list files: images are decoded later, by the pipeline.
"""

from __future__ import annotations

import inspect
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from reidkit.errors import ReIDError
from reidkit.registry import Registry
from reidkit.data.datasets.core import SPLITS, JointDataset, Record, ReIDDataset, train_labels
from reidkit.data.datasets.cuhk03 import load_cuhk03
from reidkit.data.datasets.folder import load_folder
from reidkit.data.datasets.manifest import load_csv
from reidkit.data.datasets.market1501 import MARKET_DIR, MARKET_LAYOUT, load_dukemtmc, load_market1501
from reidkit.data.datasets.msmt17 import load_msmt17
from reidkit.data.datasets.synthetic import load_synthetic

__all__ = [
    "DATASETS",
    "MARKET_DIR",
    "MARKET_LAYOUT",
    "SPLITS",
    "JointDataset",
    "Record",
    "ReIDDataset",
    "dataset_options",
    "load_csv",
    "load_cuhk03",
    "load_dataset",
    "load_datasets",
    "load_dukemtmc",
    "load_folder",
    "load_market1501",
    "load_msmt17",
    "load_synthetic",
    "parse_options",
    "register_dataset",
    "train_labels",
]

# ----------------------------------------------------------------------------- registry

# A loader is ``loader(root, *, option=default, ...) -> ReIDDataset``; its keyword-only options
# (with their defaults) are what `reidkit data list` shows and what `load_dataset` accepts.
DATASETS: Registry[Callable[..., ReIDDataset]] = Registry("dataset", "data.datasets[].name")
for _name, _fn in (
    ("market1501", load_market1501),
    ("dukemtmc", load_dukemtmc),
    ("msmt17", load_msmt17),
    ("cuhk03", load_cuhk03),
    ("folder", load_folder),
    ("csv", load_csv),
    ("synthetic", load_synthetic),
):
    DATASETS.register(_name, _fn)


def register_dataset(name: str, loader: Callable[..., ReIDDataset] | None = None, *, overwrite: bool = False) -> Any:
    """Register a dataset loader ``loader(root, *, options...) -> ReIDDataset`` (decorator or call)."""
    return DATASETS.register(str(name).strip().lower(), loader, overwrite=overwrite)


def _loader(name: str) -> tuple[str, Callable[..., ReIDDataset]]:
    key = str(name).strip().lower()
    return key, DATASETS.get(key)


def dataset_options(name: str) -> dict[str, Any]:
    """The options a dataset accepts, with their defaults."""
    _, loader = _loader(name)
    params = inspect.signature(loader).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def parse_options(name: str, items: Iterable[str]) -> dict[str, Any]:
    """Turn ``key=value`` strings into typed options (types follow the loader's defaults)."""
    accepted = dataset_options(name)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ReIDError(f"option {item!r} must look like key=value")
        if key not in accepted:
            raise ReIDError(f"{name}: unknown option {key!r}; expected one of {', '.join(accepted) or '(none)'}")
        default = accepted[key]
        try:
            if isinstance(default, bool):
                low = value.strip().lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                out[key] = low in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                out[key] = int(value)
            elif isinstance(default, float):
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            kind = type(default).__name__
            raise ReIDError(f"{name}: option {key}={value!r} is not a valid {kind}") from None
    return out


def load_dataset(name: str, root: str | os.PathLike[str] | None, **options: Any) -> ReIDDataset:
    """Load a registered dataset by name from ``root`` with its options."""
    key, loader = _loader(name)
    accepted = dataset_options(key)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ReIDError(
            f"{key}: unknown option(s) {', '.join(unknown)}; expected one of {', '.join(accepted) or '(none)'}"
        )
    return loader(root, **options)


def load_datasets(
    specs: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]], root: str | os.PathLike[str] | None = None
) -> JointDataset:
    """Load several datasets for joint training; each spec is a name or ``{name, root, **options}``.

    ``root`` is used for specs that name no root. Datasets keep their own pids; use
    :func:`train_labels` to get disjoint training labels per (dataset, pid).
    """
    if isinstance(specs, str):
        specs = [s for s in re.split(r"[,+]", specs) if s.strip()]
    elif isinstance(specs, Mapping):
        specs = [specs]
    if not specs:
        raise ReIDError(
            "load_datasets: no dataset specs given; expected a list of names or {name, root, **options} dicts"
        )
    parts: list[ReIDDataset] = []
    for spec in specs:
        if isinstance(spec, str):
            name, part_root, options = spec.strip(), root, {}
        elif isinstance(spec, Mapping):
            if "name" not in spec:
                raise ReIDError(
                    f"load_datasets: spec {dict(spec)!r} has no 'name' key; expected {{name, root, **options}}"
                )
            options = {k: v for k, v in spec.items() if k not in ("name", "root")}
            name, part_root = str(spec["name"]), spec.get("root", root)
        else:
            raise ReIDError(f"load_datasets: spec {spec!r} must be a name or a {{name, root, **options}} dict")
        if part_root is None:
            raise ReIDError(
                f"load_datasets: no root for dataset {name!r}; give 'root' in its spec or as the default root"
            )
        parts.append(load_dataset(name, part_root, **options))
    names = [p.name for p in parts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        # Identities are namespaced by dataset name, so two parts sharing one would merge people.
        raise ReIDError(
            f"load_datasets: dataset name(s) {', '.join(dupes)} appear twice; "
            f"give each folder/csv part its own 'dataset_name' option"
        )
    train = [r for part in parts for r in part.train]
    return JointDataset("+".join(names), train, parts)

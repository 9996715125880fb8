"""The procedural synthetic set (reidkit.data.synthetic), generated once and then loaded as it is."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from reidkit.errors import ReIDError

from reidkit.data.datasets.core import ReIDDataset
from reidkit.data.datasets.market1501 import MARKET_DIR, MARKET_LAYOUT, load_market_tree


# ----------------------------------------------------------------------------- synthetic


class _DefaultInt(int):
    """An int default that can be told apart from the same value given explicitly (by identity)."""


class _DefaultStr(str):
    """A str default that can be told apart from the same value given explicitly (by identity)."""


_IDS, _PER_ID, _CAMS, _SEED = _DefaultInt(100), _DefaultInt(16), _DefaultInt(6), _DefaultInt(0)
_DOMAIN, _SIZE = _DefaultStr("A"), _DefaultStr("128x64")
_SYN_DEFAULTS: dict[str, object] = {
    "ids": _IDS,
    "images_per_id": _PER_ID,
    "cams": _CAMS,
    "seed": _SEED,
    "domain": _DOMAIN,
    "size": _SIZE,
}


def load_synthetic(
    root: str | os.PathLike[str],
    *,
    ids: int = _IDS,
    images_per_id: int = _PER_ID,
    cams: int = _CAMS,
    seed: int = _SEED,
    domain: str = _DOMAIN,
    size: str | Sequence[int] = _SIZE,
) -> ReIDDataset:
    """Procedural persons in Market-1501 format under ``root``: generated, or the existing set loaded.

    ``size`` is the crop size written to disk, as ``"HxW"`` or ``[H, W]`` (Market's own is 128x64).

    The generator (``reidkit.data.synthetic``) records its options in ``synthetic.json`` beside the
    tree. A set already at ``root`` is loaded as it is when no option was given explicitly (e.g.
    one made by ``reidkit synth ROOT --ids 16 --domain B``); options given that differ from the
    recorded ones raise ReIDError naming both: a set is never regenerated over silently.
    """
    if root is None or str(root) == "":
        raise ReIDError(f"synthetic: no root given; expected a folder to write {MARKET_LAYOUT} into")
    top = Path(os.path.abspath(os.path.expanduser(str(root))))
    requested = {"ids": ids, "images_per_id": images_per_id, "cams": cams, "seed": seed, "domain": domain, "size": size}
    given = {k: v for k, v in requested.items() if v is not _SYN_DEFAULTS[k]}
    try:
        from reidkit.data import synthetic
    except ImportError as exc:
        if not (top / MARKET_DIR).is_dir():
            raise ReIDError(
                f"synthetic: the generator reidkit.data.synthetic is not available "
                f"({exc}); cannot create {top / MARKET_DIR}"
            ) from None
        return load_market_tree(top, "synthetic", None)
    marker = synthetic.read_marker(top / MARKET_DIR)
    params = (marker or {}).get("params") if isinstance(marker, dict) else None
    if isinstance(marker, dict) and isinstance(params, dict) and marker.get("generator") == "reidkit.synthetic":
        want = {k: (list(_parse_size(size)) if k == "size" else v) for k, v in given.items()}
        differ = {k: v for k, v in want.items() if params.get(k) != v}
        if differ:
            have = {k: params.get(k) for k in ("ids", "images_per_id", "cams", "seed", "domain", "size")}
            raise ReIDError(
                f"synthetic: {top / MARKET_DIR} already holds a set generated with {have}, but "
                f"{', '.join(f'{k}={v!r}' for k, v in differ.items())} was requested; use another root "
                f"for the new set, drop those options to load the existing one, or replace it with "
                f"`reidkit synth {top} --regenerate` and the new options"
            )
        return load_market_tree(top, "synthetic", None)
    synthetic.generate(
        top,
        ids=int(ids),
        images_per_id=int(images_per_id),
        cams=int(cams),
        seed=int(seed),
        domain=str(domain),
        size=_parse_size(size),
    )
    return load_market_tree(top, "synthetic", None)


def _parse_size(size: str | Sequence[int]) -> tuple[int, int]:
    """``"256x128"`` or ``[256, 128]`` -> (256, 128)."""
    parts = str(size).lower().split("x") if isinstance(size, str) else list(size)
    try:
        h, w = (int(v) for v in parts)
    except (TypeError, ValueError):
        raise ReIDError(f"synthetic: option size={size!r} must be HxW, e.g. 256x128") from None
    return h, w

"""Small shared helpers: atomic file writes, image listing (``io``); ranks, devices, seeds (``runtime``).

Names are imported lazily so that ``reidkit.utils.io`` stays free of torch.
"""
from __future__ import annotations

from reidkit._lazy import lazy_getattr

_LAZY = {
    **dict.fromkeys(
        ["IMAGE_EXTENSIONS", "atomic_write", "clean_stale_temps", "is_image_file", "list_images", "write_json"],
        "reidkit.utils.io"),
    **dict.fromkeys(["dist_env", "resolve_device", "seed_everything"], "reidkit.utils.runtime"),
}
__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)

"""Small shared helpers: atomic file writes, image listing (``io``); image decoding with EXIF orientation
(``images``); range checks (``validate``); ranks, devices, seeds (``runtime``).

Names are imported lazily so that ``reidkit.utils.io`` stays free of torch.
"""

from __future__ import annotations

from reidkit._lazy import lazy_getattr

_LAZY = {
    **dict.fromkeys(
        [
            "IMAGE_EXTENSIONS",
            "atomic_path",
            "atomic_write",
            "clean_stale_temps",
            "image_paths",
            "is_image_file",
            "list_images",
            "output_target",
            "write_json",
            "write_text",
        ],
        "reidkit.utils.io",
    ),
    **dict.fromkeys(["decode_image_bytes", "read_image"], "reidkit.utils.images"),
    **dict.fromkeys(["dist_env", "resolve_device", "seed_everything"], "reidkit.utils.runtime"),
}
__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)

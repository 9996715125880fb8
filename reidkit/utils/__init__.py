"""Small shared helpers: atomic file writes, image listing, device and process environment."""
from __future__ import annotations

from reidkit.utils.io import (
    IMAGE_EXTENSIONS, atomic_write, clean_stale_temps, is_image_file, list_images, write_json,
)
from reidkit.utils.runtime import dist_env, resolve_device, seed_everything

__all__ = [
    "IMAGE_EXTENSIONS", "atomic_write", "clean_stale_temps", "is_image_file", "list_images", "write_json",
    "dist_env", "resolve_device", "seed_everything",
]

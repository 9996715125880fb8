"""Gallery retrieval: a faiss index with SQLite metadata (`Gallery`), and an HTTP service with a web page.

``Gallery`` is imported lazily so `import reidkit.retrieval` does not pull in faiss or torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Gallery": "reidkit.retrieval.index",
    "FeatureExtractor": "reidkit.retrieval.index",
    "ModelIdentity": "reidkit.retrieval.index",
    "parse_camera_frame": "reidkit.retrieval.index",
    "list_images": "reidkit.retrieval.index",
    "create_app": "reidkit.retrieval.service",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reidkit.retrieval' has no attribute {name!r}")

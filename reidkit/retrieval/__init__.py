"""Gallery retrieval: a faiss index with SQLite metadata (`Gallery`), and an HTTP service with a web page.

``Gallery`` is imported lazily so `import reidkit.retrieval` does not pull in faiss or torch.
"""
from __future__ import annotations

from reidkit._lazy import lazy_getattr

_LAZY = {
    "Gallery": "reidkit.retrieval.index",
    "FeatureExtractor": "reidkit.retrieval.index",
    "ModelIdentity": "reidkit.retrieval.index",
    "parse_camera_frame": "reidkit.retrieval.index",
    "list_images": "reidkit.retrieval.index",
    "create_app": "reidkit.retrieval.service",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)

"""Gallery retrieval: `Gallery` (search, filters, re-ranking, tracklets) over a storage backend (the embedded
SQLite + faiss default, Milvus, or a plug-in's: reidkit.retrieval.backends), and an HTTP service with a web page.

Names are imported lazily so `import reidkit.retrieval` does not pull in faiss, pymilvus or torch.
"""

from __future__ import annotations

from reidkit._lazy import lazy_getattr

_LAZY = {
    "Gallery": "reidkit.retrieval.gallery",
    "FeatureExtractor": "reidkit.inference",
    "ModelIdentity": "reidkit.inference",
    "parse_camera_frame": "reidkit.retrieval.folder",
    "check_gallery": "reidkit.retrieval.maintenance",
    "repair_gallery": "reidkit.retrieval.maintenance",
    "open_store": "reidkit.retrieval.backends",
    "register_backend": "reidkit.retrieval.backends",
    "resolve": "reidkit.retrieval.backends",
    "Capabilities": "reidkit.retrieval.backends",
    "GalleryStore": "reidkit.retrieval.backends",
    "SearchFilter": "reidkit.retrieval.backends",
    "create_app": "reidkit.retrieval.service",
}

# Deprecated: the folder lister is reidkit.utils.io's, one for the whole package.
_MOVED = {"list_images": "reidkit.utils.io.image_paths"}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY, _MOVED)

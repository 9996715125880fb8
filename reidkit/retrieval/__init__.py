"""Gallery retrieval: `Gallery` (search, filters, re-ranking, tracklets) over a storage backend (the embedded
SQLite + faiss default, Milvus, or a plug-in's: reidkit.retrieval.backends), and an HTTP service with a web page.

Names are imported lazily so `import reidkit.retrieval` does not pull in faiss, pymilvus or torch.
"""

from __future__ import annotations

from reidkit._lazy import lazy_module

# Deprecated: the folder lister is reidkit.utils.io's, one for the whole package.
_MOVED = {"list_images": "reidkit.utils.io.image_paths"}

__all__, __getattr__ = lazy_module(
    __name__,
    {
        "reidkit.retrieval.gallery": ["Gallery"],
        "reidkit.inference": ["FeatureExtractor", "ModelIdentity"],
        "reidkit.retrieval.folder": ["parse_camera_frame"],
        "reidkit.retrieval.maintenance": ["check_gallery", "repair_gallery"],
        "reidkit.retrieval.backends": [
            "open_store",
            "register_backend",
            "resolve",
            "Capabilities",
            "GalleryStore",
            "SearchFilter",
        ],
        "reidkit.retrieval.service": ["create_app"],
    },
    _MOVED,
)

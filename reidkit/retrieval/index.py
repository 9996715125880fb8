"""Compatibility names for code written against the one-module gallery (reidkit.retrieval.index).

The gallery now lives in: backends/ (the protocol, the scheme registry, sqlite/ the embedded backend,
milvus/), store.py (entry fields and checks), ann.py (faiss), gallery.py (Gallery), maintenance.py (check,
repair), folder.py (folders of crops); FeatureExtractor and ModelIdentity live in reidkit.inference.
"""

from __future__ import annotations

from reidkit.retrieval.ann import (
    DEFAULT_APPROX_INDEX,
    DEFAULT_EF_SEARCH,
    DEFAULT_NPROBE,
    DEFAULT_REFINE_K,
    HNSW_M,
    INDEX_KINDS,
    default_nlist,
    default_pq_m,
    make_faiss_index,
    refine_exact,
    set_search_params,
)
from reidkit.inference import DEFAULT_SIZE, IMAGENET_IDENTITY, FeatureExtractor, ModelIdentity
from reidkit.retrieval.folder import CHUNK, list_images, parse_camera_frame
from reidkit.retrieval.gallery import Gallery
from reidkit.retrieval.maintenance import check_gallery, repair_gallery

__all__ = [
    "Gallery",
    "FeatureExtractor",
    "ModelIdentity",
    "INDEX_KINDS",
    "IMAGENET_IDENTITY",
    "DEFAULT_SIZE",
    "DEFAULT_APPROX_INDEX",
    "DEFAULT_EF_SEARCH",
    "DEFAULT_NPROBE",
    "DEFAULT_REFINE_K",
    "HNSW_M",
    "CHUNK",
    "list_images",
    "parse_camera_frame",
    "make_faiss_index",
    "default_nlist",
    "default_pq_m",
    "set_search_params",
    "refine_exact",
    "check_gallery",
    "repair_gallery",
]

"""Clustering for unsupervised ReID: sparse k-reciprocal Jaccard distance, DBSCAN pseudo labels.

Pure functions on arrays/tensors (no model, no config); see ``jaccard`` and ``pseudo``.
"""

from reidkit.cluster.jaccard import jaccard_distance, knn_search, v_matrix
from reidkit.cluster.pseudo import OUTLIER_MODES, cluster_report, eps_by_rho, kmeans, pseudo_labels

__all__ = [
    "OUTLIER_MODES",
    "cluster_report",
    "eps_by_rho",
    "jaccard_distance",
    "kmeans",
    "knn_search",
    "pseudo_labels",
    "v_matrix",
]

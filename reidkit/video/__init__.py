"""Footage to gallery: decode videos, detect and track people, cut tracklets, add them to a gallery,
search them across cameras; plus an embedder for external trackers (reidkit.video.embedder.Embedder).

Modules: decode (OpenCV reading), detect (MOTChallenge files, ONNX YOLO, OpenCV HOG), track
(deep_sort_realtime with reidkit embeddings), tracklets (best-K crops, tracklet features), ingest
(the resumable `reidkit video` pipeline), search (cross-camera tracklet search), routes (HTTP).
"""

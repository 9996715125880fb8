"""`reidkit.Embedder`: ReID features for the boxes of a frame, the appearance input trackers want.

``Embedder(weights_or_onnx).embed(frame, boxes_xyxy)`` crops every box (clipped to the frame),
resizes the crops to the model's input size exactly as the gallery does (PIL bilinear, see
reidkit.inference.FeatureExtractor), runs them through the model in batches (flip TTA
when ``flip``) and returns ``N x D`` float32 unit-norm rows, one per box, in the input order.

Frames are BGR by default, as OpenCV decodes them (``bgr=True``); pass ``bgr=False`` (to the
constructor or to ``embed``) for RGB arrays such as PIL or imageio give.

Drop-in for trackers that take external embeddings:

- deep_sort_realtime: ``DeepSort(embedder=None)`` then
  ``tracker.update_tracks(dets, embeds=embedder.embed(frame, boxes_xyxy))`` where ``dets`` are
  ``([left, top, w, h], conf, cls)`` tuples of the same boxes (cosine distance on unit vectors).
- BoxMOT-style pipelines (StrongSORT, BoT-SORT, DeepOCSORT) call a ReID backend as
  ``get_features(xyxy, img)``; ``embedder.get_features`` is that call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from reidkit.errors import ReIDError


def clip_boxes(boxes_xyxy: Any, width: int, height: int) -> np.ndarray:
    """(N, 4) int boxes clipped to the frame, each at least one pixel wide and high."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(b).all():
        raise ReIDError("boxes_xyxy: boxes contain NaN or infinity")
    x0 = np.clip(np.floor(np.minimum(b[:, 0], b[:, 2])), 0, width - 1)
    y0 = np.clip(np.floor(np.minimum(b[:, 1], b[:, 3])), 0, height - 1)
    x1 = np.clip(np.ceil(np.maximum(b[:, 0], b[:, 2])), 0, width)
    y1 = np.clip(np.ceil(np.maximum(b[:, 1], b[:, 3])), 0, height)
    x1 = np.maximum(x1, x0 + 1)
    y1 = np.maximum(y1, y0 + 1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


def crop_boxes(frame: np.ndarray, boxes_xyxy: Any, bgr: bool = True) -> list[np.ndarray]:
    """RGB uint8 crops of the boxes (clipped to the frame) of an H x W x 3 frame."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        raise ReIDError(f"frame: expected an H x W x 3 uint8 array, got {getattr(frame, 'shape', type(frame))}")
    h, w = frame.shape[:2]
    out = []
    for x0, y0, x1, y1 in clip_boxes(boxes_xyxy, w, h):
        c = frame[y0:y1, x0:x1]
        if bgr:
            c = c[:, :, ::-1]
        out.append(np.ascontiguousarray(c, dtype=np.uint8))
    return out


class Embedder:
    """ReID features of boxes in a frame, from reidkit weights, an ONNX export, or (None) ImageNet EfficientNet-Lite0.

    `extractor` (a reidkit.inference.FeatureExtractor, or any object with ``model``, ``identity``
    and ``device``) reuses an already loaded model; the embedder passes its own ``flip`` and
    ``batch_size`` with each call and never changes the shared extractor. ``engine``: "torch"
    (BatchNorm folded), "onnx" (onnxruntime, export cached by the weights' hash) or "auto".
    """

    def __init__(
        self,
        weights_or_onnx: str | os.PathLike | None = None,
        device: str | None = None,
        batch_size: int = 64,
        flip: bool = False,
        bgr: bool = True,
        size: Sequence[int] | None = None,
        extractor: Any = None,
        trust_checkpoint: bool = False,
        engine: str = "torch",
        threads: int | None = None,
    ) -> None:
        from reidkit.inference import FeatureExtractor

        if int(batch_size) < 1:
            raise ReIDError(f"batch_size: must be >= 1, got {batch_size}")
        if extractor is None:
            from reidkit.utils.runtime import resolve_device

            dev = None if device is None else str(resolve_device(device))
            extractor = FeatureExtractor.load(
                weights_or_onnx,
                device=dev,
                batch_size=batch_size,
                size=size,
                engine=engine,
                threads=threads,
                trust_checkpoint=trust_checkpoint,
            )
        elif not isinstance(extractor, FeatureExtractor):
            # Another extractor class (the gallery's, until it re-exports this one): a view on its model.
            extractor = FeatureExtractor(extractor.model, extractor.identity, extractor.device, batch_size, flip)
        self.extractor = extractor
        self.flip = bool(flip)
        self.batch_size = int(batch_size)
        self.bgr = bool(bgr)

    @property
    def identity(self) -> Any:
        """The model identity (name, feature size, input size) a gallery checks."""
        return self.extractor.identity

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.extractor.identity.feat_dim)

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) unit-norm features of RGB uint8 crops of any size (0 x D for none)."""
        if len(crops) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        feats = self.extractor.embed_images(list(crops), flip=self.flip, batch_size=self.batch_size)
        return np.asarray(feats, dtype=np.float32)  # as .astype(np.float32, copy=False)

    def embed(self, frame: np.ndarray, boxes_xyxy: Any, bgr: bool | None = None) -> np.ndarray:
        """(N, D) float32 unit-norm features of the boxes (x1, y1, x2, y2) of `frame`; empty boxes -> 0 x D."""
        b = np.asarray(boxes_xyxy, dtype=np.float64)
        if b.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if b.ndim != 2 or b.shape[1] != 4:
            raise ReIDError(f"boxes_xyxy: expected an N x 4 array, got shape {b.shape}")
        return self.embed_crops(crop_boxes(frame, b, self.bgr if bgr is None else bgr))

    __call__ = embed

    def get_features(self, xyxys: Any, img: np.ndarray) -> np.ndarray:
        """BoxMOT's ReID-backend call order: (boxes, BGR image) -> N x D."""
        return self.embed(img, xyxys)


def float_twin(embedder: Any) -> Any:
    """The embedder for what a gallery stores and compares across cameras (a tracklet's feature samples): an int8
    embedder's float model (its cached float ONNX export, beside the int8 one), else the embedder itself.

    Quantisation costs identity quality (issue 30: scene A's multi-camera IDF1 69.2 int8 vs 79.7 float) while
    the few samples per tracklet (reidkit.video.tracklets) cost little to embed in float; association keeps int8."""
    ext = getattr(embedder, "extractor", None)
    if ext is None or getattr(ext, "engine", None) != "int8":
        return embedder
    twin = getattr(embedder, "_float_twin", None)
    if twin is None:
        from reidkit.inference import FeatureExtractor
        from reidkit.models.exported import OnnxFeatureModel

        path = Path(getattr(ext.model, "path", "") or "")
        if not path.name.endswith("-int8.onnx"):
            return embedder
        fpath = path.with_name(path.name[: -len("-int8.onnx")] + ".onnx")
        if not fpath.is_file():
            return embedder
        runner = OnnxFeatureModel(fpath, threads=getattr(ext.model, "threads", None))
        twin = Embedder(
            extractor=FeatureExtractor(
                runner, ext.identity, ext.device, embedder.batch_size, embedder.flip, engine="onnx"
            ),
            flip=embedder.flip,
            batch_size=embedder.batch_size,
            bgr=embedder.bgr,
        )
        embedder._float_twin = twin
    return twin


def feature_dtype(store: Any) -> str:
    """What makes the stored tracklet features: "int8" when `store` (their embedder: an Embedder, or a wrapper
    of one in reidkit.video.embed_service) runs an int8 model, else "float" (a video's settings record it)."""
    inner = getattr(getattr(store, "shared", None), "embedder", None) or getattr(store, "embedder", store)
    return "int8" if getattr(getattr(inner, "extractor", None), "engine", None) == "int8" else "float"

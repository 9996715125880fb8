"""One inference path: ``FeatureExtractor`` turns images, crops, image files or tensors into features.

It loads reidkit weights, other toolkits' checkpoints (``fmt`` or detected), an ONNX or
TorchScript export, or nothing (the offline ImageNet EfficientNet-Lite0 with GeM pooling), and
embeds with options given per call (flip, batch size, size, device, camera ids), optionally
sharded across torchrun ranks. Validation, USL feature spaces, the gallery, ``reidkit.Embedder``
and ``reidkit extract`` all go through it; the batch loop itself is ``reidkit.inference.features``
(``extract_features``, also called by evaluation), and ``reidkit.inference.dask_extract`` runs it on a
Dask cluster.

Engines (``engine=``): "torch" runs the PyTorch model with BatchNorm folded into the preceding
convolutions (``reidkit.models.fold.fold_batchnorm``; same features, fewer ops); "onnx" exports the
model once to ONNX, cached by the weights' sha256 under ``$REIDKIT_HOME/onnx-cache`` (default
``~/.cache/reidkit``), and runs it on onnxruntime with one intra-op thread count and a passive
wait; "auto" picks onnx for a CPU device when onnxruntime is installed, torch otherwise
(``benchmarks/bench_embed.py`` measures both against eager PyTorch).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from reidkit.errors import OptionError, ReIDError
from reidkit.inference.features import dist_world, extract_features, gather_rows, load_images, shard_bounds
from reidkit.models.info import IMAGENET_MEAN, IMAGENET_STD
from reidkit.utils.validate import check_hw

if TYPE_CHECKING:
    from reidkit.models.build import ReIDModel

__all__ = ["FeatureExtractor", "ModelIdentity", "IMAGENET_IDENTITY", "DEFAULT_SIZE", "ENGINES", "onnx_cache_dir"]

IMAGENET_IDENTITY = "imagenet:efficientnet_lite0"
DEFAULT_SIZE = (256, 128)
ENGINES = ("auto", "torch", "onnx", "int8", "auto-int8")
INT8_GAIN = 1.25  # auto-int8 keeps the int8 model only when it runs at least this much faster than float
INT8_ENV = "REIDKIT_INT8"  # pins auto-int8's verdict: on / off / auto (see int8_setting)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelIdentity:
    """What made a gallery's features: two identities with the same `name` give comparable features."""

    name: str
    source: str
    feat_dim: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def label(self) -> str:
        """Short human form: the name (weights hashes shortened) and where it came from."""
        short = self.name[:19] if self.name.startswith("sha256:") else self.name
        return short if self.source in ("", "imagenet") else f"{short} ({self.source})"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for /health and reports)."""
        return {
            "name": self.name,
            "source": self.source,
            "feat_dim": self.feat_dim,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def compatible(self, other: ModelIdentity) -> bool:
        """True when features of `other` can be searched against features of this one."""
        return (
            self.name == other.name
            and self.feat_dim == other.feat_dim
            and tuple(self.input_size) == tuple(other.input_size)
        )


def _resize_uint8(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """PIL bilinear resize, the same call ImageCache uses, so a file and its decoded copy embed alike."""
    from PIL import Image

    if img.shape[0] == hw[0] and img.shape[1] == hw[1]:
        return img
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.Resampling.BILINEAR), dtype=np.uint8)


def onnx_cache_dir() -> Path:
    """``$REIDKIT_HOME/onnx-cache`` (default ``~/.cache/reidkit/onnx-cache``)."""
    home = os.environ.get("REIDKIT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "reidkit")
    return Path(home) / "onnx-cache"


def _imagenet_model(size: Sequence[int] | None) -> tuple[Any, ModelIdentity]:
    from reidkit.config.model import ModelConfig
    from reidkit.models.build import build_model

    # No ReID training: ImageNet features, GeM-pooled (better than avg for retrieval), no neck, so
    # the eval output is the pooled 1280-d vector itself.
    cfg = ModelConfig(backbone="efficientnet_lite0", pretrained=True, pooling="gem", neck="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg, num_classes=1).eval()
    hw = check_hw(size or DEFAULT_SIZE, "size")
    model.input_size = list(hw)
    model.source_format = "imagenet"
    model.sha256 = None
    ident = ModelIdentity(
        IMAGENET_IDENTITY,
        "imagenet",
        int(model.feat_dim),
        hw,
        tuple(model.mean),
        tuple(model.std),
    )
    return model, ident


class FeatureExtractor:
    """A model plus its preprocessing; turns uint8 RGB images into L2-normalised features (flip TTA).

    ``flip`` and ``batch_size`` given here are defaults; every ``embed*`` call may override them
    (and ``device``, ``size``, ``camids``) without changing the extractor, so several users
    (galleries, service snapshots, embedders) can share one loaded model.
    """

    def __init__(
        self,
        model: Any,
        identity: ModelIdentity,
        device: str | None = None,
        batch_size: int = 64,
        flip: bool = True,
        engine: str = "torch",
    ) -> None:
        self.model = model
        self.identity = identity
        self.device = device
        self.batch_size = int(batch_size)
        self.flip = flip
        self.engine = engine
        # torch must not run concurrently on one model (several galleries / service snapshots share it)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        weights: str | os.PathLike | None = None,
        device: str | None = None,
        batch_size: int = 64,
        size: Sequence[int] | None = None,
        fmt: str | None = None,
        engine: str = "torch",
        threads: int | None = None,
        trust_checkpoint: bool = False,
        flip: bool = True,
    ) -> FeatureExtractor:
        """Load a checkpoint (reidkit's or another toolkit's: ``fmt`` or detected), an export, or (None) ImageNet.

        ``engine``: "torch" (BatchNorm folded), "onnx" (exported once, cached by the weights'
        sha256), "auto" (onnx on a CPU device when onnxruntime is available), "int8" (the ONNX export
        quantised, CPU only) or "auto-int8" (int8 where it pays on this machine, else "auto"; whether it
        pays is timed once per model and machine, cached under $REIDKIT_HOME; ``$REIDKIT_INT8`` pins the
        verdict: "on" always int8, "off" never, "auto" or unset timed; see ``int8_setting``).
        """
        if engine not in ENGINES:
            raise ReIDError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
        if weights is None or str(weights) in ("", "imagenet"):
            model, ident = _imagenet_model(size)
        else:
            from reidkit.models.loading import local_weights

            model, ident = cls._load_file(local_weights(weights), size, fmt, trust_checkpoint, threads)
        runner, used = _choose_engine(model, ident, engine, device, threads)
        return cls(runner, ident, device, batch_size, flip, engine=used)

    @staticmethod
    def _load_file(
        path: Path, size: Sequence[int] | None, fmt: str | None, trust: bool, threads: int | None
    ) -> tuple[Any, ModelIdentity]:
        from reidkit.models.checkpoint import file_sha256
        from reidkit.models.loading import is_exported, load_feature_model

        if not path.is_file():
            raise ReIDError(f"weights {path} is not a file")
        source = str(path.resolve())
        model = load_feature_model(path, device="cpu", fmt=fmt, trust_checkpoint=trust, threads=threads)
        info = model.info
        # An export carries its checkpoint's hash, so it can query a gallery built with that checkpoint.
        digest = info.sha256 or file_sha256(path)
        hw = (
            tuple(info.input_size)
            if is_exported(path)
            else check_hw(size or info.input_size, "size" if size else f"{path}: input_size")
        )
        ident = ModelIdentity(
            f"sha256:{digest[:16]}",
            source,
            int(info.feat_dim),
            hw,
            tuple(info.mean),
            tuple(info.std),
        )
        return model, ident

    def with_engine(
        self, engine: str, batch_size: int | None = None, flip: bool | None = None, threads: int | None = None
    ) -> FeatureExtractor:
        """A view on this model run by `engine` ("torch", "onnx", "auto"), with its own batch size and flip."""
        if engine not in ENGINES:
            raise ReIDError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
        runner, used = _choose_engine(self.model, self.identity, engine, self.device, threads)
        return FeatureExtractor(
            runner,
            self.identity,
            self.device,
            int(batch_size or self.batch_size),
            self.flip if flip is None else bool(flip),
            engine=used,
        )

    @classmethod
    def from_model(
        cls,
        model: Any,
        device: Any = None,
        size: Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        batch_size: int = 64,
        flip: bool = True,
    ) -> FeatureExtractor:
        """Wrap an in-memory model (e.g. the one being trained) without loading or changing it."""
        info = getattr(model, "info", None)
        h, w = (int(v) for v in (size or (info.input_size if info is not None else DEFAULT_SIZE)))
        hw = (h, w)
        ident = ModelIdentity(
            "in-memory",
            "",
            int(getattr(model, "feat_dim", 0) or 0),
            hw,
            tuple(mean if mean is not None else getattr(model, "mean", IMAGENET_MEAN)),
            tuple(std if std is not None else getattr(model, "std", IMAGENET_STD)),
        )
        return cls(model, ident, device, batch_size, flip)

    # ------------------------------------------------------------------ facts

    @property
    def size(self) -> tuple[int, int]:
        """Input size (H, W) images are resized to."""
        return (int(self.identity.input_size[0]), int(self.identity.input_size[1]))

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.identity.feat_dim)

    @property
    def uses_camera(self) -> bool:
        """Whether the model takes each image's camera id (ViT with SIE)."""
        return bool(getattr(self.model, "uses_camera", False))

    # ------------------------------------------------------------------ embedding

    def embed_tensor(
        self,
        images: Any,
        *,
        flip: bool | None = None,
        batch_size: int | None = None,
        device: Any = None,
        size: Sequence[int] | None = None,
        camids: Any = None,
        normalize: bool = True,
        neck_feat: str | None = None,
        distributed: bool = False,
        amp: bool = False,
        amp_dtype: str = "bf16",
        autocast: Any = None,
        step_name: str | None = None,
    ) -> Any:
        """Features (torch, CPU) of uint8 ``N x H x W x 3`` images (array or tensor), options per call.

        ``distributed``: shard across the initialised process group; every rank gets all rows.
        ``step_name``: the step's name, shown as a bar on a terminal and one line when done otherwise.
        A model with several outputs (a dict) gives a dict of features.
        """
        ident = self.identity
        with self._lock:
            return extract_features(
                self.model,
                images,
                batch_size=int(batch_size or self.batch_size),
                flip=self.flip if flip is None else bool(flip),
                device=device if device is not None else self.device,
                mean=ident.mean,
                std=ident.std,
                size=check_hw(size or ident.input_size, "size"),
                normalize=normalize,
                neck_feat=neck_feat,
                camids=camids,
                distributed=distributed,
                amp=amp,
                amp_dtype=amp_dtype,
                autocast=autocast,
                step_name=step_name,
            )

    def embed(
        self,
        images: np.ndarray,
        *,
        flip: bool | None = None,
        batch_size: int | None = None,
        device: Any = None,
        camids: Any = None,
    ) -> np.ndarray:
        """(N, D) float32 unit-norm features of an N x H x W x 3 uint8 batch at the model's input size."""
        feats = self.embed_tensor(images, flip=flip, batch_size=batch_size, device=device, camids=camids)
        out = feats.detach().cpu().numpy().astype(np.float32, copy=False)
        # Normalise again: faiss inner product must be cosine even if a caller disabled it upstream.
        return np.asarray(out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12))

    def embed_images(self, images: Sequence[np.ndarray], **options: Any) -> np.ndarray:
        """Features of RGB uint8 images of any size (resized here like the gallery's); options as ``embed``."""
        hw = self.size
        batch = np.stack([_resize_uint8(np.ascontiguousarray(im, dtype=np.uint8), hw) for im in images])
        return self.embed(batch, **options)

    def embed_paths(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        flip: bool | None = None,
        batch_size: int | None = None,
        device: Any = None,
        size: Sequence[int] | None = None,
        camids: Any = None,
        skipped: list[str] | None = None,
        distributed: bool = False,
        amp: bool = False,
        amp_dtype: str = "bf16",
        step_name: str | None = None,
    ) -> np.ndarray:
        """(N', D) float32 unit-norm features of image files, in order.

        An unreadable file raises ReIDError naming it, unless ``skipped`` (a list) is given: then
        its path is appended there and its row left out. ``distributed``: each torchrun rank
        decodes and embeds its contiguous shard; every rank returns all rows. ``step_name``: the
        name of the two steps (decoding, features): a bar each on a terminal, one line each otherwise.
        """
        files = [str(p) for p in paths]
        hw = check_hw(size or self.size, "size")
        cams = None if camids is None else np.asarray(camids).reshape(-1)
        if cams is not None and len(cams) != len(files):
            raise ReIDError(f"camids: expected one camera id per image ({len(files)}), got {len(cams)}")
        rank, world = dist_world() if distributed else (0, 1)
        a, b = shard_bounds(len(files), rank, world)
        imgs, kept, _ = load_images(
            files[a:b],
            hw,
            strict=skipped is None,
            step_name=None if step_name is None else f"{step_name}, decoding",
        )
        # One column more flags readable rows, so every rank agrees on what was skipped.
        block = None
        if b > a:
            block = torch.zeros(b - a, self.dim + 1) if self.dim else None
            if kept:
                f = self.embed_tensor(
                    imgs,
                    flip=flip,
                    batch_size=batch_size,
                    device=device,
                    size=hw,
                    camids=None if cams is None else cams[a:b][kept],
                    amp=amp,
                    amp_dtype=amp_dtype,
                    step_name=None if step_name is None else f"{step_name}, features",
                )
                if block is None or block.shape[1] != f.shape[1] + 1:
                    block = torch.zeros(b - a, f.shape[1] + 1)
                block[kept, :-1] = f
                block[kept, -1] = 1.0
        rows = gather_rows(block, world) if world > 1 else block
        if rows is None:
            return np.zeros((0, self.dim), dtype=np.float32)
        valid = (rows[:, -1] > 0.5).numpy()
        if skipped is not None:
            skipped.extend(p for p, ok in zip(files, valid.tolist()) if not ok)
        out = rows[torch.from_numpy(valid), :-1].numpy().astype(np.float32, copy=False)
        return np.asarray(out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12))


# ----------------------------------------------------------------------------- engines


def _choose_engine(
    model: Any, ident: ModelIdentity, engine: str, device: str | None, threads: int | None
) -> tuple[Any, str]:
    """(runner, engine used): the torch model with BatchNorm folded, or its cached ONNX export."""
    if not isinstance(model, torch.nn.Module):
        return model, getattr(model, "source_format", "export")
    from reidkit.models.build import ReIDModel

    if not isinstance(model, ReIDModel):
        # The ONNX engines export and cache a model by its facts (model.info); another module runs as it is.
        if engine in ("onnx", "int8"):
            raise OptionError(
                "engine", f"{engine!r} needs a reidkit model (ReIDModel), got {type(model).__name__}", value=engine
            )
        from reidkit.models.fold import fold_batchnorm

        return fold_batchnorm(model), "torch"
    on_cpu = device is None or str(device) == "cpu" or (str(device) == "auto" and not torch.cuda.is_available())
    if engine == "auto":
        engine = "onnx" if on_cpu and _has_onnxruntime() and not getattr(model, "uses_camera", False) else "torch"
        if engine == "onnx":
            try:
                return _onnx_runner(model, ident, threads)
            except (ReIDError, OSError, RuntimeError) as exc:  # no writable cache, a model ONNX cannot express
                log.warning("engine auto: ONNX Runtime unavailable for this model (%s); using PyTorch", exc)
                engine = "torch"
    if engine in ("int8", "auto-int8"):
        pinned = int8_setting() if engine == "auto-int8" else True  # a bad $REIDKIT_INT8 is refused on any device
        if not on_cpu or pinned is False:
            if engine == "auto-int8":
                return _choose_engine(model, ident, "auto", device, threads)
            raise ReIDError(f"engine int8 runs on the CPU; got device {device!r} (use engine='torch')")
        try:
            return _onnx_runner(model, ident, threads, int8="auto" if pinned is None else True)
        except Exception as exc:  # noqa: BLE001 - e.g. camera inputs, no onnxruntime, a quantiser error
            log.warning("engine %s: cannot quantise this model (%s); using engine auto", engine, exc)
            return _choose_engine(model, ident, "auto", device, threads)
    if engine == "onnx":
        if not on_cpu:
            raise ReIDError(f"engine onnx runs on the CPU; got device {device!r} (use engine='torch')")
        return _onnx_runner(model, ident, threads)
    from reidkit.models.fold import fold_batchnorm

    return fold_batchnorm(model), "torch"


def int8_setting() -> bool | None:
    """What ``$REIDKIT_INT8`` makes of engine "auto-int8": "on" -> True (int8, not timed), "off" -> False
    (engine "auto": the float ONNX export on a CPU), "auto" or unset -> None (int8 where one timing on this
    machine finds it INT8_GAIN times faster, the verdict cached per model under ``$REIDKIT_HOME``). Pinning
    makes the choice independent of the machine's load at the moment it is timed (the test suite pins it).
    Engine "int8" is always int8; on a GPU device "auto-int8" is "auto" whatever this says."""
    value = os.environ.get(INT8_ENV, "").strip().lower()
    choices = {"on": True, "off": False, "auto": None, "": None}
    if value not in choices:
        raise ReIDError(f"${INT8_ENV}: expected on, off or auto, got {os.environ[INT8_ENV]!r}")
    return choices[value]


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def _onnx_runner(
    model: ReIDModel, ident: ModelIdentity, threads: int | None, int8: bool | str = False
) -> tuple[Any, str]:
    """(runner, engine name): the model's ONNX export (made once per weights hash and input size, then
    reused) on onnxruntime; ``int8=True``: its int8 quantisation (reidkit.models.quantize), cached beside it;
    ``int8="auto"``: the int8 model where it runs INT8_GAIN times faster than the float one on this machine
    (timed once per model, the verdict cached in ``<entry>-int8.json``), else the float one."""
    from reidkit.models.exported import OnnxFeatureModel
    from reidkit.utils.io import clean_stale_temps

    info = model.info
    key = f"{info.sha256 or ident.name.replace(':', '_')}-{ident.input_size[0]}x{ident.input_size[1]}"
    cache = onnx_cache_dir()
    clean_stale_temps(cache, dirs=True)  # temps of killed exports / quantisations (reidkit.utils.io: owner pid gone)
    path = cache / f"{key}.onnx"
    if int8:
        verdict = cache / f"{key}-int8.json"
        known = _int8_verdict(verdict) if int8 == "auto" else True
        if known is False:
            return _onnx_runner(model, ident, threads)
        qpath = cache / f"{key}-int8.onnx"
        quantized = None
        if qpath.is_file():
            try:
                quantized = OnnxFeatureModel(qpath, threads=threads)
            except ReIDError as exc:
                log.warning("onnx cache %s cannot be loaded (%s); quantising again", qpath, exc)
        if quantized is not None and known:
            return quantized, "int8"  # no float session needed: nothing to compare
        float_runner, _ = _onnx_runner(model, ident, threads)  # the float export first (cached)
        if quantized is None:
            from reidkit.models.quantize import quantize_onnx

            quantize_onnx(path, qpath, ident.input_size, ident.mean, ident.std)
            quantized = OnnxFeatureModel(qpath, threads=threads)
        if int8 == "auto" and not _int8_pays(float_runner, quantized, ident, verdict):
            return float_runner, "onnx"
        return quantized, "int8"
    if path.is_file():
        try:
            return OnnxFeatureModel(path, threads=threads), "onnx"
        except ReIDError as exc:  # a damaged cache entry: made again below
            log.warning("onnx cache %s cannot be loaded (%s); exporting it again", path, exc)
    from reidkit.export import export_model_to

    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReIDError(
            f"onnx cache {cache}: cannot create it ({exc.strerror or exc}); set REIDKIT_HOME or use engine='torch'"
        ) from None
    export_model_to(model, path, size=ident.input_size)  # atomic: a killed export leaves no partial file
    return OnnxFeatureModel(path, threads=threads), "onnx"


def _int8_verdict(record: Path) -> bool | None:
    """The cached answer of _int8_pays (None: not measured yet, or an unreadable record)."""
    import json

    try:
        return bool(json.loads(record.read_text())["int8_pays"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _int8_pays(float_runner: Any, int8_runner: Any, ident: ModelIdentity, record: Path) -> bool:
    """Whether the int8 model runs INT8_GAIN times faster than the float one here (cached in ``record``)."""
    import time

    from reidkit.models.quantize import calibration_crops
    from reidkit.utils.io import write_json

    known = _int8_verdict(record)
    if known is not None:
        return known
    x = torch.from_numpy(calibration_crops(ident.input_size, ident.mean, ident.std, n=8, seed=2))

    def best(run: Any) -> float:
        run(x)  # warm-up
        times = []
        for _ in range(3):
            t = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - t)
        return min(times)

    t_float, t_int8 = best(float_runner), best(int8_runner)
    pays = t_float >= INT8_GAIN * t_int8
    try:
        write_json(
            record,
            {
                "int8_pays": pays,
                "float_ms_per_crop": 1000 * t_float / len(x),
                "int8_ms_per_crop": 1000 * t_int8 / len(x),
                "gain_needed": INT8_GAIN,
            },
        )
    except (OSError, ReIDError) as exc:  # measured again next time
        log.warning("onnx cache %s: cannot record the int8 timing (%s)", record, exc)
    log.info(
        "engine auto-int8: float %.1f ms/crop, int8 %.1f ms/crop: %s",
        1000 * t_float / len(x),
        1000 * t_int8 / len(x),
        "int8" if pays else "float",
    )
    return pays

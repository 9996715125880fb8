"""int8 ONNX models for CPU inference (the ``int8`` engine of reidkit.inference).

An exported float model is quantised statically with ONNX Runtime's tools: weights and activations
uint8 (U8U8), weights per output channel, activations with min-max ranges, written as QDQ pairs that
ONNX Runtime fuses into integer kernels. Why U8U8 and not the faster U8S8: on x86 CPUs with AVX2 but
no VNNI, ONNX Runtime runs U8S8 through VPMADDUBSW, whose int16 sums saturate (ONNX Runtime's
quantization guide): measured on an AVX2-only AMD EPYC, U8S8 features sat at cosine 0.92 (min 0.75)
to the float model's, U8U8 at 0.97 (min 0.93) with rank-1 within one crop of 96 there (3-4 of 96 on an
AVX-512 VNNI/AMX Xeon, at the same cosine: the integer kernels differ by CPU); one entry must serve
every machine, and whether int8 pays is timed per machine (``auto-int8``). The activation ranges are calibrated on person crops of reidkit's
synthetic generator (``reidkit.data.synthetic.render``): deterministic, offline, the same for everyone,
so one cache entry per model is valid on every machine. What int8 costs in features and tracking is
measured in tests/test_quantize.py and benchmarks/bench_video.py; the float engines stay the default for
galleries and evaluation.

Nothing is left behind by a killed quantisation: the work (reidkit's copies of the model and ONNX Runtime's
own ``pre.quant.*`` / ``ort.quant.*`` temp folders, which its tools make with Python's ``tempfile`` in
``$TMPDIR``, hundreds of MB for a large model) happens in one folder beside the cache entry,
``.<entry>.<pid>.<random>.tmp`` (reidkit.utils.io.owned_temp_dir), and ``tempfile``'s folder points into it
for the duration. The folder goes when the quantisation ends; a process killed meanwhile leaves it, and the
next quantisation or ONNX cache use (``clean_stale_temps(cache, dirs=True)``) removes it once that pid is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from reidkit.errors import ReIDError
from reidkit.utils.io import clean_stale_temps, owned_temp_dir

CALIBRATION_CROPS = 96
CALIBRATION_SEED = 0
_LEGACY_WORK = ".int8-"  # work folders named by tempfile before the pid was in the name: removed a day old
_LEGACY_AGE_S = 24 * 3600
_TEMPDIR_LOCK = threading.Lock()


def calibration_crops(
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    n: int = CALIBRATION_CROPS,
    seed: int = CALIBRATION_SEED,
) -> np.ndarray:
    """``n`` synthetic person crops as the model's input: float32 ``n x 3 x H x W``, normalised."""
    from reidkit.data.synthetic.render import Job, render_crop

    H, W = int(size[0]), int(size[1])
    ids = max(1, n // 4)
    crops = [
        np.asarray(
            render_crop(
                Job("", key=i % ids, idx=i // ids, cam=i % 3, kind="person", view=i % 4), seed, 0, (H, W)
            ).convert("RGB"),
            np.float32,
        )
        / 255.0
        for i in range(n)
    ]
    x = (np.stack(crops) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32)


def quantize_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    n: int = CALIBRATION_CROPS,
) -> Path:
    """Write the int8 version of the float ONNX model ``src`` to ``dst`` (atomically); its metadata is kept."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    inputs = [i.name for i in model.graph.input]
    if len(inputs) != 1:
        raise ReIDError(
            f"int8: {src} takes {len(inputs)} inputs ({', '.join(inputs)}); only single-input "
            "models (no camera ids) can be quantised"
        )
    batch = calibration_crops(size, mean, std, n)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{inputs[0]: batch[i : i + 1]} for i in range(len(batch))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    clean_stale_leftovers(dst.parent)
    with owned_temp_dir(dst.parent, dst.name) as work:
        pre, out = work / "pre.onnx", work / "int8.onnx"
        with _temp_files_in(work):
            quant_pre_process(str(src), str(pre))
            quantize_static(
                str(pre),
                str(out),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QUInt8,
            )
        q = onnx.load(str(out))
        meta = {p.key: p.value for p in model.metadata_props}
        meta["quantized"] = json.dumps(
            f"int8 static QDQ U8U8, min-max on {n} synthetic crops (seed {CALIBRATION_SEED})"
        )
        del q.metadata_props[:]
        for k, v in meta.items():
            q.metadata_props.add(key=k, value=v)
        onnx.save(q, str(out))
        os.replace(out, dst)  # same folder: atomic, a killed quantisation leaves no partial entry
    return dst


def clean_stale_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove what killed quantisations and exports left in `folder` (their owner's pid is gone); returns them."""
    folder = Path(folder)
    removed = clean_stale_temps(folder, dirs=True)
    try:
        legacy = [p for p in folder.glob(_LEGACY_WORK + "*") if p.is_dir() and not p.is_symlink()]
    except OSError:
        legacy = []
    for p in legacy:
        try:
            if time.time() - p.stat().st_mtime >= _LEGACY_AGE_S:  # no pid in the name: by age only
                shutil.rmtree(p)
                removed.append(p)
        except OSError:
            pass
    return removed


@contextmanager
def _temp_files_in(folder: Path) -> Iterator[None]:
    """Python's temp folder is `folder` for the body: onnxruntime.quantization makes its working copies with
    ``tempfile.TemporaryDirectory(prefix="ort.quant.")`` (and "pre.quant.") in the default temp folder, which
    takes no argument; set here, they live (and die) in our work folder. Process-wide while it lasts, so
    quantisations take turns (a temp file another thread makes meanwhile also lands there)."""
    with _TEMPDIR_LOCK:
        saved = tempfile.tempdir
        tempfile.tempdir = str(folder)
        try:
            yield
        finally:
            tempfile.tempdir = saved

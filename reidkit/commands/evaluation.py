"""`reidkit extract` (features of any folder of crops) and `reidkit visrank` (ranked-list pictures)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from reidkit.commands import add_engine_argument, add_from_argument, add_trust_argument, params
from reidkit.commands._args import side

if TYPE_CHECKING:  # the CLI imports numpy and the data layer lazily, at run time
    import os
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

    import numpy as np

    from reidkit.data.datasets.core import Record


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `extract` and `visrank` verbs."""
    ext = sub.add_parser(
        "extract",
        help="extract features of a folder of person crops",
        description="Extract L2-normalised features of every image under a folder (recursive) with a "
        "saved model, and write them with their paths (and camera ids / pids when the "
        "file names parse, Market-style '0002_c1s1_000451_03.jpg') to an .npz file.",
    )
    src = ext.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--weights",
        help="a checkpoint (reidkit's, or fast-reid / torchreid / reid-strong-baseline "
        "/ TransReID / SOLIDER-REID as they are) or a TorchScript export",
    )
    src.add_argument("--onnx", help="ONNX file written by `reidkit export` (runs on onnxruntime, CPU)")
    add_from_argument(ext)
    ext.add_argument("--images", required=True, help="folder of image crops (searched recursively)")
    ext.add_argument("--out", required=True, help="output .npz (features, paths[, camids, pids])")
    ext.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default %(default)s)")
    ext.add_argument("--no-flip", action="store_true", help="disable flip test-time augmentation")
    ext.add_argument(
        "--cam-regex", default=r"c(\d+)", help="regex whose first group is the 1-based camera number in a file name"
    )
    ext.add_argument(
        "--size",
        type=side("--size"),
        nargs=2,
        metavar=("H", "W"),
        help="input size (default: the model's stored input size)",
    )
    ext.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available; always cpu with --onnx)"
    )
    ext.add_argument("--amp", action="store_true", help="autocast the model (torch weights only)")
    ext.add_argument(
        "--amp-dtype", choices=["bf16", "fp16"], default="bf16", help="autocast dtype with --amp (default bf16)"
    )
    add_engine_argument(ext)
    ext.add_argument(
        "--workers",
        type=int,
        default=None,
        help="extract on a local Dask cluster of N worker processes (127.0.0.1; needs .[dask])",
    )
    ext.add_argument(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="extract on a running Dask scheduler (tcp://host:8786); the workers read --images and "
        "the weights at the same paths",
    )
    ext.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first unreadable (empty, corrupt) image instead of skipping it; "
        "skipped images are listed on stderr and in the .npz array 'skipped'",
    )
    ext.set_defaults(func=_extract)
    add_trust_argument(ext)

    vis = sub.add_parser(
        "visrank",
        help="write ranked-list pictures and index.html for a dataset",
        description="Rank each query's gallery with precomputed features and write per-query PNGs "
        "(true matches green, wrong red, same-camera junk grey) with an index.html.",
    )
    vis.add_argument(
        "--features",
        required=True,
        help=".npz from `reidkit extract` over the dataset's images (matched by path), "
        "or with arrays 'query' and 'gallery' in the dataset's order",
    )
    vis.add_argument("--dataset", required=True, help="dataset name (see `reidkit data list`)")
    vis.add_argument("--root", required=True, help="dataset root folder")
    params(vis.add_argument("--out", required=True, help="output folder"), "out_dir")
    vis.add_argument("--topk", type=int, default=10, help="gallery images shown per query (default %(default)s)")
    vis.add_argument("--max-queries", type=int, default=100, help="queries drawn (default %(default)s)")
    vis.add_argument(
        "--metric",
        choices=["cosine", "euclidean"],
        default="cosine",
        help="distance between features (default %(default)s)",
    )
    vis.add_argument("--rerank", action="store_true", help="apply k-reciprocal re-ranking")
    vis.add_argument(
        "--option", "-o", action="append", default=[], metavar="KEY=VALUE", help="dataset loader option (repeatable)"
    )
    vis.set_defaults(func=_visrank)


def _check_out_file(out: str | os.PathLike, flag: str = "--out") -> Path:
    """The output file's folder exists or can be made, and the path is not a folder."""
    from pathlib import Path

    from reidkit.errors import ReIDError

    out = Path(out)
    if out.is_dir():
        raise ReIDError(f"{flag}: {out} is a folder; give a file name such as {out / 'features.npz'}")
    from reidkit.utils.io import output_target

    output_target(out, flag)  # a FIFO, socket or device is refused before any work (a symlink: its target)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReIDError(f"{flag}: cannot create the folder of {out}: {exc.strerror or exc}") from None
    import os

    if not os.access(out.parent, os.W_OK):
        raise ReIDError(f"{flag}: the folder {out.parent} is not writable")
    return out


def parse_names(
    paths: Iterable[str | os.PathLike], cam_regex: str = r"c(\d+)"
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(camids 0-based, pids) parsed from file names, each None unless every name parses."""
    import re
    from pathlib import Path

    import numpy as np

    from reidkit.errors import ReIDError

    try:
        cam_re = re.compile(cam_regex)
    except re.error as exc:
        raise ReIDError(f"--cam-regex: invalid regular expression {cam_regex!r} ({exc})") from exc
    pid_re = re.compile(r"^(-?\d+)_")
    cams, pids = [], []
    for p in paths:
        name = Path(p).name
        m = cam_re.search(name)
        cams.append(int(m.group(1)) - 1 if m and m.groups() else None)
        m = pid_re.match(name)
        pids.append(int(m.group(1)) if m else None)
    camids = None if any(c is None for c in cams) else np.asarray(cams, dtype=np.int64)
    pid_arr = None if any(p is None for p in pids) else np.asarray(pids, dtype=np.int64)
    return camids, pid_arr


def _extract(args: argparse.Namespace) -> int:
    """A thin layer over reidkit.inference.FeatureExtractor.embed_paths (sharded under torchrun)."""
    import sys
    from pathlib import Path

    import numpy as np

    from reidkit.errors import ReIDError
    from reidkit.inference import FeatureExtractor
    from reidkit.inference.features import init_distributed
    from reidkit.models.loading import local_weights
    from reidkit.utils.io import atomic_write, image_paths
    from reidkit.utils.progress import console_logging, step
    from reidkit.utils.runtime import resolve_device

    console_logging(show_iterations=False)
    if (args.onnx is None) == (args.weights is None):
        raise ReIDError("extract: give exactly one of --weights and --onnx")
    if args.weights:
        args.weights = str(local_weights(args.weights))  # a catalogue name -> its verified cached file
    flag, source = ("--onnx", args.onnx) if args.onnx else ("--weights", args.weights)
    if not Path(source).is_file():
        raise ReIDError(f"{flag}: {source} is not a file")
    if args.onnx and Path(source).suffix.lower() != ".onnx":
        raise ReIDError(f"--onnx: {source} is not an .onnx file")
    out = _check_out_file(args.out)
    paths = image_paths(args.images, what="--images:")
    device = resolve_device("cpu" if args.onnx else (args.device or "auto"), key="--device")
    fx = FeatureExtractor.load(
        source,
        device=str(device),
        batch_size=args.batch_size,
        size=tuple(args.size) if args.size else None,
        fmt=args.weights_format,
        engine=args.engine,
        flip=not args.no_flip,
    )
    if fx.engine != "torch":
        device = resolve_device("cpu", key="--device")  # exported runners and onnxruntime run on CPU
    camids, pids = parse_names(paths, args.cam_regex)
    if fx.uses_camera and camids is None:
        raise ReIDError(
            f"{flag}: {source} uses the camera id of each image, but not every file name "
            f"under {args.images} matches --cam-regex {args.cam_regex!r}"
        )
    on_cluster = args.workers is not None or args.cluster is not None
    rank, world, created = (0, 1, False) if on_cluster else init_distributed(str(device))
    skipped: list[str] = []
    if on_cluster:
        from reidkit.inference.dask_extract import extract_on_cluster
        from reidkit.utils.dask import check_cluster_args

        check_cluster_args(args.workers, args.cluster)
        if str(device) != "cpu":
            raise ReIDError("--workers / --cluster extract on the workers' CPUs: add --device cpu")
        with step("extract on the cluster", len(paths)) as pb:
            feats, skipped = extract_on_cluster(
                source,
                paths,
                workers=args.workers,
                address=args.cluster,
                camids=camids if fx.uses_camera else None,
                batch_size=args.batch_size,
                size=tuple(args.size) if args.size else None,
                fmt=args.weights_format,
                engine=args.engine,
                flip=not args.no_flip,
                trust_checkpoint=bool(getattr(args, "trust_checkpoint", False)),
            )
            pb.update(len(paths))
    else:
        try:
            feats = fx.embed_paths(
                paths,
                device=device,
                camids=camids if fx.uses_camera else None,
                skipped=skipped,
                distributed=world > 1,
                amp=args.amp and fx.engine == "torch",
                amp_dtype=args.amp_dtype,
                step_name="extract",
            )
        finally:
            if created:
                import torch.distributed as dist

                dist.barrier()
                dist.destroy_process_group()
    if skipped and args.strict:
        raise ReIDError(
            f"--images: cannot read {skipped[0]} (empty or corrupt image)"
            + (f" and {len(skipped) - 1} more" if len(skipped) > 1 else "")
            + "; without --strict unreadable images are skipped and listed"
        )
    if len(feats) == 0:
        raise ReIDError(f"--images: none of the {len(paths)} images under {args.images} could be read")
    if rank != 0:
        return 0
    lost = set(skipped)
    keep = np.asarray([p not in lost for p in paths], dtype=bool)
    kept_paths = [p for p, ok in zip(paths, keep) if ok]
    payload: dict[str, Any] = {
        "features": feats.astype(np.float32),
        "paths": np.asarray(kept_paths),
        "skipped": np.asarray(skipped, dtype=str),
    }
    if camids is not None:
        payload["camids"] = camids[keep]
    if pids is not None:
        payload["pids"] = pids[keep]
    try:
        with atomic_write(out, "wb") as fh:
            np.savez(fh, **payload)
    except OSError as exc:
        raise ReIDError(f"--out: cannot write {out}: {exc.strerror or exc}") from None
    if skipped:
        print(
            f"warning: skipped {len(skipped)} unreadable image(s) (empty or corrupt), e.g. {skipped[0]}; "
            f"listed in {out.name}['skipped']",
            file=sys.stderr,
        )
    extra = [k for k in ("camids", "pids") if k in payload]
    print(
        f"{len(kept_paths)} images -> {feats.shape[1]}-d features -> {out}"
        + (f" (with {', '.join(extra)})" if extra else "")
        + (f"; {len(skipped)} skipped" if skipped else "")
        + (f"; {world} ranks" if world > 1 else "")
        + ("; on the Dask cluster" if on_cluster else "")
    )
    return 0


def _features_for(npz: Mapping[str, np.ndarray], records: Sequence[Record], split: str) -> np.ndarray:
    import os

    import numpy as np

    from reidkit.errors import ReIDError

    if split in npz:
        arr = np.asarray(npz[split], dtype=np.float32)
        if arr.shape[0] != len(records):
            raise ReIDError(f"--features: '{split}' has {arr.shape[0]} rows, the dataset has {len(records)} images")
        return arr
    if "features" not in npz or "paths" not in npz:
        raise ReIDError(
            "--features: expected arrays 'features' and 'paths' (from `reidkit extract`) or 'query' and 'gallery'"
        )
    index = {os.path.realpath(str(p)): i for i, p in enumerate(npz["paths"])}
    rows = [index.get(os.path.realpath(r.path), -1) for r in records]
    missing = [r.path for r, i in zip(records, rows) if i < 0]
    if missing:
        raise ReIDError(
            f"--features: {len(missing)} {split} image(s) have no feature, e.g. {missing[0]}; "
            "run `reidkit extract` over the dataset folder"
        )
    return np.asarray(npz["features"], dtype=np.float32)[rows]


def _open_npz(path: str | os.PathLike) -> np.lib.npyio.NpzFile:
    """``np.load`` of an .npz archive; anything else is a ReIDError naming the file and the format."""
    import zipfile

    import numpy as np

    from reidkit.errors import ReIDError

    expected = (
        "expected an .npz archive from `reidkit extract` (arrays 'features' and 'paths') "
        "or one with arrays 'query' and 'gallery'"
    )
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise ReIDError(f"--features: cannot read {path}: {exc.strerror or exc}") from None
    if magic == b"\x93NUMPY":
        raise ReIDError(f"--features: {path} holds a single .npy array, not an .npz archive; {expected}")
    if not magic.startswith(b"PK"):
        # np.load would report "pickled data" for any other file, which misleads.
        raise ReIDError(f"--features: {path} is not an .npz archive; {expected}")
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ReIDError(f"--features: {path} is a damaged .npz archive ({exc}); {expected}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ReIDError(f"--features: {path} is not an .npz archive; {expected}")
    return npz


def _visrank(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from reidkit.data.datasets import load_dataset, parse_options
    from reidkit.errors import ReIDError
    from reidkit.evaluation.distance import compute_distance
    from reidkit.evaluation.evaluator import summarize
    from reidkit.evaluation.metrics import evaluate_rank
    from reidkit.evaluation.visualize import plot_cmc, plot_distance_hist, visualize_ranked
    from reidkit.utils.progress import console_logging, step

    console_logging(show_iterations=False)
    if not Path(args.features).is_file():
        raise ReIDError(f"--features: {args.features} is not a file")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ReIDError(f"--out: {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReIDError(f"--out: cannot create the folder {out}: {exc.strerror or exc}") from None
    dataset = load_dataset(args.dataset, args.root, **parse_options(args.dataset, args.option))
    with _open_npz(args.features) as npz:
        qf = _features_for(npz, dataset.query, "query")
        gf = _features_for(npz, dataset.gallery, "gallery")
    if args.rerank:
        from reidkit.evaluation.rerank import re_ranking_features

        norm = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)  # noqa: E731
        if args.metric == "cosine":
            qf, gf = norm(qf), norm(gf)
        with step("visrank: re-ranking", len(qf), "queries"):
            distmat = re_ranking_features(qf, gf)
    else:
        distmat = compute_distance(qf, gf, metric=args.metric)
    q_pids = np.array([r.pid for r in dataset.query])
    g_pids = np.array([r.pid for r in dataset.gallery])
    index = visualize_ranked(
        distmat,
        dataset.query,
        dataset.gallery,
        out,
        topk=args.topk,
        max_queries=args.max_queries,
        step_name="visrank: ranked lists",
    )
    from reidkit.utils.extras import MissingExtra

    raw = None
    try:
        raw = evaluate_rank(
            distmat, q_pids, g_pids, [r.camid for r in dataset.query], [r.camid for r in dataset.gallery]
        )
        s = summarize(raw, len(dataset.query), len(dataset.gallery))
        print(f"mAP {s['mAP']:.2f}  rank-1 {s['rank1']:.2f}  rank-5 {s['rank5']:.2f}  mINP {s['mINP']:.2f}")
    except ReIDError as exc:  # pictures are still useful without a valid query
        print(f"metrics skipped: {exc}")
    try:  # the plots are extra pictures: without matplotlib (the plots extra) the ranked lists still come
        if raw is not None:
            plot_cmc(raw["cmc"], out / "cmc.png")
        plot_distance_hist(distmat, q_pids, g_pids, out / "distance_hist.png")
    except MissingExtra as exc:
        print(f"plots skipped: {exc}")
    print(f"ranked lists -> {index}")
    return 0

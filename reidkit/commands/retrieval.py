"""`reidkit index build|add|check|repair|delete`, `reidkit search` and `reidkit serve`: gallery retrieval."""

from __future__ import annotations

import argparse

from reidkit.commands import add_engine_argument, add_from_argument, add_trust_argument, params
from reidkit.commands._args import positive_int, side, sqlite_id
from reidkit.utils.progress import to_stderr
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `index`, `search` and `serve` verbs."""
    idx = sub.add_parser(
        "index",
        help="build or extend a searchable gallery (SQLite + faiss, or Milvus)",
        description="Build or extend a gallery: a folder (meta.sqlite + a faiss cache per generation) "
        "or a Milvus collection (--db milvus:<uri>).",
    )
    verbs = idx.add_subparsers(dest="index_command", metavar="<verb>")
    idx.set_defaults(func=lambda args: _help(idx))

    build = verbs.add_parser(
        "build",
        help="embed a folder of crops into a new gallery",
        description="Embed every image under --images (recursive; flip TTA, L2-normalised) into a new "
        "gallery. Without --weights the ImageNet EfficientNet-Lite0 backbone with GeM pooling "
        "(offline weights) is the feature extractor.",
    )
    build.add_argument("--images", required=True, help="folder of person crops (searched recursively)")
    add_db_arguments(build, new=True)
    build.add_argument(
        "--weights",
        default=None,
        help="a checkpoint (reidkit's or another toolkit's) or an export (default: ImageNet EfficientNet-Lite0 + GeM)",
    )
    add_from_argument(build)
    params(
        build.add_argument(
            "--index",
            choices=["flat", "approx", "ivf", "ivfpq", "hnsw"],
            default="flat",
            help="flat: exact (default); approx: the measured default approximate index (see "
            "benchmarks/results/million.md); ivf / ivfpq / hnsw: approximate, for galleries of "
            "millions (ivfpq: product-quantised codes in memory, re-scored with the stored vectors)",
        ),
        "kind",
    )
    build.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~4*sqrt(N))")
    build.add_argument(
        "--pq-m",
        type=int,
        default=None,
        help="ivfpq: sub-quantisers (bytes per code; must divide the feature dim; default dim/4, <= 64)",
    )
    build.add_argument(
        "--refine-k",
        type=int,
        default=None,
        help="ivfpq: candidates re-scored exactly with the stored vectors = refine-k x topk (default 8)",
    )
    build.add_argument("--nprobe", type=int, default=None, help="IVF lists searched per query (default 32)")
    build.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth (default 128)")
    build.add_argument(
        "--size",
        type=side("--size"),
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="input size for the ImageNet extractor, each side 8..2048 (default 256 128; checkpoints use their own)",
    )
    _common_model_args(build)
    add_engine_argument(build)
    build.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing gallery in --db (built beside it, swapped in atomically)",
    )
    build.add_argument(
        "--strict", action="store_true", help="stop at the first unreadable image instead of skipping and counting it"
    )
    add_files_argument(build, "the images folder")
    build.set_defaults(func=_build)
    add_trust_argument(build)

    add = verbs.add_parser(
        "add",
        help="append new images to a gallery without rebuilding it",
        description="Embed the images under --images that are not in the gallery yet "
        "and append them (existing ids stay the same).",
    )
    add_db_arguments(add)
    add.add_argument("--images", required=True, help="folder of new crops")
    add.add_argument("--weights", default=None, help="the gallery's model (default: the one it was built with)")
    add.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    _common_model_args(add)
    add_engine_argument(add, default=None)
    add.set_defaults(func=_add)
    add_trust_argument(add)

    chk = verbs.add_parser(
        "check",
        help="check a gallery's consistency",
        description="Report generation, counts and index cache state; exit 2 naming the "
        "problem when the gallery is inconsistent or written by an older reidkit.",
    )
    add_db_arguments(chk)
    chk.add_argument("--json", action="store_true", help="print the report as JSON")
    chk.set_defaults(func=_check)

    rep = verbs.add_parser(
        "repair",
        help="convert an older gallery or fix an inconsistent one",
        description="Galleries of older reidkit versions (index.faiss + meta.sqlite without "
        "vectors) are converted: vectors are read back from the old index where "
        "it holds them, else re-extracted with the recorded model (or --weights).",
    )
    add_db_arguments(rep)
    rep.add_argument("--weights", default=None, help="the gallery's model, if the recorded one has moved")
    _common_model_args(rep)
    rep.set_defaults(func=_repair)
    add_trust_argument(rep)

    dele = verbs.add_parser(
        "delete",
        help="delete entries by id, image path, tracklet or camera",
        description="Delete the entries matching ALL the given filters (one new generation).",
    )
    add_db_arguments(dele)
    dele.add_argument("--id", type=sqlite_id("--id"), nargs="+", default=None, dest="ids", help="entry ids")
    dele.add_argument("--path", default=None, help="an image path")
    dele.add_argument("--tracklet", default=None, help="a tracklet key")
    dele.add_argument("--camera", default=None, help="a camera name (e.g. c1, or a video camera's name)")
    dele.set_defaults(func=_delete)

    srch = sub.add_parser(
        "search",
        help="search a gallery with a query image",
        description="Rank the gallery for one query image (cosine similarity).",
    )
    add_db_arguments(srch)
    srch.add_argument("--image", required=True, help="query image")
    srch.add_argument("--weights", default=None, help="the gallery's model (default: the one it was built with)")
    srch.add_argument("--topk", type=positive_int("--topk"), default=20, help="results (default %(default)s)")
    srch.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking of the top candidates")
    srch.add_argument("--rerank-topm", type=int, default=100, help="candidates re-ranked (default 100)")
    srch.add_argument(
        "--exclude-same-camera",
        action="store_true",
        help="drop gallery images from the query's camera (from its file name, or --camid)",
    )
    srch.add_argument(
        "--camid", type=int, default=None, help="the query's camera id for --exclude-same-camera (0-based: c1 -> 0)"
    )
    srch.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default: the gallery's)")
    srch.add_argument("--kind", choices=["image", "tracklet"], default=None, help="only entries of this kind")
    srch.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common_model_args(srch)
    srch.set_defaults(func=_search)
    add_trust_argument(srch)

    srv = sub.add_parser(
        "serve",
        help="HTTP search service with a web page",
        description="Serve POST /search, GET /images/{id}, GET /health and a web page at /. "
        "With --token (or $REIDKIT_API_TOKEN) every endpoint but /health needs "
        "'Authorization: Bearer <token>'.",
    )
    add_db_arguments(srv)
    srv.add_argument("--weights", default=None, help="the gallery's model (default: the one it was built with)")
    srv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--token", default=None, help="API token (default: $REIDKIT_API_TOKEN; none: open)")
    srv.add_argument("--max-upload-mb", type=float, default=8.0, help="largest accepted upload (default 8 MB)")
    srv.add_argument("--workers", type=int, default=1, help=f"model worker threads, 1..{MAX_WORKERS} (default 1)")
    params(
        srv.add_argument(
            "--poll", type=float, default=0.5, help="seconds between checks for a new gallery generation (default 0.5)"
        ),
        "poll_s",
    )
    srv.add_argument(
        "--max-image-pixels",
        type=int,
        default=4096 * 4096,
        help="largest decoded upload in pixels (default 4096x4096 = 16.7 MP; over it: 413)",
    )
    params(
        srv.add_argument(
            "--upload-memory-mb",
            type=float,
            default=1024.0,
            help="memory for decoded uploads in flight, all requests together (default 1024 MB)",
        ),
        "memory_bytes",
    )
    params(
        srv.add_argument(
            "--max-pixels-in-flight",
            type=int,
            default=None,
            help="decoded pixels in flight (default: --upload-memory-mb / 12 bytes per pixel)",
        ),
        "capacity",
    )
    params(
        srv.add_argument(
            "--upload-wait",
            type=float,
            default=10.0,
            help="seconds a request waits for upload memory before a 503 with Retry-After (default 10)",
        ),
        "wait_s",
    )
    srv.set_defaults(func=_serve)
    add_trust_argument(srv)


def add_db_arguments(p: argparse.ArgumentParser, new: bool = False, db_help: str | None = None) -> None:
    """--db (a gallery folder, or SCHEME:<location> of a registered backend) and --collection, on every gallery verb;
    ``db_help`` replaces the help of --db."""
    p.add_argument(
        "--db",
        required=True,
        help=db_help
        or (
            (
                "gallery to create: a folder (embedded SQLite + faiss, the default) or milvus:<uri> "
                "(milvus:./g.db runs Milvus Lite in-process; milvus:http://host:19530 a Milvus server), or the "
                "scheme of a --plugin backend (reidkit.register_backend)"
            )
            if new
            else "gallery: a folder, or milvus:<uri> (a Milvus Lite file or a Milvus server), or a --plugin "
            "backend's SCHEME:<location>"
        ),
    )
    p.add_argument("--collection", default=None, help="Milvus collection of a milvus: gallery (default: reidkit)")


def add_files_argument(p: argparse.ArgumentParser, beside: str) -> None:
    """--files DIR: the local folder of side files (video thumbnails) of a backend that keeps them outside the
    gallery (Capabilities.files), recorded in it."""
    p.add_argument(
        "--files",
        default=None,
        metavar="DIR",
        help="milvus: galleries only: the local folder for the gallery's side files (video thumbnails), "
        "recorded in the gallery so that any later command finds it (default for a Milvus server: "
        f"<collection>.files beside {beside}; Milvus Lite: beside its .db file). A folder gallery "
        "keeps its files inside its folder",
    )


def check_files_option(db: str, files: str | None, collection: str | None = None) -> None:
    """Refuse --files for a backend that keeps its files inside the gallery, or a --files that cannot be a folder,
    before any work."""
    if files is None:
        return
    from reidkit.retrieval.backends import resolve
    from reidkit.retrieval.backends.protocol import files_folder

    resolve(db, collection).refuse_files()
    files_folder(files)


MAX_WORKERS = 64  # model threads of one server; more only queue on the same cores and memory
MAX_POLL_S = 3600.0
MAX_UPLOAD_MB = 1024.0


def _common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=64)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _report(verb: str, db: str, rep: dict) -> None:
    print(
        f"{verb}: {rep['added']} images added to {db} (total {rep['total']}; "
        f"{rep.get('skipped_existing', 0)} already present, {rep['corrupt']} unreadable skipped)"
    )
    for p in rep.get("corrupt_paths", [])[:10]:
        print(f"  skipped (corrupt or unreadable): {p}")


def _positive(**values: int | float | None) -> None:
    """OptionError for the first option given as < 1 (checked before any model is loaded; printed as its flag)."""
    from reidkit.utils.validate import check_positive

    for name, v in values.items():
        check_positive(name, v)


def _build(args: argparse.Namespace) -> int:
    from reidkit.retrieval.gallery import BuildOptions, Gallery

    options = BuildOptions.of(  # checked before any model is loaded
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        size=args.size,
        engine=args.engine,
        index=args.index,
        nlist=args.nlist,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        pq_m=args.pq_m,
        overwrite=args.overwrite,
        strict=args.strict,
        collection=args.collection,
        **({} if args.refine_k is None else {"refine_k": args.refine_k}),
    )
    check_files_option(args.db, args.files)
    extractor = None
    if args.weights_format is not None:
        from reidkit.errors import ReIDError
        from reidkit.inference import FeatureExtractor

        if args.weights is None:
            raise ReIDError("--from needs --weights (the checkpoint of that toolkit)")
        extractor = FeatureExtractor.load(
            args.weights,
            device=args.device,
            batch_size=args.batch_size,
            size=args.size,
            fmt=args.weights_format,
            engine=args.engine,
        )
    g = Gallery.build(args.images, args.db, options, progress=to_stderr, extractor=extractor)
    _report("index build", args.db, g.last_report)
    print(f"model: {g.identity.label()} ({g.identity.feat_dim}-d), index: {g.info['index_kind']}")
    from reidkit.retrieval.backends import FilesOutsideStore, resolve

    default = resolve(args.db, args.collection).default_files(args.images)
    if default is not None:  # side files outside the gallery: record the folder now
        assert isinstance(g.store, FilesOutsideStore)  # its backend said so (Capabilities.files)
        files = g.store.use_files(args.files, default=default)
        print(f"files (video thumbnails): {files}")
    return 0


def _add(args: argparse.Namespace) -> int:
    from reidkit.retrieval.gallery import Gallery

    _positive(batch_size=args.batch_size)
    g = Gallery.open(
        args.db,
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        collection=args.collection,
        engine=args.engine,
    )
    rep = g.add(args.images, progress=to_stderr, strict=args.strict)
    _report("index add", args.db, rep)
    return 0


def _check(args: argparse.Namespace) -> int:
    from reidkit.retrieval.maintenance import check_gallery

    rep = check_gallery(args.db, collection=args.collection)
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    index = f", index {rep['index']} (cache {rep.get('cache', 'none')})" if "index" in rep else ""
    model = f", model {rep['model']} ({rep['feat_dim']}-d)" if "model" in rep else ""
    print(
        f"{rep['db']}: consistent, generation {rep['generation']}: {rep['entries']} entries "
        f"({rep.get('images', 0)} images, {rep.get('tracklets', 0)} tracklets){index}{model}"
    )
    if rep.get("leftover_files"):
        print(f"  leftover files (removed by the next write): {', '.join(rep['leftover_files'])}")
    if rep.get("lock_files"):  # reidkit.retrieval.maintenance.lock_files says why they are beside the folder
        print(
            f"  lock files beside the folder (no data; they stay outside it so a rebuild's folder exchange "
            f"cannot move them; delete them with the gallery): {', '.join(rep['lock_files'])}"
        )
    return 0


def _repair(args: argparse.Namespace) -> int:
    from reidkit.retrieval.maintenance import repair_gallery

    rep = repair_gallery(
        args.db,
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        progress=to_stderr,
        collection=args.collection,
    )
    print(
        f"index repair: {rep['action']}: {rep['entries']} entries "
        f"({rep['recovered_from_index']} vectors read back from the old index, {rep['reextracted']} re-extracted)"
    )
    if rep.get("index_rows_without_metadata"):
        print(
            f"  dropped {rep['index_rows_without_metadata']} index rows that had no metadata "
            f"(an interrupted `index add`; add those images again)"
        )
    for p in rep["dropped"][:10]:
        print(f"  dropped (no vector and cannot be read): {p}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from reidkit.retrieval.gallery import Gallery

    g = Gallery.open(args.db, collection=args.collection)
    n = g.delete(ids=args.ids, tracklet=args.tracklet, camera=args.camera, path=args.path)
    print(
        f"index delete: {n} {'entry' if n == 1 else 'entries'} deleted from {args.db} "
        f"(now {len(g)}, generation {g.generation})"
    )
    return 0


def _search(args: argparse.Namespace) -> int:
    from reidkit.errors import ReIDError
    from reidkit.retrieval.folder import parse_camera_frame
    from reidkit.retrieval.gallery import Gallery

    if args.topk < 1:
        raise ReIDError(f"--topk: must be >= 1, got {args.topk}")
    _positive(nprobe=args.nprobe, rerank_topm=args.rerank_topm, batch_size=args.batch_size)
    camid = args.camid
    if args.exclude_same_camera and camid is None:
        camid = parse_camera_frame(args.image)[0]
        if camid is None:
            raise ReIDError(
                f"--exclude-same-camera: the file name {args.image} gives no camera "
                f"(Market-style '0002_c1s1_000451_03.jpg'); pass --camid"
            )
    g = Gallery.open(
        args.db, weights=args.weights, device=args.device, batch_size=args.batch_size, collection=args.collection
    )
    results = g.search(
        args.image,
        k=args.topk,
        rerank=args.rerank,
        exclude_camid=camid if args.exclude_same_camera else None,
        nprobe=args.nprobe,
        rerank_topm=args.rerank_topm,
        kind=args.kind,
    )
    if args.json:
        print(json.dumps({"query": args.image, "results": results}, indent=2))
        return 0
    # ranked by the re-ranked distance with --rerank: print what the order follows, and the camera as
    # the file names it (c1 is camera 1, as in the JSON and the web page)
    key, head = ("rerank_distance", "rr-dist") if args.rerank else ("score", "score")
    print(f"{'rank':>4}  {'id':>8}  {head:>7}  {'cam':>4}  path")
    for r, res in enumerate(results, 1):
        cam = res.get("camera") or ("-" if res["camid"] is None else f"c{res['camid'] + 1}")
        value = res.get(key, res["score"])
        print(f"{r:>4}  {res['id']:>8}  {value:>7.4f}  {cam:>4}  {res['path']}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from reidkit.errors import ReIDError
    from reidkit.retrieval.service import serve

    # Checked before the model loads: a typo must not cost a model load and then a traceback.
    if not 1 <= args.port <= 65535:
        raise ReIDError(f"--port: expected 1..65535, got {args.port}")
    from reidkit.utils.validate import check_host, finite

    if not 1 <= args.workers <= MAX_WORKERS:
        raise ReIDError(f"--workers: must be in 1..{MAX_WORKERS}, got {args.workers}")
    finite(args.max_upload_mb, "--max-upload-mb", lo=0.0, lo_open=True, hi=MAX_UPLOAD_MB)
    finite(args.poll, "--poll", lo=0.0, lo_open=True, hi=MAX_POLL_S)
    check_host(args.host)
    if not (args.upload_memory_mb > 0 and args.upload_memory_mb < float("inf")):
        raise ReIDError(f"--upload-memory-mb: must be a finite number > 0, got {args.upload_memory_mb}")
    from reidkit.video.identity_routes import identity_router
    from reidkit.video.live_routes import live_router
    from reidkit.video.routes import tracklet_routes  # the command layer composes the routers

    db = args.db
    if args.collection is not None:
        from reidkit.retrieval.gallery import Gallery

        db = Gallery.open(args.db, weights=args.weights, collection=args.collection)
    serve(
        db,
        host=args.host,
        port=args.port,
        token=args.token,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        workers=args.workers,
        weights=args.weights,
        poll_s=args.poll,
        routers=[tracklet_routes, identity_router, live_router],
        max_image_pixels=args.max_image_pixels,
        upload_memory_bytes=int(args.upload_memory_mb * 1024 * 1024),
        max_pixels_in_flight=args.max_pixels_in_flight,
        upload_wait_s=args.upload_wait,
    )
    return 0

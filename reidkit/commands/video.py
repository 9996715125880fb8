"""`reidkit video VIDEO... --db DB`: footage to a searchable tracklet gallery; `reidkit tracklets
search|show`: cross-camera search and a tracklet's appearances; `reidkit scene OUT`: a synthetic
multi-camera scene with MOTChallenge ground truth."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from reidkit.commands import add_trust_argument, params
from reidkit.commands._args import (
    DeprecatedAlias,
    bounded_float,
    bounded_int,
    finite_float,
    int_option,
    probability,
)
from reidkit.commands.retrieval import add_db_arguments, add_files_argument, check_files_option
from reidkit.errors import ReIDError


def _cosine_distance(text: str) -> float:
    from reidkit.utils.validate import finite

    return finite(text, "--max-cosine-distance", lo=0.0, hi=2.0)  # 1 - cos lies in [0, 2]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `video`, `tracklets` and `scene` parsers."""
    p = sub.add_parser(
        "video",
        help="ingest videos into a gallery of tracklets (detect, track, cut, embed)",
        description="Decode each video, detect people (--detections MOT file per video, --detector hog, a catalogue "
        "detector such as yolox_nano, an ONNX file or a plug-in's, with --detector-option; by default "
        "the built-in motion detector), track them (--tracker) on reidkit features, keep the best "
        "K crops of each tracklet and add the tracklets (camera, frames, times, boxes, thumbnails) "
        "to the gallery DB (created when missing). Work is committed every --chunk frames; a killed "
        "run, re-run with the same arguments, resumes at the last committed chunk.",
    )
    p.add_argument(
        "videos",
        nargs="+",
        metavar="VIDEO",
        help="video files (anything OpenCV decodes), or live stream URLs (rtsp://, http(s)://, udp://: "
        "watched until SIGTERM / Ctrl-C as `reidkit watch` does)",
    )
    add_db_arguments(
        p,
        db_help="gallery (created when missing): a folder, or milvus:<uri> (milvus:./g.db runs Milvus Lite "
        "in-process; milvus:http://host:19530 a Milvus server, 2.5 or newer)",
    )
    add_files_argument(p, "the first video's folder")
    params(
        p.add_argument(
            "--camera",
            action="append",
            default=None,
            help="camera name, once per video in order (default: the video file's name)",
        ),
        "cameras",
    )
    p.add_argument(
        "--detections",
        action="append",
        default=None,
        help="MOTChallenge detections file (frame,id,x,y,w,h,conf,...), once per video in order",
    )
    p.add_argument(
        "--detector",
        default=None,
        metavar="NAME|FILE",
        help="person detector: 'motion' (background subtraction against the video's own median "
        "background: fixed cameras; the default), 'hog' (OpenCV's HOG people detector: moving "
        "cameras), a detector of the weights catalogue (e.g. yolox_nano: fetched and verified as "
        "--weights names are; `reidkit weights list`), an ONNX file (YOLOX, YOLOv5/v8, RT-DETR "
        "exports; the family is read from its outputs) or a detector a --plugin file registers",
    )
    params(
        p.add_argument(
            "--detector-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="an option of the detector (repeatable), e.g. conf=0.4, family=yolov8 (onnx), block=300 "
            "(motion), detect_scale=0.5 (hog); an unknown key is refused naming the nearest one",
        ),
        "detector_options",
    )
    p.add_argument(
        "--conf", type=probability("--conf"), default=0.25, help="detector confidence threshold (ONNX; default 0.25)"
    )
    p.add_argument(
        "--detector-size",
        default=None,
        help="ONNX detector input HxW, for models without a fixed input shape (e.g. 640x640)",
    )
    int_option(p, "--person-class", 100_000, 0, help="ONNX detector class index of 'person' (default 0, COCO)")
    p.add_argument(
        "--weights",
        default=None,
        help="ReID model (checkpoint or .onnx) for a new gallery (default: ImageNet EfficientNet-Lite0); "
        "an existing gallery uses its own model",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: auto)")
    int_option(p, "--every", 1_000_000, 1, help="read every N-th frame, skip the others (default 1)")
    int_option(
        p,
        "--detect-every",
        1000,
        1,
        metavar="N",
        help="detect and track on every N-th read frame; boxes between two detections of a track are "
        "interpolated (default 1; 2 with HOG cost 15 of 18 tracklets on the generated scene: "
        "benchmarks/results/bench_video.md)",
    )
    p.add_argument(
        "--detect-scale",
        type=bounded_float("--detect-scale", 0.05, 1.0),
        default=0.75,
        help="--detector hog: run it on the frame scaled by this factor (default 0.75)",
    )
    p.add_argument(
        "--engine",
        choices=["auto", "torch", "onnx", "int8"],
        default="auto",
        help="how the embedder runs: auto (ONNX Runtime on a CPU, int8-quantised where that is measured "
        "at least 1.25x faster for this model here, timed once and cached; else float; PyTorch "
        "without onnxruntime), torch, onnx (float), int8 (default auto; "
        "benchmarks/results/bench_video.md)",
    )
    p.add_argument(
        "--appearance",
        choices=["needed", "all"],
        default="needed",
        help="embed every crop (all) or only where tracking or the tracklet needs it: new and "
        "ambiguous detections, the tracklets' feature samples (needed, default)",
    )
    int_option(
        p,
        "--embed-budget",
        10000,
        0,
        metavar="N",
        help="--appearance needed: embed at most N ambiguous detections per frame (half of N the most ambiguous, "
        "half refreshing the looks of the tracks seen longest ago); the others are matched by motion, so crowds "
        "keep the camera's pace (default 0: no limit, the best tracking: with 8, a jittering detector's crowd of "
        "scene B lost 20 HOTA points; scene C keeps real time either way; benchmarks/results/bench_trackers.md)",
    )
    int_option(p, "--streams", 64, 4, help="videos processed at once in this process, sharing one embedder (default 4)")
    int_option(
        p,
        "--workers",
        256,
        None,
        help="run the videos on a local Dask cluster of N worker processes (needs dask[distributed])",
    )
    p.add_argument(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="run the videos on a running Dask cluster (e.g. tcp://scheduler:8786)",
    )
    int_option(p, "--chunk", 1_000_000, 50, help="processed frames per commit (default 50)")
    int_option(p, "--k", 1000, 4, help="best crops kept per tracklet (default 4)")
    int_option(p, "--min-len", 1_000_000, 3, help="shortest tracklet kept, in processed frames (default 3)")
    p.add_argument("--flip", action="store_true", help="flip TTA for crop features")
    params(
        p.add_argument(
            "--start-time",
            type=finite_float("--start-time"),
            action="append",
            default=None,
            help="clock time (s) of each video's first frame, once per video (default 0)",
        ),
        "start_times",
    )
    p.add_argument(
        "--tracker",
        default=None,
        metavar="NAME",
        help="within-video tracker, a registered name (built in: bytesort, deep_sort; a --plugin file "
        "may register its own; default: bytesort)",
    )
    p.add_argument(
        "--tracker-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the tracker (repeatable), e.g. max_age=30; an unknown key is refused naming the valid ones",
    )
    int_option(
        p,
        "--max-age",
        100_000,
        None,
        help="the tracker's max_age option: frames a lost track is kept (default: the tracker's)",
    )
    int_option(
        p,
        "--n-init",
        1000,
        None,
        help="the tracker's n_init option: detections to confirm a track (default: the tracker's)",
    )
    p.add_argument(
        "--max-cosine-distance",
        type=_cosine_distance,
        default=None,
        help="the tracker's max_cosine_distance option: appearance gate, cosine distance (default: the "
        "tracker's; deep_sort 0.1: 0.3 lets its tracks jump between people on the synthetic scene)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run_video)
    add_trust_argument(p)

    t = sub.add_parser(
        "tracklets",
        help="search tracklets across cameras, list a tracklet's appearances",
        description="Tracklets are what `reidkit video` stores: one entry per tracked person per "
        "camera (best-K crops, frame span, boxes, thumbnails). `search` ranks the "
        "tracklets of other cameras for a query crop, box or tracklet; `show` lists one "
        "tracklet's appearances in time order; `export` writes them as MOTChallenge "
        "files (per-camera tracklet ids) for `reidkit eval-tracks`.",
    )
    tsub = t.add_subparsers(dest="tracklets_command", metavar="<action>")
    s = tsub.add_parser("search", help="tracklets of other cameras matching a query image, box or tracklet")
    s.add_argument("--db", required=True, help="gallery: a folder, or milvus:<uri>")
    s.add_argument("--collection", default=None, help="Milvus collection of a milvus: gallery (default: reidkit)")
    s.add_argument("--image", default=None, help="query image (a crop, or a frame with --box)")
    s.add_argument("--box", default=None, help="x1,y1,x2,y2 of the person in --image")
    s.add_argument(
        "--tracklet", default=None, help="query tracklet: gallery id or tracklet key (its camera is excluded)"
    )
    s.add_argument("--exclude-camera", default=None, help="drop tracklets of this camera")
    s.add_argument(
        "--topk",
        dest="k",
        metavar="N",
        type=bounded_int("--topk", 1, 10_000),
        default=10,
        help="results (default %(default)s)",
    )
    s.add_argument(
        "-k",
        "--k",
        dest="k",
        action=DeprecatedAlias,
        new="--topk",
        type=bounded_int("--k", 1, 10_000),
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )  # the old spelling (issue 31)
    s.add_argument("--weights", default=None, help="query model (default: the gallery's)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_run_search)
    add_trust_argument(s)
    sh = tsub.add_parser("show", help="a tracklet's appearances in time order")
    sh.add_argument("tracklet", help="gallery id or tracklet key")
    sh.add_argument("--db", required=True, help="gallery: a folder, or milvus:<uri>")
    sh.add_argument("--collection", default=None, help="Milvus collection of a milvus: gallery (default: reidkit)")
    sh.add_argument("--json", action="store_true", help="print JSON")
    sh.set_defaults(func=_run_show)
    ex = tsub.add_parser(
        "export",
        help="MOTChallenge files per camera with per-camera tracklet ids (for eval-tracks)",
        description="Write OUT/<camera>.txt per camera (frame,id,x,y,w,h,conf,-1,-1,-1) from the "
        "stored tracklets' boxes, each tracklet's gallery id as its track id: what the "
        "tracker made, before identities, scored by `reidkit eval-tracks`.",
    )
    ex.add_argument("--db", required=True, help="gallery: a folder, or milvus:<uri>")
    ex.add_argument("--collection", default=None, help="Milvus collection of a milvus: gallery (default: reidkit)")
    ex.add_argument("--out", required=True, help="output folder: <camera>.txt per camera")
    ex.add_argument(
        "--camera",
        action="append",
        default=None,
        help="also write an (empty) file for this camera when it has no tracklets; repeatable",
    )
    ex.set_defaults(func=_run_tracklets_export)
    t.set_defaults(func=lambda args: (t.print_help(), 0)[1])

    sc = sub.add_parser(
        "scene",
        help="write a synthetic multi-camera scene (videos + MOTChallenge ground truth)",
        description="Generate people walking through CAMS camera views (a corridor of cameras with "
        "transit times by default): one video per camera, MOTChallenge ground truth, "
        "TrackEval's layout under OUT/GT and the camera links (OUT/links.yaml). An "
        "existing scene is replaced only with --regenerate.",
    )
    sc.add_argument("out", metavar="OUT", help="output folder")
    sc.add_argument(
        "--regenerate",
        action="store_true",
        help="replace the scene already in OUT (its cam*/ folders, GT/, links.yaml, scene.json)",
    )
    int_option(sc, "--cams", 64, 3, help="cameras (default 3)")
    int_option(sc, "--ids", 10_000, 6, help="identities (default 6)")
    int_option(sc, "--frames", 1_000_000, 200, help="frames per camera (default 200)")
    sc.add_argument("--size", default="240x320", help="frame size HxW (default 240x320)")
    sc.add_argument(
        "--fps", type=bounded_float("--fps", 0.0, 1000.0), default=10.0, help="frames per second (default 10)"
    )
    sc.add_argument(
        "--speed", type=bounded_float("--speed", 0.0, 100.0), default=0.5, help="walking speed factor (default 0.5)"
    )
    sc.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sc.add_argument("--domain", choices=["A", "B"], default="A", help="camera-style family (default A)")
    sc.add_argument(
        "--topology",
        choices=["chain", "free"],
        default="chain",
        help="chain: cameras along a corridor with transit times, links.yaml written beside (default); "
        "free: people visit cameras in any order",
    )
    sc.add_argument(
        "--transit", default="2,5", help="chain: MIN,MAX seconds between neighbouring cameras (default 2,5)"
    )
    sc.set_defaults(func=_run_scene)


def _run_video(args: argparse.Namespace) -> int:
    from reidkit.utils.validate import parse_hw
    from reidkit.video.ingest import IngestOptions, ingest
    from reidkit.video.live import is_stream

    streams = [v for v in args.videos if is_stream(v)]
    if streams:  # live cameras: `reidkit watch` does the work (reidkit.video.watch)
        if len(streams) != len(args.videos):
            raise ReIDError(
                f"give video files or stream URLs, not both ({streams[0]} is a stream); "
                f"`reidkit watch` plays files at their own rate beside streams"
            )
        from reidkit.commands.watch import run_streams

        return run_streams(args)
    size = None
    if args.detector_size is not None:
        size = parse_hw(args.detector_size, "--detector-size", lo=32, hi=4096)  # YOLO inputs: 320..1280
    options = IngestOptions(
        cameras=args.camera,
        detections=args.detections,
        start_times=args.start_time,
        detector=args.detector,
        detector_options=_key_values(args.detector_option, "--detector-option", "conf=0.4"),
        conf=args.conf,
        detector_size=size,
        person_class=args.person_class,
        detect_scale=args.detect_scale,
        weights=args.weights,
        device=args.device,
        flip=args.flip,
        engine="auto-int8" if args.engine == "auto" else args.engine,
        every=args.every,
        chunk=args.chunk,
        k=args.k,
        min_len=args.min_len,
        detect_every=args.detect_every,
        appearance=args.appearance,
        embed_budget=args.embed_budget if args.appearance == "needed" else 0,
        tracker=args.tracker,
        tracker_options=_tracker_options(args.tracker_option),
        max_age=args.max_age,
        n_init=args.n_init,
        max_cosine_distance=args.max_cosine_distance,
        streams=args.streams,
        collection=args.collection,
        files=args.files,
    )
    options.settings()  # a bad tracker or option, a tracker's missing extra: refused before any gallery or model
    check_files_option(args.db, args.files)
    if args.workers is not None or args.cluster is not None:
        from reidkit.video.cluster import ingest_on_cluster

        if args.collection is not None:
            # the workers open the gallery by its --db alone (reidkit.video.cluster.run_segment)
            raise ReIDError(
                "--collection: not with --workers/--cluster (the workers write to the default "
                "collection); run without them"
            )
        _record_files_for_cluster(args)
        rep = ingest_on_cluster(
            args.db, args.videos, workers=args.workers, address=args.cluster, options=replace(options, files=None)
        )
    else:
        rep = ingest(args.db, args.videos, options)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        for v in rep["videos"]:
            state = "skipped (already ingested)" if v["skipped"] else f"{v['tracklets']} tracklets"
            if v.get("truncated"):
                got = (
                    f"{v['frames_decoded']} of {v['frames_announced']} frames" if v.get("frames_announced") else "part"
                )
                state += f"; warning: truncated or corrupt file, only {got} could be decoded"
            print(f"{_shown(v['camera'])}: {v['video']}: {state}")
        used = f" (embedder: {rep['engine']})" if rep.get("engine") else ""
        print(f"gallery {rep['db']}: {rep['gallery_tracklets']} tracklets{used}")
    return 0


def _tracker_options(items: list[str]) -> dict:
    """--tracker-option KEY=VALUE strings as a mapping (values read as YAML scalars, as config overrides)."""
    return _key_values(items, "--tracker-option", "max_age=30")


def _key_values(items: list[str], flag: str, example: str) -> dict:
    """A part's KEY=VALUE option strings as a mapping (values read as YAML scalars, as config overrides)."""
    import yaml

    out = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            raise ReIDError(f"{flag}: {item!r} must look like KEY=VALUE (e.g. {example})")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def _record_files_for_cluster(args: argparse.Namespace) -> None:
    """A gallery whose side files live outside it records their folder before Dask workers, which open it by --db,
    write thumbnails."""
    from reidkit.retrieval.backends import FilesOutsideStore, resolve
    from reidkit.retrieval.gallery import Gallery

    default = resolve(args.db).default_files(args.videos[0])
    if default is None:  # the backend keeps its files inside the gallery
        return
    if Gallery.exists(args.db):
        store = Gallery.open(args.db).store
        assert isinstance(store, FilesOutsideStore)  # its backend said so (Capabilities.files)
        store.use_files(args.files, default=default)
        return
    from reidkit.video.ingest import open_gallery

    # a new gallery: made here with its model (ingest_on_cluster then opens it)
    engine = "auto-int8" if args.engine == "auto" else args.engine
    open_gallery(args.db, args.weights, args.device, 64, args.flip, engine, files=args.files, default_files=default)


def _shown(text: object) -> str:
    """A name as a terminal line shows it: control characters (a camera named "cam\\x01", a newline) escaped."""
    text = str(text)
    return text if text.isprintable() else repr(text)[1:-1]


def _with_paths(h: dict, thumbs: Path) -> dict:
    """The hit with ``thumb_paths``: its thumbnails as absolute paths (``thumbs`` keeps the names the pages use)."""
    return {**h, "thumb_paths": [os.path.abspath(thumbs / name) for name in h.get("thumbs", [])]}


def _fmt_hit(h: dict, thumbs: Path) -> str:
    """One tracklet line; its first thumbnails as absolute paths a user can open (under ``thumbs``)."""
    score = f"{h['score']:.4f}  " if "score" in h else ""
    paths = ",".join(os.path.abspath(thumbs / name) for name in h["thumbs"][:2])
    return (
        f"{score}{_shown(h['tracklet'])}  camera={_shown(h['camera'])}  "
        f"frames {h['frame_start']}-{h['frame_end']}  t={h['t_start']:.1f}-{h['t_end']:.1f}s  thumbs={paths}"
    )


def _run_search(args: argparse.Namespace) -> int:
    from reidkit.retrieval.gallery import Gallery
    from reidkit.video.pipeline import thumbs_dir
    from reidkit.video.search import parse_box, search_tracklets

    if args.box is not None and args.image is None:
        raise ReIDError("--box: needs --image")
    g = Gallery.open(args.db, weights=args.weights, collection=args.collection)
    res = search_tracklets(
        g,
        image=args.image,
        box=parse_box(args.box),
        tracklet=args.tracklet,
        k=args.k,
        exclude_camera=args.exclude_camera,
    )
    if args.json:
        res = {**res, "results": [_with_paths(h, thumbs_dir(g)) for h in res["results"]]}
        print(json.dumps(res, indent=2))
    else:
        for h in res["results"]:
            print(_fmt_hit(h, thumbs_dir(g)))
        if not res["results"]:
            print("no tracklets found", file=sys.stderr)
    return 0


def _run_show(args: argparse.Namespace) -> int:
    from reidkit.retrieval.gallery import Gallery
    from reidkit.video.pipeline import thumbs_dir
    from reidkit.video.search import appearances

    g = Gallery.open(args.db, collection=args.collection)
    res = appearances(g, args.tracklet)
    if args.json:
        print(json.dumps({**res, "tracklet": _with_paths(res["tracklet"], thumbs_dir(g))}, indent=2))
    else:
        print(_fmt_hit(res["tracklet"], thumbs_dir(g)))
        for a in res["appearances"]:
            t = "" if a["t"] is None else f"  t={a['t']:.2f}s"
            print(f"  frame {a['frame']}{t}  box {','.join(f'{v:.0f}' for v in a['box'])}")
    return 0


def _run_tracklets_export(args: argparse.Namespace) -> int:
    from reidkit.retrieval.gallery import Gallery
    from reidkit.video.identities import export_tracklets

    files = export_tracklets(Gallery.open(args.db, collection=args.collection), args.out, cameras=args.camera)
    for cam, path in files.items():
        print(f"{_shown(cam)}: {path}")
    return 0


def _run_scene(args: argparse.Namespace) -> int:
    from reidkit.commands.synth import parse_size
    from reidkit.data.scene import generate_scene

    _clear_scene(Path(args.out), args.regenerate)
    rep = generate_scene(
        args.out,
        cams=args.cams,
        ids=args.ids,
        frames=args.frames,
        size=parse_size(args.size),
        fps=args.fps,
        seed=args.seed,
        domain=args.domain,
        speed=args.speed,
        topology=args.topology,
        transit=_pair(args.transit, "--transit"),
    )
    for cam, v, g in zip(rep.cameras, rep.videos, rep.gt):
        print(f"{cam}: {v}  ground truth {g}")
    print(f"{rep.boxes} ground-truth boxes, {rep.ids} identities, {rep.frames} frames at {rep.fps:g} fps")
    print(f"TrackEval ground truth: {rep.root / 'GT'}" + (f"; camera links: {rep.links}" if rep.links else ""))
    if rep.query is not None:
        print(f"a query crop (for tracklets search --image): {rep.query}")
    return 0


def _clear_scene(out: Path, regenerate: bool) -> None:
    """Refuse to write over a folder that has files (a scene left there would mix with the new one);
    with --regenerate remove exactly what a scene consists of, so no old camera survives."""
    import shutil

    if not out.is_dir() or not any(out.iterdir()):
        return
    if not regenerate:
        raise ReIDError(f"scene: {out} is not empty; give a new folder, or --regenerate to replace the scene in it")
    if not (out / "scene.json").is_file():
        raise ReIDError(f"scene: {out} holds no scene (no scene.json); --regenerate replaces only a scene")
    for item in out.iterdir():
        if item.is_dir() and (item.name.startswith("cam") or item.name == "GT"):
            shutil.rmtree(item)
        elif item.name in ("links.yaml", "scene.json", "query.jpg"):
            item.unlink()


def _pair(text: str, name: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ReIDError(f"{name}: expected MIN,MAX numbers, got {text!r}") from None
    return a, b

"""`reidkit watch CAMERAS.yaml | URL... --db DB`: live cameras into a gallery until stopped."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from typing import TYPE_CHECKING, Any

from reidkit.commands import add_trust_argument
from reidkit.commands._args import bounded_float, int_option
from reidkit.errors import ReIDError

if TYPE_CHECKING:
    from reidkit.video.options import WatchOptions


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `watch` parser."""
    p = sub.add_parser(
        "watch",
        help="live cameras (rtsp/http/udp streams, or files at their own rate) into a gallery, until stopped",
        description="Read each camera's stream, detect, track and embed people as `reidkit video` does, and commit "
        "the tracklets that ended every --commit-every seconds (with the exact tracker state); global "
        "identities are updated every --identities-every seconds. A camera that drops is reconnected "
        "with backoff while the others go on; when the machine is behind, the oldest frames are "
        "skipped (counted), never queued without bound. SIGTERM or Ctrl-C commits the open tracklets "
        "and exits 0; after a SIGKILL, the next run commits what the killed one had committed as open "
        "and goes on as a new session (only the seconds after the last commit are lost).",
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="CAMERAS.yaml|URL",
        help="a cameras file (cameras: [{name, url, fps?, detections?}], links: [...] as for "
        "`reidkit identities --links`), or stream URLs / video files",
    )
    p.add_argument("--db", required=True, help="gallery (created when missing): a folder, or a backend URI")
    p.add_argument("--collection", default=None, help="collection of a gallery backend that has them (Milvus)")
    p.add_argument(
        "--camera", action="append", default=None, help="camera name, once per URL in order (default: cam1, cam2, ...)"
    )
    p.add_argument("--links", default=None, help="camera links YAML for the identities (a cameras file may hold them)")
    p.add_argument(
        "--detector",
        default=None,
        metavar="NAME",
        help="person detector: motion (the default; learns each stream's background as it runs), hog, a "
        "catalogue detector or an ONNX file (as `reidkit video`), or mot (each camera's detections file)",
    )
    p.add_argument(
        "--detector-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the detector (repeatable)",
    )
    p.add_argument(
        "--weights", default=None, help="ReID model for a new gallery (default: ImageNet EfficientNet-Lite0)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: auto)")
    p.add_argument(
        "--engine",
        choices=["auto", "torch", "onnx", "int8"],
        default="auto",
        help="how the embedder runs (as `reidkit video`; default auto)",
    )
    p.add_argument(
        "--commit-every",
        type=bounded_float("--commit-every", 0.1, 86400.0),
        default=10.0,
        metavar="SECONDS",
        help="seconds between commits of each camera (default 10)",
    )
    p.add_argument(
        "--identities-every",
        type=bounded_float("--identities-every", 0.1, 86400.0),
        default=60.0,
        metavar="SECONDS",
        help="seconds between updates of the global identities (default 60)",
    )
    p.add_argument(
        "--retain",
        default=None,
        metavar="DURATION",
        help="delete tracklets that ended longer ago than this (e.g. 7d, 12h, 30m; default: keep all)",
    )
    int_option(
        p,
        "--buffer",
        100_000,
        4,
        metavar="FRAMES",
        help="frames of each camera waiting for processing; when full the oldest is skipped (default 4)",
    )
    p.add_argument(
        "--duration",
        default=None,
        metavar="DURATION",
        help="stop after this long (e.g. 30m; default: run until SIGTERM / Ctrl-C)",
    )
    int_option(
        p,
        "--status-port",
        65535,
        None,
        metavar="PORT",
        help="serve /metrics (Prometheus text) and /health (JSON) on 127.0.0.1:PORT while running",
    )
    p.add_argument("--tracker", default=None, metavar="NAME", help="within-camera tracker (default: bytesort)")
    p.add_argument(
        "--tracker-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the tracker (repeatable)",
    )
    p.add_argument(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="run the cameras on the workers of this Dask scheduler (tcp://host:8786), one camera to one worker "
        "thread at a time, moved to another worker when its worker dies; the tasks commit to a gallery that "
        "admits many writers (a Milvus server), else through this process",
    )
    int_option(
        p,
        "--workers",
        1024,
        None,
        metavar="N",
        help="run the cameras on a local Dask cluster of N worker processes on 127.0.0.1 (as --cluster)",
    )
    p.add_argument("--json", action="store_true", help="print the final status as JSON")
    p.set_defaults(func=_run_watch)
    add_trust_argument(p)


def _cameras(args: argparse.Namespace) -> tuple[list, object]:
    from reidkit.video.cameras import Camera, read_cameras

    if len(args.sources) == 1 and args.sources[0].lower().endswith((".yaml", ".yml")):
        if args.camera:
            raise ReIDError("--camera: the cameras file names its cameras; give --camera only with URLs")
        return read_cameras(args.sources[0])
    names = args.camera or [f"cam{i + 1}" for i in range(len(args.sources))]
    if len(names) != len(args.sources):
        raise ReIDError(f"--camera: give one name per URL ({len(args.sources)} URLs, {len(names)} names)")
    return [Camera(n, u) for n, u in zip(names, args.sources)], None


def _run_watch(args: argparse.Namespace) -> int:
    from reidkit.commands.video import _key_values, _tracker_options
    from reidkit.video.cameras import parse_duration
    from reidkit.video.options import WatchOptions
    from reidkit.video.pipeline import Settings, tracker_fields

    cams, links = _cameras(args)
    duration = None if args.duration is None else parse_duration(args.duration, "--duration")
    options = WatchOptions(
        links=args.links or links,
        weights=args.weights,
        device=args.device,
        engine="auto-int8" if args.engine == "auto" else args.engine,
        collection=args.collection,
        detector=args.detector,
        detector_options=_key_values(args.detector_option, "--detector-option", "conf=0.4"),
        settings=Settings(
            appearance="needed",
            embed_budget=8,
            **tracker_fields(tracker=args.tracker, options=_tracker_options(args.tracker_option)),
        ),
        commit_every=args.commit_every,
        identities_every=args.identities_every,
        retain=None if args.retain is None else parse_duration(args.retain, "--retain"),
        buffer=args.buffer,
    )
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _watch_until_stopped(args, cams, options, duration, stop)
    finally:  # a caller's own handlers come back (cli_main may run inside a longer-lived process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch_until_stopped(
    args: argparse.Namespace, cams: list, options: WatchOptions, duration: float | None, stop: threading.Event
) -> int:
    from reidkit.video.watch import watch

    run: Any = watch
    if getattr(args, "cluster", None) is not None or getattr(args, "workers", None) is not None:
        from functools import partial

        from reidkit.utils.dask import check_cluster_args
        from reidkit.video.watch_cluster import watch_on_cluster

        check_cluster_args(args.workers, args.cluster)
        run = partial(watch_on_cluster, address=args.cluster, workers=args.workers)

    from reidkit.utils.progress import to_stderr as say

    from reidkit.video.live import shown_url

    names = ", ".join(f"{c.name} ({shown_url(c.url)})" for c in cams)
    say(f"watching {len(cams)} camera(s): {names}; SIGTERM or Ctrl-C stops after committing")
    status = run(args.db, cams, options, duration=duration, status_port=args.status_port, progress=say, stop=stop)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for cam, c in status["cameras"].items():
            print(
                f"{cam}: {c['received']} frames received, {c['processed']} processed, {c['skipped']} skipped, "
                f"{c['reconnects']} reconnects, {c['tracklets']} tracklets committed"
            )
        print(f"gallery {args.db}: {status['identities']} identities")
    return 0


def run_streams(args: argparse.Namespace) -> int:
    """`reidkit video URL...`: stream URLs are watched (as `reidkit watch URL...` with its defaults for what
    `video` does not set) until SIGTERM / Ctrl-C; files and URLs are not mixed."""
    watch_args = argparse.Namespace(
        sources=list(args.videos),
        db=args.db,
        collection=args.collection,
        camera=args.camera,
        links=None,
        detector=args.detector,
        detector_option=args.detector_option,
        weights=args.weights,
        device=args.device,
        engine=args.engine,
        commit_every=10.0,
        identities_every=60.0,
        retain=None,
        buffer=4,
        duration=None,
        status_port=None,
        cluster=None,
        workers=None,
        tracker=args.tracker,
        tracker_option=args.tracker_option,
        json=args.json,
    )
    return _run_watch(watch_args)

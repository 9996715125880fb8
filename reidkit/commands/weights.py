"""`reidkit weights list | get NAME | path NAME`: published ReID weights and person detectors by name
(reidkit.models.zoo)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `weights` verb."""
    w = sub.add_parser(
        "weights",
        help="published ReID weights and detectors by name: list, download, locate",
        description="A catalogue of published person ReID checkpoints reidkit reads (torchreid OSNet, "
        "fast-reid BoT/AGW/SBS, TransReID, SOLIDER) and person detectors (YOLOX ONNX). "
        "Any --weights accepts a ReID name from it, --detector a detector name; files "
        "are cached in $REIDKIT_HOME/weights (default ~/.cache/reidkit/weights) "
        "and checked against the sha256 of their first download (or the catalogue's). "
        "A local file named like a catalogue entry is used only as a path: ./NAME.",
    )
    wsub = w.add_subparsers(dest="weights_command", metavar="<list|get|path>", required=True)
    ls = wsub.add_parser(
        "list",
        help="the catalogue: name, kind, training set, published mAP / rank-1, input size, "
        "format, licence (copyleft ones flagged)",
    )
    ls.add_argument("--json", action="store_true", help="print JSON (every field)")
    ls.set_defaults(func=_list)
    get = wsub.add_parser("get", help="download (or verify the cached copy of) NAME and print its path")
    get.add_argument("name")
    get.add_argument(
        "--sha256",
        default=None,
        help="pin the file's expected sha256 (also how a file put in the cache by hand is accepted)",
    )
    get.set_defaults(func=_get)
    path = wsub.add_parser("path", help="print where NAME is (or will be) cached; no network")
    path.add_argument("name")
    path.set_defaults(func=_path)


def _list(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from reidkit.models.zoo import catalogue, is_cached, weights_home

    cat = catalogue()
    if args.json:
        rows = []
        for e in cat.values():
            row = dataclasses.asdict(e)
            row["cached"] = is_cached(e)
            rows.append(row)
        print(json.dumps(rows, indent=1))
        return 0
    print(
        f"{'name':<40} {'kind':<8} {'train':<12} {'mAP':>5} {'R1':>5}  {'size':<8} {'fmt':<10} {'cached':<6} "
        "licence / notes"
    )
    for e in cat.values():
        pub = e.published.get(e.train, {})
        m = f"{pub['mAP']:.1f}" if "mAP" in pub else "-"
        r = f"{pub['rank1']:.1f}" if "rank1" in pub else "-"
        cached = "yes" if is_cached(e) else ""
        note = e.licence + (f"; never evaluate on {', '.join(e.invalid_eval)}" if e.invalid_eval else "")
        if _copyleft(e.licence):
            note = f"{note} [copyleft: using it may oblige you to publish your code]"
        fmt = f"{e.fmt}:{e.arch}" if e.kind == "detector" else e.fmt
        train = e.train.split(" ")[0]
        print(
            f"{e.name:<40} {e.kind:<8} {train:<12} {m:>5} {r:>5}  {e.input_size[0]}x{e.input_size[1]:<4} "
            f"{fmt:<10} {cached:<6} {note}"
        )
    print(f"cache: {weights_home()}")
    return 0


def _copyleft(licence: str) -> bool:
    """True for a GPL-family licence (AGPL-3.0: Ultralytics' YOLO weights), flagged in the listing."""
    words = licence.upper().replace("-", " ").split()
    return any(w in ("AGPL", "GPL", "LGPL") or w.startswith(("AGPL", "GPL")) for w in words)


def _get(args: argparse.Namespace) -> int:
    from reidkit.models.zoo import resolve_weights

    print(resolve_weights(args.name, sha256=args.sha256))
    return 0


def _path(args: argparse.Namespace) -> int:
    from reidkit.models.zoo import weights_path

    print(weights_path(args.name))
    return 0

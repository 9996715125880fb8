"""`reidkit identities --db DB`: global identities of a tracklet gallery (constrained clustering);
`reidkit identities export --db DB --out DIR`: MOTChallenge files per camera with global ids;
`reidkit eval-tracks --gt GT --pred PRED`: HOTA / IDF1 / MOTA / IDsw with TrackEval, plus the
multi-camera IDF1 over global ids."""

from __future__ import annotations

import argparse

import json

from reidkit.commands import params
from reidkit.commands._args import nonneg_float, probability
from reidkit.errors import ReIDError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `identities` and `eval-tracks` parsers."""
    from reidkit.video.identities import COLOUR, SEED_MIN, THRESHOLD

    p = sub.add_parser(
        "identities",
        help="cluster a gallery's tracklets into global identities across cameras",
        description="Cluster every tracklet of the gallery into global identities: tracklet features, "
        "k-reciprocal re-ranking, constraints (two overlapping tracklets of one camera are never one "
        "person; --links: allowed transit-time windows per camera pair; --max-gap), agglomerative "
        "clustering with a distance threshold; tracklets shorter than --seed-min join an identity "
        "afterwards. A tracklet is compared by its model feature and its colour descriptor. Identities already assigned keep their ids; new "
        "tracklets join them or start new ones. The result is stored in the gallery.",
    )
    p.add_argument("--db", default=None, help="gallery folder (from `reidkit video`; required)")
    p.add_argument(
        "--threshold",
        type=nonneg_float("--threshold"),
        default=None,
        help=f"largest linkage distance merged, 2 - 2 cos (default {THRESHOLD}, or the stored run's)",
    )
    p.add_argument(
        "--links", default=None, help="camera-link windows YAML ({links: [{cameras: [A, B], min: s, max: s}]})"
    )
    p.add_argument(
        "--max-gap",
        type=nonneg_float("--max-gap"),
        default=None,
        help="seconds: pairs of cameras not in --links never join across a longer gap (default: no limit)",
    )
    p.add_argument(
        "--linkage", choices=["average", "complete"], default=None, help="default: the stored run's, else complete"
    )
    rr = p.add_mutually_exclusive_group()
    rr.add_argument(
        "--rerank",
        dest="rerank",
        action="store_const",
        const=True,
        default=None,
        help="k-reciprocal re-ranked distance (then --threshold is on that scale, 0..1; default: the stored "
        "run's, else off)",
    )
    rr.add_argument("--no-rerank", dest="rerank", action="store_const", const=False, help="plain distance (default)")
    p.add_argument(
        "--colour",
        type=probability("--colour"),
        default=None,
        metavar="SHARE",
        help="the colour descriptor's share (0..1) of the distance of two tracklets (0: the model's feature "
        f"alone; default: the stored run's, else {COLOUR}; galleries ingested without descriptors: 0)",
    )
    p.add_argument(
        "--seed-min",
        type=nonneg_float("--seed-min"),
        default=None,
        metavar="SECONDS",
        help="new tracklets shorter than this do not start identities: they join the nearest identity they "
        f"can belong to after the clustering (0: off; default: the stored run's, else {SEED_MIN:g})",
    )
    p.add_argument("--rebuild", action="store_true", help="forget the stored identities and number everything anew")
    p.add_argument(
        "--stitch-gap",
        type=nonneg_float("--stitch-gap"),
        default=None,
        metavar="SECONDS",
        help="join one camera's fragments of one person first: the longest gap from one tracklet's end "
        "to the next one's start, with motion and appearance limits (reidkit.video.stitch); "
        "0: no stitching (default: the stored run's, else none)",
    )
    p.add_argument(
        "--camera-debias",
        type=probability("--camera-debias"),
        default=None,
        metavar="SHARE",
        help="the share (0..1) of each camera's mean tracklet feature taken off its tracklets' features before "
        "clustering, so a camera's lighting and background do not make its people look alike (0: off; "
        "default: the stored run's, else 0.5)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run_assign)
    isub = p.add_subparsers(dest="identities_command", metavar="<action>")
    e = isub.add_parser("export", help="write MOTChallenge files per camera with global identity ids")
    e.add_argument("--db", required=True, help="gallery folder with identities")
    e.add_argument("--out", required=True, help="output folder: <camera>.txt per camera")
    e.add_argument(
        "--camera",
        action="append",
        default=None,
        help="also write an (empty) file for this camera when it has no tracklets; repeatable",
    )
    e.set_defaults(func=_run_export)

    t = sub.add_parser(
        "eval-tracks",
        help="HOTA, IDF1, MOTA, ID switches per camera (TrackEval) and multi-camera IDF1",
        description="Evaluate MOTChallenge tracking results against ground truth with TrackEval: per sequence "
        "(camera), combined, and the multi-camera IDF1 over global ids (all cameras concatenated "
        "as one sequence). GT: <seq>/gt/gt.txt (+ seqinfo.ini) or TrackEval's "
        "<BENCH>-<SPLIT>/<seq>/gt/gt.txt; PRED: <seq>.txt per sequence.",
    )
    params(t.add_argument("--gt", required=True, help="ground-truth folder (e.g. a scene's OUT/GT or OUT)"), "gt_dir")
    params(t.add_argument("--pred", required=True, help="predictions folder (<seq>.txt per sequence)"), "pred_dir")
    t.add_argument("--out", default=None, help="also write the metrics as JSON here")
    t.add_argument("--json", action="store_true", help="print JSON instead of the table")
    t.set_defaults(func=_run_eval)


def _run_assign(args: argparse.Namespace) -> int:
    from reidkit.retrieval.gallery import Gallery
    from reidkit.video.identities import assign_identities

    if not args.db:
        raise ReIDError("identities: --db is required")
    g = Gallery.open(args.db)
    stitch = None if args.stitch_gap is None else ({"max_gap": args.stitch_gap} if args.stitch_gap > 0 else False)
    rep = assign_identities(
        g,
        threshold=args.threshold,
        links=args.links,
        max_gap=args.max_gap,
        linkage=args.linkage,
        rerank=args.rerank,
        rebuild=args.rebuild,
        stitch=stitch,
        camera_debias=args.camera_debias,
        colour=args.colour,
        seed_min=args.seed_min,
    )
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(
            f"{rep['tracklets']} tracklets -> {rep['identities']} identities ({rep['new_tracklets']} new "
            f"tracklets, {rep['new_identities']} new identities, {rep['multi_camera']} seen by several cameras; "
            f"{rep['stitched']} fragment joins)"
        )
        for cam, n in rep["per_camera"].items():
            print(f"  {cam}: {n} tracklets")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from reidkit.retrieval.gallery import Gallery
    from reidkit.video.identities import export_mot

    files = export_mot(Gallery.open(args.db), args.out, cameras=args.camera)
    for cam, path in files.items():
        print(f"{cam}: {path}")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from reidkit.evaluation.tracks import evaluate_tracks, format_table
    from reidkit.utils.io import write_json

    res = evaluate_tracks(args.gt, args.pred)
    if args.out:
        try:
            write_json(args.out, res)
        except OSError as exc:
            raise ReIDError(f"--out: cannot write {args.out}: {exc.strerror or exc}") from None
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0

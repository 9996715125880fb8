"""`reidkit synth OUT`: write a synthetic pedestrian set in Market-1501 format (offline data)."""

from __future__ import annotations

import argparse

from reidkit.commands._args import int_option

from reidkit.errors import ReIDError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `synth` parser."""
    p = sub.add_parser(
        "synth",
        help="generate a synthetic pedestrian dataset (Market-1501 layout)",
        description="Draw procedural pedestrians seen by several cameras and write them as "
        "OUT/Market-1501-v15.09.15/{bounding_box_train,bounding_box_test,query}. "
        "A re-run with the same parameters is skipped; a set generated with other "
        "parameters is never replaced without --regenerate.",
    )
    p.add_argument("out", metavar="OUT", help="output folder")
    int_option(p, "--ids", 1_000_000, 100, help="identities, split half train / half test (default 100)")
    int_option(p, "--images-per-id", 10_000, 16, help="images per identity (default 16)")
    p.add_argument("--cams", type=int, default=6, help="cameras, 2..9 (default 6)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--domain",
        choices=["A", "B"],
        default="A",
        help="camera-style family: A daylight outdoor, B indoor/evening (default A)",
    )
    p.add_argument("--size", default="128x64", help="image size HxW (default 128x64)")
    int_option(p, "--workers", 1024, None, help="processes (default: all CPU cores)")
    int_option(p, "--distractors", 10_000_000, None, help="pid 0 gallery images (default ~8%% of images)")
    int_option(p, "--junk", 10_000_000, None, help="pid -1 gallery images (default ~5%% of images)")
    p.add_argument(
        "--regenerate",
        "--force",
        dest="force",
        action="store_true",
        help="replace a set already in OUT (by default an identical set is reused and one "
        "generated with other parameters is an error)",
    )
    p.set_defaults(func=_run)


def parse_size(text: str) -> tuple[int, int]:
    """'128x64' -> (128, 64); raises ReIDError naming --size otherwise."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise ReIDError(f"--size: expected HEIGHTxWIDTH such as 128x64, got {text!r}") from None
    return h, w


def _run(args: argparse.Namespace) -> int:
    from reidkit.data.synthetic import generate_report

    rep = generate_report(
        args.out,
        ids=args.ids,
        images_per_id=args.images_per_id,
        cams=args.cams,
        seed=args.seed,
        domain=args.domain,
        size=parse_size(args.size),
        workers=args.workers,
        distractors=args.distractors,
        junk=args.junk,
        force=args.force,
    )
    c = rep.counts
    print(f"{rep.root}")
    print(f"  train   : {c['train_ids']:>6} ids {c['train_images']:>8} images")
    print(f"  query   : {c['test_ids']:>6} ids {c['query']:>8} images")
    print(
        f"  gallery : {c['test_ids']:>6} ids {c['gallery']:>8} images "
        f"(incl. {c['distractors']} distractors pid 0, {c['junk']} junk pid -1)"
    )
    if rep.skipped:
        print(
            f"  already generated with these parameters: skipped "
            f"(first run: {rep.marker.get('images_per_s', 0):.1f} images/s)"
        )
    else:
        print(
            f"  {c['images']} images in {rep.seconds:.1f} s = {rep.images_per_s:.1f} images/s ({rep.workers} workers)"
        )
    return 0

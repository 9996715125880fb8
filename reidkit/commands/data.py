"""`reidkit data <verb>`: look at datasets (`stats` prints the ids/images/cameras table)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `data` parser and its sub-verbs."""
    parser = sub.add_parser("data", help="inspect datasets", description="Inspect datasets.")
    verbs = parser.add_subparsers(dest="data_command", metavar="<verb>")
    parser.set_defaults(func=lambda args: _help(parser))

    stats = verbs.add_parser(
        "stats",
        help="print a dataset's split table (ids, images, cameras)",
        description="Load a dataset in its official layout and print its split table.",
    )
    stats.add_argument("name", help="dataset name (see `reidkit data list`)")
    stats.add_argument("--root", required=True, help="dataset root folder (or CSV file for csv)")
    stats.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="loader option, e.g. version=v1, split=detected, cam_regex='c(\\d+)' (repeatable)",
    )
    stats.set_defaults(func=_stats)

    listing = verbs.add_parser("list", help="list the registered datasets and their options")
    listing.set_defaults(func=_list)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _stats(args: argparse.Namespace) -> int:
    from reidkit.data.datasets import load_dataset, parse_options

    options = parse_options(args.name, args.option)
    dataset = load_dataset(args.name, args.root, **options)
    print(dataset.format_stats())
    return 0


def _list(args: argparse.Namespace) -> int:
    from reidkit.data.datasets import DATASETS, dataset_options

    for name, loader in DATASETS.items():
        doc = (loader.__doc__ or "").strip().splitlines()[0].replace("``", "") if loader.__doc__ else ""
        opts = ", ".join(f"{k}={v!r}" for k, v in dataset_options(name).items())
        print(f"{name:<11} {doc}")
        if opts:
            print(f"{'':<11}   options: {opts}")
    return 0

"""Verb `reproduce`: run a published table's rows and write reproduce.md (published beside ours)."""

from __future__ import annotations

import argparse

from reidkit.commands import params


def register(sub: argparse._SubParsersAction) -> None:
    """Add `reproduce` to the `reidkit` command."""
    p = sub.add_parser(
        "reproduce",
        help="run a paper's table (BoT, fast-reid, OSNet, HHCL, SSG) and compare with it",
        description="Train every row of TABLE (a packaged table: bot, bot_backbones, fastreid_zoo, osnet, "
        "hhcl, ssg; or a YAML file) whose dataset is found under --data-root, and write reproduce.md and "
        "reproduce.json into --out: published mAP / rank-1, ours, the difference, wall time and GPU. "
        "Finished rows are kept; an interrupted row resumes. --dry-run lists what would run, what is "
        "missing and an estimate of the GPU time.",
    )
    _options(p)
    p.add_argument("table", metavar="TABLE", help="packaged table name or a YAML path")
    # options may follow TABLE and mix with the overrides: parsed again in _reproduce
    p.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        metavar="overrides",
        help="config overrides for every row, e.g. solver.max_epochs=2",
    )
    p.set_defaults(func=_reproduce)


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="folder holding the datasets (e.g. Market-1501-v15.09.15/)")
    p.add_argument("--out", default=None, help="output folder (default ./reproduce)")
    p.add_argument(
        "--dry-run", action="store_true", default=None, help="list the plan and the GPU-time estimate; train nothing"
    )
    params(p.add_argument("--rows", nargs="+", default=None, metavar="ID", help="run only these row ids"), "only")


def _reproduce(args: argparse.Namespace) -> int:
    from reidkit.experiments.reproduce import format_markdown, format_plan, load_table, plan_table, run_table
    from reidkit.errors import ReIDError

    tail = argparse.ArgumentParser(prog="reidkit reproduce", add_help=False)
    _options(tail)
    later, overrides = tail.parse_known_args(list(args.rest or []))
    for key in ("data_root", "out", "dry_run", "rows"):
        if getattr(later, key) is not None:
            setattr(args, key, getattr(later, key))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ReIDError(f"reproduce: unexpected argument(s) {' '.join(bad)}; overrides are key=value")
    if not args.data_root:
        raise ReIDError("reproduce: --data-root DIR is required (the folder holding the datasets)")
    args.out = args.out or "reproduce"
    rows = [r for r in (args.rows or []) if "=" not in r]
    extra = [r for r in (args.rows or []) if "=" in r] + overrides
    table = load_table(args.table)
    if args.dry_run:
        print(format_plan(table, plan_table(table, args.data_root, extra, args.out)))
        return 0
    from reidkit.engine.handlers import console_logging

    console_logging(show_iterations=False)
    plan = run_table(table, args.data_root, args.out, extra, only=rows or None)
    print(format_markdown(table, plan))
    print(f"written {args.out}/reproduce.md")
    return 1 if any(e["status"] == "error" for e in plan) else 0

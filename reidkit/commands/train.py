"""Verbs `train`, `test`, `ablate` and `demo`."""

from __future__ import annotations

import argparse
import re

from reidkit.commands import add_from_argument, add_recipe_verb, add_trust_argument
from typing import Any

OVERRIDE_HELP = "dotted config overrides, e.g. model.backbone=resnet50_ibn_a solver.base_lr=3.5e-4"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training verbs to the `reidkit` command."""
    add_recipe_verb(
        sub,
        "train",
        _train,
        "recipe file or packaged recipe name (e.g. bot_r50)",
        OVERRIDE_HELP,
        help="train a model from a YAML recipe",
        description="Train a ReID model. Writes config.yaml, train.log, tensorboard "
        "events, last.pt, best.pt, model.pt and metrics.json into output_dir.",
    )

    p = sub.add_parser(
        "test",
        help="evaluate saved weights on the config's validation sets",
        description="Evaluate a checkpoint on the validation sets of a recipe (data.val, else "
        "the query/gallery of every training dataset) with the recipe's test.* settings; "
        "writes metrics.json to --out (default <output_dir>/test).",
    )
    p.add_argument("--config", "-c", required=True, help="recipe file or packaged recipe name")
    p.add_argument(
        "--weights",
        "-w",
        required=True,
        help="model.pt / best.pt / last.pt, or another toolkit's checkpoint (see --from)",
    )
    add_from_argument(p)
    p.add_argument(
        "--out",
        default=None,
        help="folder for metrics.json (default: <output_dir>/test; the run's own metrics.json is never replaced)",
    )
    p.add_argument("overrides", nargs="*", help=OVERRIDE_HELP + " (e.g. test.rerank=true test.flip=true)")
    p.set_defaults(func=_test)
    add_trust_argument(p)

    p = sub.add_parser(
        "ablate",
        help="train a grid of config changes or a list of recipes; tabulate",
        description="Run every combination of --grid values (cartesian product) on --config, "
        "or every recipe of --recipes, and write ablation.md and ablation.json.",
    )
    p.add_argument("--config", "-c", default=None, help="base recipe for --grid")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a config key and its values (repeatable; commas inside [..] are kept)",
    )
    p.add_argument(
        "--recipes",
        nargs="+",
        default=None,
        metavar="RECIPE",
        help="recipes to tabulate, e.g. the BoT ladder baseline_r50 trick1_warmup ...",
    )
    p.add_argument("--out", default="ablation", help="output folder (default ./ablation)")
    p.add_argument("overrides", nargs="*", help=OVERRIDE_HELP + " (applied to every run)")
    p.set_defaults(func=_ablate)

    p = sub.add_parser(
        "recipes",
        help="list the packaged recipes, or the options of a registered part",
        description="Without --options: every packaged recipe and its first comment line. "
        "--options NAME: the options of the backbone, loss, USL method or tracker NAME (built-in or "
        "from --plugin), with the key to set each in a recipe, its type and default.",
    )
    p.add_argument("--options", metavar="NAME", default=None, help="a backbone, loss, USL method or tracker name")
    p.set_defaults(func=_recipes)

    p = sub.add_parser(
        "demo",
        help="CPU demo: synthetic data, pretrained EfficientNet-Lite0, BoT fine-tuning",
        description="Generate a synthetic dataset, evaluate the ImageNet-pretrained "
        "EfficientNet-Lite0, fine-tune it with the BoT tricks on CPU, evaluate with and "
        "without re-ranking, write ranked-list pictures and metrics.json.",
    )
    p.add_argument("--out", default="./reidkit-demo", help="output folder (default ./reidkit-demo)")
    p.add_argument("overrides", nargs="*", help=OVERRIDE_HELP + " (on top of demo.yaml)")
    p.set_defaults(func=_demo)


# a sentence ends at . ! ? before a space and a capital, a digit, a quote or the end (not "et al., ...")
_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)[.!?](?=\s+[A-Z0-9`'\"(]|\s*$)")


def recipe_summary(text: str) -> str:
    """The first sentence of a recipe's leading comment (which may run over several lines), whole."""
    block = []
    for ln in text.splitlines():
        if not ln.startswith("#"):
            break
        block.append(ln.lstrip("#").strip())
    para = " ".join(" ".join(block).split())
    m = _SENTENCE_END.search(para)
    return para[: m.end()] if m else para


def _recipes(args: argparse.Namespace) -> int:
    from reidkit.config import RECIPES_DIR, list_recipes
    from reidkit.config.options import KINDS, describe_options, options_class
    from reidkit.errors import ReIDError

    if args.options is None:
        import textwrap

        for name in list_recipes():
            about = recipe_summary((RECIPES_DIR / f"{name}.yaml").read_text())
            print(
                textwrap.fill(
                    about, width=110, initial_indent=f"{name:24s} ", subsequent_indent=" " * 25, break_on_hyphens=False
                )
                if about
                else name
            )
        return 0
    # the registries (built-ins register their parts on import; plug-ins already ran)
    import reidkit.engine.usl.methods  # noqa: F401
    import reidkit.losses  # noqa: F401
    from reidkit.engine.usl.methods import USL_METHODS
    from reidkit.losses import LOSSES
    from reidkit.models.backbones import BACKBONES
    from reidkit.video.detectors import DETECTORS
    from reidkit.video.trackers import TRACKERS

    registries = {"backbone": BACKBONES, "loss": LOSSES, "usl": USL_METHODS, "tracker": TRACKERS, "detector": DETECTORS}
    found = [kind for kind in KINDS if args.options in registries[kind]]
    if not found:
        names = sorted({n for reg in registries.values() for n in reg.names()})
        import difflib

        close = difflib.get_close_matches(args.options, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ReIDError(f"--options: no backbone, loss, USL method, tracker or detector named {args.options!r}{hint}")
    for kind in found:
        label = {
            "backbone": "backbone",
            "loss": "loss",
            "usl": "USL method",
            "tracker": "tracker",
            "detector": "detector",
        }[kind]
        if options_class(kind, args.options) is None:
            print(f"{label} {args.options}: no options of its own")
            continue
        print(f"{label} {args.options}:")
        for row in describe_options(kind, args.options):
            print(
                f"  {row['key']:36s} {row['type']:16s} default {row['default']!r}"
                + (f"  {row['help']}" if row["help"] else "")
            )
    return 0


def _split_overrides(items: list[str] | None) -> tuple[list[str], list[str]]:
    # nargs="+" options swallow later positionals; key=value items are overrides, the rest names.
    items = list(items or [])
    return [i for i in items if "=" not in i], [i for i in items if "=" in i]


def _train(args: argparse.Namespace) -> int:
    from reidkit.config import load_config
    from reidkit.engine.api import Trainer
    from reidkit.engine.handlers import console_logging

    cfg = load_config(args.config, list(args.overrides))
    trainer = Trainer(cfg)
    if trainer.is_main:
        console_logging()
    result = trainer.fit()
    if trainer.is_main:  # under torchrun only rank 0 reports
        print(format_result(result))
        print(f"outputs in {cfg.output_dir}")
    return 0


def _test(args: argparse.Namespace) -> int:
    from reidkit.engine.api import test

    result = test(args.config, args.weights, out_dir=args.out, overrides=list(args.overrides), fmt=args.weights_format)
    print(format_result(result))
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from reidkit.experiments.ablate import format_table, run_ablation
    from reidkit.engine.handlers import console_logging

    console_logging()  # training inside: its bar on a terminal, else a line every log_period

    recipes, extra = _split_overrides(args.recipes)
    rows = run_ablation(
        config=args.config,
        grid=args.grid,
        recipes=recipes or None,
        overrides=list(args.overrides) + extra,
        out_dir=args.out,
    )
    print(format_table(rows))
    print(f"written {args.out}/ablation.md and {args.out}/ablation.json")
    return 1 if any(r.get("error") for r in rows) else 0


def _demo(args: argparse.Namespace) -> int:
    from reidkit.experiments.demo import run_demo
    from reidkit.engine.handlers import console_logging

    console_logging()  # training inside: its bar on a terminal, else a line every log_period
    run_demo(args.out, overrides=list(args.overrides))
    return 0


def format_result(result: dict[str, Any]) -> str:
    """Per-dataset metrics (already in percent) and their mean as a small text table."""
    rows = list((result.get("datasets") or {}).items())
    if not rows:
        return "no validation metrics"
    if len(rows) > 1 and result.get("mean"):
        rows.append(("mean", result["mean"]))
    head = f"{'dataset':<20} {'mAP':>6} {'rank-1':>7} {'rank-5':>7} {'rank-10':>8} {'mINP':>6} {'score':>6}"
    lines = [head, "-" * len(head)]
    for name, m in rows:
        lines.append(
            f"{name:<20} {m['mAP']:6.1f} {m['rank1']:7.1f} {m['rank5']:7.1f} "
            f"{m['rank10']:8.1f} {m['mINP']:6.1f} {m['score']:6.1f}"
        )
    return "\n".join(lines)

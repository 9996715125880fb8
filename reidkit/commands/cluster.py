"""Verbs `usl` (alias `train-usl`), `pseudo-label` and `cv`."""

from __future__ import annotations

import argparse

from reidkit.commands import add_recipe_verb, add_trust_argument
from reidkit.commands._args import int_option

OVERRIDE_HELP = "dotted config overrides, e.g. usl.eps=0.5 solver.max_epochs=20"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the clustering / unsupervised verbs to the `reidkit` command."""
    add_recipe_verb(
        sub,
        "usl",
        _usl,
        "recipe (e.g. usl_hhcl, uda_ssg, usl_demo)",
        OVERRIDE_HELP,
        aliases=["train-usl"],
        help="unsupervised / domain-adaptive training (re-clusters every epoch)",
        description="Train without labels: every epoch extracts features of the training images, "
        "clusters them (Jaccard + DBSCAN) and trains on the pseudo labels. usl.method: cluster_contrast, "
        "hhcl, ssg (UDA from usl.init_weights) or dec. Writes config.yaml, train.log (with per-epoch cluster "
        "purity/NMI/ARI), last.pt, best.pt, model.pt and metrics.json into output_dir.",
    )

    p = sub.add_parser(
        "pseudo-label",
        help="label the test set with a trained model and retrain on the union",
        description="De-duplicate the queries by hierarchical clustering, attach gallery images whose "
        "cosine similarity to a query group passes --threshold, write the groups as a CSV manifest "
        "(iter_<k>/pseudo.csv) and retrain on the original training set + the manifest. Transductive: the "
        "test set is labelled and the retrained model's mAP is measured on that same test set.",
    )
    p.add_argument("--config", "-c", required=True, help="the recipe the model was trained with")
    p.add_argument("--weights", "-w", required=True, help="trained model (model.pt / best.pt)")
    p.add_argument(
        "--threshold",
        default="auto",
        help="cosine similarity a gallery image needs to join a query group, or auto (default): "
        "the similarity only 1%% of pairs of different query groups reach, on the model's own scale",
    )
    p.add_argument(
        "--dedup-threshold", type=float, default=0.3, help="cosine distance cut of the query clustering (0.3)"
    )
    int_option(p, "--iterations", 100, 1, help="label -> retrain rounds (1)")
    p.add_argument("--min-size", type=int, default=2, help="images a pseudo-identity needs (2)")
    p.add_argument("--no-retrain", action="store_true", help="only write the manifest")
    p.add_argument("--out", default=None, help="output folder (default <output_dir>/pseudo_label)")
    p.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    p.set_defaults(func=_pseudo_label)
    add_trust_argument(p)

    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation split by identity",
        description="Identity-disjoint folds of the training set (seeded); identities with fewer than "
        "--min-images images are never queries; the test set joins each gallery as distractors. "
        "Trains and evaluates each fold; writes cv.md and cv.json.",
    )
    p.add_argument("--config", "-c", required=True, help="supervised recipe")
    int_option(p, "--folds", 1000, 4, help="number of folds (4)")
    p.add_argument("--min-images", type=int, default=2, help="images an identity needs to be a query (2)")
    p.add_argument("--seed", type=int, default=None, help="fold seed (default: the config's seed)")
    p.add_argument("--no-distractors", action="store_true", help="do not add the test set to the galleries")
    p.add_argument("--out", default=None, help="output folder (default <output_dir>/cv)")
    p.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    p.set_defaults(func=_cv)


def _usl(args: argparse.Namespace) -> int:
    from reidkit.engine.handlers import console_logging
    from reidkit.engine.usl import ClusterTrainer, load_usl_config

    cfg = load_usl_config(args.config, list(args.overrides))
    trainer = ClusterTrainer(cfg)
    if trainer.is_main:
        console_logging()
    result = trainer.fit()
    if not trainer.is_main:  # under torchrun only rank 0 reports
        return 0
    for name, m in (result.get("datasets") or {}).items():
        print(f"{name}: mAP {m['mAP']:.1f} rank-1 {m['rank1']:.1f} rank-5 {m['rank5']:.1f} mINP {m['mINP']:.1f}")
    if result.get("clusters"):
        c = result["clusters"][-1]
        print(
            f"last clustering: {c['n_clusters']} clusters, {c['n_outliers']} outliers, "
            f"purity {c['purity']:.3f} NMI {c['nmi']:.3f} ARI {c['ari']:.3f}"
        )
    print(f"outputs in {cfg.output_dir}")
    return 0


def _pseudo_label(args: argparse.Namespace) -> int:
    from reidkit.experiments.pseudo_label import format_summary, run_pseudo_label
    from reidkit.utils.progress import console_logging

    console_logging()  # features and retraining report their steps; retraining its iterations without a bar

    summary = run_pseudo_label(
        args.config,
        args.weights,
        threshold=args.threshold,
        dedup_threshold=args.dedup_threshold,
        iterations=args.iterations,
        min_size=args.min_size,
        out_dir=args.out,
        retrain=not args.no_retrain,
        overrides=list(args.overrides),
    )
    print(format_summary(summary))
    return 0


def _cv(args: argparse.Namespace) -> int:
    from reidkit.experiments.cv import format_cv_table, run_cv

    summary = run_cv(
        args.config,
        folds=args.folds,
        min_images=args.min_images,
        seed=args.seed,
        out_dir=args.out,
        distractors=not args.no_distractors,
        overrides=list(args.overrides),
    )
    print(format_cv_table(summary))
    return 0

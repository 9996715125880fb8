"""`reidkit demo`: the whole toolkit in a few CPU minutes.

Generates a synthetic dataset, evaluates the ImageNet-pretrained EfficientNet-Lite0 as it is,
fine-tunes it with the BoT tricks (recipe ``demo.yaml``), evaluates again with and without
k-reciprocal re-ranking, draws ranked lists and writes ``metrics.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

from reidkit.config import load_config

ROWS = (
    ("before", "pretrained, before training"),
    ("after", "after fine-tuning"),
    ("after_rerank", "after fine-tuning + re-ranking"),
)


def format_demo_table(metrics: dict[str, Any]) -> str:
    """The before / after / after + re-ranking table (mAP, rank-1, mINP in percent)."""
    head = f"{'model':<32} {'mAP':>6} {'rank-1':>7} {'mINP':>6}"
    lines = [head, "-" * len(head)]
    for key, label in ROWS:
        m = metrics.get(key)
        if m:
            lines.append(f"{label:<32} {m['mAP']:6.1f} {m['rank1']:7.1f} {m['mINP']:6.1f}")
    return "\n".join(lines)


def run_demo(
    out_dir: str | Path = "./reidkit-demo",
    overrides: list[str] | None = None,
    num_pictures: int = 12,
    echo: bool = True,
) -> dict[str, Any]:
    """Run the demo into `out_dir` and return its metrics (also written to ``out_dir/metrics.json``).

    Every long step shows a bar on a terminal and logs one line when done (on stderr from Python too).
    """
    from reidkit.utils.progress import console_progress

    with console_progress():
        return _run_demo(out_dir, overrides, num_pictures, echo)


def _run_demo(out_dir: str | Path, overrides: list[str] | None, num_pictures: int, echo: bool) -> dict[str, Any]:
    from reidkit.data.datasets import load_dataset
    from reidkit.engine.supervised import SupervisedTrainer as Trainer
    from reidkit.engine.validation import extract_val_features
    from reidkit.utils.io import ensure_dir, write_json
    from reidkit.evaluation.distance import compute_distance
    from reidkit.evaluation.visualize import visualize_ranked
    from reidkit.utils.progress import step

    say = print if echo else (lambda *a, **k: None)
    out = Path(out_dir).expanduser().resolve()
    ensure_dir(out, "out")
    t_start = time.perf_counter()
    cfg = load_config(
        "demo",
        [
            f"data.datasets.0.root={out / 'data'}",
            f"output_dir={out / 'train'}",
            f"data.cache_dir={out / 'cache'}",
            *(overrides or []),
        ],
    )
    spec = cfg.data.datasets[0]

    say(f"[1/5] synthetic dataset -> {out / 'data'}")
    t0 = time.perf_counter()
    with step("demo: synthetic dataset"):
        ds = load_dataset(spec.name, spec.root, **dict(spec.options))
    t_data = time.perf_counter() - t0
    say(ds.format_stats())

    say(f"[2/5] {cfg.model.backbone} (ImageNet weights), evaluated before any training")
    trainer = Trainer(cfg).setup()
    before = trainer.validate(rerank=False)
    m = before["mean"]
    say(f"      before training: mAP {m['mAP']:.1f}  rank-1 {m['rank1']:.1f}  mINP {m['mINP']:.1f}")

    say(
        f"[3/5] fine-tuning with the BoT tricks: {cfg.solver.max_epochs} epochs x {trainer.epoch_length} "
        f"batches of {cfg.sampler.p}x{cfg.sampler.k} at {cfg.data.size[0]}x{cfg.data.size[1]} on {trainer.device}"
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    t_train = time.perf_counter() - t0

    say("[4/5] evaluation after fine-tuning, without and with re-ranking")
    after = {"datasets": result["datasets"], "mean": result["mean"]}
    after_rr = trainer.validate(rerank=True)

    say(f"[5/5] ranked lists -> {out / 'ranked'}")
    assert trainer.val_prepared is not None  # prepared by the validate() calls above
    vs = trainer.val_prepared[0]
    qf, gf = extract_val_features(trainer.net, vs, cfg, trainer.device, step_name=f"demo: {vs.name}")
    if cfg.test.metric == "cosine":
        import torch.nn.functional as F

        qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
    dist = compute_distance(qf, gf, metric=cfg.test.metric)
    index = visualize_ranked(
        dist,
        vs.dataset.query,
        vs.dataset.gallery,
        out / "ranked",
        topk=8,
        max_queries=num_pictures,
        step_name="demo: ranked lists",
    )

    name = vs.name
    metrics = {
        "before": before["datasets"][name],
        "after": after["datasets"][name],
        "after_rerank": after_rr["datasets"][name],
        "dataset": {
            "name": name,
            "train_images": len(ds.train),
            "train_ids": ds.num_train_pids,
            "query": len(ds.query),
            "gallery": len(ds.gallery),
        },
        "model": cfg.model.backbone,
        "input_size": list(cfg.data.size),
        "epochs": cfg.solver.max_epochs,
        "units": "percent",
        "time_s": {
            "data": round(t_data, 1),
            "train": round(t_train, 1),
            "total": round(time.perf_counter() - t_start, 1),
        },
        "train_images_per_s": result["train"].get("images_per_s"),
        "ranked_lists": str(index),
        "run_dir": str(out / "train"),
    }
    write_json(out / "metrics.json", metrics)
    say("")
    say(format_demo_table(metrics))
    say(
        f"\ntotal {metrics['time_s']['total']:.0f} s (data {t_data:.0f} s, training {t_train:.0f} s); "
        f"metrics.json, ranked lists and the run are in {out}"
    )
    return cast(dict[str, Any], json.loads(json.dumps(metrics)))  # a dict round-trips to a dict

"""Ablations: run a grid of config changes (or a list of recipes) and tabulate the results.

Writes ``ablation.md`` (one row per run: backbone | id | change | mAP | rank-1 | mean, the
layout the project's users keep their experiment notes in) and ``ablation.json`` after every
run, so an interrupted ablation keeps the rows it finished.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from reidkit.config import Config, find_recipe, load_config, parse_overrides_flat
from reidkit.errors import OptionError, ReIDError


def split_values(text: str) -> list[str]:
    """Split ``"a,[1,2],{b: 3}"`` on the commas outside brackets and quotes."""
    out, depth, cur, quote = [], 0, [], ""
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return [v for v in out if v != ""]


def parse_grid(items: list[str]) -> list[tuple[str, list[Any]]]:
    """``["solver.base_lr=1e-4,3.5e-4"]`` -> ``[("solver.base_lr", ["1e-4", "3.5e-4"])]`` (YAML-parsed)."""
    grid = []
    for item in items:
        if "=" not in item:
            raise OptionError("grid", "must look like key=v1,v2,... (e.g. model.last_stride=1,2)", value=item)
        key, raw = item.split("=", 1)
        values = split_values(raw)
        if not key.strip() or not values:
            raise OptionError("grid", "needs a key and at least one value", value=item)
        parsed = [parse_overrides_flat([f"{key.strip()}={v}"])[0][1] for v in values]
        grid.append((key.strip(), parsed))
    return grid


def _fmt_value(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return yaml.safe_dump(v, default_flow_style=True).strip()
    return str(v)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")[:60] or "run"


def plan_runs(
    config: str | Path | None = None,
    grid: list[str] | None = None,
    recipes: list[str] | None = None,
    overrides: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The runs of an ablation: one per recipe x grid combination, each with its overrides and label."""
    overrides = list(overrides or [])
    axes = parse_grid(grid or [])
    combos = list(itertools.product(*[[(k, v) for v in vals] for k, vals in axes])) if axes else [()]
    if recipes:
        bases = [(str(r), None) for r in recipes]
    elif config is not None:
        bases = [(str(config), None)]
    else:
        raise ReIDError("ablate: give --config (with --grid) or --recipes")
    runs = []
    for base, _ in bases:
        for combo in combos:
            extra = [f"{k}={_fmt_value(v) if not isinstance(v, str) else v}" for k, v in combo]
            change_parts = [f"{k}={_fmt_value(v)}" for k, v in combo]
            runs.append({"config": base, "overrides": overrides + extra, "grid": change_parts})
    return runs


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backbone | id | change | mAP | rank-1 | mean |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['backbone']} | {r['id']} | {r['change']} | failed | failed | {r['error'][:60]} |")
            continue
        lines.append(
            f"| {r['backbone']} | {r['id']} | {r['change']} | {r['mAP']:.1f} | {r['rank1']:.1f} | {r['mean']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def run_ablation(
    config: str | Path | None = None,
    grid: list[str] | None = None,
    recipes: list[str] | None = None,
    overrides: list[str] | None = None,
    out_dir: str | Path = "ablation",
) -> list[dict[str, Any]]:
    """Train every planned run into ``out_dir/<id>_<change>/`` and write ablation.md / ablation.json."""
    from reidkit.engine.supervised import SupervisedTrainer as Trainer

    out = Path(out_dir)
    from reidkit.utils.io import ensure_dir

    ensure_dir(out, "out")
    runs = plan_runs(config, grid, recipes, overrides)
    # Check every config before spending time on the first run.
    cfgs: list[Config] = [load_config(find_recipe(r["config"]), r["overrides"]) for r in runs]
    rows: list[dict[str, Any]] = []
    for i, (run, cfg) in enumerate(zip(runs, cfgs), start=1):
        label = (cfg.name or Path(run["config"]).stem) if recipes else ""
        change = ", ".join([p for p in [label, *run["grid"]] if p]) or "base"
        run_dir = out / f"{i:02d}_{_slug(change)}"
        cfg.output_dir = str(run_dir)
        row: dict[str, Any] = {
            "id": i,
            "backbone": cfg.model.backbone,
            "change": change,
            "config": run["config"],
            "overrides": run["overrides"],
            "output_dir": str(run_dir),
        }
        t0 = time.perf_counter()
        try:
            res = Trainer(cfg).fit()
            mean = res.get("mean") or {}
            if not mean:
                raise ReIDError("no validation metrics (data.val is empty)")
            row.update(
                mAP=mean["mAP"],
                rank1=mean["rank1"],
                mINP=mean["mINP"],
                mean=mean["score"],
                datasets=res.get("datasets", {}),
            )
        except ReIDError as exc:
            row["error"] = str(exc)
        row["time_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        from reidkit.utils.io import write_text

        write_text(out / "ablation.json", json.dumps(rows, indent=2))
        write_text(out / "ablation.md", _table(rows))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of ablation rows."""
    return _table(rows)

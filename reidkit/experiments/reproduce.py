"""``reidkit reproduce``: run a published table's rows and put the papers' numbers beside ours.

A table is a YAML file (the packaged ones live in ``reidkit/reproduce/``; a path works too)::

    name: bot
    title: Bag of Tricks (Luo et al., CVPRW 2019)
    rows:
      - id: market_all_tricks
        recipe: bot_r50                 # a packaged recipe or a YAML path
        dataset: market1501             # trained and evaluated on (found under --data-root)
        source_dataset: null            # UDA: the source set, trained first by row `init_from`
        init_from: null                 # a row id whose model.pt initialises this row (usl.init_weights)
        kind: train                     # train (supervised) or usl
        overrides: {loss.names: [softmax, triplet]}
        published: {mAP: 85.9, rank1: 94.5}
        source: Luo et al. 2019, Table 2
        gpu_minutes: null               # optional estimate; else one from the schedule

``run_table`` trains each row whose dataset(s) are found under ``data_root`` (via the registered
dataset loaders, so the usual folder names work), into ``<out>/<row id>/``; a row with a
``result.json`` there is finished and not run again, and an interrupted row resumes from its
``last.pt``. ``reproduce.md`` (and ``reproduce.json``) list, per row, the published mAP / rank-1,
ours, the difference, the wall time and the GPU. ``plan_table`` is the dry run: what would run,
what is missing and why, and an estimate of the GPU time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from reidkit.errors import OptionError, ReIDError

__all__ = ["Row", "Table", "format_markdown", "list_tables", "load_table", "plan_table", "run_table"]

KINDS = ("train", "usl")
# Training images per epoch of the public sets (for the GPU-time estimate only).
TRAIN_IMAGES = {"market1501": 12936, "dukemtmc": 16522, "msmt17": 32621, "cuhk03": 7365}
# Rough training images/s on one H100-class GPU per backbone (bf16, channels_last; the estimate
# is a planning aid, not a measurement: benchmarks/gpu_run.sh measures the real figure).
IMAGES_PER_S = {
    "resnet50": 1500.0,
    "resnet50_ibn_a": 1300.0,
    "resnet101": 900.0,
    "osnet_x1_0": 2000.0,
    "vit_b16": 600.0,
    "swin_t": 700.0,
}
DEFAULT_IMAGES_PER_S = 1000.0


@dataclass
class Row:
    """One line of a published table: a recipe (+ overrides) and the numbers it should reach."""

    id: str
    recipe: str
    dataset: str
    published: dict[str, float]
    source: str = ""
    kind: str = "train"
    overrides: dict[str, Any] = field(default_factory=dict)
    source_dataset: str | None = None
    init_from: str | None = None
    gpu_minutes: float | None = None
    note: str = ""


@dataclass
class Table:
    """A published table: its rows and where it came from."""

    name: str
    title: str
    rows: list[Row]
    path: str = ""


def list_tables() -> list[str]:
    """Names of the packaged tables."""
    folder = resources.files("reidkit") / "reproduce"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_table(name_or_path: str | Path) -> Table:
    """A packaged table by name (``bot``) or a YAML file; ReIDError naming the key that is wrong."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ReIDError(f"reproduce TABLE: {path} is not a file")
        text, where = path.read_text(), str(path)
    else:
        res = resources.files("reidkit") / "reproduce" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ReIDError(
                f"reproduce TABLE: unknown table {name_or_path!r}; packaged tables: "
                f"{', '.join(list_tables())} (or a YAML path)"
            )
        text, where = res.read_text(), f"reidkit/reproduce/{name_or_path}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ReIDError(f"{where}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not data["rows"]:
        raise ReIDError(f"{where}: expected a mapping with a non-empty 'rows' list")
    rows, seen = [], set()
    for i, raw in enumerate(data["rows"]):
        if not isinstance(raw, dict):
            raise ReIDError(f"{where}: rows[{i}] must be a mapping")
        for key in ("id", "recipe", "dataset", "published"):
            if key not in raw:
                raise ReIDError(f"{where}: rows[{i}] has no '{key}'")
        known = set(Row.__dataclass_fields__)
        extra = sorted(set(raw) - known)
        if extra:
            raise ReIDError(
                f"{where}: rows[{i}] ({raw['id']}): unknown key(s) {', '.join(extra)}; "
                f"expected some of {', '.join(sorted(known))}"
            )
        row = Row(**raw)
        if row.id in seen:
            raise ReIDError(f"{where}: row id {row.id!r} appears twice")
        seen.add(row.id)
        if row.kind not in KINDS:
            raise ReIDError(f"{where}: rows[{i}] ({row.id}): kind must be one of {', '.join(KINDS)}, got {row.kind!r}")
        if not isinstance(row.published, dict) or not {"mAP", "rank1"} & set(row.published):
            raise ReIDError(f"{where}: rows[{i}] ({row.id}): published needs mAP and/or rank1")
        if row.init_from is not None and row.init_from not in seen:
            raise ReIDError(f"{where}: rows[{i}] ({row.id}): init_from {row.init_from!r} must name an earlier row")
        rows.append(row)
    return Table(str(data.get("name") or Path(where).stem), str(data.get("title") or ""), rows, where)


def _find_dataset(name: str, root: Path) -> tuple[Path | None, str]:
    """`root` when the registered loader finds `name` in it (its usual folder, e.g.
    ``Market-1501-v15.09.15/``), else None and the loader's reason."""
    from reidkit.data.datasets import load_dataset

    # Only `root` itself: a loader also accepts its own folder as root, so trying the children
    # would take one set's folder for another's (Market's file names parse as Duke's).
    try:
        ds = load_dataset(name, str(root))
    except ReIDError as exc:
        return None, str(exc).splitlines()[0][:200]
    if not getattr(ds, "train", None):
        return None, f"{name}: no training images under {root}"
    return root, ""


def _row_config(row: Row, roots: dict[str, Path], out: Path, extra: list[str], init: str | None) -> Any:
    from reidkit.config import load_config

    ov: dict[str, Any] = dict(row.overrides)
    ov["data.datasets"] = [{"name": row.dataset, "root": str(roots[row.dataset])}]
    if row.source_dataset and row.kind == "usl":
        ov["usl.source"] = [{"name": row.source_dataset, "root": str(roots[row.source_dataset])}]
    ov["output_dir"] = str(out)
    ov["resume"] = "auto"
    if init:
        ov["usl.init_weights"] = init
    if row.kind == "usl":
        from reidkit.engine.usl.trainer import load_usl_config

        return load_usl_config(row.recipe, [*(f"{k}={_yaml(v)}" for k, v in ov.items()), *extra])
    return load_config(row.recipe, [*(f"{k}={_yaml(v)}" for k, v in ov.items()), *extra])


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def estimate_minutes(row: Row, cfg: Any) -> float:
    """GPU minutes of a row: its own estimate, else epochs x images per epoch / a backbone's images/s."""
    if row.gpu_minutes is not None:
        return float(row.gpu_minutes)
    ips = IMAGES_PER_S.get(cfg.model.backbone, DEFAULT_IMAGES_PER_S)
    epochs = cfg.solver.max_epochs
    if row.kind == "usl":
        usl = cfg.usl
        per_epoch = usl.batch_size * usl.iters_per_epoch + 2 * TRAIN_IMAGES.get(row.dataset, 13000)  # + features
        clustering_s = 20.0
    else:
        per_epoch, clustering_s = TRAIN_IMAGES.get(row.dataset, 13000), 0.0
    evals = epochs // max(1, cfg.solver.eval_period)
    seconds = epochs * (per_epoch / ips + clustering_s) + evals * 30.0
    return float(seconds / 60.0)


def plan_table(
    table: Table, data_root: str | Path, extra: list[str] | None = None, out_dir: str | Path = "reproduce"
) -> list[dict[str, Any]]:
    """For each row: runnable or missing (and why), finished already, and a GPU-time estimate."""
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise OptionError("data_root", f"{root} is not a folder")
    out = Path(out_dir)
    plan: list[dict[str, Any]] = []
    found: dict[str, Any] = {}
    for row in table.rows:
        entry: dict[str, Any] = {
            "id": row.id,
            "recipe": row.recipe,
            "dataset": row.dataset,
            "published": row.published,
            "source": row.source,
        }
        missing = []
        for name in [n for n in (row.source_dataset, row.dataset) if n]:
            if name not in found:
                found[name] = _find_dataset(name, root)
            if found[name][0] is None:
                missing.append(f"{name} ({found[name][1]})")
        if row.init_from and any(p["id"] == row.init_from and p["status"] == "missing" for p in plan):
            missing.append(f"row {row.init_from} (its init_from) cannot run")
        entry["status"] = "missing" if missing else ("done" if (out / row.id / "result.json").exists() else "run")
        entry["missing"] = missing
        roots = {n: found.get(n, (None, ""))[0] or root for n in (row.dataset, row.source_dataset) if n}
        entry["roots"] = {n: str(r) for n, r in roots.items()}
        try:
            cfg = _row_config(row, roots, out / row.id, list(extra or []), "init.pt" if row.init_from else None)
            entry["gpu_minutes"] = round(estimate_minutes(row, cfg), 1)
            entry["epochs"] = cfg.solver.max_epochs
        except ReIDError as exc:
            entry["status"], entry["missing"] = "error", [str(exc)]
        plan.append(entry)
    return plan


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _ours(result: dict[str, Any], dataset: str) -> dict[str, float]:
    m = (result.get("datasets") or {}).get(dataset) or result.get("mean") or {}
    return {k: float(m[k]) for k in ("mAP", "rank1") if k in m}


def run_table(
    table: Table,
    data_root: str | Path,
    out_dir: str | Path = "reproduce",
    extra: list[str] | None = None,
    only: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Run the runnable rows (finished ones are kept), write reproduce.md / reproduce.json, return the rows."""
    from reidkit.utils.io import atomic_write, ensure_dir, write_json

    out = Path(out_dir)
    ensure_dir(out, "out")
    plan = plan_table(table, data_root, extra, out)
    if only:
        unknown = sorted(set(only) - {r.id for r in table.rows})
        if unknown:
            raise OptionError(
                "only", f"unknown row id(s) {', '.join(unknown)}; the table has {', '.join(r.id for r in table.rows)}"
            )
    rows_by_id = {r.id: r for r in table.rows}
    for entry in plan:
        row = rows_by_id[entry["id"]]
        done_file = out / row.id / "result.json"
        if only and row.id not in only:
            entry["status"] = "skipped" if entry["status"] != "done" else "done"
        if entry["status"] == "done":
            import json

            entry.update(json.loads(done_file.read_text()))
            continue
        if entry["status"] != "run":
            continue
        init = None
        if row.init_from:
            init = str(out / row.init_from / "model.pt")
            if not Path(init).is_file():
                entry["status"], entry["error"] = "error", f"init_from {row.init_from}: {init} missing"
                continue
        cfg = _row_config(row, {n: Path(r) for n, r in entry["roots"].items()}, out / row.id, list(extra or []), init)
        t0 = time.time()
        try:
            if row.kind == "usl":
                from reidkit.engine.usl import ClusterTrainer

                result = ClusterTrainer(cfg).fit()
            else:
                from reidkit.engine.supervised import SupervisedTrainer

                result = SupervisedTrainer(cfg).fit()
        except ReIDError as exc:
            entry["status"], entry["error"] = "error", str(exc)
            continue
        rec = {
            "status": "done",
            "ours": _ours(result, row.dataset),
            "wall_s": round(time.time() - t0, 1),
            "gpu": _gpu_name(),
            "epochs": cfg.solver.max_epochs,
        }
        write_json(done_file, rec)
        entry.update(rec)
    text = format_markdown(table, plan)
    with atomic_write(out / "reproduce.md", "w") as fh:
        fh.write(text)
    write_json(out / "reproduce.json", {"table": table.name, "title": table.title, "rows": plan})
    return plan


def _num(x: Any, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def format_markdown(table: Table, plan: list[dict[str, Any]]) -> str:
    """reproduce.md: published beside ours (mAP / rank-1, difference in points), wall time, GPU."""
    lines = [
        f"# {table.title or table.name}",
        "",
        "| row | recipe | dataset | published mAP / R1 | ours mAP / R1 | difference | wall time | GPU | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in plan:
        pub, ours = e.get("published") or {}, e.get("ours") or {}
        diff = " / ".join(
            _num(ours[k] - pub[k], "{:+.1f}") if k in ours and k in pub else "-" for k in ("mAP", "rank1")
        )
        wall = f"{e['wall_s'] / 60:.1f} min" if e.get("wall_s") is not None else "-"
        status = (
            e["status"]
            + (f": {'; '.join(e.get('missing') or [])}" if e.get("missing") else "")
            + (f": {e['error']}" if e.get("error") else "")
        )
        lines.append(
            f"| {e['id']} | {e['recipe']} | {e['dataset']} | {_num(pub.get('mAP'))} / {_num(pub.get('rank1'))} | "
            f"{_num(ours.get('mAP'))} / {_num(ours.get('rank1'))} | {diff if ours else '-'} | {wall} | "
            f"{e.get('gpu', '-')} | {status} |"
        )
    sources = sorted({str(e["source"]) for e in plan if e.get("source")})
    if sources:
        lines += ["", "Sources: " + "; ".join(sources)]
    return "\n".join(lines) + "\n"


def format_plan(table: Table, plan: list[dict[str, Any]]) -> str:
    """The dry run's text: what would run, what is missing, and the GPU-time estimate."""
    lines = [f"table {table.name}: {table.title}"]
    for e in plan:
        est = f"~{e['gpu_minutes']:.0f} GPU min" if e.get("gpu_minutes") is not None else "no estimate"
        why = f" ({'; '.join(e['missing'])})" if e.get("missing") else ""
        lines.append(
            f"  {e['status']:<8} {e['id']:<28} {e['recipe']} on {e['dataset']}, "
            f"{e.get('epochs', '?')} epochs, {est}{why}"
        )
    todo = [e for e in plan if e["status"] == "run"]
    total = sum(e.get("gpu_minutes") or 0.0 for e in todo)
    lines.append(
        f"would run {len(todo)} of {len(plan)} rows; estimated GPU time {total / 60:.1f} h "
        f"({total:.0f} min; rough: one H100-class GPU, from the schedules)"
    )
    missing = [e for e in plan if e["status"] == "missing"]
    if missing:
        lines.append(f"missing: {', '.join(e['id'] for e in missing)}")
    return "\n".join(lines)

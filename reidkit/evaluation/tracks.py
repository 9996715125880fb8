"""Tracking metrics with TrackEval (Luiten et al., HOTA, IJCV 2021; JonathonLuiten/TrackEval, MIT):
HOTA, IDF1, MOTA and ID switches per camera and combined, and the multi-camera IDF1 over global ids.

Inputs are MOTChallenge files, ``frame,id,x,y,w,h,conf,...`` (frame 1-based):

- ground truth ``GT_DIR``: either TrackEval's layout, ``GT_DIR/<BENCH>-<SPLIT>/<seq>/gt/gt.txt`` with
  ``seqinfo.ini`` (one ``<BENCH>-<SPLIT>`` folder, as ``reidkit scene`` writes under ``OUT/GT``), or a
  folder of sequences ``GT_DIR/<seq>/gt/gt.txt`` (a scene's root, a MOT17 ``train`` folder);
- predictions ``PRED_DIR``: ``PRED_DIR/<seq>.txt`` (or ``PRED_DIR/data/<seq>.txt``), one per sequence
  (``reidkit identities export`` writes them).

Every file is read and checked here (one ReIDError naming the file and line), then re-written into a
private temporary TrackEval tree in the MOT17 form TrackEval's ``MotChallenge2DBox`` expects (ground
truth: consider flag 1, class 1 = pedestrian, visibility 1; predictions: seven columns), so ground
truth written by other tools with class -1 still counts. A sequence's length is its ``seqinfo.ini``
``seqLength``, else the last frame either file mentions.

Multi-camera IDF1 (the AI City Challenge's ranking metric for multi-camera tracking): all cameras'
sequences are concatenated into one, frames of camera ``c`` offset by the lengths of the cameras
before it, ground truth and predictions keeping their global ids; one person tracked perfectly in
every camera but given different ids in two cameras then costs as an identity switch does.
Metrics are percentages (HOTA = mean of HOTA over TrackEval's localisation thresholds).
"""

from __future__ import annotations

import configparser
import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import OptionError, ReIDError

__all__ = ["find_sequences", "read_tracks", "evaluate_tracks", "format_table", "ALL_CAMERAS"]

ALL_CAMERAS = "ALL_CAMERAS"
KEYS = ("HOTA", "DetA", "AssA", "IDF1", "IDP", "IDR", "MOTA", "MOTP", "IDsw", "GT_IDs", "IDs")


def _seq_length(ini: Path) -> int | None:
    if not ini.is_file():
        return None
    cp = configparser.ConfigParser()
    try:
        cp.read(ini)
        return int(cp["Sequence"]["seqLength"])
    except (KeyError, ValueError, configparser.Error):
        raise ReIDError(f"{ini}: expected a [Sequence] section with an integer seqLength") from None


def find_sequences(gt_dir: str | os.PathLike) -> dict[str, tuple[Path, int | None]]:
    """{sequence: (gt.txt, seqLength or None)} of a ground-truth folder (either layout of the module docstring)."""
    root = Path(gt_dir).expanduser()
    if not root.is_dir():
        raise OptionError("gt_dir", f"{root} is not a folder")

    def seqs(folder: Path) -> dict[str, tuple[Path, int | None]]:
        return {
            d.name: (d / "gt" / "gt.txt", _seq_length(d / "seqinfo.ini"))
            for d in sorted(folder.iterdir())
            if (d / "gt" / "gt.txt").is_file()
        }

    found = seqs(root)
    if found:
        return found
    splits = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name != "seqmaps" and seqs(d)]
    if len(splits) == 1:
        found = seqs(splits[0])
        seqmap = root / "seqmaps" / f"{splits[0].name}.txt"
        if seqmap.is_file():  # TrackEval evaluates the sequences its seqmap lists
            names = [ln.split(",")[0].strip() for ln in seqmap.read_text().splitlines()[1:] if ln.strip()]
            missing = [n for n in names if n not in found]
            if missing:
                raise ReIDError(f"{seqmap} lists {', '.join(missing)}, which has no gt/gt.txt under {splits[0]}")
            found = {n: found[n] for n in names}
        return found
    if len(splits) > 1:
        raise OptionError(
            "gt_dir", f"{root} holds several benchmark splits ({', '.join(d.name for d in splits)}); give one of them"
        )
    raise OptionError("gt_dir", f"no sequences in {root} (expected <seq>/gt/gt.txt or <BENCH>-<SPLIT>/<seq>/gt/gt.txt)")


def read_tracks(path: str | os.PathLike) -> np.ndarray:
    """A MOTChallenge file as (N, 7) float64 frame, id, x, y, w, h, conf; ReIDError names a bad line."""
    from reidkit.data.scene import read_mot

    a = read_mot(path)
    bad = np.flatnonzero(
        (a[:, 0] < 1)
        | (a[:, 0] != np.round(a[:, 0]))
        | (a[:, 1] != np.round(a[:, 1]))
        | ~np.isfinite(a[:, 2:6]).all(1)
        | (a[:, 4] <= 0)
        | (a[:, 5] <= 0)
    )
    if len(bad):
        raise ReIDError(
            f"{path}: row {bad[0] + 1}: expected an integer frame >= 1, an integer id and a box with "
            f"positive width and height, got {a[bad[0]].tolist()}"
        )
    keys = a[:, 0] * 1e9 + a[:, 1]
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if (counts > 1).any():
        i = first[np.flatnonzero(counts > 1)[0]]
        raise ReIDError(f"{path}: id {int(a[i, 1])} appears twice in frame {int(a[i, 0])}")
    return a


def _pred_file(pred_dir: Path, seq: str) -> Path:
    for p in (pred_dir / f"{seq}.txt", pred_dir / "data" / f"{seq}.txt"):
        if p.is_file():
            return p
    raise OptionError(
        "pred_dir",
        f"no predictions for sequence {seq!r}: expected {pred_dir / (seq + '.txt')} "
        f"(an empty file when the tracker found nobody)",
    )


def _write_seq(root: Path, seq: str, gt: np.ndarray, pred: np.ndarray, length: int) -> None:
    d = root / "gt" / seq / "gt"
    d.mkdir(parents=True)
    np.savetxt(d / "gt.txt", np.c_[gt[:, :6], np.ones((len(gt), 3))], fmt="%d,%d,%.3f,%.3f,%.3f,%.3f,%d,%d,%d")
    (root / "gt" / seq / "seqinfo.ini").write_text(f"[Sequence]\nname={seq}\nseqLength={length}\n")
    t = root / "trk" / "pred" / "data"
    t.mkdir(parents=True, exist_ok=True)
    np.savetxt(t / f"{seq}.txt", pred[:, :7], fmt="%d,%d,%.3f,%.3f,%.3f,%.3f,%.4f")


def _trackeval(root: Path, lengths: dict[str, int]) -> dict[str, dict[str, float | None]]:
    from reidkit.utils.extras import require

    trackeval = require("trackeval", "eval-tracks (TrackEval's HOTA, CLEAR and Identity metrics)")
    quiet = {"PRINT_CONFIG": False}
    # serial, errors raised, nothing printed nor written (this function returns the numbers)
    silent = ("USE_PARALLEL", "PRINT_RESULTS", "TIME_PROGRESS", "OUTPUT_SUMMARY", "OUTPUT_DETAILED", "PLOT_CURVES")
    eval_cfg = {
        **trackeval.Evaluator.get_default_eval_config(),
        **dict.fromkeys(silent, False),
        "BREAK_ON_ERROR": True,
        "LOG_ON_ERROR": None,
        "PRINT_ONLY_COMBINED": True,
        **quiet,
    }
    ds_cfg = dict(
        trackeval.datasets.MotChallenge2DBox.get_default_dataset_config(),
        GT_FOLDER=str(root / "gt"),
        TRACKERS_FOLDER=str(root / "trk"),
        OUTPUT_FOLDER=str(root / "out"),
        TRACKERS_TO_EVAL=["pred"],
        SKIP_SPLIT_FOL=True,
        SEQ_INFO=dict(lengths),
        DO_PREPROC=True,
        **quiet,
    )
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            res, msg = trackeval.Evaluator(eval_cfg).evaluate(
                [trackeval.datasets.MotChallenge2DBox(ds_cfg)],
                [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(), trackeval.metrics.Identity()],
            )
    except Exception as exc:  # TrackEvalException and its checks: a user's files, so one error line
        raise ReIDError(f"TrackEval: {exc}") from None
    if msg["MotChallenge2DBox"]["pred"] != "Success":
        raise ReIDError(f"TrackEval: {msg['MotChallenge2DBox']['pred']}")
    out: dict[str, dict[str, float | None]] = {}
    for seq, r in res["MotChallenge2DBox"]["pred"].items():
        m = r["pedestrian"]
        out[seq] = {
            "HOTA": 100 * float(np.mean(m["HOTA"]["HOTA"])),
            "DetA": 100 * float(np.mean(m["HOTA"]["DetA"])),
            "AssA": 100 * float(np.mean(m["HOTA"]["AssA"])),
            "IDF1": 100 * float(m["Identity"]["IDF1"]),
            "IDP": 100 * float(m["Identity"]["IDP"]),
            "IDR": 100 * float(m["Identity"]["IDR"]),
            "MOTA": 100 * float(m["CLEAR"]["MOTA"]),
            "MOTP": 100 * float(m["CLEAR"]["MOTP"]),
            "IDsw": int(m["CLEAR"]["IDSW"]),
            "GT_IDs": int(m["Count"]["GT_IDs"]) if "Count" in m else None,
            "IDs": int(m["Count"]["IDs"]) if "Count" in m else None,
        }
    return out


def evaluate_tracks(
    gt_dir: str | os.PathLike, pred_dir: str | os.PathLike, multi_camera: bool = True
) -> dict[str, Any]:
    """{"sequences": {seq: metrics}, "combined": metrics, "multi_camera": metrics | None} (module docstring)."""
    seqs = find_sequences(gt_dir)
    pdir = Path(pred_dir).expanduser()
    if not pdir.is_dir():
        raise OptionError("pred_dir", f"{pdir} is not a folder")
    data = {}
    for seq, (gt_path, length) in seqs.items():
        gt, pred = read_tracks(gt_path), read_tracks(_pred_file(pdir, seq))
        last = int(max(gt[:, 0].max(initial=0), pred[:, 0].max(initial=0)))
        if length is None:
            length = max(1, last)
        elif last > length:
            src = gt_path if gt[:, 0].max(initial=0) > length else _pred_file(pdir, seq)
            raise ReIDError(f"{src}: frame {last} is beyond the sequence's {length} frames (seqinfo.ini seqLength)")
        data[seq] = (gt, pred, length)
    with tempfile.TemporaryDirectory(prefix="reidkit_trackeval_") as tmp:
        root = Path(tmp) / "cams"
        for seq, (gt, pred, length) in data.items():
            _write_seq(root, seq, gt, pred, length)
        per = _trackeval(root, {s: d[2] for s, d in data.items()})
        multi = None
        if multi_camera and len(data) > 1:
            root = Path(tmp) / "all"
            offset, gts, preds = 0, [], []
            for gt, pred, length in data.values():
                gts.append(gt + np.r_[offset, np.zeros(6)])
                preds.append(pred + np.r_[offset, np.zeros(6)])
                offset += length
            _write_seq(root, ALL_CAMERAS, np.concatenate(gts), np.concatenate(preds), offset)
            multi = _trackeval(root, {ALL_CAMERAS: offset})[ALL_CAMERAS]
    combined = per.pop("COMBINED_SEQ")
    return {"sequences": per, "combined": combined, "multi_camera": multi}


def format_table(res: dict[str, Any]) -> str:
    """A plain-text table of evaluate_tracks' result."""
    cols = ("HOTA", "IDF1", "MOTA", "IDsw", "DetA", "AssA", "IDP", "IDR")
    rows = [("sequence", *cols)]

    def row(name: str, m: dict[str, Any]) -> tuple:
        return (name, *(str(m[c]) if c == "IDsw" else f"{m[c]:.2f}" for c in cols))

    rows += [row(s, m) for s, m in res["sequences"].items()]
    rows.append(row("combined", res["combined"]))
    if res.get("multi_camera"):
        rows.append(row("multi-camera (global ids)", res["multi_camera"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols) + 1)]
    return "\n".join(
        "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows
    )

"""Pictures of an evaluation: ranked lists per query (PNG + index.html, drawn with Pillow), CMC and distance
histograms (matplotlib: the ``plots`` extra)."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np
from numpy.typing import ArrayLike

from reidkit.errors import OptionError, ReIDError

if TYPE_CHECKING:
    from PIL import Image, ImageFont

    from reidkit.data.datasets.core import Record

__all__ = ["visualize_ranked", "plot_cmc", "plot_distance_hist", "rank1_hit"]

GREEN, RED, GREY = "#1a9641", "#d7191c", "#9e9e9e"
_CELL = (128, 64)  # every crop is shown at this (H, W)


# one ranked-list picture: a title line, then a cell per crop (its two-line title above a frame)
_PAD, _FRAME, _GAP, _LINE = 6, 4, 8, 12
CELL_BOX = (_CELL[0] + 2 * _FRAME, _CELL[1] + 2 * _FRAME)  # a framed crop's (H, W)
TOP = _PAD + _LINE + _PAD + 2 * _LINE + 2  # y of the frames' top edge


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=10)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def cell_left(i: int) -> int:
    """x of the left edge of cell `i`'s frame (0: the query) in a ranked-list picture."""
    return _PAD + i * (CELL_BOX[1] + _GAP)


def ranked_picture(header: str, cells: Sequence[tuple[str, str, str | None]]) -> Image.Image:
    """A ranked list as one RGB picture, drawn with Pillow: `header` on top, then one cell per
    ``(image path, two-line title, label)``, framed GREEN / RED / GREY for 'match' / 'wrong' / 'junk'
    (label None: no frame, the query)."""
    from PIL import Image, ImageDraw

    colors = {"match": GREEN, "wrong": RED, "junk": GREY}
    width = cell_left(len(cells)) - _GAP + _PAD
    font = _font()
    canvas = Image.new("RGB", (max(width, 320), TOP + CELL_BOX[0] + _PAD), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((_PAD, _PAD), header, fill="black", font=font)
    for i, (path, title, label) in enumerate(cells):
        x = cell_left(i)
        for line, text in enumerate(title.split("\n")[:2]):
            draw.text((x, TOP - 2 - 2 * _LINE + line * _LINE), text, fill="black", font=font)
        if label is not None:
            draw.rectangle([x, TOP, x + CELL_BOX[1] - 1, TOP + CELL_BOX[0] - 1], fill=colors[label])
        canvas.paste(Image.fromarray(_thumb(path)), (x + _FRAME, TOP + _FRAME))
    return canvas


class _Figure(Protocol):
    """What ``_savefig`` needs of a matplotlib figure (matplotlib is an optional extra)."""

    def savefig(self, fname: Any, *, format: str, dpi: int, bbox_inches: str) -> None: ...


def _save_png(picture: Image.Image, path: str | os.PathLike) -> None:
    """A picture as a PNG through the one atomic writer (regular files only, the user's umask)."""
    from reidkit.utils.io import atomic_write

    with atomic_write(path, "wb") as fh:
        picture.save(fh, format="PNG")


def _savefig(fig: _Figure, path: str | os.PathLike, dpi: int) -> None:
    """A figure as a PNG through the one atomic writer (regular files only, the user's umask)."""
    from reidkit.utils.io import atomic_write

    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")


def _plt() -> Any:  # matplotlib.pyplot: matplotlib is an optional extra, not imported for its types
    from reidkit.utils.extras import require

    matplotlib = require("matplotlib", "CMC and distance plots")

    matplotlib.use("Agg")  # no display on servers/CI
    import matplotlib.pyplot as plt

    return plt


def _thumb(path: str) -> np.ndarray:
    """The image resized to the cell size, or a dark placeholder when it cannot be read."""
    from PIL import Image

    from reidkit.utils.images import open_rgb

    im = open_rgb(path)  # upright: EXIF orientation applied, as the model saw it
    if im is None:
        return np.full((_CELL[0], _CELL[1], 3), 40, dtype=np.uint8)
    return np.asarray(im.resize((_CELL[1], _CELL[0]), Image.Resampling.BILINEAR))


def rank1_hit(labels: Sequence[str] | np.ndarray) -> bool:
    """Whether the first ranked gallery image that the metric keeps (not junk) is a true match."""
    kept = [lab for lab in labels if lab != "junk"]
    return bool(kept) and kept[0] == "match"


def _ap_row(
    order: np.ndarray, q_pid: int, q_cam: int, g_pids: np.ndarray, g_cams: np.ndarray
) -> tuple[np.ndarray, float | None]:
    """Labels ('match'/'wrong'/'junk') of the ranked gallery and the query's AP (None if no match)."""
    same = g_pids[order] == q_pid
    junk = same & (g_cams[order] == q_cam)
    rel = same[~junk]
    labels = np.where(junk, "junk", np.where(same, "match", "wrong"))
    if not rel.any():
        return labels, None
    prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return labels, float((prec * rel).sum() / rel.sum())


def visualize_ranked(
    distmat: ArrayLike,
    query_records: Sequence[Record],
    gallery_records: Sequence[Record],
    out_dir: str | os.PathLike,
    topk: int = 10,
    max_queries: int | None = 100,
    step_name: str | None = None,
) -> Path:
    """Write one ranked-list PNG per query (green = true match, red = wrong, grey = junk) and index.html.

    ``step_name``: the step's name (a bar on a terminal, one line when done otherwise)."""
    from reidkit.utils.progress import step

    d = np.asarray(distmat)
    if d.shape != (len(query_records), len(gallery_records)):
        raise ReIDError(
            f"visualize_ranked: distmat shape {d.shape} does not match "
            f"{len(query_records)} queries x {len(gallery_records)} gallery records"
        )
    if topk < 1:
        raise ReIDError(f"topk: expected a positive integer, got {topk}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError("out_dir", f"cannot create the folder {out}: {exc.strerror or exc}") from None
    g_pids = np.array([r.pid for r in gallery_records])
    g_cams = np.array([r.camid for r in gallery_records])
    n = len(query_records) if max_queries is None else min(max_queries, len(query_records))
    k = min(topk, d.shape[1])
    rows = []
    with step(step_name or "", n, "pictures", show=step_name is not None) as bar:
        for qi in range(n):
            q = query_records[qi]
            order = np.argsort(d[qi], kind="stable")
            labels, ap = _ap_row(order, q.pid, q.camid, g_pids, g_cams)
            ap_txt = "no true match" if ap is None else f"AP {ap * 100:.1f}%"
            # cameras as the file names number them (Record.camid is 0-based: c1 is camid 0)
            cells: list[tuple[str, str, str | None]] = [(q.path, f"query\npid {q.pid} c{q.camid + 1}", None)]
            for j in range(k):
                g = gallery_records[order[j]]
                title = f"#{j + 1} pid {g.pid}\nc{g.camid + 1} d={d[qi, order[j]]:.3f}"
                cells.append((g.path, title, str(labels[j])))
            name = f"query_{qi:05d}.png"
            picture = ranked_picture(f"query {qi}: {Path(q.path).name} ({ap_txt})", cells)
            _save_png(picture, out / name)
            # Rank-1 as the metric counts it: same-identity same-camera images are removed first.
            rows.append((qi, q, ap, name, rank1_hit(labels)))
            bar.update(1)
    items = "\n".join(
        f"<tr><td>{qi}</td><td>{html.escape(Path(q.path).name)}</td><td>{q.pid}</td><td>c{q.camid + 1}</td>"
        f"<td>{'-' if ap is None else f'{ap * 100:.1f}'}</td><td>{'yes' if hit else 'no'}</td>"
        f'<td><a href="{name}"><img src="{name}" height="90" loading="lazy"></a></td></tr>'
        for qi, q, ap, name, hit in rows
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>reidkit ranked lists</title>"
        "<style>body{font-family:sans-serif}td{padding:2px 6px;border-bottom:1px solid #ddd}</style>"
        f"</head><body><h1>Ranked lists (top {k})</h1><p>{n} of {len(query_records)} queries; frame "
        f"<b style='color:{GREEN}'>green</b> = true match, <b style='color:{RED}'>red</b> = wrong, "
        f"<b style='color:{GREY}'>grey</b> = same identity and camera (ignored by the metric; the "
        "rank-1 hit column skips them, as rank-1 does).</p>"
        "<table><tr><th>#</th><th>query</th><th>pid</th><th>cam</th><th>AP %</th><th>rank-1 hit</th>"
        f"<th>ranked list</th></tr>\n{items}\n</table></body></html>\n"
    )
    from reidkit.utils.io import atomic_write

    with atomic_write(out / "index.html", "w") as fh:
        fh.write(page)
    return out / "index.html"


def plot_cmc(cmc: ArrayLike, path: str | os.PathLike, label: str | None = None) -> Path:
    """CMC curve (fractions in [0, 1]) as a PNG."""
    plt = _plt()
    c = np.asarray(cmc, dtype=float).ravel()
    if c.size == 0:
        raise ReIDError("plot_cmc: empty CMC")
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(np.arange(1, c.size + 1), c * 100.0, marker=".", label=label)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"CMC (rank-1 {c[0] * 100:.1f}%)")
    if label:
        ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _savefig(fig, path, dpi=100)
    plt.close(fig)
    return path


def plot_distance_hist(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    path: str | os.PathLike,
    bins: int = 100,
    max_pairs: int = 2_000_000,
    seed: int = 0,
) -> Path:
    """Histograms of positive (same pid) and negative query-gallery distances as a PNG."""
    plt = _plt()
    d = np.asarray(distmat)
    qp, gp = np.asarray(q_pids), np.asarray(g_pids)
    if d.shape != (qp.size, gp.size):
        raise ReIDError(f"plot_distance_hist: distmat shape {d.shape} does not match {qp.size} x {gp.size} pids")
    same = qp[:, None] == gp[None, :]
    pos = d[same]
    neg = d[~same]
    if neg.size > max_pairs:
        # negatives outnumber positives by ~1000x: a uniform sample draws the same shape
        neg = np.random.default_rng(seed).choice(neg, max_pairs, replace=False)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    lo, hi = float(d.min()), float(d.max())
    ax.hist(neg, bins=bins, range=(lo, hi), density=True, alpha=0.6, color=RED, label=f"negative ({(~same).sum()})")
    if pos.size:
        ax.hist(pos, bins=bins, range=(lo, hi), density=True, alpha=0.6, color=GREEN, label=f"positive ({pos.size})")
    ax.set_xlabel("distance")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _savefig(fig, path, dpi=100)
    plt.close(fig)
    return path

"""Ranked-list pictures, index.html, CMC and histogram plots, and the visrank CLI."""

import numpy as np
import pytest
from PIL import Image

from reidkit.data.datasets import Record
from reidkit.errors import ReIDError
from reidkit.evaluation.visualize import plot_cmc, plot_distance_hist, visualize_ranked


def _toy(tmp_path, nq=3, ng=6):
    rng = np.random.default_rng(0)
    recs = []
    for tag, n in (("q", nq), ("g", ng)):
        for i in range(n):
            p = tmp_path / f"{tag}{i}.png"
            Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(p)
            recs.append(Record(path=str(p), pid=i % 3, camid=i % 2, dataset="toy"))
    return recs[:nq], recs[nq:], rng.random((nq, ng)).astype(np.float32)


def test_visualize_ranked_writes_pngs_and_index(tmp_path, monkeypatch):
    import reidkit.evaluation.visualize as vis

    drawn = []
    real = vis.ranked_picture
    monkeypatch.setattr(
        vis, "ranked_picture", lambda header, cells: drawn.append((header, cells)) or real(header, cells)
    )
    q, g, d = _toy(tmp_path)
    index = visualize_ranked(d, q, g, tmp_path / "out", topk=4, max_queries=2)
    # cameras as the file names number them: camid 0 is "c1", camid 1 is "c2"
    assert drawn[1][1][0][1] == "query\npid 1 c2"
    assert drawn[1][0].startswith("query 1: q1.png (AP ")
    assert "<td>1</td><td>c2</td>" in index.read_text()
    pngs = sorted((tmp_path / "out").glob("query_*.png"))
    assert [p.name for p in pngs] == ["query_00000.png", "query_00001.png"]
    assert Image.open(pngs[0]).size[0] > 100
    page = index.read_text()
    assert "query_00001.png" in page and "query_00002.png" not in page
    # each ranked crop is framed in its label's colour (Pillow draws it: no matplotlib needed)
    hex_rgb = {vis.GREEN: "match", vis.RED: "wrong", vis.GREY: "junk"}
    for (header, cells), png in zip(drawn, pngs):
        im = Image.open(png).convert("RGB")
        for i, (_, _, label) in enumerate(cells[1:], start=1):
            rgb = im.getpixel((vis.cell_left(i) + 1, vis.TOP + 1))
            assert hex_rgb.get("#%02x%02x%02x" % rgb) == label
        assert im.getpixel((vis.cell_left(0) + 1, vis.TOP + 1)) == (255, 255, 255)  # the query: no frame
    assert {lab for _, cells in drawn for _, _, lab in cells[1:]} >= {"match", "wrong"}
    with pytest.raises(ReIDError):
        visualize_ranked(d[:, :3], q, g, tmp_path / "bad")


def test_ranked_lists_need_no_matplotlib_and_plots_name_their_extra(tmp_path, monkeypatch):
    """The base install has no matplotlib: ranked lists (the demo, visrank) still draw, and a plot is one
    error naming the extra to install."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    q, g, d = _toy(tmp_path)
    visualize_ranked(d, q, g, tmp_path / "out", topk=3)
    assert len(list((tmp_path / "out").glob("query_*.png"))) == 3
    with pytest.raises(ReIDError, match=r"matplotlib, an optional dependency: pip install 'reidkit\[plots\]'"):
        plot_cmc(np.linspace(0.5, 1, 5), tmp_path / "cmc.png")


def _capture_figures(monkeypatch):
    """Keep each figure a plot function saves, so a test can read what was drawn."""
    import matplotlib.figure

    saved = []
    real = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        saved.append(fig)
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return saved


def test_plots_draw_the_curve_and_both_histograms(tmp_path, monkeypatch):
    saved = _capture_figures(monkeypatch)
    cmc = np.linspace(0.5, 1.0, 20)
    cmc_path = plot_cmc(cmc, tmp_path / "cmc.png")
    ax = saved[-1].axes[0]
    assert ax.lines[0].get_ydata() == pytest.approx(cmc * 100)  # percentages, rank 1..20
    assert list(ax.lines[0].get_xdata()) == list(range(1, 21))
    assert ax.get_title() == "CMC (rank-1 50.0%)"

    # 4 queries x 10 gallery: query pid q matches gallery items with g % 5 == q (2 each, 8 pairs)
    dist = np.random.default_rng(0).random((4, 10))
    hist = plot_distance_hist(dist, [1, 2, 3, 4], np.arange(10) % 5, tmp_path / "h" / "hist.png")
    ax = saved[-1].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["negative (32)", "positive (8)"]
    # the bars drawn are the density histograms of exactly those distances, on one shared range
    same = np.array([1, 2, 3, 4])[:, None] == (np.arange(10) % 5)[None, :]
    for bars, values in zip(ax.containers, (dist[~same], dist[same])):
        want, _ = np.histogram(values, bins=100, range=(dist.min(), dist.max()), density=True)
        assert [r.get_height() for r in bars] == pytest.approx(want)
    assert Image.open(cmc_path).size[0] > 100 and Image.open(hist).size[0] > 100


def _market(tmp_path):
    """A 3-query, 6-gallery Market1501 folder and random features for it (f.npz)."""
    from reidkit.data.datasets import load_dataset

    rng = np.random.default_rng(0)
    base = tmp_path / "data" / "Market-1501-v15.09.15"
    layout = {
        "bounding_box_train": ["0005_c1s1_000001_00", "0005_c2s1_000002_00"],
        "query": ["0001_c1s1_000010_00", "0002_c2s1_000011_00", "0003_c3s1_000012_00"],
        "bounding_box_test": [
            "0001_c2s1_000020_00",
            "0002_c1s1_000021_00",
            "0003_c1s1_000022_00",
            "0000_c1s1_000023_00",
            "0001_c3s1_000024_00",
            "0002_c3s1_000025_00",
        ],
    }
    for folder, names in layout.items():
        (base / folder).mkdir(parents=True)
        for name in names:
            Image.fromarray(rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)).save(base / folder / f"{name}.jpg")
    ds = load_dataset("market1501", tmp_path / "data")
    np.savez(tmp_path / "f.npz", query=rng.random((len(ds.query), 8)), gallery=rng.random((len(ds.gallery), 8)))
    return ds


def test_visrank_cli(tmp_path):
    from reidkit.cli import main

    _market(tmp_path)
    out = tmp_path / "vis"
    assert (
        main(
            [
                "visrank",
                "--features",
                str(tmp_path / "f.npz"),
                "--dataset",
                "market1501",
                "--root",
                str(tmp_path / "data"),
                "--out",
                str(out),
                "--max-queries",
                "2",
            ]
        )
        == 0
    )
    assert (out / "index.html").is_file() and len(list(out.glob("query_*.png"))) == 2
    assert (out / "distance_hist.png").is_file()
    assert (
        main(
            [
                "visrank",
                "--features",
                str(tmp_path / "nope.npz"),
                "--dataset",
                "market1501",
                "--root",
                str(tmp_path / "data"),
                "--out",
                str(out),
            ]
        )
        == 2
    )


def test_visrank_and_evaluate_without_matplotlib(tmp_path, monkeypatch, capsys):
    """The base install (no plots extra): visrank draws its ranked lists and prints the metrics, skipping the two
    plots with one line naming the extra; evaluate(visualize=True) refuses before any work, naming it too."""
    import sys

    from reidkit.cli import main
    from reidkit.evaluation.evaluator import evaluate
    from reidkit.utils.extras import MissingExtra

    ds = _market(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "vis"
    argv = [
        "visrank",
        "--features",
        str(tmp_path / "f.npz"),
        "--dataset",
        "market1501",
        "--root",
        str(tmp_path / "data"),
    ]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mAP " in printed and "plots skipped: " in printed and "pip install 'reidkit[plots]'" in printed
    assert len(list(out.glob("query_*.png"))) == 3 and not (out / "cmc.png").exists()
    feats = dict(np.load(tmp_path / "f.npz"))
    with pytest.raises(MissingExtra, match=r"reidkit\[plots\]"):
        evaluate(feats, ds, out_dir=tmp_path / "ev", visualize=True)
    assert not (tmp_path / "ev").exists()  # refused before any work
    assert evaluate(feats, ds, out_dir=tmp_path / "ev")["mAP"] >= 0  # without pictures: no extra needed

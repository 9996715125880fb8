"""Global identities end to end on a generated 3-camera chain scene: `reidkit scene`, `reidkit video`,
`reidkit identities` (incremental, then with and without camera links), `reidkit identities export`,
`reidkit eval-tracks`; constraints hold (no identity holds two overlapping tracklets of one camera)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from factories import cli_stdout

from reidkit.cli import main

pytest.importorskip("trackeval")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("mct")
    cli_stdout(
        "scene",
        str(root / "s"),
        *"--cams 3 --ids 9 --frames 120 --size 120x160 --speed 1.0 --transit 1,3 --seed 1".split(),
    )
    return root


def _video(root, cams):
    args = ["video"] + [str(root / "s" / c / f"{c}.avi") for c in cams]
    for c in cams:
        args += ["--detections", str(root / "s" / c / "gt" / "gt.txt")]
    return cli_stdout(*args, "--db", str(root / "db"))


def _assigned(db):
    from reidkit.retrieval.gallery import Gallery

    return Gallery.open(db).get_state("identities")["tracklets"]


@pytest.fixture(scope="module")
def ingested(scene):
    """cam1 and cam2 ingested and clustered first, then cam3 added and clustered incrementally."""
    _video(scene, ["cam1", "cam2"])
    cli_stdout("identities", "--db", str(scene / "db"), "--links", str(scene / "s" / "links.yaml"))
    first = _assigned(scene / "db")
    _video(scene, ["cam3"])
    out = cli_stdout("identities", "--db", str(scene / "db"))  # links and threshold: the stored run's
    return {"first": first, "second": _assigned(scene / "db"), "report": out}


def _evaluate(scene, name):
    pred = scene / name
    cli_stdout("identities", "export", "--db", str(scene / "db"), "--out", str(pred))
    metrics = scene / f"{name}.json"
    table = cli_stdout("eval-tracks", "--gt", str(scene / "s" / "GT"), "--pred", str(pred), "--out", str(metrics))
    return json.loads(metrics.read_text()), table


def test_incremental_keeps_ids_and_constraints_hold(scene, ingested):
    from reidkit.cluster.identities import impossible_pairs, load_links
    from reidkit.retrieval.gallery import Gallery

    first, second = ingested["first"], ingested["second"]
    assert first and all(second[k] == v for k, v in first.items())  # nobody renumbered
    assert set(second) - set(first) and all(k.startswith("cam3") for k in set(second) - set(first))
    assert "new tracklets" in ingested["report"]
    g = Gallery.open(scene / "db")
    rows = g.entries(kind="tracklet")
    ids = np.asarray([second[r["tracklet"]] for r in rows])
    cams = [r["camera"] for r in rows]
    t0, t1 = [r["t_start"] for r in rows], [r["t_end"] for r in rows]
    same_id = (ids[:, None] == ids[None]) & ~np.eye(len(ids), dtype=bool)
    # no global identity holds two overlapping tracklets of one camera, nor breaks a link window
    assert not (same_id & impossible_pairs(cams, t0, t1)).any()
    assert not (same_id & impossible_pairs(cams, t0, t1, load_links(scene / "s" / "links.yaml"))).any()
    assert len({c for c, i in zip(cams, ids) if (ids == i).sum() > 1}) >= 2  # someone found across cameras


def test_tracklets_carry_a_colour_descriptor_that_identities_use(scene, ingested):
    from reidkit.retrieval.gallery import Gallery
    from reidkit.video.colour import DIM

    rows = Gallery.open(scene / "db").entries(kind="tracklet")
    assert rows and all(len(r["meta"]["colour"]) == DIM for r in rows)
    rep = json.loads(cli_stdout("identities", "--db", str(scene / "db"), "--json"))
    assert rep["colour"] is True and rep["params"]["colour"] == 0.5
    assert rep["params"]["rerank"] is False and rep["params"]["seed_min"] == 1.0
    assert rep["params"]["linkage"] == "complete"
    off = json.loads(cli_stdout("identities", "--db", str(scene / "db"), "--json", "--colour", "0", "--seed-min", "0"))
    assert off["colour"] is False and off["params"]["seed_min"] == 0.0
    cli_stdout("identities", "--db", str(scene / "db"), "--colour", "0.5", "--seed-min", "1")  # back to the defaults


def test_end_to_end_metrics_and_links_help(scene, ingested):
    with_links, table = _evaluate(scene, "pred_links")
    assert "multi-camera" in table and "HOTA" in table
    for cam in ("cam1", "cam2", "cam3"):
        m = with_links["sequences"][cam]
        # ground-truth boxes as detections: detection is perfect, identity is what is measured
        assert m["DetA"] > 90 and m["IDF1"] > 80 and m["MOTA"] > 80
    # the same features clustered without the camera links: some impossible merges happen
    cli_stdout("identities", "--db", str(scene / "db"), "--rebuild", "--threshold", "0.7")
    loose, _ = _evaluate(scene, "pred_nolinks")
    cli_stdout(
        "identities",
        "--db",
        str(scene / "db"),
        "--rebuild",
        "--threshold",
        "0.7",
        "--links",
        str(scene / "s" / "links.yaml"),
    )
    linked, _ = _evaluate(scene, "pred_links2")
    assert linked["multi_camera"]["IDF1"] > loose["multi_camera"]["IDF1"] + 5
    assert linked["multi_camera"]["IDF1"] > 80


def test_bad_inputs(scene, ingested, tmp_path, capsys):
    assert main(["identities", "--db", str(scene / "db"), "--threshold", "nan"]) == 2
    assert "--threshold" in capsys.readouterr().err
    bad = tmp_path / "links.yaml"
    bad.write_text("links:\n  - {cameras: [cam1], min: 1, max: 2}\n")
    assert main(["identities", "--db", str(scene / "db"), "--links", str(bad)]) == 2
    assert "links[0].cameras" in capsys.readouterr().err
    assert main(["identities", "--db", str(scene / "db"), "--colour", "2"]) == 2
    assert "--colour" in capsys.readouterr().err
    assert main(["identities", "--db", str(scene / "db"), "--seed-min", "-1"]) == 2
    assert "--seed-min" in capsys.readouterr().err
    assert main(["identities"]) == 2
    assert "--db is required" in capsys.readouterr().err


def test_identities_page_shows_a_cross_camera_timeline(scene, ingested, tmp_path):
    """The /identities page in headless Chromium: one identity's tracklets per camera match the scene's truth."""
    from factories import chromium_page
    from factories import screenshot, serving
    from test_video import _majority

    from reidkit.data.scene import read_mot
    from reidkit.retrieval.gallery import Gallery
    from reidkit.retrieval.service import create_app
    from reidkit.video.identity_routes import identity_router
    from reidkit.video.routes import tracklet_routes

    gts = {c: read_mot(scene / "s" / c / "gt" / "gt.txt") for c in ("cam1", "cam2", "cam3")}
    g = Gallery.open(scene / "db")
    assigned = g.get_state("identities")["tracklets"]
    rows = g.entries(kind="tracklet")
    truth = {r["tracklet"]: _majority(r, gts[r["camera"]]) for r in rows}
    chosen = None
    for ident in sorted(set(assigned.values())):
        mine = [r for r in rows if assigned[r["tracklet"]] == ident]
        pids = {truth[r["tracklet"]] for r in mine}
        if len(pids) != 1 or len({r["camera"] for r in mine}) < 2:
            continue
        pid = pids.pop()
        if pid > 0 and {k for k, p in truth.items() if p == pid} == {r["tracklet"] for r in mine}:
            chosen = (ident, pid, mine)  # an identity holding exactly one person's tracklets, in 2+ cameras
            break
    assert chosen is not None
    ident, pid, mine = chosen
    true_cams = sorted(c for c, gt in gts.items() if (gt[:, 1] == pid).any())
    token = "identities-token"
    app = create_app(scene / "db", routers=[tracklet_routes, identity_router], token=token)
    with serving(app) as url, chromium_page(1280, 900, bypass_csp=True) as page:
        page.goto(url + "/identities")
        page.click("button[type=submit]")  # without the token: refused, and the page says so
        page.wait_for("document.querySelector('#error').textContent.length > 0")
        page.fill("#token", token)
        page.check("#multi")
        page.click("button[type=submit]")
        page.wait_for("document.querySelector('#ids').dataset.ready === '1'")
        card = f".identity[data-id='{ident}']"
        lanes = page.eval_on_selector_all(f"{card} .lane", "ls => ls.map(l => l.dataset.camera)")
        assert lanes == true_cams  # the person's cameras, as the scene's ground truth has them
        blocks = page.eval_on_selector_all(
            f"{card} .tl",
            "bs => bs.map(b => ({key: b.dataset.tracklet, cam: b.dataset.camera, t0: +b.dataset.t0,"
            " t1: +b.dataset.t1}))",
        )
        assert sorted(b["key"] for b in blocks) == sorted(r["tracklet"] for r in mine)
        for b in blocks:  # each block lies where the ground truth has the person in that camera
            frames = gts[b["cam"]][gts[b["cam"]][:, 1] == pid, 0]
            assert (frames.min() - 1) / 10 - 0.05 <= b["t0"] <= b["t1"] <= (frames.max() - 1) / 10 + 0.05
        page.wait_for(
            f'[...document.querySelectorAll("{card} .tl img")].every((i) => i.complete && i.naturalWidth > 0)'
        )
        first = min(blocks, key=lambda b: b["t0"])
        page.click(f"{card} .tl[data-tracklet='{first['key']}']")
        page.wait_for("document.querySelectorAll('#detail tr').length > 2")
        shown = [
            int(t) for t in page.eval_on_selector_all("#detail tr td:first-child", "tds => tds.map(t => t.textContent)")
        ]
        gt_frames = set(gts[first["cam"]][gts[first["cam"]][:, 1] == pid, 0].astype(int).tolist())
        assert shown == sorted(shown) and set(shown) <= gt_frames and len(shown) >= 3
        screenshot(page, tmp_path / "identities.png", "REIDKIT_SCREENSHOT_IDENTITIES")

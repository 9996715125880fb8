"""Dataset loaders on miniature trees with each dataset's real folder and file naming."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.cli import main
from reidkit.data import DATASETS, Record, load_dataset, load_datasets, train_labels
from reidkit.data.datasets import dataset_options, parse_options
from reidkit.errors import ReIDError


def _encode(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 8), (120, 60, 30)).save(buf, format=fmt)
    return buf.getvalue()


JPEG = _encode("JPEG")
PNG = _encode("PNG")


def touch(path: Path, data: bytes = JPEG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_split(folder: Path, names: list[str], data: bytes = JPEG) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        touch(folder / name, data)


MARKET_TRAIN = [
    "0002_c1s1_000451_03.jpg",
    "0002_c2s1_000551_01.jpg",
    "0007_c3s1_001051_00.jpg",
    "0007_c6s4_002202_02.jpg",
    "-1_c1s1_000001_00.jpg",  # junk
    "0000_c1s1_000002_00.jpg",  # distractor outside the gallery: dropped
]
MARKET_QUERY = ["0001_c1s1_001051_00.jpg", "0003_c5s1_000001_01.jpg"]
MARKET_GALLERY = [
    "0001_c2s1_000301_01.jpg",
    "0001_c1s1_000101_01.jpg",
    "0003_c4s2_000001_02.jpg",
    "0000_c1s1_000000_01.jpg",  # distractor
    "-1_c3s1_000401_03.jpg",  # junk
]


def make_market(root: Path) -> Path:
    base = root / "Market-1501-v15.09.15"
    write_split(base / "bounding_box_train", MARKET_TRAIN)
    write_split(base / "query", MARKET_QUERY)
    write_split(base / "bounding_box_test", MARKET_GALLERY)
    (base / "bounding_box_test" / "Thumbs.db").write_bytes(b"\0\1")
    (base / "query" / "._0001_c1s1_001051_00.jpg").write_bytes(b"\0")  # macOS resource fork
    return base


def make_duke(root: Path) -> Path:
    base = root / "DukeMTMC-reID"
    write_split(base / "bounding_box_train", ["0002_c2_f0046182.jpg", "0002_c8_f0100000.jpg", "0005_c1_f0000001.jpg"])
    write_split(base / "query", ["0010_c3_f0000100.jpg"])
    write_split(base / "bounding_box_test", ["0010_c4_f0000200.jpg", "0010_c3_f0000300.jpg", "0011_c5_f0000001.jpg"])
    return base


# --------------------------------------------------------------------------- Market / Duke


def test_market1501_counts_pids_cameras_junk_distractors(tmp_path: Path) -> None:
    base = make_market(tmp_path)
    ds = load_dataset("market1501", tmp_path)
    assert ds.name == "market1501"
    assert [(r.pid, r.camid, r.frame) for r in ds.train] == [(2, 0, 451), (2, 1, 551), (7, 2, 1051), (7, 5, 2202)]
    assert [(r.pid, r.camid) for r in ds.query] == [(1, 0), (3, 4)]
    assert sorted((r.pid, r.camid) for r in ds.gallery) == [(0, 0), (1, 0), (1, 1), (3, 3)]
    assert all(r.dataset == "market1501" for r in ds.train + ds.query + ds.gallery)
    assert ds.train[0].path == str(base / "bounding_box_train" / "0002_c1s1_000451_03.jpg")
    assert all(Path(r.path).is_absolute() for r in ds.gallery)
    assert ds.num_train_pids == 2 and ds.num_train_cams == 4
    assert ds.stats() == [
        {"split": "train", "ids": 2, "images": 4, "cameras": 4},
        {"split": "query", "ids": 2, "images": 2, "cameras": 2},
        {"split": "gallery", "ids": 3, "images": 4, "cameras": 3},
    ]
    # Root may point at the Market-1501-v15.09.15 folder itself.
    same = load_dataset("Market1501", base)
    assert same.train == ds.train and same.query == ds.query and same.gallery == ds.gallery


def test_market1501_500k_distractors(tmp_path: Path) -> None:
    base = make_market(tmp_path)
    with pytest.raises(ReIDError, match="images"):
        load_dataset("market1501", tmp_path, market1501_500k=True)
    write_split(base / "images", ["0000_c1s1_500000_00.jpg", "0000_c6s3_500001_01.jpg"])
    ds = load_dataset("market1501", tmp_path, market1501_500k=True)
    assert len(ds.gallery) == 6
    extra = [r for r in ds.gallery if "/images/" in r.path]
    assert [(r.pid, r.camid) for r in extra] == [(0, 0), (0, 5)]
    assert len(load_dataset("market1501", tmp_path).gallery) == 4


def test_market1501_bad_inputs(tmp_path: Path) -> None:
    base = make_market(tmp_path)
    touch(base / "query" / "person.jpg")
    with pytest.raises(ReIDError, match=r"person\.jpg.*0002_c1s1_000451_03\.jpg"):
        load_dataset("market1501", tmp_path)
    (base / "query" / "person.jpg").unlink()
    touch(base / "bounding_box_train" / "0009_c7s1_000001_00.jpg")
    with pytest.raises(ReIDError, match=r"camera 7 out of range 1\.\.6"):
        load_dataset("market1501", tmp_path)
    (base / "bounding_box_train" / "0009_c7s1_000001_00.jpg").unlink()
    for f in (base / "query").iterdir():
        f.unlink()
    with pytest.raises(ReIDError, match="empty query set"):
        load_dataset("market1501", tmp_path)
    (base / "query").rmdir()
    with pytest.raises(ReIDError, match=r"lacks query; expected <root>/Market-1501-v15\.09\.15"):
        load_dataset("market1501", tmp_path)
    with pytest.raises(ReIDError, match=r"does not exist"):
        load_dataset("market1501", tmp_path / "nowhere")
    with pytest.raises(ReIDError, match=r"unknown option\(s\) 500k"):
        load_dataset("market1501", tmp_path, **{"500k": True})


def test_dukemtmc(tmp_path: Path) -> None:
    make_duke(tmp_path)
    ds = load_dataset("dukemtmc", tmp_path)
    assert [(r.pid, r.camid, r.frame) for r in ds.train] == [(2, 1, 46182), (2, 7, 100000), (5, 0, 1)]
    assert [(r.pid, r.camid) for r in ds.query] == [(10, 2)]
    assert [(r.pid, r.camid) for r in ds.gallery] == [(10, 2), (10, 3), (11, 4)]
    with pytest.raises(ReIDError, match="DukeMTMC-reID"):
        load_dataset("dukemtmc", tmp_path / "DukeMTMC-reID" / "query")


# --------------------------------------------------------------------------- MSMT17

MSMT_TRAIN = [
    ("0000/0000_000_01_0303morning_0015_0.jpg", 0),
    ("0000/0000_001_05_0303morning_0016_0.jpg", 0),
    ("0001/0001_000_15_0303noon_0001_0.jpg", 1),
]
MSMT_VAL = [("0001/0001_001_03_0303noon_0002_1.jpg", 1)]
MSMT_QUERY = [("0000/0000_000_02_0113morning_0001_0.jpg", 0)]
MSMT_GALLERY = [("0000/0000_001_07_0113morning_0002_0.jpg", 0), ("0001/0001_000_02_0113noon_0003_0.jpg", 1)]


def make_msmt(root: Path, version: str) -> Path:
    main_dir, train_dir, test_dir = {
        "v1": ("MSMT17_V1", "train", "test"),
        "v2": ("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
    }[version]
    base = root / main_dir
    lists = {
        "list_train.txt": (train_dir, MSMT_TRAIN),
        "list_val.txt": (train_dir, MSMT_VAL),
        "list_query.txt": (test_dir, MSMT_QUERY),
        "list_gallery.txt": (test_dir, MSMT_GALLERY),
    }
    for list_name, (folder, entries) in lists.items():
        for rel, _ in entries:
            touch(base / folder / rel)
        (base / list_name).write_text("".join(f"{rel} {pid}\n" for rel, pid in entries))
    return base


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_msmt17_versions_and_combine_val(tmp_path: Path, version: str) -> None:
    base = make_msmt(tmp_path, version)
    opts = {"version": version} if version == "v1" else {}
    ds = load_dataset("msmt17", tmp_path, **opts)
    train_dir = "train" if version == "v1" else "mask_train_v2"
    # pids are the lists' ids + 1 (pid 0 is reserved for distractors); cameras 1-15 -> 0-14.
    assert [(r.pid, r.camid) for r in ds.train] == [(1, 0), (1, 4), (2, 14), (2, 2)]
    assert ds.train[0].path == str(base / train_dir / MSMT_TRAIN[0][0])
    assert [(r.pid, r.camid) for r in ds.query] == [(1, 1)]
    assert [(r.pid, r.camid) for r in ds.gallery] == [(1, 6), (2, 1)]
    assert ds.meta["version"] == version
    no_val = load_dataset("msmt17", tmp_path, combine_val=False, **opts)
    assert len(no_val.train) == 3 and len(no_val.meta["val"]) == 1


def test_msmt17_wrong_version_and_missing_image(tmp_path: Path) -> None:
    base = make_msmt(tmp_path, "v1")
    with pytest.raises(ReIDError, match=r"MSMT17_V2.*version='v1'"):
        load_dataset("msmt17", tmp_path)
    with pytest.raises(ReIDError, match="is not one of v1, v2"):
        load_dataset("msmt17", tmp_path, version="v3")
    (base / "test" / MSMT_GALLERY[1][0]).unlink()
    with pytest.raises(ReIDError, match=r"1 images listed in .*list_gallery\.txt are missing"):
        load_dataset("msmt17", tmp_path, version="v1")
    (base / "list_query.txt").write_text("0000/0000_000_02_0113morning_0001_0.jpg\n")
    with pytest.raises(ReIDError, match=r"malformed line .*list_query\.txt:1"):
        load_dataset("msmt17", tmp_path, version="v1")


# --------------------------------------------------------------------------- CUHK03-NP


def test_cuhk03_np_labeled_and_detected(tmp_path: Path) -> None:
    base = tmp_path / "cuhk03-np"
    for split, extra in (("labeled", []), ("detected", ["0003_c2_9.png"])):
        write_split(
            base / split / "bounding_box_train", ["0001_c1_1.png", "0001_c2_6.png", "0003_c1_2.png", *extra], PNG
        )
        write_split(base / split / "query", ["0700_c1_1.png", "0701_c2_7.png"], PNG)
        write_split(base / split / "bounding_box_test", ["0700_c2_6.png", "0701_c1_1.png", "0701_c1_2.png"], PNG)
    labeled = load_dataset("cuhk03", tmp_path)
    detected = load_dataset("cuhk03", tmp_path, split="detected")
    assert labeled.meta["split"] == "labeled" and detected.meta["split"] == "detected"
    assert [(r.pid, r.camid) for r in labeled.train] == [(1, 0), (1, 1), (3, 0)]
    assert [(r.pid, r.camid) for r in detected.train] == [(1, 0), (1, 1), (3, 0), (3, 1)]
    assert all("/detected/" in r.path for r in detected.train + detected.query + detected.gallery)
    assert [(r.pid, r.camid) for r in labeled.query] == [(700, 0), (701, 1)]
    assert [(r.pid, r.camid) for r in labeled.gallery] == [(700, 1), (701, 0), (701, 0)]
    with pytest.raises(ReIDError, match="is not one of labeled, detected"):
        load_dataset("cuhk03", tmp_path, split="both")
    with pytest.raises(ReIDError, match="is the labeled set but split='detected'"):
        load_dataset("cuhk03", base / "labeled", split="detected")


# --------------------------------------------------------------------------- folder

FOLDER_COUNTS = {"alice": 3, "bob": 2, "carol": 1, "dave": 4, "erin": 2, "frank": 3}


def make_folder(root: Path) -> None:
    for ident, n in FOLDER_COUNTS.items():
        for i in range(n):
            touch(root / ident / f"img{i}.jpg")
    (root / "alice" / "notes.txt").write_text("not an image")


def test_folder_without_cameras_split(tmp_path: Path) -> None:
    make_folder(tmp_path)
    ds = load_dataset("folder", tmp_path)  # split_test=0.5, seed=0
    assert ds.meta["identities"] == sorted(FOLDER_COUNTS)
    pid_name = {i + 1: n for i, n in enumerate(ds.meta["identities"])}
    test = set(ds.meta["split_test"]["test_identities"])
    assert len(test) == 3 and "carol" in test
    # carol has a single image: gallery only, never a query.
    carol = [r for r in ds.query + ds.gallery if pid_name[r.pid] == "carol"]
    assert len(carol) == 1 and carol[0] in ds.gallery
    train_names = {pid_name[r.pid] for r in ds.train}
    assert train_names == set(FOLDER_COUNTS) - test
    assert len(ds.train) == sum(FOLDER_COUNTS[n] for n in train_names)
    # One query per test identity with >= 2 images, the rest in the gallery.
    assert sorted(pid_name[r.pid] for r in ds.query) == sorted(n for n in test if FOLDER_COUNTS[n] > 1)
    assert len(ds.gallery) == sum(FOLDER_COUNTS[n] for n in test) - len(ds.query)
    everything = ds.train + ds.query + ds.gallery
    assert len(everything) == 15
    # Without cameras every image is its own camera.
    assert sorted(r.camid for r in everything) == list(range(15))
    again = load_dataset("folder", tmp_path)
    assert (again.train, again.query, again.gallery) == (ds.train, ds.query, ds.gallery)
    train_only = load_dataset("folder", tmp_path, split_test=0.0)
    assert len(train_only.train) == 15 and train_only.query == [] and train_only.gallery == []
    assert train_only.num_train_pids == 6


def test_folder_with_camera_regex(tmp_path: Path) -> None:
    layout = {
        "p1": ["a_c1_0.jpg", "a_c1_1.jpg", "a_c2_0.jpg"],
        "p2": ["b_c1_0.jpg", "b_c3_0.jpg", "b_c3_1.jpg"],
        "p3": ["c_c2_0.jpg", "c_c2_1.jpg"],
        "p4": ["d_c1_0.jpg", "d_c2_0.jpg"],
        "p5": ["e_c1_0.jpg", "e_c3_0.jpg"],
    }
    for ident, names in layout.items():
        for name in names:
            touch(tmp_path / ident / name)
    ds = load_dataset("folder", tmp_path, cam_regex=r"_c(\d+)_", split_test=0.8, seed=3)
    test = ds.meta["split_test"]["test_identities"]
    assert len(test) == 4
    everything = ds.train + ds.query + ds.gallery
    assert len(everything) == 12
    cam_of = {Path(r.path).name: r.camid for r in everything}
    assert cam_of["a_c1_0.jpg"] == 0 and cam_of["a_c2_0.jpg"] == 1 and cam_of["b_c3_1.jpg"] == 2
    # Every query keeps a true match in another camera; a one-camera identity gives no query.
    for q in ds.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in ds.gallery)
    assert 3 not in {r.pid for r in ds.query}
    n_query = sum(1 for name in test if name != "p3")
    assert len(ds.query) == n_query
    assert {r.pid for r in ds.train}.isdisjoint({r.pid for r in ds.query + ds.gallery})
    with pytest.raises(ReIDError, match=r"cam_regex 'cam\(\\\\d\)' does not match .*a_c1_0\.jpg"):
        load_dataset("folder", tmp_path, cam_regex=r"cam(\d)")
    with pytest.raises(ReIDError, match="exactly one group"):
        load_dataset("folder", tmp_path, cam_regex=r"c\d")


def test_folder_with_query_gallery_split(tmp_path: Path) -> None:
    touch(tmp_path / "train" / "anna" / "x_c1.jpg")
    touch(tmp_path / "train" / "anna" / "x_c2.jpg")
    touch(tmp_path / "train" / "ben" / "y_c1.jpg")
    touch(tmp_path / "query" / "zoe" / "q_c1.jpg")
    touch(tmp_path / "gallery" / "zoe" / "g_c2.jpg")
    touch(tmp_path / "gallery" / "zoe" / "sub" / "g_c3.jpg")
    touch(tmp_path / "gallery" / "yan" / "h_c1.jpg")
    ds = load_dataset("folder", tmp_path, cam_regex=r"_c(\d)")
    assert ds.meta["identities"] == ["anna", "ben", "yan", "zoe"]
    assert [(r.pid, r.camid) for r in ds.train] == [(1, 0), (1, 1), (2, 0)]
    assert [(r.pid, r.camid) for r in ds.query] == [(4, 0)]
    assert sorted((r.pid, r.camid) for r in ds.gallery) == [(3, 0), (4, 1), (4, 2)]
    no_cams = load_dataset("folder", tmp_path, dataset_name="mine")
    assert {r.dataset for r in no_cams.query + no_cams.gallery} == {"mine"}
    assert len({r.camid for r in no_cams.train + no_cams.query + no_cams.gallery}) == 7


def test_folder_bad_layouts(tmp_path: Path) -> None:
    touch(tmp_path / "loose" / "a.jpg")
    with pytest.raises(ReIDError, match=r"lies directly in .*loose.*ROOT/<identity>/<image>"):
        load_dataset("folder", tmp_path / "loose")
    touch(tmp_path / "half" / "query" / "p" / "a.jpg")
    with pytest.raises(ReIDError, match="both query and gallery"):
        load_dataset("folder", tmp_path / "half")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReIDError, match="no images under"):
        load_dataset("folder", tmp_path / "empty")
    touch(tmp_path / "single" / "p" / "a.jpg")
    touch(tmp_path / "single" / "q" / "b.jpg")
    with pytest.raises(ReIDError, match="empty query set after split_test"):
        load_dataset("folder", tmp_path / "single")


# --------------------------------------------------------------------------- csv


def test_csv_manifest(tmp_path: Path) -> None:
    for name in ("a1.jpg", "a2.jpg", "b1.jpg", "q1.jpg", "g1.jpg", "g2.jpg", "d.jpg", "j.jpg"):
        touch(tmp_path / "imgs" / name)
    absolute = tmp_path / "imgs" / "g2.jpg"
    lines = [
        "path,pid,camid,split",
        "imgs/a1.jpg,5,0,train",
        "imgs/a2.jpg,5,1,train",
        "imgs/b1.jpg,9,,train",
        "imgs/q1.jpg,20,0,query",
        "imgs/g1.jpg,20,1,gallery",
        f"{absolute},21,3,gallery",
        "imgs/d.jpg,0,2,gallery",
        "imgs/j.jpg,-1,0,gallery",
        "",
    ]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines))
    ds = load_dataset("csv", manifest)
    assert [(r.pid, r.camid) for r in ds.train] == [(5, 0), (5, 1), (9, 4)]
    assert ds.train[0].path == str(tmp_path / "imgs" / "a1.jpg")
    assert [(r.pid, r.camid) for r in ds.query] == [(20, 0)]
    assert [(r.pid, r.camid) for r in ds.gallery] == [(20, 1), (21, 3), (0, 2)]
    assert ds.gallery[1].path == str(absolute)


def test_csv_errors(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,pid,split\na.jpg,1,train\n")
    with pytest.raises(ReIDError, match=r"bad\.csv lacks column\(s\) camid"):
        load_dataset("csv", bad)
    bad.write_text("path,pid,camid,split\na.jpg,1,0,test\n")
    with pytest.raises(ReIDError, match=r"split 'test' at .*bad\.csv:2"):
        load_dataset("csv", bad)
    bad.write_text("path,pid,camid,split\nmissing.jpg,1,0,train\n")
    with pytest.raises(ReIDError, match=r"1 images listed in .*missing\.jpg"):
        load_dataset("csv", bad)
    bad.write_text("path,pid,camid,split\na.jpg,0,0,query\n")
    with pytest.raises(ReIDError, match="pid 0 .* not allowed in query"):
        load_dataset("csv", bad)
    bad.write_text("path,pid,camid,split\na.jpg,1,0,gallery\n")
    with pytest.raises(ReIDError, match="empty query set"):
        load_dataset("csv", bad)


# --------------------------------------------------------------------------- joint training


def test_joint_training_pid_namespaces(tmp_path: Path) -> None:
    make_market(tmp_path / "m")
    make_duke(tmp_path / "d")
    joint = load_datasets(
        [{"name": "market1501", "root": tmp_path / "m"}, {"name": "dukemtmc", "root": tmp_path / "d"}]
    )
    assert joint.name == "market1501+dukemtmc"
    assert [p.name for p in joint.parts] == ["market1501", "dukemtmc"]
    assert len(joint.train) == 7
    # Both sets have a pid 2; records keep it, training labels keep them apart.
    assert {(r.dataset, r.pid) for r in joint.train} == {
        ("market1501", 2),
        ("market1501", 7),
        ("dukemtmc", 2),
        ("dukemtmc", 5),
    }
    labels, mapping = train_labels(joint.train)
    assert labels.dtype == np.int64
    assert mapping == {("dukemtmc", 2): 0, ("dukemtmc", 5): 1, ("market1501", 2): 2, ("market1501", 7): 3}
    assert labels.tolist() == [2, 2, 3, 3, 0, 0, 1]
    assert joint.num_train_pids == 4
    assert joint.stats()[-1] == {
        "dataset": "market1501+dukemtmc",
        "split": "train",
        "ids": 4,
        "images": 7,
        "cameras": 7,
    }
    single = load_datasets(["market1501"], root=tmp_path / "m")
    assert len(single.train) == 4 and single.parts[0].query == joint.parts[0].query
    with pytest.raises(ReIDError, match="no root for dataset 'dukemtmc'"):
        load_datasets(["dukemtmc"])
    with pytest.raises(ReIDError, match="appear twice"):
        load_datasets([{"name": "market1501", "root": tmp_path / "m"}, {"name": "market1501", "root": tmp_path / "m"}])


def test_train_labels_single_dataset() -> None:
    recs = [Record("/x/a.jpg", 7, 0, "s"), Record("/x/b.jpg", 3, 1, "s"), Record("/x/c.jpg", 7, 2, "s")]
    labels, mapping = train_labels(recs)
    assert labels.tolist() == [1, 0, 1] and mapping == {("s", 3): 0, ("s", 7): 1}
    empty, none = train_labels([])
    assert empty.shape == (0,) and none == {}


# --------------------------------------------------------------------------- registry and CLI


def test_registry_and_options() -> None:
    assert list(DATASETS) == ["market1501", "dukemtmc", "msmt17", "cuhk03", "folder", "csv", "synthetic"]
    assert dataset_options("synthetic") == {
        "ids": 100,
        "images_per_id": 16,
        "cams": 6,
        "seed": 0,
        "domain": "A",
        "size": "128x64",
    }
    assert parse_options("folder", ["split_test=0.25", "seed=3", r"cam_regex=[cC](\d+)"]) == {
        "split_test": 0.25,
        "seed": 3,
        "cam_regex": r"[cC](\d+)",
    }
    assert parse_options("msmt17", ["combine_val=false"]) == {"combine_val": False}
    with pytest.raises(ReIDError, match="not a valid int"):
        parse_options("folder", ["seed=x"])
    with pytest.raises(ReIDError, match=r"unknown dataset 'viper'.*market1501"):
        load_dataset("viper", "/tmp")


def test_cli_stats_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_market(tmp_path)
    assert main(["data", "stats", "market1501", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {
        line.split("|")[0].strip(): [int(v) for v in line.split("|")[1:]]
        for line in out.splitlines()
        if line.strip().startswith(("train", "query", "gallery"))
    }
    assert rows == {"train": [2, 4, 4], "query": [2, 2, 2], "gallery": [3, 4, 3]}
    assert "ids" in out and "cameras" in out
    write_split(tmp_path / "Market-1501-v15.09.15" / "images", ["0000_c1s1_500000_00.jpg"])
    assert main(["data", "stats", "market1501", "--root", str(tmp_path), "-o", "market1501_500k=true"]) == 0
    out = capsys.readouterr().out
    gallery = [line for line in out.splitlines() if line.strip().startswith("gallery")]
    assert [int(v) for v in gallery[0].split("|")[1:]] == [3, 5, 3]


def test_cli_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert main(["data", "stats", "market1501", "--root", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: market1501: dataset root ") and str(missing) in err
    assert "Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}" in err
    assert main(["data", "stats", "viper", "--root", str(tmp_path)]) == 2
    assert "error: unknown dataset 'viper'" in capsys.readouterr().err
    assert main(["data", "stats", "msmt17", "--root", str(tmp_path), "-o", "flavour=x"]) == 2
    assert "unknown option 'flavour'" in capsys.readouterr().err


def test_synthetic_is_registered_lazily() -> None:
    # registered with the other datasets, but the generator is imported only when a set is made
    import subprocess
    import sys

    code = (
        "import sys; from reidkit.data.datasets import DATASETS; assert 'synthetic' in DATASETS; "
        "print(sorted(m for m in sys.modules if m.startswith('reidkit.data.synthetic')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert DATASETS["synthetic"].__name__ == "load_synthetic"
    with pytest.raises(ReIDError, match="no root given"):
        load_dataset("synthetic", "")


def test_joint_training_two_folders_need_names(tmp_path: Path) -> None:
    for site in ("siteA", "siteB"):
        for ident in ("p1", "p2"):
            touch(tmp_path / site / ident / "0.jpg")
            touch(tmp_path / site / ident / "1.jpg")
    specs = [
        {"name": "folder", "root": tmp_path / "siteA", "split_test": 0.0},
        {"name": "folder", "root": tmp_path / "siteB", "split_test": 0.0},
    ]
    with pytest.raises(ReIDError, match=r"folder appear twice.*dataset_name"):
        load_datasets(specs)
    specs[0]["dataset_name"], specs[1]["dataset_name"] = "siteA", "siteB"
    joint = load_datasets(specs)
    assert joint.name == "siteA+siteB" and len(joint.train) == 8
    # Same folder names (p1, p2) in both sites are different people for training.
    labels, mapping = train_labels(joint.train)
    assert sorted(mapping) == [("siteA", 1), ("siteA", 2), ("siteB", 1), ("siteB", 2)]
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_synthetic_generates_then_reuses(tmp_path: Path) -> None:
    pytest.importorskip("reidkit.data.synthetic")
    import json

    ds = load_dataset("synthetic", tmp_path, ids=4, images_per_id=4, cams=3, seed=1)
    counts = json.loads((tmp_path / "Market-1501-v15.09.15" / "synthetic.json").read_text())["counts"]
    assert ds.name == "synthetic" and {r.dataset for r in ds.train} == {"synthetic"}
    assert len(ds.train) == counts["train_images"] == 8
    assert len(ds.query) == counts["query"]
    # The loader drops junk (-1) and keeps distractors (pid 0) in the gallery.
    assert len(ds.gallery) == counts["gallery"] - counts["junk"]
    assert ds.num_train_pids == counts["train_ids"] == 2
    assert 0 in {r.pid for r in ds.gallery} and 0 not in {r.pid for r in ds.train + ds.query}
    assert {r.camid for r in ds.train + ds.query + ds.gallery} <= {0, 1, 2}
    again = load_dataset("synthetic", tmp_path, ids=4, images_per_id=4, cams=3, seed=1)
    assert (again.train, again.query, again.gallery) == (ds.train, ds.query, ds.gallery)


def test_synthetic_size_option_reaches_the_generator(tmp_path):
    from PIL import Image

    ds = load_dataset("synthetic", tmp_path, ids=4, images_per_id=4, cams=2, size="96x48")
    assert Image.open(ds.train[0].path).size == (48, 96)
    with pytest.raises(ReIDError, match="HxW"):
        load_dataset("synthetic", tmp_path / "other", ids=4, size="96by48")

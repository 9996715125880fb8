"""Files reidkit writes and reads are only what they should be.

Outputs: one writer (reidkit.utils.io) that refuses to replace a folder, FIFO, socket or device,
writes a symlink's target, and creates files under the user's umask. Folders: symlinked folders
followed once, loops / broken links / non-UTF-8 names skipped and counted. Images: EXIF
orientation applied wherever a file is decoded.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import numpy as np
import pytest
from factories import tiny_checkpoint
from PIL import Image

from reidkit.cli import main
from reidkit.errors import ReIDError
from reidkit.utils.io import atomic_path, atomic_write, list_images, output_target, write_json


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """A tiny resnet18 checkpoint at 32x16 and three crops."""

    w = tmp_path_factory.mktemp("sec")
    crops = w / "crops"
    crops.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(crops / f"{i:04d}_c1s1_{i:06d}_00.jpg")
    old = os.umask(0o022)
    try:
        weights = tiny_checkpoint(w / "model.pt", seed=None, classes=3, size=(32, 16), pooling="avg")
    finally:
        os.umask(old)
    return {"w": w, "crops": crops, "weights": weights}


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    return lines[0]


def _extract(small, out, images=None) -> int:
    return main(
        [
            "extract",
            "--weights",
            str(small["weights"]),
            "--images",
            str(images or small["crops"]),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--batch-size",
            "4",
        ]
    )


# ----------------------------------------------------------------------------- outputs


def test_extract_refuses_a_fifo_and_leaves_it(small, tmp_path, capsys):
    fifo = tmp_path / "features.npz"
    os.mkfifo(fifo)
    assert _extract(small, fifo) == 2
    line = _one_error(capsys)
    assert str(fifo) in line and "FIFO" in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["features.npz"]  # no temp left beside it


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device node needs root")
def test_extract_refuses_a_device_node_and_leaves_it(small, tmp_path, capsys):
    node = tmp_path / "full"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # the numbers of /dev/full
    assert _extract(small, node) == 2
    line = _one_error(capsys)
    assert str(node) in line and "character device" in line
    st = os.lstat(node)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 7)


def test_extract_through_a_symlink_writes_its_target(small, tmp_path, capsys):
    real = tmp_path / "runs" / "7" / "f.npz"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"old")
    link = tmp_path / "latest.npz"
    link.symlink_to(real)
    assert _extract(small, link) == 0, capsys.readouterr().err
    assert link.is_symlink() and os.readlink(link) == str(real)
    with np.load(real) as z:
        assert z["features"].shape[0] == 3


def test_written_files_follow_the_umask(small, tmp_path, capsys):
    from reidkit.export import export_model

    old = os.umask(0o022)
    try:
        assert _extract(small, tmp_path / "f.npz") == 0, capsys.readouterr().err
        write_json(tmp_path / "metrics.json", {"mAP": 1.0})
        onnx = export_model(small["weights"], "onnx", tmp_path / "m.onnx")
        with atomic_write(tmp_path / "private.txt", "w") as fh:
            fh.write("x")
        os.chmod(tmp_path / "private.txt", 0o600)
        with atomic_write(tmp_path / "private.txt", "w") as fh:  # a replaced file keeps its bits
            fh.write("y")
    finally:
        os.umask(old)
    for path in (small["weights"], tmp_path / "f.npz", tmp_path / "metrics.json", onnx):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path
    assert stat.S_IMODE(os.stat(tmp_path / "private.txt").st_mode) == 0o600
    old = os.umask(0o077)
    try:
        write_json(tmp_path / "m2.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m2.json").st_mode) == 0o600


def test_the_writer_refuses_folders_sockets_and_fifos(tmp_path):
    sock_path = tmp_path / "s.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(sock_path))
    try:
        fifo = tmp_path / "p"
        os.mkfifo(fifo)
        (tmp_path / "d").mkdir()
        link_to_fifo = tmp_path / "l"
        link_to_fifo.symlink_to(fifo)
        for target, kind in ((sock_path, "socket"), (fifo, "FIFO"), (tmp_path / "d", "folder"), (link_to_fifo, "FIFO")):
            with pytest.raises(ReIDError, match=kind):
                with atomic_write(target, "wb") as fh:
                    fh.write(b"x")
            with pytest.raises(ReIDError, match=kind):
                with atomic_path(target) as tmp:
                    tmp.write_bytes(b"x")
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode) and stat.S_ISFIFO(os.lstat(fifo).st_mode)
        assert link_to_fifo.is_symlink()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "l", "p", "s.sock"]
    finally:
        srv.close()


def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "sub" / "real.json")
    assert output_target(link) == tmp_path / "sub" / "real.json"
    write_json(link, {"a": 1})
    assert link.is_symlink() and (tmp_path / "sub" / "real.json").read_text().startswith("{")


# ----------------------------------------------------------------------------- folders


def _jpeg(path: Path, value: int = 0) -> None:
    Image.fromarray(np.full((32, 16, 3), value, np.uint8)).save(path)


def test_list_images_follows_each_folder_once_and_counts_what_it_skips(tmp_path):
    root = tmp_path / "imgs"
    (root / "a" / "b").mkdir(parents=True)
    _jpeg(root / "a" / "x.jpg")
    _jpeg(root / "a" / "b" / "y.jpg")
    for i in range(4):  # each a link to an ancestor: the old walk grew exponentially with these
        (root / "a" / "b" / f"up{i}").symlink_to("..")
        (root / "a" / f"top{i}").symlink_to(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    _jpeg(outside / "z.jpg")
    (root / "linked").symlink_to(outside)  # a symlinked folder is followed (once)
    (root / "loop.jpg").symlink_to("loop.jpg")
    (root / "broken.jpg").symlink_to("nothing.jpg")
    bad = os.fsdecode(b"\xff\xfe_0001_c1s1_000001_00.jpg")
    _jpeg(root / bad)
    skipped: list = []
    found = list_images(root, skipped=skipped)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "imgs/a/b/y.jpg",
        "imgs/a/x.jpg",
        "imgs/linked/z.jpg",
    ]
    reasons = sorted(why for _, why in skipped)
    assert reasons.count("symlink loop") == 1 and reasons.count("broken link") == 1
    assert reasons.count("name is not UTF-8") == 1
    assert reasons.count("link to a folder already listed") == 8


def test_index_build_and_extract_finish_on_a_folder_linking_to_its_parent(small, tmp_path, capsys, caplog):
    root = tmp_path / "imgs"
    (root / "cam1").mkdir(parents=True)
    for i in range(3):
        _jpeg(root / "cam1" / f"{i:04d}_c1s1_{i:06d}_00.jpg", 40 * i)
    for i in range(6):
        (root / "cam1" / f"up{i}").symlink_to("..")
    (root / "loop.jpg").symlink_to("loop.jpg")
    (root / os.fsdecode(b"\xff_0009_c1s1_000009_00.jpg")).write_bytes(b"x")
    assert _extract(small, tmp_path / "f.npz", root) == 0
    with np.load(tmp_path / "f.npz") as z:
        assert len(z["paths"]) == 3
    code = main(
        [
            "index",
            "build",
            "--images",
            str(root),
            "--db",
            str(tmp_path / "db"),
            "--weights",
            str(small["weights"]),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert "Traceback" not in err
    # 6 links to the parent, the loop, the non-UTF-8 name: counted in a warning (stderr in the CLI), not silent
    assert "skipped 8 entries" in caplog.text
    from reidkit.retrieval.gallery import Gallery

    assert len(Gallery.open(tmp_path / "db").entries()) == 3
    (root / "cam1" / "9999_c1s1_000099_00.jpg").write_bytes((root / "cam1" / "0000_c1s1_000000_00.jpg").read_bytes())
    assert main(["index", "add", "--db", str(tmp_path / "db"), "--images", str(root), "--device", "cpu"]) == 0
    assert len(Gallery.open(tmp_path / "db").entries()) == 4


# ----------------------------------------------------------------------------- EXIF orientation


@pytest.fixture(scope="module")
def rotated(tmp_path_factory) -> dict:
    """A synthetic person saved upright and saved sideways with EXIF orientation 6, plus other people."""
    from reidkit.data.synthetic import generate

    w = tmp_path_factory.mktemp("exif")
    root = generate(w / "syn", ids=4, images_per_id=3, cams=2, seed=0, workers=1)
    paths = sorted((root / "bounding_box_train").glob("*.jpg")) + sorted((root / "bounding_box_test").glob("*.jpg"))
    with Image.open(paths[0]) as im:
        up = im.convert("RGB")
    up.save(w / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[274] = 6  # "rotate 90 degrees clockwise to display": how a phone stores a portrait
    up.transpose(Image.Transpose.ROTATE_90).save(w / "rotated.jpg", quality=95, exif=exif.tobytes())
    with Image.open(w / "rotated.jpg") as im:
        raw = np.asarray(im.convert("RGB"))  # what a decoder that ignores the tag sees
    return {
        "upright": w / "upright.jpg",
        "rotated": w / "rotated.jpg",
        "raw": raw,
        "others": [p for p in paths[1:] if p.name.split("_")[0] != paths[0].name.split("_")[0]],
    }


def test_every_decoder_turns_the_image_upright(rotated):
    from reidkit.data.pipeline import ImageCache, read_image as pipeline_read
    from reidkit.inference.features import load_images
    from reidkit.utils.images import decode_image_bytes, read_image

    up = read_image(rotated["upright"])
    assert rotated["raw"].shape == (up.shape[1], up.shape[0], 3)  # stored sideways
    decoded = [
        read_image(rotated["rotated"]),
        pipeline_read(rotated["rotated"]),
        decode_image_bytes(rotated["rotated"].read_bytes(), max_pixels=10_000),
    ]
    for img in decoded:
        assert img.shape == up.shape and np.abs(img.astype(int) - up).mean() < 3
    h, w = up.shape[:2]
    imgs, kept, _ = load_images([rotated["upright"], rotated["rotated"]], (h, w))
    cache = ImageCache.build([str(rotated["upright"]), str(rotated["rotated"])], size=(h, w))
    for pair in (imgs, np.asarray(cache.images)):
        assert np.abs(pair[0].astype(int) - pair[1]).mean() < 3


def test_a_rotated_photo_embeds_and_ranks_like_the_upright_one(rotated):
    from reidkit.inference import FeatureExtractor
    from reidkit.utils.images import read_image

    fx = FeatureExtractor.load(None, device="cpu")  # ImageNet EfficientNet-Lite0 + GeM, offline weights
    up, turned = read_image(rotated["upright"]), read_image(rotated["rotated"])
    q = fx.embed_images([up, turned, rotated["raw"]])
    gallery = fx.embed_images([up] + [read_image(p) for p in rotated["others"]])
    assert float(q[0] @ q[1]) > 0.99
    assert float(q[0] @ q[2]) < 0.8  # ignoring the tag: a person lying on their side
    assert int(np.argmax(gallery @ q[1])) == 0  # the upright copy ranks first

"""`reidkit scene` writes a query crop that `tracklets search --image` can use (issue 31: the README's
`--image crop.jpg` needed a crop nothing made)."""

import json

import cv2
import numpy as np
from PIL import Image

from reidkit.cli import main as cli_main


def test_scene_writes_a_query_crop_of_someone_another_camera_sees(tmp_path, capsys):
    out = tmp_path / "scene"
    assert cli_main(["scene", str(out), "--cams", "2", "--ids", "4", "--frames", "40"]) == 0
    assert f"a query crop (for tracklets search --image): {out / 'query.jpg'}" in capsys.readouterr().out
    info = json.loads((out / "scene.json").read_text())
    q = info["query"]
    assert q["file"] == "query.jpg" and q["camera"] == "cam1"
    cams = {v["camera"] for v in info["visits"] if v["pid"] == q["pid"]}
    assert len(cams) >= 2, "the query person must be seen by another camera too"
    crop = np.asarray(Image.open(out / "query.jpg").convert("RGB")).astype(np.float32)
    x0, y0, x1, y1 = q["box"]
    assert abs(crop.shape[1] - (x1 - x0)) <= 2 and abs(crop.shape[0] - (y1 - y0)) <= 2
    # the crop is what the video shows there at that frame (both JPEG-compressed: compare coarsely)
    cap = cv2.VideoCapture(str(out / "cam1" / "cam1.avi"))
    for _ in range(q["frame"]):
        ok, frame = cap.read()
        assert ok
    cap.release()
    region = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)[
        int(y0) : int(y0) + crop.shape[0], int(x0) : int(x0) + crop.shape[1]
    ]
    assert np.abs(region.astype(np.float32) - crop[: region.shape[0], : region.shape[1]]).mean() < 12
    # the person is in camera 1's ground truth at that frame with that box
    gt = np.loadtxt(out / "cam1" / "gt" / "gt.txt", delimiter=",", ndmin=2)
    row = gt[(gt[:, 0] == q["frame"]) & (gt[:, 1] == q["pid"])]
    assert len(row) == 1 and np.allclose(row[0, 2:4], [x0, y0], atol=0.1)


def test_regenerate_replaces_the_query_crop(tmp_path):
    out = tmp_path / "scene"
    assert cli_main(["scene", str(out), "--cams", "2", "--ids", "4", "--frames", "40"]) == 0
    first = (out / "query.jpg").read_bytes()
    assert (
        cli_main(["scene", str(out), "--regenerate", "--cams", "2", "--ids", "4", "--frames", "40", "--seed", "3"]) == 0
    )
    assert (out / "query.jpg").read_bytes() != first

"""Detectors as parts (issue 30): the registry and its options, specs that travel, the ONNX families' decodes
on tiny planted graphs, and detectors fetched by name from the weights catalogue (a loopback mirror)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from reidkit.errors import ReIDError
from reidkit.video.detectors import (
    DETECTORS,
    build_detector,
    detector_options,
    detector_spec,
    register_detector,
    resolve_detector,
)
from reidkit.video.detectors.families import detect_family, yolox_cells
from factories import noise_video, tiny_checkpoint
from test_zoo import loopback  # noqa: F401 - the zoo tests' loopback mirror fixture

# --------------------------------------------------------------------------- tiny ONNX graphs


def _graph(
    path: Path,
    outputs: dict[str, np.ndarray],
    hw: tuple[int, int] = (64, 64),
    fp16: bool = False,
    sizes_input: bool = False,
    scale_by_sizes: str | None = None,
) -> Path:
    """An ONNX model with a 1x3xHxW input whose outputs are the planted arrays (each + 0 * mean(input), so the
    input is used); `fp16`: float16 input and outputs; `scale_by_sizes`: that output (N x 4 normalised x1 y1 x2 y2)
    is multiplied by an ``orig_target_sizes`` input's (W, H, W, H), as RT-DETR's deploy export does."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ft = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["images"], ["x32"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x32"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    inputs = [helper.make_tensor_value_info("images", ft, [1, 3, *hw])]
    if sizes_input:
        inputs.append(helper.make_tensor_value_info("orig_target_sizes", TensorProto.INT64, [1, 2]))
        nodes += [
            helper.make_node("Cast", ["orig_target_sizes"], ["sz"], to=TensorProto.FLOAT),
            helper.make_node("Concat", ["sz", "sz"], ["sz4"], axis=1),
        ]
    outs = []
    for name, arr in outputs.items():
        const = f"{name}_c"
        if arr.dtype.kind in "iu":
            inits.append(numpy_helper.from_array(arr.astype(np.int64), name))
            outs.append(helper.make_tensor_value_info(name, TensorProto.INT64, list(arr.shape)))
            continue
        inits.append(numpy_helper.from_array(arr.astype(np.float32), const))
        src = f"{name}_p"
        nodes.append(helper.make_node("Add", [const, "z"], [src]))
        if name == scale_by_sizes:
            nodes.append(helper.make_node("Mul", [src, "sz4"], [f"{name}_s"]))
            src = f"{name}_s"
        nodes.append(helper.make_node("Cast", [src], [name], to=ft))
        outs.append(helper.make_tensor_value_info(name, ft, list(arr.shape)))
    graph = helper.make_graph(nodes, "planted", inputs, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _yolox_output(nc: int = 3) -> np.ndarray:
    """A YOLOX raw grid for a 64x64 input (84 cells) with one person at stride-8 cell (x 3, y 2): centre (24, 16),
    size exp(ln 2) * 8 = 16 by exp(ln 3) * 8 = 24, score 0.9 * 0.8; and a car scoring 0.9 elsewhere."""
    a = np.zeros((yolox_cells((64, 64)), 5 + nc), np.float32)
    a[19] = [0.0, 0.0, np.log(2.0), np.log(3.0), 0.9, 0.8, 0.1, 0.0]
    a[70] = [0.5, 0.5, 0.0, 0.0, 0.9, 0.05, 0.9, 0.0]  # stride-16 cell: a car
    return a[None]


FRAME = np.zeros((128, 256, 3), np.uint8)  # into 64x64: scale 0.25, image 64 x 32


# --------------------------------------------------------------------------- families


def test_family_is_read_from_the_output_signature():
    assert yolox_cells((640, 640)) == 8400 and yolox_cells((416, 416)) == 3549
    assert detect_family((640, 640), [("output", [1, 8400, 85])]) == "yolox"
    assert detect_family((640, 640), [("output", [1, 25200, 85])]) == "yolov5"
    assert detect_family((640, 640), [("output0", [1, 84, 8400])]) == "yolov8"
    assert detect_family((640, 640), [("labels", [1, 300]), ("boxes", [1, 300, 4]), ("scores", [1, 300])]) == "rtdetr"
    with pytest.raises(ReIDError, match="family="):
        detect_family((640, 640), [("output", [1, 2, 3, 4])])


def test_yolox_raw_grid_decoded_into_frame_pixels(tmp_path):
    from reidkit.video.detectors.onnx import OnnxDetector

    det = OnnxDetector(_graph(tmp_path / "yolox.onnx", {"output": _yolox_output()}), conf=0.3)
    assert det.family == "yolox" and det.dtype == np.float32
    boxes, scores = det(FRAME, 0)
    # input box x 16..32, y 4..28, the frame in the top-left corner (YOLOX's padding): / 0.25
    np.testing.assert_allclose(boxes, [[64, 16, 128, 112]], atol=1e-3)
    np.testing.assert_allclose(scores, [0.72], atol=1e-5)


def test_yolox_exported_with_its_decode_named_by_option(tmp_path):
    from reidkit.video.detectors.onnx import OnnxDetector

    a = np.zeros((yolox_cells((64, 64)), 5 + 2), np.float32)
    a[5] = [24, 16, 16, 24, 0.9, 0.8, 0.0]  # already decoded: cx, cy, w, h in input pixels
    det = OnnxDetector(_graph(tmp_path / "yoloxd.onnx", {"output": a[None]}), conf=0.3, family="yolox_decoded")
    boxes, scores = det(FRAME, 0)
    np.testing.assert_allclose(boxes, [[64, 16, 128, 112]], atol=1e-3)  # YOLOX's corner placement undone
    np.testing.assert_allclose(scores, [0.72], atol=1e-5)


def test_fp16_yolov8_export_takes_and_gives_float16(tmp_path):
    from reidkit.video.detectors.onnx import OnnxDetector

    v8 = np.zeros((4 + 2, 100), np.float32)
    v8[:4] = 1.0
    v8[:, 0] = [20, 30, 10, 20, 0.9, 0.1]  # a person (cx, cy, w, h in the 64x64 input)
    v8[:, 1] = [21, 30, 10, 20, 0.6, 0.0]  # the same person, lower: removed by NMS
    v8[:, 2] = [50, 40, 8, 16, 0.1, 0.95]  # another class
    det = OnnxDetector(_graph(tmp_path / "v8h.onnx", {"output0": v8[None]}, fp16=True))
    assert det.family == "yolov8" and det.dtype == np.float16
    boxes, scores = det(FRAME, 0)
    # centred letterbox: 16 rows of padding above; cx 20 -> 80, cy 30 - 16 -> 56, w 40, h 80
    np.testing.assert_allclose(boxes, [[60, 16, 100, 96]], atol=0.5)
    np.testing.assert_allclose(scores, [0.9], atol=1e-3)


def test_yolov5_objectness_times_class(tmp_path):
    from reidkit.video.detectors.onnx import OnnxDetector

    v5 = np.zeros((100, 5 + 3), np.float32)
    v5[:, 2:4] = 1.0
    v5[0] = [20, 30, 10, 20, 0.5, 0.8, 0.1, 0.0]  # 0.4 as a person
    v5[1] = [50, 40, 8, 16, 0.9, 0.1, 0.9, 0.0]  # 0.09 as a person: dropped
    det = OnnxDetector(_graph(tmp_path / "v5.onnx", {"output": v5[None]}), conf=0.25)
    assert det.family == "yolov5"
    boxes, scores = det(FRAME, 0)
    np.testing.assert_allclose(boxes, [[60, 16, 100, 96]], atol=1e-3)
    np.testing.assert_allclose(scores, [0.4], atol=1e-6)


def test_rtdetr_deploy_export_boxes_scaled_by_its_sizes_input_no_nms(tmp_path):
    from reidkit.video.detectors.onnx import OnnxDetector

    q = 6
    boxes = np.zeros((1, q, 4), np.float32)
    boxes[0, 0] = [0.25, 0.25, 0.5, 0.75]  # normalised x1 y1 x2 y2: the model scales them by (W, H, W, H)
    boxes[0, 1] = [0.26, 0.25, 0.5, 0.75]  # overlaps the first: a set prediction keeps both (no NMS)
    boxes[0, 2] = [0.6, 0.1, 0.9, 0.9]  # a car
    scores = np.array([[0.9, 0.8, 0.95, 0.1, 0.0, 0.0]], np.float32)
    labels = np.array([[0, 0, 2, 0, 0, 0]], np.int64)
    model = _graph(
        tmp_path / "rtdetr.onnx",
        {"labels": labels, "boxes": boxes, "scores": scores},
        hw=(64, 96),
        sizes_input=True,
        scale_by_sizes="boxes",
    )
    det = OnnxDetector(model, conf=0.5)
    assert det.family == "rtdetr" and det.input_size == (64, 96)
    b, s = det(FRAME, 0)  # resized (not letterboxed) 256x128 -> 96x64: x / 0.375, y / 0.5
    np.testing.assert_allclose(b, [[64, 32, 128, 96], [66.56, 32, 128, 96]], atol=1e-2)
    np.testing.assert_allclose(s, [0.9, 0.8], atol=1e-6)


def test_rtdetr_single_output_named_by_option(tmp_path):
    out = np.zeros((1, 10, 4 + 2), np.float32)
    out[0, 0] = [0.5, 0.5, 0.25, 0.5, 0.7, 0.2]  # normalised cx cy w h, person 0.7
    model = _graph(tmp_path / "rt1.onnx", {"output0": out})
    det = build_detector(detector_spec("onnx", {"path": str(model), "family": "rtdetr"}))
    assert det.family == "rtdetr"
    b, s = det(FRAME, 0)
    np.testing.assert_allclose(b, [[96, 32, 160, 96]], atol=1e-3)
    np.testing.assert_allclose(s, [0.7], atol=1e-6)
    with pytest.raises(ReIDError, match="family"):
        detector_spec("onnx", {"path": str(model), "family": "yolo9"})


# --------------------------------------------------------------------------- registry, options, specs


def test_registry_options_and_specs(tmp_path):
    assert {"motion", "hog", "mot", "onnx"} <= set(DETECTORS.names())
    with pytest.raises(ReIDError, match="min_height"):
        detector_options("hog", {"min_hieght": 240})
    with pytest.raises(ReIDError, match="did you mean 'motion'"):
        detector_spec("motoin")
    # hog: the pre-registry keys beside the options (the pipeline's stored settings read "scale")
    spec = detector_spec("hog", {"min_height": 240, "detect_scale": 0.5})
    assert spec["scale"] == 0.5 and spec["min_height"] == 240
    det = build_detector(spec)
    assert (det.min_height, det.detect_scale) == (240, 0.5)
    old = build_detector({"kind": "hog", "min_height": 300, "scale": 0.75})  # today's pipeline form
    assert (old.min_height, old.detect_scale) == (300, 0.75)
    motion = build_detector({"kind": "motion", "options": {"block": 25}}, tmp_path / "v.avi")
    assert motion.block == 25 and motion.path == tmp_path / "v.avi" and type(motion).per_video
    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,10,10,5,10,0.9\n2,1,11,10,5,10,0.2\n")
    mot = build_detector(detector_spec("mot", {"path": str(gt), "min_conf": 0.5}))
    assert mot.frames == 1
    assert build_detector({"kind": "mot", "path": str(gt)}).frames == 2


def test_plugin_detector_with_options_through_prepare_jobs(tmp_path):
    import dataclasses

    import cv2

    from reidkit.video.ingest import prepare_jobs

    @dataclasses.dataclass
    class CornerOptions:
        size: int = 10

    @register_detector("corner_test", options=CornerOptions)
    class Corner:
        per_video = False

        def __init__(self, options: CornerOptions) -> None:
            self.size = options.size

        def __call__(self, frame, index):
            return np.array([[0, 0, self.size, 2 * self.size]], np.float32), np.ones(1, np.float32)

    try:
        video = tmp_path / "v.avi"
        wr = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
        for _ in range(3):
            wr.write(np.zeros((48, 64, 3), np.uint8))
        wr.release()
        (job,) = prepare_jobs([str(video)], detector="corner_test", detector_options={"size": 7})
        assert job.detector_name == "corner_test" and job.detector_spec == {
            "kind": "corner_test",
            "options": {"size": 7},
        }
        np.testing.assert_array_equal(job.detector(None, 0)[0], [[0, 0, 7, 14]])
        with pytest.raises(ReIDError, match="size"):
            prepare_jobs([str(video)], detector="corner_test", detector_options={"sise": 7})
        with pytest.raises(ReIDError, match="did you mean 'corner_test'"):
            prepare_jobs([str(video)], detector="corner_tset")
    finally:
        DETECTORS.unregister("corner_test")


# --------------------------------------------------------------------------- by name from the catalogue


def _detector_catalogue(path: Path, entries: list[dict]) -> Path:
    base = {
        "kind": "detector",
        "source": "test",
        "licence": "Apache-2.0",
        "arch": "yolox",
        "fmt": "onnx",
        "train": "coco",
        "input_size": [64, 64],
        "max_bytes": 1 << 20,
    }
    path.write_text(yaml.safe_dump({"weights": [{**base, **e} for e in entries]}))
    return path


@pytest.fixture()
def mirror(tmp_path, loopback, monkeypatch):  # noqa: F811 - the imported fixture
    model = _graph(tmp_path / "src.onnx", {"output": _yolox_output()}).read_bytes()
    loopback.files.update({"tiny_yolox.onnx": model, "not_onnx.onnx": b"\x08\x01garbage" * 20})
    monkeypatch.setenv("REIDKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REIDKIT_ZOO_URL_OVERRIDE", loopback.url)
    monkeypatch.setenv(
        "REIDKIT_ZOO",
        str(
            _detector_catalogue(
                tmp_path / "zoo.yaml",
                [
                    {
                        "name": "tiny_yolox",
                        "filename": "tiny_yolox.onnx",
                        "url": "https://example.invalid/tiny_yolox.onnx",
                    },
                    {"name": "broken_det", "filename": "not_onnx.onnx", "url": "https://example.invalid/not_onnx.onnx"},
                    {
                        "name": "agpl_det",
                        "filename": "agpl.onnx",
                        "licence": "AGPL-3.0 (Ultralytics)",
                        "arch": "yolov8",
                    },
                ],
            )
        ),
    )
    return loopback


def test_detector_fetched_by_name_verified_and_run(mirror, tmp_path):
    from reidkit.models import zoo

    spec, name = resolve_detector("tiny_yolox", {"conf": 0.3})
    assert name == "onnx:tiny_yolox" and spec["options"]["path"] == "tiny_yolox"
    det = build_detector(spec)
    assert [r[0] for r in mirror.requests] == ["tiny_yolox.onnx"] and det.family == "yolox"
    cached = tmp_path / "home" / "weights" / "tiny_yolox.onnx"
    assert det.path == cached and (tmp_path / "home" / "weights" / "tiny_yolox.onnx.sha256").is_file()
    boxes, scores = det(FRAME, 0)
    np.testing.assert_allclose(boxes, [[64, 16, 128, 112]], atol=1e-3)
    np.testing.assert_allclose(scores, [0.72], atol=1e-5)
    build_detector(spec)  # cached and verified: no second request
    assert [r[0] for r in mirror.requests] == ["tiny_yolox.onnx"]
    data = bytearray(cached.read_bytes())
    data[-1] ^= 1
    cached.write_bytes(bytes(data))
    with pytest.raises(ReIDError, match="does not match its recorded"):
        build_detector(spec)
    with pytest.raises(ReIDError, match="not an onnx checkpoint|does not parse as an ONNX model"):
        build_detector(resolve_detector("broken_det")[0])
    assert not (tmp_path / "home" / "weights" / "not_onnx.onnx").exists()
    with pytest.raises(ReIDError, match="not reid weights"):
        zoo.resolve_weights("tiny_yolox", kind="reid")
    from reidkit.models.loading import local_weights

    with pytest.raises(ReIDError, match="give it to --detector"):
        local_weights("tiny_yolox")  # what --weights NAME resolves through
    with pytest.raises(ReIDError, match="did you mean 'tiny_yolox'"):
        resolve_detector("tiny_yolo")


def test_weights_list_shows_detectors_with_their_licence(mirror, capsys):
    from reidkit.cli import main

    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("tiny_yolox"))
    assert "detector" in row and "Apache-2.0" in row and "yolox" in row
    agpl = next(line for line in out.splitlines() if line.startswith("agpl_det"))
    assert "AGPL-3.0" in agpl and "copyleft" in agpl


def test_video_cli_with_a_catalogue_detector_and_an_option(mirror, tmp_path):
    from reidkit.cli import main
    from reidkit.retrieval.gallery import Gallery

    video = noise_video(tmp_path / "still.avi", 6)
    db = tmp_path / "db"
    assert (
        main(
            [
                "video",
                str(video),
                "--db",
                str(db),
                "--detector",
                "tiny_yolox",
                "--detector-option",
                "conf=0.5",
                "--weights",
                str(tiny_checkpoint(tmp_path / "tiny.pth")),
                "--engine",
                "torch",
            ]
        )
        == 0
    )
    (t,) = Gallery.open(db).entries(kind="tracklet")
    assert t["meta"]["detector"] == "onnx:tiny_yolox" and (t["frame_start"], t["frame_end"]) == (1, 6)
    np.testing.assert_allclose([b[1:5] for b in t["meta"]["boxes"]], [[64, 16, 128, 112]] * 6, atol=0.01)
    assert (
        main(
            [
                "video",
                str(video),
                "--db",
                str(tmp_path / "db2"),
                "--detector",
                "tiny_yolox",
                "--detector-option",
                "cnof=0.5",
                "--weights",
                str(tiny_checkpoint(tmp_path / "tiny.pth")),
            ]
        )
        == 2
    )


PLUGIN = '''
from dataclasses import dataclass

import cv2
import numpy as np

import reidkit


@dataclass
class DarkOptions:
    threshold: int = 60      # a pixel darker than this is a person
    min_area: int = 40       # smaller blobs are noise


@reidkit.register_detector("dark_blobs", options=DarkOptions)
class DarkBlobs:
    """People as dark blobs on a bright floor."""

    per_video = False        # shared by every video of a run

    @classmethod
    def from_options(cls, options, video=None):
        return cls(options)

    def __init__(self, options):
        self.o = options

    def __call__(self, frame, index):
        mask = (frame.max(axis=2) < self.o.threshold).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        keep = [s for s in stats[1:] if s[4] >= self.o.min_area]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in keep], np.float32).reshape(-1, 4)
        return boxes, np.ones(len(boxes), np.float32)
'''


def test_plugin_detector_from_the_command_line(tmp_path):
    """The README's plug-in sketch, run with --plugin and an option of its own."""
    import cv2

    from reidkit.cli import main
    from reidkit.retrieval.gallery import Gallery

    plugin = tmp_path / "dark.py"
    plugin.write_text(PLUGIN)
    video = tmp_path / "walk.avi"
    wr = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (128, 96))
    for i in range(6):
        f = np.full((96, 128, 3), 220, np.uint8)
        f[30:80, 10 + 4 * i : 30 + 4 * i] = 20  # a dark person walking right
        wr.write(f)
    wr.release()
    try:
        assert (
            main(
                [
                    "--plugin",
                    str(plugin),
                    "video",
                    str(video),
                    "--db",
                    str(tmp_path / "db"),
                    "--detector",
                    "dark_blobs",
                    "--detector-option",
                    "threshold=100",
                    "--weights",
                    str(tiny_checkpoint(tmp_path / "tiny.pth")),
                    "--engine",
                    "torch",
                ]
            )
            == 0
        )
        (t,) = Gallery.open(tmp_path / "db").entries(kind="tracklet")
        assert t["meta"]["detector"] == "dark_blobs" and (t["frame_start"], t["frame_end"]) == (1, 6)
        x1 = [b[1] for b in t["meta"]["boxes"]]
        assert x1[-1] - x1[0] == pytest.approx(20, abs=3)  # it followed the walk
    finally:
        DETECTORS.unregister("dark_blobs")


def test_recipes_lists_a_detectors_options(capsys):
    from reidkit.cli import main

    assert main(["recipes", "--options", "motion"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("detector motion:") and "detector.motion.block" in out
    assert main(["recipes", "--options", "bytesort"]) == 0  # the other kinds still answer
    assert "tracker.bytesort.max_age" in capsys.readouterr().out

"""Bad input across every verb: exit code 2, one `error:` line naming the path or key, no traceback.

Each case is (verb arguments, a fragment the error line must contain). The cases run the CLI in
process (`reidkit.cli.main`); an uncaught exception fails the test (a traceback would reach the
user). The retrieval and video verbs have their own cases beside their tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factories import tiny_checkpoint
import yaml
from PIL import Image

from reidkit.cli import main

# ----------------------------------------------------------------------------- fixtures: a small world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Files the cases point at: a tiny dataset, crops, garbage files, broken recipes, a trained model."""
    from reidkit.data.datasets import load_dataset

    w = tmp_path_factory.mktemp("bad")
    syn = w / "syn"
    load_dataset("synthetic", syn, ids=6, images_per_id=4, cams=2, seed=0)
    crops = w / "crops"
    crops.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 16, 3), 40 * i, np.uint8)).save(crops / f"{i:04d}_c1s1_{i:06d}_00.jpg")
    empty_dir = w / "empty"
    empty_dir.mkdir()
    zero = w / "zero"
    zero.mkdir()
    Image.fromarray(np.zeros((32, 16, 3), np.uint8)).save(zero / "0001_c1s1_000001_00.jpg")
    (zero / "0002_c1s1_000002_00.jpg").write_bytes(b"")
    garbage = w / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    a_file = w / "a_file.txt"
    a_file.write_text("x")
    (w / "bad.yaml").write_text("solver: [unclosed\n")
    (w / "list.yaml").write_text("- 1\n- 2\n")
    (w / "loop_a.yaml").write_text("_base_: loop_b.yaml\n")
    (w / "loop_b.yaml").write_text("_base_: loop_a.yaml\n")
    (w / "no_cols.csv").write_text("file,label\na.jpg,1\n")
    (w / "bad_pid.csv").write_text(f"path,pid,camid,split\n{crops / '0000_c1s1_000000_00.jpg'},abc,0,train\n")
    (w / "not_npz.npz").write_bytes(b"plain text, not an archive")
    weights = tiny_checkpoint(w / "model.pt", seed=None, classes=3, size=(32, 16), pooling="avg")
    tiny = {
        "_base_": "bot_r50.yaml",
        "data": {
            "datasets": [
                {"name": "synthetic", "root": str(syn), "options": {"ids": 6, "images_per_id": 4, "cams": 2, "seed": 0}}
            ],
            "size": [32, 16],
        },
        "sampler": {"p": 2, "k": 2, "epoch_batches": 1},
        "model": {"backbone": "resnet18", "pretrained": False},
        "solver": {"max_epochs": 1, "warmup_epochs": 0},
        "device": "cpu",
        "output_dir": str(w / "run"),
    }
    (w / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    usl = {
        **tiny,
        "_base_": "usl_cluster_contrast.yaml",
        "usl": {
            "eps": 0.0001,
            "min_samples": 4,
            "k1": 4,
            "k2": 2,
            "batch_size": 4,
            "num_instances": 2,
            "iters_per_epoch": 1,
        },
        "output_dir": str(w / "usl"),
    }
    (w / "usl_tiny.yaml").write_text(yaml.safe_dump(usl))
    # issue 17: checkpoints whose input size would allocate absurdly (or nothing), an "ONNX" file for --from,
    # a gallery for the id cases, a short video and MOT files with non-integer frames
    for name, hw in (("huge_size.pt", (100000, 100000)), ("zero_size.pt", (0, 0))):
        tiny_checkpoint(w / name, seed=None, classes=3, size=hw, pooling="avg")
    (w / "model.onnx").write_bytes(b"an exported model; --from must not apply")
    from reidkit.retrieval.gallery import Gallery

    Gallery.build(crops, w / "db", weights=weights, device="cpu")
    import cv2

    wr = cv2.VideoWriter(str(w / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(5):
        wr.write(np.full((48, 64, 3), 30 * i, np.uint8))
    wr.release()
    (w / "det_half.txt").write_text("1,1,10,10,20,30,1,-1,-1,-1\n3.5,1,10,10,20,30,1,-1,-1,-1\n")
    (w / "det_inf.txt").write_text("inf,1,10,10,20,30,1,-1,-1,-1\n")
    (w / "det_huge.txt").write_text("99999999999999999999,1,10,10,20,30,1,-1,-1,-1\n")
    return {
        "w": w,
        "syn": syn,
        "crops": crops,
        "empty": empty_dir,
        "zero": zero,
        "garbage": garbage,
        "file": a_file,
        "weights": weights,
        "tiny": w / "tiny.yaml",
        "usl": w / "usl_tiny.yaml",
        "db": w / "db",
        "video": w / "v.avi",
    }


def T(key: str) -> str:
    return "{" + key + "}"


# (id, argv template, fragment of the error line); {key} is replaced by world[key]
CASES = [
    # data
    ("data-missing-root", ["data", "stats", "market1501", "--root", "/nonexistent/market"], "/nonexistent/market"),
    ("data-unknown-name", ["data", "stats", "market1051", "--root", T("w")], "did you mean 'market1501'"),
    ("data-empty-folder", ["data", "stats", "folder", "--root", T("empty")], T("empty")),
    ("data-wrong-layout", ["data", "stats", "market1501", "--root", T("crops")], T("crops")),
    ("data-bad-option", ["data", "stats", "synthetic", "--root", T("syn"), "-o", "ids=abc"], "ids"),
    ("data-unknown-option", ["data", "stats", "synthetic", "--root", T("syn"), "-o", "idz=3"], "idz"),
    ("data-option-syntax", ["data", "stats", "synthetic", "--root", T("syn"), "-o", "ids"], "key=value"),
    ("csv-missing-columns", ["data", "stats", "csv", "--root", T("w") + "/no_cols.csv"], "no_cols.csv"),
    ("csv-bad-pid", ["data", "stats", "csv", "--root", T("w") + "/bad_pid.csv"], "bad_pid.csv"),
    ("csv-missing-file", ["data", "stats", "csv", "--root", "/nonexistent/list.csv"], "/nonexistent/list.csv"),
    # synth
    ("synth-out-is-file", ["synth", T("file"), "--ids", "4"], T("file")),
    ("synth-zero-ids", ["synth", T("w") + "/s0", "--ids", "0"], "ids"),
    ("synth-negative-images", ["synth", T("w") + "/s1", "--images-per-id", "-2"], "images"),
    ("synth-bad-size", ["synth", T("w") + "/s2", "--size", "big"], "size"),
    (
        "synth-other-options-over-existing",
        ["data", "stats", "synthetic", "--root", T("syn"), "-o", "ids=9"],
        "already holds",
    ),
    # config and recipes (train)
    ("recipe-missing", ["train", "--config", "no_such_recipe"], "no_such_recipe"),
    ("recipe-invalid-yaml", ["train", "--config", T("w") + "/bad.yaml"], "bad.yaml"),
    ("recipe-not-a-mapping", ["train", "--config", T("w") + "/list.yaml"], "list.yaml"),
    ("recipe-circular-base", ["train", "--config", T("w") + "/loop_a.yaml"], "circular"),
    ("override-no-equals", ["train", "--config", T("tiny"), "solver.max_epochs"], "key=value"),
    ("override-empty-key", ["train", "--config", T("tiny"), "solver..lr=1"], "empty key"),
    ("override-unknown-key", ["train", "--config", T("tiny"), "solver.max_epoch=3"], "did you mean 'max_epochs'"),
    ("override-wrong-type", ["train", "--config", T("tiny"), "solver.base_lr=fast"], "solver.base_lr"),
    ("override-bad-literal", ["train", "--config", T("tiny"), "solver.optimizer=rmsprop"], "solver.optimizer"),
    ("override-bad-index", ["train", "--config", T("tiny"), "data.datasets.5.root=/x"], "data.datasets.5.root"),
    ("config-bad-size", ["train", "--config", T("tiny"), "data.size=[0,0]"], "data.size"),
    ("config-bad-sampler", ["train", "--config", T("tiny"), "sampler.p=0"], "sampler.p"),
    ("config-steps-order", ["train", "--config", T("tiny"), "solver.steps=[70,40]"], "solver.steps"),
    ("config-bad-mean", ["train", "--config", T("tiny"), "input.mean=[1,2]"], "input.mean"),
    ("config-bad-lr", ["train", "--config", T("tiny"), "solver.base_lr=0"], "solver.base_lr"),
    ("config-unknown-backbone", ["train", "--config", T("tiny"), "model.backbone=resnet5"], "did you mean"),
    ("config-unknown-loss", ["train", "--config", T("tiny"), "loss.names=[softmx]"], "softmx"),
    ("config-bad-device", ["train", "--config", T("tiny"), "device=tpu"], "device"),
    ("config-cuda-absent", ["train", "--config", T("tiny"), "device=cuda"], "no CUDA device"),
    ("config-fp16-cpu", ["train", "--config", T("tiny"), "solver.amp=fp16"], "solver.amp"),
    (
        "train-missing-data",
        ["train", "--config", T("tiny"), "data.datasets=[{name: market1501, root: /nonexistent/m}]"],
        "/nonexistent/m",
    ),
    (
        "train-resume-none",
        ["train", "--config", T("tiny"), f"output_dir={T('w')}/fresh", "resume=true"],
        "no checkpoint",
    ),
    ("train-resume-missing", ["train", "--config", T("tiny"), "resume=/nonexistent/last.pt"], "/nonexistent/last.pt"),
    ("train-resume-garbage", ["train", "--config", T("tiny"), f"resume={T('garbage')}"], "garbage.pt"),
    (
        "train-pretrained-missing",
        ["train", "--config", T("tiny"), "model.pretrained=/nonexistent/w.pth"],
        "/nonexistent/w.pth",
    ),
    ("train-pretrained-garbage", ["train", "--config", T("tiny"), f"model.pretrained={T('garbage')}"], "garbage.pt"),
    ("train-output-is-file", ["train", "--config", T("tiny"), f"output_dir={T('file')}"], T("file")),
    # test
    (
        "test-weights-missing",
        ["test", "--config", T("tiny"), "--weights", "/nonexistent/model.pt"],
        "/nonexistent/model.pt",
    ),
    ("test-weights-garbage", ["test", "--config", T("tiny"), "--weights", T("garbage")], "garbage.pt"),
    ("test-no-validation", ["test", "--config", T("tiny"), "--weights", T("weights"), "data.val=[]"], "data.val"),
    # unsupervised
    ("usl-unknown-method", ["usl", "--config", T("usl"), "usl.method=hhlc"], "did you mean 'hhcl'"),
    ("usl-bad-eps", ["usl", "--config", T("usl"), "usl.eps=-1"], "usl.eps"),
    ("usl-parts-not-ssg", ["usl", "--config", T("usl"), "usl.spaces=[global,upper]"], "usl.spaces"),
    ("usl-batch-vs-instances", ["usl", "--config", T("usl"), "usl.batch_size=1"], "usl.batch_size"),
    ("usl-init-missing", ["usl", "--config", T("usl"), "usl.init_weights=/nonexistent/src.pt"], "/nonexistent/src.pt"),
    ("usl-zero-clusters", ["usl", "--config", T("usl")], "usl.eps"),
    ("usl-zero-clusters-rho", ["usl", "--config", T("usl"), "usl.eps=null", "usl.rho=0.0000001"], "usl.rho"),
    # ablate / cv / pseudo-label
    (
        "ablate-grid-no-values",
        ["ablate", "--config", T("tiny"), "--grid", "solver.base_lr", "--out", T("w") + "/ab"],
        "solver.base_lr",
    ),
    ("ablate-nothing", ["ablate", "--out", T("w") + "/ab2"], "--grid"),
    ("cv-one-fold", ["cv", "--config", T("tiny"), "--folds", "1"], "folds"),
    ("cv-out-is-file", ["cv", "--config", T("tiny"), "--out", T("file")], "a_file.txt"),
    (
        "ablate-out-is-file",
        ["ablate", "--config", T("tiny"), "--grid", "solver.base_lr=1e-4,2e-4", "--out", T("file")],
        "a_file.txt",
    ),
    ("test-out-is-file", ["test", "--config", T("tiny"), "--weights", T("weights"), "--out", T("file")], "a_file.txt"),
    (
        "pseudo-weights-missing",
        ["pseudo-label", "--config", T("tiny"), "--weights", "/nonexistent/m.pt"],
        "/nonexistent/m.pt",
    ),
    # extract / export / visrank / demo
    (
        "extract-weights-missing",
        ["extract", "--weights", "/nonexistent/m.pt", "--images", T("crops"), "--out", T("w") + "/f.npz"],
        "/nonexistent/m.pt",
    ),
    (
        "extract-images-missing",
        ["extract", "--weights", T("weights"), "--images", "/nonexistent/crops", "--out", T("w") + "/f.npz"],
        "/nonexistent/crops",
    ),
    (
        "extract-images-empty",
        ["extract", "--weights", T("weights"), "--images", T("empty"), "--out", T("w") + "/f.npz"],
        T("empty"),
    ),
    (
        "extract-onnx-garbage",
        ["extract", "--onnx", T("garbage"), "--images", T("crops"), "--out", T("w") + "/f.npz"],
        "garbage.pt",
    ),
    (
        "extract-out-unwritable",
        ["extract", "--weights", T("weights"), "--images", T("crops"), "--out", T("file") + "/f.npz"],
        "a_file.txt",
    ),
    (
        "extract-strict-zero-byte",
        ["extract", "--weights", T("weights"), "--images", T("zero"), "--out", T("w") + "/z.npz", "--strict"],
        "0002_c1s1_000002_00.jpg",
    ),
    (
        "export-weights-missing",
        ["export", "--weights", "/nonexistent/m.pt", "--format", "onnx", "--out", T("w") + "/m.onnx"],
        "/nonexistent/m.pt",
    ),
    (
        "export-weights-garbage",
        ["export", "--weights", T("garbage"), "--format", "onnx", "--out", T("w") + "/m.onnx"],
        "garbage.pt",
    ),
    (
        "export-out-unwritable",
        ["export", "--weights", T("weights"), "--format", "onnx", "--out", T("file") + "/m.onnx"],
        "a_file.txt",
    ),
    (
        "visrank-not-npz",
        [
            "visrank",
            "--features",
            T("w") + "/not_npz.npz",
            "--dataset",
            "synthetic",
            "--root",
            T("syn"),
            "--out",
            T("w") + "/vis",
        ],
        "not_npz.npz",
    ),
    (
        "visrank-features-missing",
        [
            "visrank",
            "--features",
            "/nonexistent/f.npz",
            "--dataset",
            "synthetic",
            "--root",
            T("syn"),
            "--out",
            T("w") + "/vis",
        ],
        "/nonexistent/f.npz",
    ),
    ("demo-out-is-file", ["demo", "--out", T("file")], "a_file.txt"),
    ("scene-out-is-file", ["scene", T("file") + "/scene"], "a_file.txt"),
    ("model-option-wrong-backbone", ["train", "--config", T("tiny"), "model.sie=true"], "model.sie"),
    ("model-bn-groups-zero", ["train", "--config", T("tiny"), "model.bn_groups=0"], "model.bn_groups"),
    # issue 17: numbers finite and in range (config keys)
    ("config-nan-lr", ["train", "--config", T("tiny"), "solver.base_lr=.nan"], "solver.base_lr"),
    ("config-inf-lr", ["train", "--config", T("tiny"), "solver.base_lr=.inf"], "solver.base_lr"),
    ("config-overflow-lr", ["train", "--config", T("tiny"), "solver.base_lr=1e400"], "solver.base_lr"),
    ("config-minus-inf-decay", ["train", "--config", T("tiny"), "solver.weight_decay=-.inf"], "solver.weight_decay"),
    ("config-nan-mean", ["train", "--config", T("tiny"), "input.mean=[.nan,0.4,0.4]"], "input.mean[0]"),
    ("config-huge-size", ["train", "--config", T("tiny"), "data.size=[100000,100000]"], "data.size"),
    ("config-huge-p", ["train", "--config", T("tiny"), "sampler.p=100000000000000000000000"], "sampler.p"),
    (
        "config-huge-epochs",
        ["train", "--config", T("tiny"), "solver.max_epochs=-100000000000000000000"],
        "solver.max_epochs",
    ),
    ("usl-nan-eps", ["usl", "--config", T("usl"), "usl.eps=.nan"], "usl.eps"),
    # ids to SQLite's int64
    ("index-delete-huge-id", ["index", "delete", "--db", T("db"), "--id", "99999999999999999999"], "--id"),
    ("index-delete-negative-id", ["index", "delete", "--db", T("db"), "--id", "-1"], "--id"),
    ("index-delete-word-id", ["index", "delete", "--db", T("db"), "--id", "one"], "--id"),
    ("tracklets-show-huge-id", ["tracklets", "show", "99999999999999999999", "--db", T("db")], "99999999999999999999"),
    (
        "tracklets-search-huge-id",
        ["tracklets", "search", "--db", T("db"), "--tracklet", "99999999999999999999"],
        "99999999999999999999",
    ),
    ("tracklets-search-zero-k", ["tracklets", "search", "--db", T("db"), "--tracklet", "1", "-k", "0"], "--k"),
    (
        "search-huge-topk",
        [
            "search",
            "--db",
            T("db"),
            "--image",
            T("crops") + "/0000_c1s1_000000_00.jpg",
            "--topk",
            "99999999999999999999",
        ],
        "--topk",
    ),
    # input sizes: flags and checkpoints, refused before anything is allocated
    (
        "index-build-huge-size",
        ["index", "build", "--images", T("crops"), "--db", T("w") + "/db_big", "--size", "100000", "100000"],
        "--size",
    ),
    (
        "index-build-zero-size",
        ["index", "build", "--images", T("crops"), "--db", T("w") + "/db_zero", "--size", "0", "0"],
        "--size",
    ),
    (
        "extract-zero-size",
        ["extract", "--weights", T("weights"), "--images", T("crops"), "--out", T("w") + "/f.npz", "--size", "0", "0"],
        "--size",
    ),
    (
        "export-huge-size",
        ["export", "--weights", T("weights"), "--out", T("w") + "/m.onnx", "--size", "8", "100000"],
        "--size",
    ),
    (
        "ckpt-huge-input-size",
        ["extract", "--weights", T("w") + "/huge_size.pt", "--images", T("crops"), "--out", T("w") + "/f.npz"],
        "input_size",
    ),
    (
        "ckpt-zero-input-size",
        ["extract", "--weights", T("w") + "/zero_size.pt", "--images", T("crops"), "--out", T("w") + "/f.npz"],
        "input_size",
    ),
    (
        "index-build-ckpt-huge-input-size",
        ["index", "build", "--images", T("crops"), "--db", T("w") + "/db_h", "--weights", T("w") + "/huge_size.pt"],
        "input_size",
    ),
    (
        "extract-from-on-onnx",
        [
            "extract",
            "--weights",
            T("w") + "/model.onnx",
            "--from",
            "torchreid",
            "--images",
            T("crops"),
            "--out",
            T("w") + "/f.npz",
        ],
        "--from torchreid",
    ),
    (
        "index-build-from-on-onnx",
        [
            "index",
            "build",
            "--images",
            T("crops"),
            "--db",
            T("w") + "/db_o",
            "--weights",
            T("w") + "/model.onnx",
            "--from",
            "torchreid",
        ],
        "--from torchreid",
    ),
    # video
    (
        "video-detector-size-negative",
        ["video", T("video"), "--db", T("w") + "/vdb", "--detector-size", "0x-5"],
        "--detector-size",
    ),
    (
        "video-detector-size-word",
        ["video", T("video"), "--db", T("w") + "/vdb", "--detector-size", "big"],
        "--detector-size",
    ),
    ("video-start-time-nan", ["video", T("video"), "--db", T("w") + "/vdb", "--start-time", "nan"], "--start-time"),
    ("video-start-time-inf", ["video", T("video"), "--db", T("w") + "/vdb", "--start-time", "inf"], "--start-time"),
    (
        "video-max-cosine-nan",
        ["video", T("video"), "--db", T("w") + "/vdb", "--max-cosine-distance", "nan"],
        "--max-cosine-distance",
    ),
    (
        "video-max-cosine-5",
        ["video", T("video"), "--db", T("w") + "/vdb", "--max-cosine-distance", "5"],
        "--max-cosine-distance",
    ),
    ("video-conf-2", ["video", T("video"), "--db", T("w") + "/vdb", "--conf", "2"], "--conf"),
    ("video-conf-nan", ["video", T("video"), "--db", T("w") + "/vdb", "--conf", "nan"], "--conf"),
    (
        "video-embed-budget-negative",
        ["video", T("video"), "--db", T("w") + "/vdb", "--embed-budget", "-1"],
        "--embed-budget: must be >= 0",
    ),
    (
        "mot-frame-fraction",
        ["video", T("video"), "--db", T("w") + "/vdb", "--detections", T("w") + "/det_half.txt"],
        "det_half.txt, line 2",
    ),
    (
        "mot-frame-inf",
        ["video", T("video"), "--db", T("w") + "/vdb", "--detections", T("w") + "/det_inf.txt"],
        "det_inf.txt, line 1",
    ),
    (
        "mot-frame-huge",
        ["video", T("video"), "--db", T("w") + "/vdb", "--detections", T("w") + "/det_huge.txt"],
        "det_huge.txt, line 1",
    ),
    (
        "video-huge-max-age",
        ["video", T("video"), "--db", T("w") + "/vdb", "--max-age", "99999999999999999999"],
        "--max-age",
    ),
    ("video-huge-every", ["video", T("video"), "--db", T("w") + "/vdb", "--every", "99999999999999999999"], "--every"),
    ("synth-huge-ids", ["synth", T("w") + "/s3", "--ids", "99999999999999999999"], "--ids"),
    ("scene-huge-frames", ["scene", T("w") + "/sc", "--frames", "99999999999999999999"], "--frames"),
    ("scene-nan-fps", ["scene", T("w") + "/sc", "--fps", "nan"], "--fps"),
    ("scene-inf-speed", ["scene", T("w") + "/sc", "--speed", "inf"], "--speed"),
    (
        "pseudo-huge-iterations",
        ["pseudo-label", "--config", T("tiny"), "--weights", T("weights"), "--iterations", "99999999999999999999"],
        "--iterations",
    ),
    ("cv-huge-folds", ["cv", "--config", T("tiny"), "--folds", "99999999999999999999"], "--folds"),
    # serve: every option checked before the model loads or uvicorn starts
    ("serve-max-upload-inf", ["serve", "--db", T("db"), "--max-upload-mb", "inf"], "--max-upload-mb"),
    ("serve-max-upload-nan", ["serve", "--db", T("db"), "--max-upload-mb", "nan"], "--max-upload-mb"),
    ("serve-workers-huge", ["serve", "--db", T("db"), "--workers", "100000"], "--workers"),
    ("serve-poll-inf", ["serve", "--db", T("db"), "--poll", "inf"], "--poll"),
    ("serve-poll-nan", ["serve", "--db", T("db"), "--poll", "nan"], "--poll"),
    ("serve-poll-zero", ["serve", "--db", T("db"), "--poll", "0"], "--poll"),
    ("serve-host-bad-ip", ["serve", "--db", T("db"), "--host", "999.1.1.1"], "--host"),
    ("serve-host-unresolvable", ["serve", "--db", T("db"), "--host", "no-such-host.invalid"], "--host"),
]

# Cases run with an environment variable set: (id, env, argv template, fragment)
ENV_CASES = [
    (
        "env-lock-timeout-nan",
        {"REIDKIT_LOCK_TIMEOUT": "nan"},
        ["index", "delete", "--db", T("db"), "--id", "1"],
        "REIDKIT_LOCK_TIMEOUT",
    ),
    (
        "env-lock-timeout-inf",
        {"REIDKIT_LOCK_TIMEOUT": "inf"},
        ["index", "delete", "--db", T("db"), "--id", "1"],
        "REIDKIT_LOCK_TIMEOUT",
    ),
    (
        "env-busy-timeout-nan",
        {"REIDKIT_BUSY_TIMEOUT": "nan"},
        ["index", "delete", "--db", T("db"), "--id", "1"],
        "REIDKIT_BUSY_TIMEOUT",
    ),
]

# id -> None (clean) | what was wrong: each case is run once per session, by its test or by the figure's.
RESULTS: dict[str, str | None] = {}


def _outcome(case_id, template, fragment, world, capsys) -> str | None:
    """Run case `case_id` once per session (its test and the figure share the result); None when it was clean."""
    if case_id in RESULTS:
        return RESULTS[case_id]
    import traceback

    fill = {k: str(v) for k, v in world.items()}
    argv = [a.format(**fill) if "{" in a and "}" in a and not a.startswith("data.datasets=") else a for a in template]
    capsys.readouterr()
    try:
        code = main(argv)
    except Exception:  # noqa: BLE001 - a traceback would reach the user: the case failed, with it shown
        RESULTS[case_id] = f"uncaught exception:\n{traceback.format_exc()[-3000:]}"
        return RESULTS[case_id]
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    problem = None
    if code != 2:
        problem = f"exit {code}; stderr:\n{err[-2000:]}"
    elif len(lines) != 1:
        problem = f"{len(lines)} error lines:\n{err[-2000:]}"
    elif fragment.format(**fill) not in lines[0]:
        problem = f"{fragment.format(**fill)!r} not in {lines[0]!r}"
    elif "Traceback" in err:
        problem = f"a traceback:\n{err[-2000:]}"
    elif "training stopped" in err:  # the reason is shown once, as the error line
        problem = f"the reason shown twice:\n{err[-2000:]}"
    RESULTS[case_id] = problem
    return problem


def _case(case, world, capsys, monkeypatch) -> str | None:
    case_id, template, fragment = case
    if case_id == "config-cuda-absent":
        import torch

        # a machine without CUDA, on every machine: on a GPU machine device=cuda is valid, and the case
        # would train instead of testing the error
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return _outcome(case_id, template, fragment, world, capsys)


def _env_case(case, world, capsys, monkeypatch) -> str | None:
    case_id, env, template, fragment = case
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    problem = _outcome(case_id, template, fragment, world, capsys)
    for key in env:
        monkeypatch.delenv(key)
    return problem


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error(case, world, capsys, monkeypatch):
    problem = _case(case, world, capsys, monkeypatch)
    assert problem is None, problem


@pytest.mark.parametrize("case", ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_bad_environment_gives_one_clear_error(case, world, capsys, monkeypatch):
    problem = _env_case(case, world, capsys, monkeypatch)
    assert problem is None, problem
    from reidkit.retrieval.gallery import Gallery

    assert len(Gallery.open(world["db"]).entries()) == 3  # nothing was deleted


def test_the_suite_covers_fifty_kinds(world, capsys):
    """The figure: every case, run here unless its test ran it already in this session (each case runs once),
    so the figure is the same alone, under -k, or in any order."""
    ids = [c[0] for c in CASES] + [c[0] for c in ENV_CASES]
    assert len(set(ids)) == len(ids)
    for case in CASES:
        with pytest.MonkeyPatch.context() as mp:
            _case(case, world, capsys, mp)
    for case in ENV_CASES:
        with pytest.MonkeyPatch.context() as mp:
            _env_case(case, world, capsys, mp)
    ran = [i for i in ids if i in RESULTS]
    clean = [i for i in ran if RESULTS[i] is None]
    with capsys.disabled():
        print(f"\nbad inputs: {len(ran)} tried, {len(clean)} clean (exit 2, one error line, no traceback)")
    assert len(ran) == len(ids) >= 50
    assert len(clean) == len(ran), f"not clean: {[(i, RESULTS[i]) for i in ran if RESULTS[i] is not None]}"

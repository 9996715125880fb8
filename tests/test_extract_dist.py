"""Sharded extraction: 2 gloo ranks on CPU give the single-process features, in order, on every rank."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
from factories import tiny_checkpoint
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from reidkit.inference.features import extract_features, shard_bounds


class _Tiny(torch.nn.Module):
    """A linear map of the flattened image (not flip-invariant), with a camera offset."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 8 * 4, 5)
        self.cam = torch.nn.Embedding(4, 5)
        self.mean, self.std, self.feat_dim, self.uses_camera = [0.5] * 3, [0.25] * 3, 5, True

    def forward(self, x, cams=None):
        f = self.fc(x.flatten(1))
        return f if cams is None else f + self.cam(cams)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, n: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        imgs = np.random.default_rng(0).integers(0, 256, (n, 8, 4, 3), dtype=np.uint8)
        cams = np.arange(n) % 4
        f = extract_features(_Tiny(), imgs, batch_size=2, flip=True, camids=cams, distributed=True)
        torch.save(f, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_shard_bounds_cover_in_order():
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3):
            spans = [shard_bounds(n, r, world) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1


@pytest.mark.parametrize("n", [5, 1])  # 5: uneven shards; 1: one rank has nothing to extract
def test_two_rank_gloo_extraction_equals_single_process(tmp_path, n):
    port = _free_port()
    mp.spawn(_worker, args=(2, port, n, str(tmp_path)), nprocs=2, join=True)
    imgs = np.random.default_rng(0).integers(0, 256, (n, 8, 4, 3), dtype=np.uint8)
    ref = extract_features(_Tiny(), imgs, batch_size=2, flip=True, camids=np.arange(n) % 4)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_extract_cli_matches_single_process(tmp_path):
    from reidkit.cli import main

    weights = tiny_checkpoint(tmp_path / "m.pth", seed=None, classes=3, size=(32, 16), pooling="avg")
    folder = tmp_path / "crops"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(
            folder / f"{i + 1:04d}_c1s1_{i:06d}_00.png"
        )
    (folder / "0009_c2s1_000009_00.png").write_bytes(b"")  # skipped by every rank the same way
    single, multi = tmp_path / "single.npz", tmp_path / "multi.npz"
    assert (
        main(
            [
                "extract",
                "--weights",
                str(weights),
                "--images",
                str(folder),
                "--out",
                str(single),
                "--device",
                "cpu",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(
        OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]), PYTHON_EXEC=procs.python_shim()
    )  # torchrun's workers: forks of the tests' server (tests/procs.py)
    proc = procs.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port",
            str(_free_port()),
            "-m",
            "reidkit.cli",
            "extract",
            "--weights",
            str(weights),
            "--images",
            str(folder),
            "--out",
            str(multi),
            "--device",
            "cpu",
            "--batch-size",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ranks" in proc.stdout and proc.stdout.count("images -> ") == 1  # only rank 0 reports and writes
    with np.load(single) as a, np.load(multi) as b:
        np.testing.assert_allclose(b["features"], a["features"], atol=1e-5, rtol=0)
        assert list(a["paths"]) == list(b["paths"]) and len(a["paths"]) == 5
        assert [Path(p).name for p in b["skipped"]] == ["0009_c2s1_000009_00.png"]
        np.testing.assert_array_equal(a["camids"], b["camids"])


def _crop_folder(root: Path, n: int) -> Path:
    rng = np.random.default_rng(3)
    root.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(
            root / f"{i % 5:04d}_c{i % 3 + 1}s1_{i:06d}_00.jpg"
        )
    (root / "0009_c1s1_999999_00.jpg").write_bytes(b"")  # unreadable: skipped and listed, like a local run
    return root


def test_extract_on_a_dask_cluster_equals_the_local_run(tmp_path, capsys, dask_forkserver):
    """`reidkit extract --workers 2 --device cpu` (a LocalCluster on 127.0.0.1, shards of 4 paths):
    the same paths, camera ids, skipped files and features as the single-process run."""
    pytest.importorskip("distributed")
    from reidkit.cli import main
    from reidkit.inference import dask_extract

    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    crops = _crop_folder(tmp_path / "crops", 22)
    base = ["extract", "--weights", str(ckpt), "--images", str(crops), "--device", "cpu", "--batch-size", "5"]
    assert main([*base, "--out", str(tmp_path / "local.npz")]) == 0
    shard, dask_extract.DEFAULT_SHARD = dask_extract.DEFAULT_SHARD, 4
    try:
        assert main([*base, "--out", str(tmp_path / "dask.npz"), "--workers", "2"]) == 0
    finally:
        dask_extract.DEFAULT_SHARD = shard
    assert "on the Dask cluster" in capsys.readouterr().out
    a, b = np.load(tmp_path / "local.npz"), np.load(tmp_path / "dask.npz")
    assert list(a["paths"]) == list(b["paths"]) and len(a["paths"]) == 22
    assert list(a["camids"]) == list(b["camids"]) and list(a["skipped"]) == list(b["skipped"]) != []
    np.testing.assert_allclose(a["features"], b["features"], atol=1e-5)


def test_extract_cluster_options_are_one_clear_error(tmp_path, capsys):
    from reidkit.cli import main

    ckpt = tiny_checkpoint(tmp_path / "tiny.pth", seed=None)
    crops = _crop_folder(tmp_path / "crops", 3)
    base = [
        "extract",
        "--weights",
        str(ckpt),
        "--images",
        str(crops),
        "--out",
        str(tmp_path / "f.npz"),
        "--device",
        "cpu",
    ]
    for extra, msg in (
        (["--workers", "0"], "error: --workers: must be >= 1, got 0"),
        (
            ["--workers", "2", "--cluster", "tcp://127.0.0.1:1"],
            "error: --cluster: give workers (a local cluster) or a cluster address, not both",
        ),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == msg and not (tmp_path / "f.npz").exists()

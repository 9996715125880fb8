"""A model file is data: no TorchScript program and no recorded plug-in runs on load.

Two payloads that the pickle allowlist (tests/test_checkpoint_safety.py) does not cover:

* a TorchScript archive whose scripted ``__setstate__`` writes a file through
  ``torch.from_file(path, shared=True)`` (``torch.jit.load`` runs it; the archive carries valid
  reidkit export metadata, so only the trust gate stands between it and the load);
* a reidkit checkpoint that records a plug-in (``"plugins": [spec]``) whose import writes a marker:
  an absolute path, a relative ``../`` path and a module name on ``sys.path``.

Each goes through every verb that loads weights and every Python entry point; the marker must
never appear. ``--trust-checkpoint`` is the one way a TorchScript model loads (with a warning),
and ``--plugin`` the one way a plug-in is imported. A gallery built from a trusted program
records its hash: later searches and the server refuse it untrusted, and refuse a swapped file
even when trusted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
from factories import weight_verbs
import torch

from reidkit.cli import main
from reidkit.errors import ReIDError

TRIED: list[str] = []  # payload runs of this module, for the closing count


class _Payload(torch.nn.Module):
    """Scripted; its __setstate__ (run by torch.jit.load) writes b"hi" into the file named in its state."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.mean(dim=(2, 3)) @ torch.ones(3, 8), dim=1)

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.training = state[1]
        written = torch.from_file(state[0], True, 2, dtype=torch.uint8)
        written.copy_(torch.tensor([104, 105], dtype=torch.uint8))
        self.marker = state[0] + str(int(written.sum()))  # used, so the write is not optimised away


def _torchscript_payload(folder: Path, name: str = "evil.pth") -> tuple[Path, Path]:
    """A TorchScript archive with reidkit export metadata (so it would serve features) and a payload."""
    marker = folder / f"marker_{name}"
    path = folder / name
    meta = {"input_size": [64, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "feat_dim": 8}
    torch.jit.save(torch.jit.script(_Payload(str(marker))), str(path), _extra_files={"reidkit.json": json.dumps(meta)})
    assert not marker.exists()
    return path, marker


def test_the_torchscript_payload_is_real(tmp_path):
    """Guard of the guard: torch.jit.load of the payload does write the marker."""
    path, marker = _torchscript_payload(tmp_path)
    torch.jit.load(str(path))
    assert marker.read_bytes() == b"hi"


@pytest.fixture(scope="module")
def fx(tmp_path_factory, busy_port):
    """tests/factories.weights_world (a tiny checkpoint, crops, a gallery, a scene, a test config) and the
    checkpoint's TorchScript export."""
    from factories import weights_world
    from reidkit.export import export_model

    world = weights_world(tmp_path_factory.mktemp("progtrust"))
    return {**world, "ts": export_model(world["good"], "torchscript", world["root"] / "good.ts"), "port": busy_port}


@pytest.fixture(scope="module")
def busy_port():
    """A port held by a listening socket: a `serve` that got past loading its model fails to bind, never hangs."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield str(sock.getsockname()[1])


VERBS = [
    "extract",
    "index build",
    "index add",
    "search",
    "video",
    "tracklets search",
    "serve",
    "export",
    "test",
    "pseudo-label",
]


def _one_error(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    for name in names:
        assert name in err, (name, err)


# ----------------------------------------------------------------------------- TorchScript programs


@pytest.mark.parametrize("verb", VERBS)
def test_torchscript_payload_never_runs_through_a_verb(fx, tmp_path, capsys, verb):
    evil, marker = _torchscript_payload(tmp_path)
    TRIED.append(str(marker))
    code = main(weight_verbs(fx, evil, tmp_path)[verb])
    _one_error(code, capsys.readouterr().err, evil.name)
    assert not marker.exists(), "the TorchScript payload ran"


def _api_calls(fx: dict, weights: Path, tmp: Path) -> dict:
    from reidkit import Embedder
    from reidkit.inference import FeatureExtractor
    from reidkit.models.loading import load_feature_model, load_model
    from reidkit.retrieval.gallery import Gallery
    from reidkit.retrieval.service import create_app

    return {
        "load_model": lambda: load_model(weights),
        "load_feature_model": lambda: load_feature_model(weights),
        "Embedder": lambda: Embedder(weights),
        "FeatureExtractor.load": lambda: FeatureExtractor.load(weights),
        "Gallery.build": lambda: Gallery.build(fx["crops"], tmp / "apidb", weights=weights),
        "Gallery.open(weights=)": lambda: Gallery.open(fx["db"], weights=weights),
        "create_app": lambda: create_app(fx["db"], weights=str(weights)),
    }


APIS = [
    "load_model",
    "load_feature_model",
    "Embedder",
    "FeatureExtractor.load",
    "Gallery.build",
    "Gallery.open(weights=)",
    "create_app",
]


@pytest.mark.parametrize("api", APIS)
def test_torchscript_payload_never_runs_through_the_python_api(fx, tmp_path, api):
    evil, marker = _torchscript_payload(tmp_path)
    TRIED.append(str(marker))
    with pytest.raises(ReIDError) as err:
        _api_calls(fx, evil, tmp_path)[api]()
    assert evil.name in str(err.value)
    assert not marker.exists(), "the TorchScript payload ran"


def test_trust_checkpoint_loads_a_torchscript_model_and_extracts(fx, tmp_path, capsys):
    """With --trust-checkpoint the exported program loads, warns, and gives the checkpoint's features."""
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["extract", "--weights", str(fx["good"]), "--images", str(fx["crops"]), "--out", str(a)]) == 0
    capsys.readouterr()
    assert main(["extract", "--weights", str(fx["ts"]), "--images", str(fx["crops"]), "--out", str(b)]) == 2
    _one_error(2, capsys.readouterr().err, "good.ts", "TorchScript", "--trust-checkpoint")
    assert (
        main(
            ["extract", "--weights", str(fx["ts"]), "--images", str(fx["crops"]), "--out", str(b), "--trust-checkpoint"]
        )
        == 0
    )
    assert "TorchScript program" in capsys.readouterr().err
    with np.load(a) as za, np.load(b) as zb:
        np.testing.assert_allclose(zb["features"], za["features"], atol=1e-4, rtol=0)
    # the payload too runs only when trusted: the flag is the one way in, for that verb only
    evil, marker = _torchscript_payload(tmp_path)
    main(
        [
            "extract",
            "--weights",
            str(evil),
            "--images",
            str(fx["crops"]),
            "--out",
            str(tmp_path / "c.npz"),
            "--trust-checkpoint",
        ]
    )
    assert marker.exists()
    marker.unlink()
    from reidkit.inference import FeatureExtractor

    with pytest.raises(ReIDError, match="TorchScript"):
        FeatureExtractor.load(evil)
    assert not marker.exists()
    ext = FeatureExtractor.load(fx["ts"], trust_checkpoint=True)
    assert ext.dim == 512


def test_a_gallery_of_a_trusted_program_never_reloads_it_untrusted(fx, tmp_path, capsys):
    """Built with --trust-checkpoint from a TorchScript model: the gallery records the file's hash;
    search and serve refuse the stored program without the flag, and a swapped file even with it."""
    from reidkit.models.checkpoint import file_sha256
    from reidkit.retrieval.gallery import Gallery
    from reidkit.retrieval.service import create_app

    ts = tmp_path / "model.ts"
    ts.write_bytes(fx["ts"].read_bytes())
    db = tmp_path / "tsdb"
    assert main(["index", "build", "--images", str(fx["crops"]), "--db", str(db), "--weights", str(ts)]) == 2
    _one_error(2, capsys.readouterr().err, "model.ts", "--trust-checkpoint")
    assert (
        main(
            [
                "index",
                "build",
                "--images",
                str(fx["crops"]),
                "--db",
                str(db),
                "--weights",
                str(ts),
                "--trust-checkpoint",
            ]
        )
        == 0
    )
    capsys.readouterr()
    info = Gallery.open(db).info
    assert info["model_program"] == "torchscript" and info["model_file_sha256"] == file_sha256(ts)
    query = str(sorted(fx["crops"].iterdir())[0])
    assert main(["search", "--db", str(db), "--image", query]) == 2
    _one_error(2, capsys.readouterr().err, "model.ts", "TorchScript program", "--trust-checkpoint")
    assert main(["search", "--db", str(db), "--image", query, "--trust-checkpoint", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert Path(hits["results"][0]["path"]).name == Path(query).name
    # the stored program swapped for a payload at the same path: refused with or without trust
    evil, marker = _torchscript_payload(tmp_path, "evil.ts")
    os.replace(evil, ts)
    port = fx["port"]
    for argv in (
        ["search", "--db", str(db), "--image", query],
        ["serve", "--db", str(db), "--port", port],
        ["search", "--db", str(db), "--image", query, "--trust-checkpoint"],
        ["serve", "--db", str(db), "--port", port, "--trust-checkpoint"],
    ):
        TRIED.append(str(marker))
        code = main(argv)
        err = capsys.readouterr().err
        _one_error(code, err, "model.ts")
        assert ("changed since" in err) == ("--trust-checkpoint" in argv), err
        assert not marker.exists(), f"the swapped program ran: {argv}"
    for call in (
        lambda: Gallery.open(db).search(query, k=2),
        lambda: create_app(db),
        lambda: Gallery.open(db, trust_checkpoint=True).search(query, k=2),
    ):
        TRIED.append(str(marker))
        with pytest.raises(ReIDError, match="model.ts"):
            call()
        assert not marker.exists()


# ----------------------------------------------------------------------------- recorded plug-ins


def _plugin_checkpoint(fx: dict, folder: Path, how: str, needed: bool) -> tuple[Path, Path]:
    """good.pt with ``plugins`` naming a file whose import writes a marker; ``needed``: its backbone is one
    only that plug-in would register."""
    marker = folder / f"marker_plugin_{how.replace(' ', '_')}"
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    mod_name = f"reidkit_evil_{abs(hash(str(folder))) % 10**8}"
    if how == "module":
        (folder / f"{mod_name}.py").write_text(code)
        spec = mod_name
    else:
        plugin = folder / "evil_plugin.py"
        plugin.write_text(code)
        spec = str(plugin) if how == "absolute" else os.path.relpath(plugin, Path.cwd())
    ckpt = torch.load(fx["good"], map_location="cpu", weights_only=True)
    ckpt["plugins"] = [spec]
    if needed:
        ckpt["model_cfg"] = {**ckpt["model_cfg"], "backbone": "evil_net"}
    path = folder / f"plugged_{how.replace(' ', '_')}_{int(needed)}.pt"
    torch.save(ckpt, path)
    return path, marker


PLUGIN_WAYS = ["absolute", "relative", "module"]


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    """tmp_path on sys.path (a module-name plug-in there would import), cwd one level below it."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("reidkit_evil_")]:
        del sys.modules[name]


@pytest.mark.parametrize("how", PLUGIN_WAYS)
@pytest.mark.parametrize("verb", [v for v in VERBS if v not in ("test", "pseudo-label")] + ["test"])
def test_recorded_plugin_never_imported_through_a_verb(fx, on_path, capsys, verb, how):
    """A checkpoint that needs a part: one error naming the recorded plug-in and --plugin, nothing imported."""
    ckpt, marker = _plugin_checkpoint(fx, on_path, how, needed=True)
    TRIED.append(str(marker))
    code = main(weight_verbs(fx, ckpt, on_path)[verb])
    err = capsys.readouterr().err
    _one_error(code, err, ckpt.name)
    if verb != "test":  # `test` builds the config's model first; the checkpoint is read after
        assert "--plugin" in err and "never imports code" in err, err
    assert not marker.exists(), "the recorded plug-in was imported"


@pytest.mark.parametrize("how", PLUGIN_WAYS)
def test_recorded_plugin_never_imported_when_the_model_needs_none(fx, on_path, capsys, how):
    """A checkpoint of built-in parts that records a plug-in loads as data; the plug-in is not imported."""
    ckpt, marker = _plugin_checkpoint(fx, on_path, how, needed=False)
    TRIED.append(str(marker))
    out = on_path / "f.npz"
    assert main(["extract", "--weights", str(ckpt), "--images", str(fx["crops"]), "--out", str(out)]) == 0
    assert out.is_file() and not marker.exists()


@pytest.mark.parametrize("how", PLUGIN_WAYS)
@pytest.mark.parametrize("api", APIS)
def test_recorded_plugin_never_imported_through_the_python_api(fx, on_path, api, how):
    ckpt, marker = _plugin_checkpoint(fx, on_path, how, needed=True)
    TRIED.append(str(marker))
    with pytest.raises(ReIDError, match="plug-in"):
        _api_calls(fx, ckpt, on_path)[api]()
    assert not marker.exists(), "the recorded plug-in was imported"


def test_plugin_flag_is_the_one_way_in(fx, tmp_path, capsys):
    """With --plugin naming the file, it is imported (by design) and the checkpoint's part is found."""
    plugin = tmp_path / "netparts.py"
    plugin.write_text(
        "import reidkit\nfrom reidkit.models.backbones.resnet import build_resnet, spec\n"
        "reidkit.register_backbone('net_of_plugin', lambda last_stride=1: "
        "build_resnet(spec(18), last_stride=last_stride))\n"
    )
    ckpt = torch.load(fx["good"], map_location="cpu", weights_only=True)
    ckpt["plugins"] = [str(plugin)]
    ckpt["model_cfg"] = {**ckpt["model_cfg"], "backbone": "net_of_plugin"}
    path = tmp_path / "plugged.pt"
    torch.save(ckpt, path)
    out = tmp_path / "f.npz"
    assert main(["extract", "--weights", str(path), "--images", str(fx["crops"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    _one_error(2, err, "net_of_plugin", str(plugin), "--plugin")
    from reidkit.models.backbones import BACKBONES
    from reidkit import plugins

    try:
        assert (
            main(
                [
                    "--plugin",
                    str(plugin),
                    "extract",
                    "--weights",
                    str(path),
                    "--images",
                    str(fx["crops"]),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    finally:
        BACKBONES.unregister("net_of_plugin")
        plugins._LOADED.pop(str(plugin.resolve()), None)
    ref = tmp_path / "ref.npz"
    assert main(["extract", "--weights", str(fx["good"]), "--images", str(fx["crops"]), "--out", str(ref)]) == 0
    with np.load(out) as a, np.load(ref) as b:
        np.testing.assert_allclose(a["features"], b["features"], atol=1e-5, rtol=0)


def test_payload_count():
    """The count for the report (each test above asserts its own marker; this one only sums them up)."""
    executed = [m for m in TRIED if Path(m).exists()]
    print(f"\nprogram and plug-in payloads tried: {len(TRIED)}, executed: {len(executed)}")
    assert not executed

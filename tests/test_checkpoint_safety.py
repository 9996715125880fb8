"""Checkpoints never run code: a pickle payload through every verb and API that loads weights.

Each payload file is a ``torch.save`` (or plain ``pickle``) of ``{"model": Evil()}`` whose
``__reduce__`` would create a marker file (``os.system("touch ...")`` or ``open(marker, "w")``).
Every entry point must exit 2 (or raise ReIDError) with one error naming the file and the
refused global, and the marker must not exist afterwards. ``--trust-checkpoint`` is the one
way to run it, with a warning. Real checkpoint layouts (reidkit's own last.pt with RNG states,
numpy scalars as torchreid stores them, yacs configs, a .pkl of numpy arrays) still load.
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from factories import weight_verbs
import torch

from reidkit.cli import main
from reidkit.errors import ReIDError
from reidkit.models.checkpoint import read_checkpoint

# Payloads tried / executed, for the report: the module-level counters are checked at the end.
TRIED: list[str] = []


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Open:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


PAYLOADS = {"system": (_System, "system"), "open": (_Open, "open")}


def _payload(tmp_path: Path, kind: str, suffix: str = ".pth") -> tuple[Path, Path]:
    marker = tmp_path / f"marker_{kind}{suffix.replace('.', '_')}"
    cls, _ = PAYLOADS[kind]
    path = tmp_path / f"evil_{kind}{suffix}"
    if suffix == ".pkl":
        with open(path, "wb") as fh:
            pickle.dump({"model": cls(marker)}, fh)
    else:
        torch.save({"model": cls(marker)}, path)
    return path, marker


def _check_refused(code, capsys, path: Path, marker: Path, kind: str) -> None:
    TRIED.append(str(path))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("error:") == 1, err
    assert path.name in err and PAYLOADS[kind][1] in err and "refused" in err, err
    assert "Traceback" not in err
    assert not marker.exists(), "the payload ran"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """A tiny reidkit checkpoint, 4 crops, a gallery built with it, a 1-camera scene, a test config."""
    from factories import weights_world

    return weights_world(tmp_path_factory.mktemp("ckptsafe"))


VERBS = [
    "extract",
    "extract --from fastreid",
    "index build",
    "index build --from fastreid",
    "index add",
    "export",
    "search",
    "video",
    "test",
    "pseudo-label",
]


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize("verb", VERBS)
def test_payload_never_runs_through_a_verb(fixtures, tmp_path, capsys, verb, kind):
    evil, marker = _payload(tmp_path, kind)
    code = main(weight_verbs(fixtures, evil, tmp_path)[verb])
    _check_refused(code, capsys, evil, marker, kind)


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_plain_pickle_payload_through_index_build_from_fastreid(fixtures, tmp_path, capsys, kind):
    evil, marker = _payload(tmp_path, kind, ".pkl")
    code = main(
        [
            "index",
            "build",
            "--images",
            str(fixtures["crops"]),
            "--db",
            str(tmp_path / "db"),
            "--weights",
            str(evil),
            "--from",
            "fastreid",
        ]
    )
    _check_refused(code, capsys, evil, marker, kind)


def _api_calls(fx: dict, evil: Path):
    from reidkit import Embedder
    from reidkit.inference import FeatureExtractor
    from reidkit.models.loading import load_model
    from reidkit.retrieval.service import create_app

    return {
        "load_model": lambda: load_model(evil),
        "load_model fmt": lambda: load_model(evil, fmt="torchreid"),
        "Embedder": lambda: Embedder(evil),
        "FeatureExtractor": lambda: FeatureExtractor.load(evil),
        "create_app": lambda: create_app(fx["db"], weights=str(evil)),
        "read_checkpoint": lambda: read_checkpoint(evil),
    }


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize(
    "api", ["load_model", "load_model fmt", "Embedder", "FeatureExtractor", "create_app", "read_checkpoint"]
)
def test_payload_never_runs_through_the_python_api(fixtures, tmp_path, api, kind):
    evil, marker = _payload(tmp_path, kind, ".pkl" if api == "load_model fmt" else ".pth")
    TRIED.append(str(evil))
    with pytest.raises(ReIDError) as err:
        _api_calls(fixtures, evil)[api]()
    msg = str(err.value)
    assert evil.name in msg and PAYLOADS[kind][1] in msg and "refused" in msg
    assert not marker.exists(), "the payload ran"


def test_trust_checkpoint_is_the_one_way_in_and_warns(fixtures, tmp_path, capsys):
    evil, marker = _payload(tmp_path, "open")
    code = main(
        [
            "extract",
            "--weights",
            str(evil),
            "--images",
            str(fixtures["crops"]),
            "--out",
            str(tmp_path / "f.npz"),
            "--trust-checkpoint",
        ]
    )
    err = capsys.readouterr().err
    assert marker.exists(), "--trust-checkpoint unpickles fully"
    assert "arbitrary code" in err and evil.name in err
    assert code == 2 and err.count("error:") == 1  # the payload's object is no model: one clean error
    # the trust ends with the verb: the next load refuses again
    marker.unlink()
    with pytest.raises(ReIDError, match="refused"):
        read_checkpoint(evil)
    assert not marker.exists()


def test_payloads_tried_executed_count(tmp_path, capsys):
    """The figure for the report, the same alone or in any order: this test tries every payload kind through
    every Python API that loads weights and through `reidkit export` itself (none needs the module's fixtures),
    then counts, with the payloads the other tests of this session tried, how many ran: none may."""
    own: list[str] = []
    for kind in sorted(PAYLOADS):
        for api in ["load_model", "load_model fmt", "Embedder", "FeatureExtractor", "read_checkpoint"]:
            folder = tmp_path / f"{api.replace(' ', '_')}_{kind}"
            folder.mkdir()
            evil, marker = _payload(folder, kind, ".pkl" if api == "load_model fmt" else ".pth")
            own.append(str(evil))
            with pytest.raises(ReIDError, match="refused"):
                _api_calls({}, evil)[api]()
        folder = tmp_path / f"export_{kind}"
        folder.mkdir()
        evil, marker = _payload(folder, kind)
        own.append(str(evil))
        code = main(["export", "--weights", str(evil), "--out", str(folder / "m.onnx")])
        assert code == 2 and "refused" in capsys.readouterr().err
    tried = sorted(set(own) | set(TRIED))
    executed = [p for p in tried if list(Path(p).parent.glob("marker_*"))]
    with capsys.disabled():
        print(f"\ncheckpoint payloads tried: {len(tried)} ({len(own)} by this test), executed: {len(executed)}")
    assert len(own) == 12
    assert not executed


# ----------------------------------------------------------------------------- what still loads


def test_own_training_state_is_plain_weights_only(tmp_path):
    """RNG states in last.pt are tensors and numbers now; an older last.pt (numpy tuple) still loads."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    from reidkit.engine.checkpoint import rng_state, set_rng_state

    np.random.seed(3)
    state = rng_state(torch.Generator().manual_seed(1))
    torch.save({"rng": state}, tmp_path / "new.pt")
    assert get_unsafe_globals_in_checkpoint(str(tmp_path / "new.pt")) == []
    loaded = torch.load(tmp_path / "new.pt", weights_only=True)["rng"]  # no allowlist needed
    expect = np.random.random(3)
    np.random.seed(99)
    set_rng_state(loaded)
    assert np.array_equal(np.random.random(3), expect)
    # a checkpoint written before the change: numpy's tuple with an ndarray, read through the allowlist
    old = dict(state, numpy=np.random.get_state())
    torch.save({"rng": old}, tmp_path / "old.pt")
    expect = np.random.random(2)
    np.random.seed(5)
    set_rng_state(read_checkpoint(tmp_path / "old.pt")["rng"])
    assert np.array_equal(np.random.random(2), expect)


def test_foreign_extras_load_through_the_allowlist(tmp_path, monkeypatch):
    """numpy scalars (torchreid's rank1), Namespace args, OrderedDict states and a yacs CfgNode."""
    yacs, cfgmod = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, d=None):
            super().__init__(d or {})
            self.__dict__["__immutable__"] = False

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    cfgmod.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", yacs)
    monkeypatch.setitem(sys.modules, "yacs.config", cfgmod)
    sd = collections.OrderedDict(w=torch.ones(2))
    torch.save(
        {
            "state_dict": sd,
            "rank1": np.float64(0.5),
            "epoch": 3,
            "args": argparse.Namespace(lr=0.1),
            "cfg": CfgNode({"MODEL": CfgNode({"NAME": "x"})}),
            "arr": np.arange(3),
        },
        tmp_path / "t.pth",
    )
    got = read_checkpoint(tmp_path / "t.pth")
    assert torch.equal(got["state_dict"]["w"], torch.ones(2)) and float(got["rank1"]) == 0.5
    assert got["args"].lr == 0.1 and got["cfg"]["MODEL"]["NAME"] == "x"
    assert type(got["cfg"]) is collections.OrderedDict  # read as data, none of yacs' code
    with open(tmp_path / "w.pkl", "wb") as fh:  # detectron2/fast-reid style: numpy arrays, protocol 2
        pickle.dump({"model": {"w": np.ones((2, 2), np.float32)}, "__author__": "x"}, fh, protocol=2)
    assert read_checkpoint(tmp_path / "w.pkl")["model"]["w"].shape == (2, 2)


def test_fastreid_pkl_of_numpy_arrays_loads_with_equal_features(tmp_path):
    """A fast-reid checkpoint as a plain .pkl of numpy arrays gives the .pth's features."""
    from test_interop import _fastreid_ckpt

    from reidkit.models.loading import load_model

    ckpt = _fastreid_ckpt(torch.Generator().manual_seed(2), depth=18)
    torch.save(ckpt, tmp_path / "m.pth")
    with open(tmp_path / "m.pkl", "wb") as fh:
        pickle.dump({"model": {k: v.numpy() for k, v in ckpt["model"].items()}, "iteration": 3}, fh)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        a = load_model(tmp_path / "m.pth")(x)
        b = load_model(tmp_path / "m.pkl", fmt="fastreid")(x)
    assert torch.allclose(a, b)

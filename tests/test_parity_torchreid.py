"""The ``osnet_x1_0`` recipe against torchreid 0.2.5's own code (PyPI sdist, ``pip download
--no-deps --no-binary :all: torchreid==0.2.5`` into ``~/.cache/reidkit-test``): its ``osnet.py``
(torch only), ``CrossEntropyLoss`` with label smoothing, ``build_optimizer`` (AMSGrad, betas
0.9 / 0.99) and ``build_lr_scheduler('cosine')`` are imported by path, with stub packages for
the rest. From the same weights and batch: one softmax + label-smoothing step gives the same
loss, gradients and weights; every epoch of the 250-epoch cosine schedule has the same lr; and
torchreid's preprocessing (resize to 256x128, flip only, ImageNet mean/std) is the recipe's.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import sys
import tarfile
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from factories import TEST_CACHE as CACHE, made_once, pypi_download

SDIST = "torchreid-0.2.5.tar.gz"
H, W, C = 64, 32, 6


def fetch_sdist() -> Path:
    """torchreid 0.2.5's sources under the cache (downloaded once); skips when PyPI cannot be reached.

    The cache is shared by every test process: archive and sources are each made in a private temp folder and
    renamed into place whole (factories.made_once), so two runs preparing them at once both succeed."""
    root = CACHE / "torchreid-0.2.5-src"
    pkg = root / "torchreid-0.2.5" / "torchreid" / "reid"
    if pkg.is_dir():
        return pkg
    archive = pypi_download(SDIST, "torchreid==0.2.5", "--no-binary", ":all:")

    def extract(tmp: Path) -> None:
        with tarfile.open(archive) as tf:
            members = [
                m
                for m in tf.getmembers()
                if m.name.startswith("torchreid-0.2.5/torchreid/reid/") and m.isfile() and m.name.endswith(".py")
            ]
            tf.extractall(tmp, members=members)

    made_once(root, extract)
    return pkg


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tr():
    pkg = fetch_sdist()
    saved = {k: v for k, v in sys.modules.items() if k == "torchreid" or k.startswith("torchreid.")}
    try:
        for name in ("torchreid", "torchreid.reid", "torchreid.reid.optim"):
            mod = types.ModuleType(name)
            mod.__path__ = []
            sys.modules[name] = mod
        sys.modules["torchreid.reid.optim.radam"] = load(pkg / "optim" / "radam.py", "torchreid.reid.optim.radam")
        ns = SimpleNamespace(
            osnet=load(pkg / "models" / "osnet.py", "_tr_osnet"),
            ce=load(pkg / "losses" / "cross_entropy_loss.py", "_tr_ce"),
            optimizer=load(pkg / "optim" / "optimizer.py", "_tr_optimizer"),
            sched=load(pkg / "optim" / "lr_scheduler.py", "_tr_sched"),
            transforms_src=(pkg / "data" / "transforms.py").read_text(),
        )
    finally:
        for k in [k for k in sys.modules if k == "torchreid" or k.startswith("torchreid.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return ns


def ours(extra: list[str] | None = None):
    from reidkit.config import load_config
    from reidkit.losses.criterion import build_criterion
    from reidkit.models.build import build_model

    cfg = load_config("osnet_x1_0", ["model.pretrained=false", f"data.size=[{H},{W}]", *(extra or [])])
    model = build_model(cfg.model, C)
    return cfg, model, build_criterion(cfg.loss, C, model.feat_dim)


def to_ours(k: str) -> str:
    for a, b in (("fc.0.", "head.neck.fc."), ("fc.1.", "head.neck.bn."), ("classifier.", "head.classifier.fc.")):
        if k.startswith(a):
            return b + k[len(a) :]
    return "backbone." + k


@pytest.fixture(scope="module")
def step(tr):
    from reidkit.engine.optim import OptimStep, build_optimizer
    from reidkit.engine.optim import solver_param_groups

    torch.manual_seed(0)
    ref = tr.osnet.osnet_x1_0(num_classes=C, pretrained=False, loss="softmax")
    cfg, mine, crit = ours()
    mine_state = mine.state_dict()
    names = {k: to_ours(k) for k in ref.state_dict()}
    missing = sorted(set(mine_state) - set(names.values()))
    assert not missing and all(mine_state[names[k]].shape == v.shape for k, v in ref.state_dict().items()), missing[:5]
    mine.load_state_dict({names[k]: v.clone() for k, v in ref.state_dict().items()})
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, H, W, generator=g)
    mean = torch.tensor(cfg.input.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.input.std).view(1, 3, 1, 1)
    x = (x - mean) / std  # both sides take the normalised batch (torchreid normalises in its transforms)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 5, 5])
    ref.train(), mine.train()
    ref_opt = tr.optimizer.build_optimizer(ref, optim="amsgrad", lr=0.0015, weight_decay=5e-4)
    ref_loss = tr.ce.CrossEntropyLoss(C, use_gpu=False, label_smooth=True)(ref(x), labels)
    ref_opt.zero_grad()
    ref_loss.backward()
    ref_grads = {names[n]: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}
    ref_opt.step()
    s = cfg.solver
    opt = build_optimizer(
        s,
        solver_param_groups(mine, s),
    )
    total, parts = crit(mine(x, labels), labels)
    total.backward()
    our_grads = {n: p.grad.clone() for n, p in mine.named_parameters() if p.grad is not None}
    surrogate = sum((p * ref_grads[n]).sum() for n, p in mine.named_parameters() if n in ref_grads)
    assert OptimStep(opt, torch.device("cpu")).update(surrogate)
    return SimpleNamespace(
        ref=ref,
        mine=mine,
        names=names,
        ref_loss=ref_loss,
        parts=parts,
        ref_grads=ref_grads,
        our_grads=our_grads,
        ref_opt=ref_opt,
        opt=opt,
    )


def test_softmax_label_smoothing_loss_equal(step):
    assert set(step.parts) - {"total"} == {"softmax"}
    a, b = float(step.parts["softmax"]), float(step.ref_loss)
    assert abs(a - b) / b < 1e-5, (a, b)


def test_gradients_equal(step):
    assert set(step.our_grads) == set(step.ref_grads)
    worst = min(
        (torch.nn.functional.cosine_similarity(step.our_grads[n].flatten(), g.flatten(), dim=0).item(), n)
        for n, g in step.ref_grads.items()
        if g.abs().max() > 0
    )
    assert worst[0] > 0.9999, worst


def test_weights_equal_after_one_amsgrad_step(step):
    ref_group, our_group = step.ref_opt.param_groups[0], step.opt.param_groups[0]
    assert ref_group["betas"] == tuple(our_group["betas"]) == (0.9, 0.99)
    assert ref_group["amsgrad"] and our_group["amsgrad"] and ref_group["lr"] == our_group["lr"] == 0.0015
    ref_state = {step.names[k]: v for k, v in step.ref.state_dict().items()}
    worst = max(
        (((v.float() - ref_state[k].float()).abs() / (1e-7 + 1e-6 * ref_state[k].float().abs())).max().item(), k)
        for k, v in step.mine.state_dict().items()
    )
    assert worst[0] < 1.0, worst


def test_cosine_lr_of_every_epoch(tr):
    from reidkit.engine.optim import lr_factor

    cfg, _, _ = ours()
    assert cfg.solver.max_epochs == 250 and cfg.solver.sched_unit == "epoch"
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.0015)
    sched = tr.sched.build_lr_scheduler(opt, lr_scheduler="cosine", max_epoch=250)
    ref = []
    for _ in range(250):  # torchreid's engine steps the scheduler at the end of every epoch
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    mine = [cfg.solver.base_lr * lr_factor(cfg.solver, e) for e in range(250)]
    bad = [e for e in range(250) if not math.isclose(ref[e], mine[e], rel_tol=1e-9, abs_tol=1e-15)]
    assert not bad, (bad[:3], ref[bad[0]], mine[bad[0]])


def test_preprocessing_equal(tr):
    """build_transforms(height, width, transforms='random_flip', norm_mean, norm_std): resize
    (torchvision's bilinear), flip, ToTensor, Normalize; the test side resize + normalise."""
    tree = ast.parse(tr.transforms_src)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "build_transforms")
    args = [a.arg for a in fn.args.args]
    defaults = dict(zip(args[len(args) - len(fn.args.defaults) :], [ast.literal_eval(d) for d in fn.args.defaults]))
    cfg, _, _ = ours()
    assert defaults["transforms"] == "random_flip"
    assert cfg.input.mean == defaults["norm_mean"] and cfg.input.std == defaults["norm_std"]
    assert cfg.data.size == [H, W] and load_size("osnet_x1_0") == [256, 128]
    assert (cfg.input.flip_p, cfg.input.erase_p, cfg.input.pad, cfg.input.jitter) == (0.5, 0.0, 0, 0.0)
    assert "Resize((height, width))" in tr.transforms_src  # default interpolation: bilinear, as reidkit's cache


def load_size(recipe: str) -> list[int]:
    from reidkit.config import load_config

    return list(load_config(recipe).data.size)

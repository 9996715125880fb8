"""Step-for-step parity of the ``fastreid_bot_r50`` recipe with fast-reid 1.4.0's own code.

fast-reid (PyPI ``fastreid``) pins torch 1.13 and a config stack (yacs, fvcore); its modelling,
losses, solver, LR hook and samplers need only torch and numpy. The wheel is downloaded once
(``pip download --no-deps``) into ``~/.cache/reidkit-test`` (``REIDKIT_TEST_CACHE``) and its
modules are imported by path; only what they import and these tests do not use is stubbed (the
config decorator, registries, event storage, checkpoint helpers). From the same initial weights
and batch the two sides must agree on each loss term, every gradient, the weights after one Adam
step, the learning rate at every iteration of the 120-epoch schedule, and the sampler's P x K
structure and epoch length. A small ResNet (fast-reid's 18x depth) at 64x32 keeps it fast.
"""

from __future__ import annotations

import importlib
import math
import sys
import types
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from factories import TEST_CACHE as CACHE, made_once, pypi_download

WHEEL = "fastreid-1.4.0-py3-none-any.whl"
P, K, H, W = 4, 4, 64, 32


def fetch_wheel() -> Path:
    """fast-reid 1.4.0 unpacked under the cache (downloaded once); skips when PyPI cannot be reached.

    The cache is shared by every test process: wheel and unpacked tree are each made in a private temp folder
    and renamed into place whole (factories.made_once), so two runs preparing them at once both succeed."""
    root = CACHE / "fastreid-1.4.0"
    if (root / "fastreid" / "modeling").is_dir():
        return root
    whl = pypi_download(WHEEL, "fastreid==1.4.0")

    def unpack(tmp: Path) -> None:
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(tmp)

    return made_once(root, unpack)


class _Registry:
    def __init__(self, *a, **k):
        pass

    def register(self, obj=None):
        return obj if obj is not None else (lambda o: o)


class _Storage:
    def put_scalar(self, *a, **k):
        pass


class _Leaf(types.ModuleType):
    """A stubbed module: any name is a throw-away class (only base classes and unused helpers)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (), {"__init__": lambda self, *a, **k: None})
        setattr(self, name, value)
        return value


def load_fastreid(root: Path) -> SimpleNamespace:
    """fast-reid's modules imported from `root` without its dependencies (see the module docstring)."""
    pkg_dir = root / "fastreid"
    saved = {k: v for k, v in sys.modules.items() if k == "fastreid" or k.startswith("fastreid.")}
    for k in saved:
        del sys.modules[k]

    def package(name: str, **attrs):  # a package whose __init__ is not run; real submodules load
        mod = types.ModuleType(name)
        mod.__path__ = [str(pkg_dir.joinpath(*name.split(".")[1:]))]
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    def leaf(name: str, **attrs):
        mod = _Leaf(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    package("fastreid")
    package("fastreid.utils")
    package("fastreid.modeling")
    package("fastreid.modeling.backbones", build_backbone=None)
    package("fastreid.modeling.heads", build_heads=None)
    package("fastreid.modeling.meta_arch")
    package("fastreid.solver")
    package("fastreid.engine")
    package("fastreid.data")
    package("fastreid.data.samplers")
    package("fastreid.evaluation")
    leaf("fastreid.config", configurable=lambda fn: fn)
    leaf("fastreid.utils.events", get_event_storage=lambda: _Storage())
    leaf("fastreid.utils.checkpoint")
    leaf("fastreid.utils.file_io")
    leaf("fastreid.utils.precision_bn")
    leaf("fastreid.utils.timer")
    leaf("fastreid.evaluation.testing")
    leaf("fastreid.solver.optim")
    for reg in ("backbones", "heads", "meta_arch"):
        leaf(
            f"fastreid.modeling.{reg}.build",
            BACKBONE_REGISTRY=_Registry(),
            REID_HEADS_REGISTRY=_Registry(),
            META_ARCH_REGISTRY=_Registry(),
        )
    try:
        ns = SimpleNamespace(
            resnet=importlib.import_module("fastreid.modeling.backbones.resnet"),
            head=importlib.import_module("fastreid.modeling.heads.embedding_head"),
            baseline=importlib.import_module("fastreid.modeling.meta_arch.baseline"),
            solver=importlib.import_module("fastreid.solver.build"),
            hooks=importlib.import_module("fastreid.engine.hooks"),
            sampler=importlib.import_module("fastreid.data.samplers.triplet_sampler"),
        )
    finally:
        for k in [k for k in sys.modules if k == "fastreid" or k.startswith("fastreid.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return ns


@pytest.fixture(scope="module")
def fr():
    return load_fastreid(fetch_wheel())


# fast-reid's configs/Base-bagtricks.yml (+ defaults.py) as the attributes its solver reads.
def fastreid_cfg(max_epoch: int = 120) -> SimpleNamespace:
    solver = SimpleNamespace(
        OPT="Adam",
        MAX_EPOCH=max_epoch,
        BASE_LR=0.00035,
        WEIGHT_DECAY=0.0005,
        WEIGHT_DECAY_NORM=0.0005,
        WEIGHT_DECAY_BIAS=0.0005,
        BIAS_LR_FACTOR=1.0,
        HEADS_LR_FACTOR=1.0,
        IMS_PER_BATCH=P * K * 4,
        SCHED="MultiStepLR",
        STEPS=[40, 90],
        GAMMA=0.1,
        WARMUP_FACTOR=0.1,
        WARMUP_ITERS=2000,
        WARMUP_METHOD="linear",
        DELAY_EPOCHS=0,
        ETA_MIN_LR=1e-7,
        FREEZE_ITERS=0,
        CLIP_GRADIENTS=SimpleNamespace(ENABLED=False),
    )
    return SimpleNamespace(SOLVER=solver, MODEL=SimpleNamespace(FREEZE_LAYERS=[]))


def fastreid_model(fr, num_classes: int, **recipe_changes):
    r = fr.resnet
    backbone = r.ResNet(1, "BN", False, False, False, r.BasicBlock, [2, 2, 2, 2], [0, 0, 0, 0])
    heads = fr.head.EmbeddingHead(
        feat_dim=512,
        embedding_dim=0,
        num_classes=num_classes,
        neck_feat="before",
        pool_type="GlobalAvgPool",
        cls_type="Linear",
        scale=1,
        margin=0.0,
        with_bnneck=True,
        norm_type="BN",
    )
    loss_kwargs = {
        "loss_names": ("CrossEntropyLoss", "TripletLoss"),
        "ce": {"eps": 0.1, "alpha": 0.2, "scale": 1.0},
        "tri": {"margin": 0.3, "norm_feat": False, "hard_mining": True, "scale": 1.0},
    }
    return fr.baseline.Baseline(
        backbone=backbone,
        heads=heads,
        pixel_mean=[0.485 * 255, 0.456 * 255, 0.406 * 255],
        pixel_std=[0.229 * 255, 0.224 * 255, 0.225 * 255],
        loss_kwargs=loss_kwargs,
    )


def ours(overrides: dict | None = None, num_classes: int = 8):
    from reidkit.config import load_config
    from reidkit.losses.criterion import build_criterion
    from reidkit.models.build import build_model

    ov = {"model": {"backbone": "resnet18", "pretrained": False}, "data": {"size": [H, W]}, "solver": {"amp": "none"}}
    for sect, vals in (overrides or {}).items():
        ov.setdefault(sect, {}).update(vals)
    cfg = load_config("fastreid_bot_r50", ov)
    model = build_model(cfg.model, num_classes)
    crit = build_criterion(cfg.loss, num_classes, model.feat_dim)
    return cfg, model, crit


def to_ours_key(k: str) -> str:
    if k.startswith("heads.bottleneck.0."):
        return "head.neck.bn." + k[len("heads.bottleneck.0.") :]
    if k == "heads.weight":
        return "head.classifier.fc.weight"
    return k


def copy_weights(src: torch.nn.Module, dst: torch.nn.Module) -> dict[str, str]:
    """Load fast-reid's weights into ours by name; returns fast-reid name -> our name."""
    mine = dst.state_dict()
    names = {}
    new = {}
    for k, v in src.state_dict().items():
        ok = to_ours_key(k)
        assert ok in mine and mine[ok].shape == v.shape, f"{k} -> {ok} does not map"
        names[k], new[ok] = ok, v.clone()
    assert set(new) == set(mine), sorted(set(mine) - set(new))[:5]
    dst.load_state_dict(new)
    return names


def batch(num_classes: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pids = torch.randperm(num_classes, generator=g)[:P]
    labels = pids.repeat_interleave(K)
    x255 = torch.rand(P * K, 3, H, W, generator=g) * 255.0
    return x255, labels


def our_optim(cfg, model, crit, epoch_length: int):
    """The trainer's optimiser path (BaseTrainer._setup_optim)."""
    from reidkit.engine.optim import OptimStep, build_optimizer, build_scheduler
    from reidkit.engine.optim import solver_param_groups

    s = cfg.solver
    groups = solver_param_groups(model, s, list(crit.trainable_modules()))
    opt = build_optimizer(s, groups)
    sched = build_scheduler(s, opt, epoch_length)
    return opt, sched, OptimStep(opt, torch.device("cpu"), amp=s.amp, grad_clip=s.grad_clip)


def step_both(fr, overrides: dict | None = None, seed: int = 0):
    """One training step on each side from the same weights and batch; returns what to compare."""
    from reidkit.engine.supervised import to_float

    C = 8
    torch.manual_seed(seed)
    ref = fastreid_model(fr, C)
    cfg, mine, crit = ours(overrides, C)
    names = copy_weights(ref, mine)
    x255, labels = batch(C, seed)
    mean = torch.tensor(cfg.input.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.input.std).view(1, 3, 1, 1)
    ref.train(), mine.train()
    # fast-reid: Adam over its default parameter groups, warmup + multistep schedulers (iteration 0)
    fcfg = fastreid_cfg()
    params = fr.solver.get_default_optimizer_params(
        ref,
        base_lr=0.00035,
        weight_decay=0.0005,
        weight_decay_norm=0.0005,
        bias_lr_factor=1.0,
        heads_lr_factor=1.0,
        weight_decay_bias=0.0005,
        freeze_layers=[],
    )
    ref_opt = torch.optim.Adam(params)
    fr.solver.build_lr_scheduler(fcfg, ref_opt, 202)
    losses = ref({"images": x255.clone(), "targets": labels})
    ref_opt.zero_grad()
    sum(losses.values()).backward()
    ref_grads = {names[n]: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}
    ref_lr = ref_opt.param_groups[0]["lr"]
    ref_opt.step()
    # reidkit: the trainer's forward, criterion and OptimStep
    opt, sched, step = our_optim(cfg, mine, crit, 202)
    outputs = mine((x255 / 255.0 - mean) / std, labels)
    total, parts = crit(to_float(outputs), labels)
    our_lr = opt.param_groups[0]["lr"]
    total.backward()
    our_grads = {n: p.grad.clone() for n, p in mine.named_parameters() if p.grad is not None}
    # The step itself from fast-reid's gradients (sum <p, g> has gradient g): Adam's first step
    # is lr * g / |g| per element, so float noise in near-zero gradients would flip whole steps;
    # the gradients' own equality is test_gradients_equal's.
    surrogate = sum((p * ref_grads[n]).sum() for n, p in mine.named_parameters() if n in ref_grads)
    assert step.update(surrogate)
    return SimpleNamespace(
        ref=ref,
        mine=mine,
        names=names,
        losses=losses,
        parts=parts,
        ref_grads=ref_grads,
        our_grads=our_grads,
        ref_lr=ref_lr,
        our_lr=our_lr,
        cfg=cfg,
    )


@pytest.fixture(scope="module")
def one_step(fr):
    return step_both(fr)


def rel(a, b) -> float:
    a, b = float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach())
    return abs(a - b) / max(abs(b), 1e-12)


def test_loss_terms_equal(one_step):
    s = one_step
    assert rel(s.parts["softmax"], s.losses["loss_cls"]) < 1e-5, (s.parts, s.losses)
    assert rel(s.parts["triplet"], s.losses["loss_triplet"]) < 1e-5, (s.parts, s.losses)
    assert set(s.parts) - {"total"} <= {"softmax", "triplet"}


def test_gradients_equal(one_step):
    s = one_step
    assert set(s.our_grads) == set(s.ref_grads), sorted(set(s.our_grads) ^ set(s.ref_grads))[:5]
    worst = min(
        (
            (torch.nn.functional.cosine_similarity(s.our_grads[n].flatten(), g.flatten(), dim=0).item(), n)
            for n, g in s.ref_grads.items()
            if g.abs().max() > 0
        ),
        default=(1.0, ""),
    )
    assert worst[0] > 0.9999, f"gradient of {worst[1]}: cosine {worst[0]:.6f}"
    # the frozen BNNeck bias gets no gradient on either side
    assert "head.neck.bn.bias" not in s.our_grads


def test_weights_equal_after_one_step(one_step):
    s = one_step
    assert rel(s.our_lr, s.ref_lr) < 1e-9, (s.our_lr, s.ref_lr)
    ref_state = {s.names.get(k, k): v for k, v in s.ref.state_dict().items()}
    # Adam's first step moves every weight by ~lr = 3.5e-5: 1e-7 is 0.3 % of one step; BN running
    # statistics (variances up to ~1e2) are compared relatively
    worst = max(
        (((v.float() - ref_state[k].float()).abs() / (1e-7 + 1e-6 * ref_state[k].float().abs())).max().item(), k)
        for k, v in s.mine.state_dict().items()
    )
    assert worst[0] < 1.0, f"{worst[1]} differs after one step ({worst[0]:.1f} x the tolerance)"


def test_classifier_init_matches(fr):
    ref = fastreid_model(fr, 200)
    _, mine, _ = ours(num_classes=200)
    assert abs(ref.heads.weight.std().item() - 0.01) < 5e-4
    assert abs(mine.head.classifier.weight.std().item() - ref.heads.weight.std().item()) < 5e-4


def fastreid_lrs(fr, iters_per_epoch: int, max_epoch: int = 120) -> list[float]:
    """The lr of every iteration as fast-reid's trainer sets it (its LRScheduler hook's order)."""
    cfg = fastreid_cfg(max_epoch)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.00035)
    for g in opt.param_groups:
        g["lr"] = 0.00035
    scheds = fr.solver.build_lr_scheduler(cfg, opt, iters_per_epoch)
    trainer = SimpleNamespace(
        iter=0, epoch=0, warmup_iters=cfg.SOLVER.WARMUP_ITERS, delay_epochs=0, grad_scaler=None, storage=_Storage()
    )
    hook = fr.hooks.LRScheduler(opt, scheds)
    hook.trainer = trainer
    lrs = []
    for trainer.epoch in range(max_epoch):
        for _ in range(iters_per_epoch):
            hook.before_step()
            lrs.append(opt.param_groups[0]["lr"])
            hook.after_step()
            trainer.iter += 1
        hook.after_epoch()
    return lrs


def our_lrs(cfg, iters_per_epoch: int) -> list[float]:
    from reidkit.engine.optim import build_scheduler

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.solver.base_lr)
    sched = build_scheduler(cfg.solver, opt, iters_per_epoch)
    lrs = []
    for _ in range(cfg.solver.max_epochs * iters_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("iters_per_epoch", [202, 64])  # Market1501 (12,936 // 64), a small set
def test_lr_every_iteration_of_the_schedule(fr, iters_per_epoch):
    cfg, _, _ = ours()
    ref, mine = fastreid_lrs(fr, iters_per_epoch), our_lrs(cfg, iters_per_epoch)
    assert len(ref) == len(mine) == 120 * iters_per_epoch
    bad = [i for i, (a, b) in enumerate(zip(mine, ref)) if rel(a, b) > 1e-9]
    assert not bad, f"{len(bad)} iterations differ, first {bad[0]}: ours {mine[bad[0]]:.4e} vs {ref[bad[0]]:.4e}"
    # the steps count from the warmup's end: epoch 49 and 99 on Market (40 + 9, 90 + 9)
    offset = math.ceil(2000 / iters_per_epoch) - 1
    decays = sum(1 for m in (40, 90) if m + offset <= 119)
    assert math.isclose(ref[0], 3.5e-5) and math.isclose(ref[-1], 3.5e-4 * 0.1**decays)


def market_like_ids(seed: int = 0, ids: int = 751, images: int = 12936) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, 40, ids)
    counts = np.maximum(1, np.round(counts * images / counts.sum())).astype(int)
    counts[0] += images - counts.sum()
    return np.repeat(np.arange(ids), counts)


def pk_structure(batches: list[list[int]], pids: np.ndarray) -> set[tuple[int, int, bool]]:
    out = set()
    for b in batches:
        ids = pids[np.asarray(b)]
        groups = ids.reshape(-1, K)
        contiguous = bool((groups == groups[:, :1]).all())
        out.add((len(set(ids.tolist())), len(b), contiguous))
    return out


def test_sampler_structure_and_epoch_length(fr):
    from reidkit.engine.data import build_sampler

    pids = market_like_ids()
    cams = np.arange(len(pids)) % 6
    cfg, _, _ = ours()
    assert (cfg.sampler.p, cfg.sampler.k) == (16, 4)
    records = [SimpleNamespace(camid=int(c), dataset="market1501") for c in cams]
    mine = build_sampler(cfg.sampler, records, pids, seed=0)
    batch_size = cfg.sampler.p * cfg.sampler.k
    ref_epoch = len(pids) // batch_size  # fast-reid: iters_per_epoch = len(dataset) // IMS_PER_BATCH
    assert len(mine) == ref_epoch == 202
    data_source = [(f"img{i}.jpg", int(p), int(c)) for i, (p, c) in enumerate(zip(pids, cams))]
    ref_sampler = fr.sampler.NaiveIdentitySampler(data_source, batch_size, cfg.sampler.k, seed=0)
    it = iter(ref_sampler)
    ref_batches = [[next(it) for _ in range(batch_size)] for _ in range(ref_epoch)]
    our_batches = mine.rank_batches(0)
    expected = {(16, 64, True)}
    assert pk_structure(ref_batches, pids) == expected
    assert pk_structure(our_batches, pids) == expected

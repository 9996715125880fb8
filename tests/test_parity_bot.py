"""bot_r50 against reid-strong-baseline's code (michuanhaohao/reid-strong-baseline; not on PyPI,
so its behaviour is written down here from its files, cited per test, and docs/fidelity.md).

- LR (solver/lr_scheduler.py WarmupMultiStepLR, configs/softmax_triplet_with_center.yml:
  WARMUP_FACTOR 0.01, WARMUP_ITERS 10, STEPS [40, 70]; engine/trainer.py steps it at every
  EPOCH_STARTED after the constructor's own step): epoch k (1-based) runs at
  base * f(k) * 0.1^bisect_right([40, 70], k), f(k) = 0.01 (1 - k/10) + k/10 for k < 10, else 1.
- Center loss (layers/center_loss.py): the batch mean of ||f - c_y||^2 (no 1/2), centres
  N(0, 1); their SGD (lr 0.5) steps on gradients divided by the loss weight 5e-4.
- Label smoothing (layers/triplet_loss.py CrossEntropyLabelSmooth): (1 - eps) one-hot + eps / N.
- Optimiser (solver/build.py make_optimizer_with_center): Adam, every parameter lr 3.5e-4 and
  weight decay 5e-4, biases and BatchNorm included (BIAS_LR_FACTOR 1, WEIGHT_DECAY_BIAS 5e-4).
- Head (modeling/baseline.py): BNNeck BatchNorm1d with its bias frozen, bias-free classifier
  N(0, 0.001); triplet and center on the pre-BN feature; test feature after the BN.
"""

from __future__ import annotations

from bisect import bisect_right

import pytest
import torch

from reidkit.config import load_config
from reidkit.engine.optim import build_scheduler, lr_factor
from reidkit.losses.classification import cross_entropy_ls
from reidkit.losses.criterion import build_criterion
from reidkit.engine.optim import solver_param_groups
from reidkit.models.build import build_model


def code_lr_factor(k: int) -> float:
    warm = 0.01 * (1 - k / 10) + k / 10 if k < 10 else 1.0
    return warm * 0.1 ** bisect_right([40, 70], k)


def test_lr_of_every_epoch_is_the_codes():
    cfg = load_config("bot_r50")
    ours = [lr_factor(cfg.solver, e) for e in range(120)]
    code = [code_lr_factor(e + 1) for e in range(120)]
    assert ours == pytest.approx(code, rel=1e-12)
    # and through the trainer's per-iteration scheduler (constant inside an epoch)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.solver.base_lr)
    sched = build_scheduler(cfg.solver, opt, 5)
    seen = []
    for _ in range(120 * 5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[::5] == pytest.approx([3.5e-4 * c for c in code]) and seen[4] == seen[0]


def test_center_loss_is_the_codes_mean_squared_distance():
    cfg = load_config("bot_r50", ["model.backbone=resnet18", "model.pretrained=false"])
    crit = build_criterion(cfg.loss, 3, 4)
    centers = crit.center.centers
    feats = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 4.0]])
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        centers.zero_()
    loss = crit.terms["center"]({"feat": feats}, labels)
    assert loss.item() == pytest.approx((5.0 + 25.0) / 2)  # no 1/2
    # the centres' own SGD (lr 0.5) on gradients divided by the weight: c <- c + (f - c) / B * 2 * 0.5
    total = cfg.loss.center_weight * loss
    total.backward()
    crit.rescale_center_grad()
    torch.optim.SGD([centers], lr=cfg.loss.center_lr).step()
    assert torch.allclose(centers[0], feats[0] / 2) and torch.allclose(centers[2], feats[1] / 2)


def test_label_smoothing_and_triplet_settings():
    cfg = load_config("bot_r50")
    assert cfg.loss.label_smooth == 0.1 and cfg.loss.label_smooth_form == "uniform"
    assert cfg.loss.triplet_margin == 0.3 and not cfg.loss.triplet_soft
    logits = torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 3])
    target = torch.full((4, 5), 0.1 / 5)
    target[torch.arange(4), labels] += 0.9
    want = (-target * torch.log_softmax(logits, 1)).mean(0).sum()
    assert cross_entropy_ls(logits, labels, 0.1, cfg.loss.label_smooth_form).item() == pytest.approx(want.item())


def test_every_parameter_decays_at_the_base_lr():
    cfg = load_config("bot_r50", ["model.backbone=resnet18", "model.pretrained=false"])
    model = build_model(cfg.model, 10)
    s = cfg.solver
    groups = solver_param_groups(model, s)
    assert {(g["lr"], g["weight_decay"]) for g in groups} == {(3.5e-4, 5e-4)}
    n = sum(p.numel() for g in groups for p in g["params"])
    frozen = model.head.neck.bn.bias
    assert n == sum(p.numel() for p in model.parameters()) - frozen.numel() and not frozen.requires_grad


def test_head_and_input_settings():
    cfg = load_config("bot_r50", ["model.backbone=resnet18", "model.pretrained=false"])
    model = build_model(cfg.model, 2000)
    w = model.head.classifier.weight
    assert abs(w.std().item() - 0.001) < 5e-5 and model.head.classifier.fc.bias is None
    assert cfg.model.neck == "bnneck" and cfg.model.neck_feat == "after" and cfg.model.stem_pool == "pad"
    i = cfg.input
    assert (i.pad, i.flip_p, i.erase_p, i.erase_fill) == (10, 0.5, 0.5, "mean_normalized")
    assert i.erase_area == [0.02, 0.4] and i.erase_aspect == pytest.approx([0.3, 1 / 0.3], abs=0.01)
    assert (cfg.sampler.p, cfg.sampler.k, cfg.sampler.epoch) == (16, 4, "chunks")


def test_erasing_fills_the_normalised_tensor_with_the_mean_values():
    """data/transforms/build.py: ToTensor, Normalize, then RandomErasing(mean=PIXEL_MEAN) writes
    0.485 / 0.456 / 0.406 into the normalised tensor (not the mean pixel, which would be 0)."""
    from reidkit.data.augment import BatchAugment
    from reidkit.engine.data import build_augment

    cfg = load_config("bot_r50", ["input.erase_p=1.0", "input.flip_p=0", "input.pad=0"])
    aug = BatchAugment(**build_augment(cfg.input, (32, 16), cfg.input.mean, cfg.input.std, torch.device("cpu")))
    x = torch.full((4, 32, 16, 3), 255, dtype=torch.uint8)
    out = aug(x, torch.Generator().manual_seed(0))
    white = (1.0 - torch.tensor(cfg.input.mean)) / torch.tensor(cfg.input.std)
    px = out.permute(0, 2, 3, 1).reshape(-1, 3)
    erased = ~torch.isclose(px, white.expand_as(px)).all(1)
    assert 0 < erased.float().mean() < 0.5
    assert torch.allclose(px[erased], torch.tensor(cfg.input.mean).expand(int(erased.sum()), 3))

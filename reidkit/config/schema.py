"""The experiment configuration: every section a dataclass with its own ``check()``.

This module imports neither torch nor :mod:`reidkit.engine`; the model, loss and usl sections are
in ``reidkit.config.model`` / ``loss`` / ``usl`` (the model and loss code import them from there).
``Config.check()`` runs every section's check (``load_config`` calls it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

from reidkit.config.loss import LossConfig
from reidkit.config.model import ModelConfig
from reidkit.config.usl import SPACES, SourceConfig, UnsupervisedConfig
from reidkit.errors import ReIDError

__all__ = [
    "Config",
    "DataConfig",
    "DatasetSpec",
    "InputConfig",
    "LossConfig",
    "ModelConfig",
    "SamplerConfig",
    "SolverConfig",
    "SourceConfig",
    "TestConfig",
    "UnsupervisedConfig",
    "SPACES",
]


@dataclass
class DatasetSpec:
    """One dataset: a registry name, its root folder and loader options (e.g. synthetic sizes)."""

    name: str = "market1501"
    root: str = "data"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Which datasets to train and validate on, and how images reach the model."""

    datasets: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec()])
    # None: validate on the query/gallery of every training dataset; [] switches validation off.
    val: list[DatasetSpec] | None = None
    size: list[int] = field(default_factory=lambda: [256, 128])
    cache_dir: str | None = None
    loader: Literal["cached", "pil"] = "cached"
    num_workers: int = 4
    # NHWC activations: faster convolutions with bf16 on GPUs (the model and batches both switch).
    channels_last: bool = False

    def check(self) -> None:
        """Raise ReIDError naming the first bad ``data.*`` key."""
        from reidkit.utils.validate import check_hw  # each side 8..2048: a huge size allocates before failing

        check_hw(self.size, "config key 'data.size' expects [height, width]")
        if not self.datasets:
            raise ReIDError("config key 'data.datasets' needs at least one dataset")
        if self.num_workers < 0:
            raise ReIDError(f"config key 'data.num_workers' must be >= 0, got {self.num_workers}")


@dataclass
class InputConfig:
    """Training augmentation (applied to batches on the device) and input normalisation."""

    pad: int = 10
    flip_p: float = 0.5
    erase_p: float = 0.5
    erase_area: list[float] = field(default_factory=lambda: [0.02, 0.4])
    erase_aspect: list[float] = field(default_factory=lambda: [0.3, 3.33])
    # "mean_normalized": reid-strong-baseline's code (erases after Normalize with the mean's values)
    erase_fill: Literal["mean", "mean_normalized", "random"] = "mean"
    patch_p: float = 0.0
    jitter: float = 0.0
    # None: the normalisation the backbone's pretrained weights expect.
    mean: list[float] | None = None
    std: list[float] | None = None

    def check(self) -> None:
        """Raise ReIDError naming the first bad ``input.*`` key."""
        for key in ("erase_area", "erase_aspect"):
            lo_hi = getattr(self, key)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1] or lo_hi[0] <= 0:
                raise ReIDError(f"config key 'input.{key}' expects [low, high] with 0 < low <= high, got {lo_hi}")
        for key in ("mean", "std"):
            val = getattr(self, key)
            if val is not None and len(val) != 3:
                raise ReIDError(f"config key 'input.{key}' expects 3 values (RGB) or null, got {val}")


@dataclass
class SamplerConfig:
    """Batch composition: P identities x K images."""

    type: Literal["pk", "camera", "dataset"] = "pk"
    p: int = 16
    k: int = 4
    # None: about one pass over the training images per epoch.
    epoch_batches: int | None = None
    # How epoch_batches=None counts an epoch: "chunks" (sum over identities of max(n, K) // K,
    # divided by P) or "images" (training images // (P * K): fast-reid's len(dataset) // batch).
    epoch: Literal["chunks", "images"] = "chunks"

    def check(self) -> None:
        """Raise ReIDError naming the first bad ``sampler.*`` key."""
        for key in ("p", "k"):
            if getattr(self, key) < 1:
                raise ReIDError(f"config key 'sampler.{key}' must be >= 1, got {getattr(self, key)}")
        if self.epoch_batches is not None and self.epoch_batches < 1:
            raise ReIDError(f"config key 'sampler.epoch_batches' must be >= 1 or null, got {self.epoch_batches}")


@dataclass
class SolverConfig:
    """Optimiser, learning-rate schedule, precision and the training-loop periods."""

    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    base_lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    scheduler: Literal["warmup_multistep", "cosine", "warmup_cosine"] = "warmup_multistep"
    # "epoch": the lr changes at epoch boundaries (as the BoT paper); "iter": every iteration.
    sched_unit: Literal["epoch", "iter"] = "epoch"
    warmup_epochs: int = 10
    warmup_factor: float = 0.1
    # fast-reid's warmup: linear per iteration over this many iterations (0: warmup_epochs rules)
    warmup_iters: int = 0
    # fast-reid: multistep milestones count the epochs after the warmup's last epoch
    steps_after_warmup: bool = False
    # the schedule's epoch counter runs ahead by this many epochs (reid-strong-baseline: 1, its
    # scheduler steps at each epoch start after the constructor's own step)
    sched_epoch_offset: int = 0
    steps: list[int] = field(default_factory=lambda: [40, 70])
    gamma: float = 0.1
    min_lr_factor: float = 0.0
    max_epochs: int = 120
    backbone_lr_factor: float = 1.0
    head_lr_factor: float = 1.0
    bias_lr_factor: float = 1.0
    no_decay_norm: bool = False
    amp: Literal["none", "bf16", "fp16"] = "none"
    amsgrad: bool = False  # Adam/AdamW: the AMSGrad variant (torchreid's OSNet recipe)
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # torchreid: [0.9, 0.99]
    grad_clip: float = 0.0
    eval_period: int = 10
    checkpoint_period: int = 1
    log_period: int = 20
    # Freeze the backbone: no gradients, BatchNorm statistics kept (a linear probe of the head);
    # backbone_lr_factor=0 alone still moves the BN statistics and computes backbone gradients.
    freeze_backbone: bool = False
    # model.pt: the best validated weights ("best", when validation ran) or the last epoch's.
    final_weights: Literal["best", "last"] = "best"

    def check(self) -> None:
        """Raise ReIDError naming the first bad ``solver.*`` key."""
        if self.max_epochs < 1:
            raise ReIDError(f"config key 'solver.max_epochs' must be >= 1, got {self.max_epochs}")
        if self.base_lr <= 0:
            raise ReIDError(f"config key 'solver.base_lr' must be > 0, got {self.base_lr}")
        for key in ("eval_period", "checkpoint_period", "log_period"):
            if getattr(self, key) < 1:
                raise ReIDError(f"config key 'solver.{key}' must be >= 1, got {getattr(self, key)}")
        if sorted(self.steps) != list(self.steps):
            raise ReIDError(f"config key 'solver.steps' must be increasing, got {self.steps}")
        if self.grad_clip < 0:
            raise ReIDError(f"config key 'solver.grad_clip' must be >= 0, got {self.grad_clip}")
        if self.sched_epoch_offset < 0:
            raise ReIDError(f"config key 'solver.sched_epoch_offset' must be >= 0, got {self.sched_epoch_offset}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ReIDError(f"config key 'solver.adam_betas' must be two values in [0, 1), got {self.adam_betas}")
        if self.warmup_iters < 0:
            raise ReIDError(f"config key 'solver.warmup_iters' must be >= 0, got {self.warmup_iters}")
        if self.warmup_epochs < 0:
            raise ReIDError(f"config key 'solver.warmup_epochs' must be >= 0, got {self.warmup_epochs}")


@dataclass
class TestConfig:
    """Evaluation settings (validation during training and `reidkit test`)."""

    flip: bool = False
    rerank: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    metric: Literal["cosine", "euclidean"] = "cosine"
    # None: the model's own `neck_feat`.
    neck_feat: Literal["after", "before"] | None = None
    batch_size: int = 256

    def check(self) -> None:
        """Raise ReIDError naming the first bad ``test.*`` key."""
        for key in ("k1", "k2", "batch_size"):
            if getattr(self, key) < 1:
                raise ReIDError(f"config key 'test.{key}' must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.lambda_value <= 1:
            raise ReIDError(f"config key 'test.lambda_value' must be in [0, 1], got {self.lambda_value}")


@dataclass
class Config:
    """A whole experiment."""

    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    usl: UnsupervisedConfig = field(default_factory=UnsupervisedConfig)
    output_dir: str = "outputs/run"
    seed: int = 0
    device: str = "auto"
    # true: continue from <output_dir>/last.pt; "auto": the same when it exists, else start fresh;
    # any other string: that checkpoint file.
    resume: bool | str = False
    compile: bool = False

    def check(self) -> None:
        """Run every section's check; the first problem raises ReIDError naming its key."""
        for section in (self.data, self.input, self.sampler, self.model, self.loss, self.solver, self.test, self.usl):
            section.check()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples) of the resolved configuration."""
        import dataclasses

        from reidkit.config.typed import flatten_parts, plain

        return cast(dict[str, Any], flatten_parts(plain(dataclasses.asdict(self))))  # a dict stays a dict

    def to_yaml(self, path: Any = None) -> str:
        """The resolved configuration as YAML; also written to `path` when given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if path is not None:
            from reidkit.utils.io import atomic_write

            with atomic_write(path, "w") as fh:
                fh.write(text)
        return text

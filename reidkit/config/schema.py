"""The experiment configuration: every section a dataclass with its own ``check()``.

This module imports neither torch nor :mod:`reidkit.engine`; the model and loss sections are in
``reidkit.config.model`` / ``reidkit.config.loss`` (the model and loss code import them from there). ``Config.check()`` runs every section's check (``load_config`` calls it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from reidkit.errors import ReIDError
from reidkit.config.loss import LossConfig
from reidkit.config.model import ModelConfig

__all__ = [
    "Config", "DataConfig", "DatasetSpec", "InputConfig", "LossConfig", "ModelConfig", "SamplerConfig",
    "SolverConfig", "TestConfig", "UnsupervisedConfig", "SPACES",
]

SPACES = ("global", "upper", "lower")


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
class UnsupervisedConfig:
    """Unsupervised / domain-adaptive training (the ``usl`` section of a recipe)."""

    method: str = "cluster_contrast"  # a name in the USL method registry
    # Jaccard distance (k1=30,k2=6 in cluster contrast / HHCL; 20/6 in SSG)
    k1: int = 30
    k2: int = 6
    include_self_in_k1: bool = False
    search: Literal["faiss", "torch"] = "faiss"
    # DBSCAN radius: a number; or null -> eps_by_dataset[dataset name] (or its "default");
    # failing both, the SSG rule (mean of the smallest `rho` fraction of pair distances).
    eps: float | None = 0.6
    eps_by_dataset: dict[str, float] = field(default_factory=dict)
    rho: float = 1.6e-3
    fix_eps: bool = True  # SSG: eps from the rho rule is computed once, at the first round
    min_samples: int = 4
    outliers: Literal["drop", "noise", "singleton"] = "drop"
    # Camera-aware clustering: subtract each camera's mean feature (and re-normalise) before the
    # Jaccard distance, so that a camera's style does not make its own clusters. Uses the camera
    # ids of the records (metadata, not identities); the memory and the loss see the raw features.
    camera_norm: bool = False
    # contrastive memory (cluster contrast: cluster; HHCL: hybrid; SpCL-style: instance)
    memory: Literal["cluster", "hybrid", "instance"] = "cluster"
    memory_update: Literal["mean", "hard"] = "mean"
    momentum: float = 0.1
    temperature: float = 0.05
    hard_weight: float = 0.5
    # batches: batch_size images = (batch_size // num_instances) clusters x num_instances
    batch_size: int = 256
    num_instances: int = 16
    iters_per_epoch: int = 200
    # UDA: weights of a source-trained model to start from (model.pt / best.pt of `reidkit train`)
    init_weights: str | None = None
    # SSG: feature spaces clustered separately and one triplet loss each
    spaces: list[str] = field(default_factory=lambda: ["global"])
    triplet_margin: float = 0.5
    triplet_normalize: bool = False
    # SSG/UDAP source term: d = (1 - source_lambda) * Jaccard + source_lambda * (d_s(i) + d_s(j)),
    # d_s = mean distance to the `source_k` nearest source-train features (needs `source`).
    use_source: bool = False
    source: list[dict[str, Any]] = field(default_factory=list)
    source_lambda: float = 0.1
    source_k: int = 6
    # DEC: k clusters (null: the number DBSCAN finds on the initial features), Student-t alpha,
    # target refresh every `dec_update_period` iterations (0: once per epoch)
    dec_clusters: int | None = None
    dec_alpha: float = 1.0
    dec_update_period: int = 0
    # evaluate the initial model (before any training) as epoch 0
    eval_initial: bool = False

    def check(self) -> None:
        """Raise ReIDError naming the first bad ``usl.*`` key."""
        # The method name and what each method accepts (e.g. part spaces) are checked by the USL
        # method registry when the engine loads the recipe: this module imports no engine code.
        if not isinstance(self.method, str) or not self.method:
            raise ReIDError(f"config key 'usl.method' must be a method name, got {self.method!r}")
        for key in ("k1", "k2", "min_samples", "batch_size", "num_instances", "iters_per_epoch", "source_k"):
            if int(getattr(self, key)) < 1:
                raise ReIDError(f"config key 'usl.{key}' must be >= 1, got {getattr(self, key)}")
        if self.batch_size < self.num_instances:
            raise ReIDError(
                f"config key 'usl.batch_size' ({self.batch_size}) must be >= usl.num_instances ({self.num_instances})"
            )
        if self.eps is not None and not self.eps > 0:
            raise ReIDError(f"config key 'usl.eps' must be > 0 or null, got {self.eps}")
        if not 0 < self.rho <= 1:
            raise ReIDError(f"config key 'usl.rho' must be in (0, 1], got {self.rho}")
        if not 0 <= self.momentum < 1:
            raise ReIDError(f"config key 'usl.momentum' must be in [0, 1), got {self.momentum}")
        if not self.temperature > 0:
            raise ReIDError(f"config key 'usl.temperature' must be > 0, got {self.temperature}")
        if not 0 <= self.hard_weight <= 1:
            raise ReIDError(f"config key 'usl.hard_weight' must be in [0, 1], got {self.hard_weight}")
        bad = [s for s in self.spaces if s not in SPACES]
        if not self.spaces or bad or len(set(self.spaces)) != len(self.spaces) or "global" not in self.spaces:
            raise ReIDError(
                f"config key 'usl.spaces': expected distinct names from {', '.join(SPACES)} including "
                f"'global', got {self.spaces}"
            )
        if self.use_source and not self.source:
            raise ReIDError("config key 'usl.source': use_source=true needs source dataset specs "
                            "([{name, root, options}])")
        if not 0 <= self.source_lambda <= 1:
            raise ReIDError(f"config key 'usl.source_lambda' must be in [0, 1], got {self.source_lambda}")
        if self.dec_clusters is not None and self.dec_clusters < 2:
            raise ReIDError(f"config key 'usl.dec_clusters' must be >= 2 or null, got {self.dec_clusters}")
        if not self.dec_alpha > 0:
            raise ReIDError(f"config key 'usl.dec_alpha' must be > 0, got {self.dec_alpha}")
        if self.dec_update_period < 0:
            raise ReIDError(f"config key 'usl.dec_update_period' must be >= 0, got {self.dec_update_period}")


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

        from reidkit.config.typed import plain

        return plain(dataclasses.asdict(self))

    def to_yaml(self, path: Any = None) -> str:
        """The resolved configuration as YAML; also written to `path` when given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if path is not None:
            from reidkit.utils.io import atomic_write

            with atomic_write(path, "w") as fh:
                fh.write(text)
        return text



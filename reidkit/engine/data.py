"""Training data for both trainers: datasets from the ``data`` section, samplers, augmentation, the stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from reidkit.config.schema import DataConfig, InputConfig, SamplerConfig
from reidkit.errors import ReIDError

__all__ = ["EpochStream", "build_augment", "build_sampler", "load_training_data", "spec_dict"]


def spec_dict(spec: Any) -> dict[str, Any]:
    """A ``DatasetSpec`` as the ``{name, root, **options}`` mapping ``load_datasets`` takes."""
    return {"name": spec.name, "root": spec.root, **dict(spec.options)}


def load_training_data(data: DataConfig | Any) -> tuple[Any, list[Any]]:
    """(joint training dataset, validation datasets) from the ``data`` section (or a whole Config)."""
    from reidkit.data.datasets import load_dataset, load_datasets

    data = getattr(data, "data", data)
    joint = load_datasets([spec_dict(s) for s in data.datasets])
    if data.val is None:
        val = list(joint.parts)
    else:
        val = [load_dataset(s.name, s.root, **dict(s.options)) for s in data.val]
    for ds in val:
        if not ds.query or not ds.gallery:
            raise ReIDError(
                f"validation dataset {ds.name!r} has no query/gallery images; "
                "set data.val to datasets with a test split or data.val=[] to skip validation"
            )
    return joint, val


def build_sampler(
    sampler: SamplerConfig,
    records: list[Any],
    labels: np.ndarray,
    seed: int,
    rank: int = 0,
    world: int = 1,
    p: int | None = None,
    k: int | None = None,
    epoch_batches: int | None = None,
) -> Any:
    """The P x K sampler named by ``sampler.type`` (pk, camera-balanced or dataset-balanced)."""
    from reidkit.data import samplers

    if epoch_batches is None and sampler.epoch_batches is None and getattr(sampler, "epoch", "chunks") == "images":
        batch = (p or sampler.p) * (k or sampler.k)
        epoch_batches = max(1, int((np.asarray(labels) >= 0).sum()) // batch // max(1, world))
    common: dict[str, Any] = dict(
        p=p or sampler.p,
        k=k or sampler.k,
        epoch_batches=epoch_batches if epoch_batches is not None else sampler.epoch_batches,
        seed=seed,
        rank=rank,
        world_size=world,
    )
    if sampler.type == "pk":
        return samplers.PKSampler(labels, **common)
    if sampler.type == "camera":
        return samplers.CameraBalancedPKSampler(labels, np.array([r.camid for r in records]), **common)
    names = sorted({r.dataset for r in records})
    ds_ids = np.array([names.index(r.dataset) for r in records])
    return samplers.DatasetBalancedPKSampler(labels, ds_ids, **common)


def build_augment(
    inp: InputConfig, size: tuple[int, int], mean: list[float], std: list[float], device: torch.device
) -> dict[str, Any]:
    """BatchAugment keyword arguments from the ``input`` section (BoT semantics, on the device)."""
    return dict(
        size=size,
        pad=inp.pad,
        flip_p=inp.flip_p,
        erase_p=inp.erase_p,
        erase_area=tuple(inp.erase_area),
        erase_aspect=tuple(inp.erase_aspect),
        erase_fill=inp.erase_fill,
        patch_p=inp.patch_p,
        jitter=inp.jitter,
        mean=mean,
        std=std,
        device=device,
    )


class EpochStream:
    """Endless iterable of training batches, epoch after epoch, for ignite's ``Engine.run``.

    Ignite is given ``epoch_length`` batches per epoch and never sees the end of this stream, so
    the sampler's epoch is set here, from the engine's epoch count when iteration starts (a
    resumed run continues with the sampler epoch it would have reached uninterrupted). The
    loader is asked for at each epoch: the cluster trainer gives its loader a new sampler and
    labels when it re-clusters.
    """

    def __init__(self, get_loader: Callable[[], Any], first_epoch: Callable[[], int]) -> None:
        self.get_loader = get_loader
        self.first_epoch = first_epoch

    def __iter__(self) -> Iterator[Any]:
        epoch = self.first_epoch()
        while True:
            loader = self.get_loader()
            loader.sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

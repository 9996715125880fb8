"""P x K identity samplers: P identities with K images each per batch, DDP-aware and resumable.

One core (``PKSampler``) builds an epoch as a list of batches from a seeded numpy generator;
the variants only change how an identity's images are ordered into K-chunks
(``CameraBalancedPKSampler``) or how the P identities of a batch are chosen
(``DatasetBalancedPKSampler``).

Epoch construction (one "pass"): each identity's images are ordered (shuffled, or
camera round-robin) and cut into chunks of K; an identity with fewer than K images is
topped up to K by drawing its own images with replacement. Batches then take P distinct
identities that still have chunks (weighted by chunks left, so large identities do not pile
up at the end) and pop one chunk from each. When fewer than P identities have chunks left a
new pass starts, so any requested epoch length can be filled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from reidkit.errors import ReIDError

__all__ = ["PKSampler", "CameraBalancedPKSampler", "DatasetBalancedPKSampler"]


def _as_int_array(values: Any, key: str, n: int | None = None) -> np.ndarray:
    """Validate a 1-D integer array (labels, camids, dataset ids)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ReIDError(f"sampler: `{key}` must be a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ReIDError(f"sampler: `{key}` must hold integers, got dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise ReIDError(f"sampler: `{key}` has {arr.shape[0]} entries, expected {n} (one per label)")
    return arr.astype(np.int64, copy=False)


class PKSampler:
    """Batches of P distinct identities x K images each, deterministic under (seed, epoch).

    ``labels[i] < 0`` marks an index never to sample (e.g. an image the cache could not decode).
    ``epoch_batches`` is the number of batches *each rank* yields per epoch; by default
    ``sum_i max(n_i, K) // K // P`` global batches, split evenly over ``world_size`` ranks
    (rank r takes global batches r, r + W, ...; the tail that does not divide is dropped).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        p: int = 16,
        k: int = 4,
        epoch_batches: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.labels = _as_int_array(labels, "labels")
        if p < 1 or k < 1:
            raise ReIDError(f"sampler: `p` and `k` must be >= 1, got p={p}, k={k}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ReIDError(f"sampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if epoch_batches is not None and epoch_batches < 1:
            raise ReIDError(f"sampler: `epoch_batches` must be >= 1, got {epoch_batches}")
        self.p, self.k = int(p), int(k)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        usable = np.flatnonzero(self.labels >= 0)
        pids, inverse = np.unique(self.labels[usable], return_inverse=True)
        if len(pids) < self.p:
            raise ReIDError(
                f"sampler: `labels` has {len(pids)} identities, fewer than p={self.p} per batch; "
                "lower p or add identities"
            )
        self.pids = pids
        # Index lists per identity, in dataset order; the order inside a pass comes from the RNG.
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(pids)))[:-1]
        self._members: list[np.ndarray] = np.split(usable[order], bounds)
        self._chunks_per_id = np.array([max(len(m), self.k) // self.k for m in self._members])
        if epoch_batches is None:
            total = int(self._chunks_per_id.sum()) // self.p
            epoch_batches = max(1, total // self.world_size)
        self.epoch_batches = int(epoch_batches)
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out on this rank
        self._cache: tuple[int, list[list[int]]] | None = None

    # -- hooks the variants override ------------------------------------------------------
    def _order_identity(self, rng: np.random.Generator, ident: int) -> np.ndarray:
        """The identity's indices in the order they are cut into K-chunks."""
        return rng.permutation(self._members[ident])

    def _choose_identities(self, rng: np.random.Generator, left: np.ndarray) -> np.ndarray | None:
        """P distinct identity positions for one batch, or None when this pass is exhausted."""
        avail = np.flatnonzero(left > 0)
        if len(avail) < self.p:
            return None
        weights = left[avail].astype(np.float64)
        return rng.choice(avail, size=self.p, replace=False, p=weights / weights.sum())

    # -- core ------------------------------------------------------------------------------
    def _identity_chunks(self, rng: np.random.Generator, ident: int) -> list[np.ndarray]:
        ordered = self._order_identity(rng, ident)
        n = len(ordered)
        if n < self.k:
            # Keep every image once, fill the rest with replacement, then mix the filler in.
            extra = rng.choice(ordered, size=self.k - n, replace=True)
            ordered = rng.permutation(np.concatenate([ordered, extra]))
        usable = (len(ordered) // self.k) * self.k
        return [ordered[i : i + self.k] for i in range(0, usable, self.k)]

    def _one_pass(self, rng: np.random.Generator, budget: int) -> list[list[int]]:
        chunks = [self._identity_chunks(rng, i) for i in range(len(self._members))]
        left = np.array([len(c) for c in chunks], dtype=np.int64)
        batches: list[list[int]] = []
        while len(batches) < budget:
            chosen = self._choose_identities(rng, left)
            if chosen is None:
                break
            batch: list[int] = []
            for ident in chosen:
                batch.extend(int(x) for x in chunks[ident][len(chunks[ident]) - left[ident]])
                left[ident] -= 1
            batches.append(batch)
        return batches

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All ranks' batches of an epoch (rank r owns entries r, r + W, ...)."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        need = self.epoch_batches * self.world_size
        batches: list[list[int]] = []
        while len(batches) < need:
            got = self._one_pass(rng, need - len(batches))
            if not got:  # cannot happen with >= P identities; guards an endless loop
                raise ReIDError("sampler: could not form a single P x K batch from `labels`")
            batches.extend(got)
        return batches

    def rank_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of an epoch, in order."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        mine = self.global_batches(epoch)[self.rank :: self.world_size]
        self._cache = (epoch, mine)
        return mine

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate; a new epoch starts at its first batch."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.position = 0

    def __len__(self) -> int:
        return self.epoch_batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches()
        # Advance before yielding: a state_dict taken after receiving batch i resumes at i + 1.
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield list(batch)
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        """Where the sampler stands: epoch and batches already handed out in it."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "epoch_batches": self.epoch_batches,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a state so the next iteration continues the same sequence."""
        for key in ("epoch", "position"):
            if key not in state:
                raise ReIDError(f"sampler state: missing key `{key}`")
        for key in ("seed", "epoch_batches", "world_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ReIDError(
                    f"sampler state: `{key}`={state[key]} differs from this sampler's "
                    f"{getattr(self, key)}; the sequence would not continue identically"
                )
        position = int(state["position"])
        if not 0 <= position <= self.epoch_batches:
            raise ReIDError(f"sampler state: `position`={position} outside 0..{self.epoch_batches}")
        self.epoch = int(state["epoch"])
        self.position = 0 if position == self.epoch_batches else position


class CameraBalancedPKSampler(PKSampler):
    """PK sampler whose K images of an identity cover as many cameras as possible."""

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        camids: Sequence[int] | np.ndarray,
        p: int = 16,
        k: int = 4,
        **kwargs: Any,
    ) -> None:
        labels_arr = _as_int_array(labels, "labels")
        self.camids = _as_int_array(camids, "camids", len(labels_arr))
        super().__init__(labels_arr, p=p, k=k, **kwargs)

    def _order_identity(self, rng: np.random.Generator, ident: int) -> np.ndarray:
        # Round-robin over cameras (shuffled within and across cameras): consecutive K
        # images then come from min(K, cameras left) different cameras.
        members = rng.permutation(self._members[ident])
        _, cam = np.unique(self.camids[members], return_inverse=True)
        cam_rank = rng.permutation(cam.max() + 1)[cam]
        # Position of each image within its camera: 0, 1, 2, ... in the shuffled order.
        by_cam = np.argsort(cam, kind="stable")
        starts = np.searchsorted(cam[by_cam], cam[by_cam])
        within = np.empty(len(members), dtype=np.int64)
        within[by_cam] = np.arange(len(members)) - starts
        return members[np.lexsort((cam_rank, within))]


class DatasetBalancedPKSampler(PKSampler):
    """PK sampler for joint training: every batch draws identities from every dataset.

    ``mode="equal"`` gives each dataset P / D identities per batch; ``"proportional"``
    splits P by each dataset's share of identities (at least one each when P >= D).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        dataset_ids: Sequence[int] | np.ndarray,
        p: int = 16,
        k: int = 4,
        mode: str = "equal",
        **kwargs: Any,
    ) -> None:
        if mode not in ("equal", "proportional"):
            raise ReIDError(f"sampler: `mode` must be 'equal' or 'proportional', got {mode!r}")
        labels_arr = _as_int_array(labels, "labels")
        ds = _as_int_array(dataset_ids, "dataset_ids", len(labels_arr))
        self.mode = mode
        super().__init__(labels_arr, p=p, k=k, **kwargs)
        ident_ds = np.array([ds[m[0]] for m in self._members])
        for i, m in enumerate(self._members):
            if np.any(ds[m] != ident_ds[i]):
                raise ReIDError(
                    f"sampler: label {self.pids[i]} spans several `dataset_ids`; relabel identities per dataset"
                )
        self.datasets, self._ident_ds = np.unique(ident_ds, return_inverse=True)
        counts = np.bincount(self._ident_ds)
        self.quota = self._split_quota(counts)
        short = [int(self.datasets[d]) for d in range(len(counts)) if counts[d] < self.quota[d]]
        if short:
            raise ReIDError(
                f"sampler: dataset ids {short} have fewer identities than their per-batch share "
                f"{self.quota.tolist()}; lower p or use mode='proportional'"
            )

    def _split_quota(self, counts: np.ndarray) -> np.ndarray:
        n = len(counts)
        share = np.full(n, self.p / n) if self.mode == "equal" else self.p * counts / counts.sum()
        quota = np.asarray(np.floor(share)).astype(np.int64)
        if self.p >= n:
            quota = np.asarray(np.maximum(quota, 1))
        # Largest remainders take the leftover slots (ties: lower dataset id), trimming if
        # the at-least-one rule overshot.
        while quota.sum() < self.p:
            quota[int(np.argmax(share - quota))] += 1
        while quota.sum() > self.p:
            quota[int(np.argmax(np.where(quota > 1, quota - share, -np.inf)))] -= 1
        return quota

    def _choose_identities(self, rng: np.random.Generator, left: np.ndarray) -> np.ndarray | None:
        picked = []
        for d, q in enumerate(self.quota):
            if q == 0:
                continue
            avail = np.flatnonzero((left > 0) & (self._ident_ds == d))
            if len(avail) < q:
                return None
            weights = left[avail].astype(np.float64)
            picked.append(rng.choice(avail, size=int(q), replace=False, p=weights / weights.sum()))
        return np.concatenate(picked)

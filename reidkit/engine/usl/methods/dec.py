"""DEC (Xie et al., ICML 2016) on ReID features: Student-t soft assignments to k learnable centres,
trained towards their sharpened target distribution with a KL loss; centres initialised by k-means
(k given, or the number of DBSCAN clusters on the initial features). Batches are uniform random.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reidkit.config.usl import DECOptions
from reidkit.engine.usl.methods import register_usl_method
from reidkit.engine.usl.methods.base import Round, USLMethod
from reidkit.errors import ReIDError

__all__ = ["DEC"]

log = logging.getLogger("reidkit.train")


def usl_name(method: Any) -> str:
    """The name the method runs under (its options are ``usl.<name>.*``)."""
    return str(method.usl.method)


@register_usl_method("dec")
class DEC(USLMethod):
    """Deep embedded clustering: KL(P || Q) with targets refreshed per epoch or every N iterations."""

    options = DECOptions
    pk_batches = False

    def setup(self) -> None:
        from reidkit.cluster import pseudo_labels
        from reidkit.losses.dec import DECHead

        usl, ctx, key = self.usl, self.ctx, f"usl.{usl_name(self)}"
        feats = ctx.features()["global"]
        k = self.opts.clusters
        if k is None:
            labels = pseudo_labels(
                feats,
                eps=ctx.dataset_eps,
                k1=usl.k1,
                k2=usl.k2,
                min_samples=usl.min_samples,
                rho=usl.rho,
                outliers="drop",
                include_self_in_k1=usl.include_self_in_k1,
                search=usl.search,
            )
            assert isinstance(labels, np.ndarray)  # return_eps=False: the labels alone
            k = int(labels.max()) + 1
            if k < 2:
                raise ReIDError(
                    f"{key}.clusters is null and DBSCAN found {k} cluster(s) on the initial features; "
                    f"set {key}.clusters (the number of identities expected)"
                )
            log.info("DEC: %d clusters (DBSCAN on the initial features)", k)
        if k > len(feats):
            raise ReIDError(f"config key '{key}.clusters' ({k}) exceeds the {len(feats)} training images")
        self.head = DECHead(k, ctx.feat_dim, self.opts.alpha).to(self.device)
        self.head.init_centres(feats.numpy(), seed=ctx.seed)

    def extra_modules(self) -> list[nn.Module]:
        return [self.head]

    @torch.no_grad()
    def refresh_targets(self, feats: torch.Tensor | None = None) -> None:
        """DEC's sharpened targets P over the whole training set from the current assignments."""
        from reidkit.losses.dec import target_distribution

        if feats is None:
            feats = self.ctx.features()["global"]
        self.target = target_distribution(self.head(feats.to(self.device)))

    def cluster(self, epoch: int, feats: dict[str, torch.Tensor]) -> Round:
        from reidkit.cluster import cluster_report

        self.refresh_targets(feats["global"])
        labels = self.target.argmax(1).cpu().numpy().astype(np.int64)
        report: dict[str, Any] = {"epoch": epoch, "eps": None, "kept": int(len(labels))}
        report.update(cluster_report(labels, self.ctx.true_labels))
        return Round(labels, {"global": labels}, report)

    def prepare(self, rnd: Round, feats: dict[str, torch.Tensor]) -> None:
        if not hasattr(self, "target"):  # ranks other than 0 did not run cluster()
            self.refresh_targets(feats["global"])

    def loss(self, feats: dict[str, torch.Tensor], idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        from reidkit.losses.dec import dec_loss

        q = self.head(F.normalize(feats["global"].float(), dim=1))
        total = dec_loss(q, self.target[idx])
        return total, {"kl": float(total.detach())}

    def after_update(self, iteration: int) -> None:
        period = self.opts.update_period
        if period > 0 and iteration % period == 0:
            self.refresh_targets()

    def state_dict(self) -> dict[str, Any]:
        return {"dec_head": self.head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("dec_head") is not None:
            self.head.load_state_dict(state["dec_head"])

"""parts.py: your own dataset, backbone, loss and unsupervised method, each with an option of its own."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import reidkit
from reidkit.data.datasets import load_dataset


@reidkit.register_dataset("campus")                      # data.datasets=[{name: campus, root: ...}]
def campus(root, *, ids: int = 16):
    return load_dataset("synthetic", root, ids=ids, images_per_id=6, cams=3)   # any ReIDDataset


@dataclass
class TinyOptions:
    width: int = 32                                       # model.options.width=...


@reidkit.register_backbone("tiny_cnn", options=TinyOptions)   # model.backbone=tiny_cnn
class TinyCNN(nn.Module):
    def __init__(self, last_stride=1, width=32):
        super().__init__()
        self.out_channels = 2 * width
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, last_stride, 1), nn.BatchNorm2d(2 * width), nn.ReLU())

    def forward_features(self, x):                        # B x C x h x w
        return self.body(x)


@dataclass
class FeatNormOptions:
    scale: float = 1e-4                                   # loss.feat_norm.scale=...


@reidkit.register_loss("feat_norm", options=FeatNormOptions)  # loss.names=[softmax, triplet, feat_norm]
class FeatNorm(nn.Module):
    def __init__(self, cfg, num_classes, feat_dim):
        super().__init__()
        self.scale = cfg.options("feat_norm").scale

    def forward(self, outputs, labels):
        return self.scale * outputs["feat"].pow(2).sum(1).mean()


@dataclass
class CentroidOptions:
    temperature: float = 0.05                             # usl.centroid_ce.temperature=...


@reidkit.register_usl_method("centroid_ce", options=CentroidOptions)   # usl.method=centroid_ce
class CentroidCE(reidkit.USLMethod):
    def prepare(self, rnd, feats):                        # after each re-clustering
        lab, f = torch.as_tensor(rnd.labels), feats["global"]
        cent = torch.zeros(int(lab.max()) + 1, f.shape[1]).index_add_(0, lab[lab >= 0], f[lab >= 0])
        self.centroids, self.labels = F.normalize(cent, dim=1).to(self.device), lab.to(self.device)

    def loss(self, feats, idx):                           # each batch: (total, named parts)
        logits = F.normalize(feats["global"], dim=1) @ self.centroids.T / self.opts.temperature
        return F.cross_entropy(logits, self.labels[idx]), {}

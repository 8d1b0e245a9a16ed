"""GS: group-semantic co-saliency (Wang, Zha, Liu, Xie, AAAI 2019, section 2) on a frozen ImageNet VGG-16.

Two branches share VGG-16's pool3, pool4 and pool5 (the paper uses VGG-19; only VGG-16 weights are
reachable here):

* **co-category branch** (section 2.2): Hierarchical Low-Rank Bilinear Pooling. A first LRBP layer
  (eq. 5) pools each image's pool5 positions into a vector, a second pools the group's image vectors
  into the group semantic vector ``s``. Both are means over their rows (positions, then images), so
  ``s`` depends neither on the order nor on the number of the images, and a group is pooled in
  chunks (:meth:`GroupSemantics.add` / :meth:`GroupSemantics.vector`) with memory for one chunk.
  ``sigmoid(W^T s + b)`` classifies the group's common categories (eq. 7, training only).
* **co-saliency branch** (section 2.3): at each of pool3, pool4 and pool5, ``s`` is broadcast to
  every position, concatenated with the local features and reduced by a 1 x 1 convolution (written
  as the convolution of the features plus a linear map of ``s``: the same operation, without
  materialising the broadcast). Top-down from pool5: deconvolution x2, add the finer level, 3 x 3
  convolution; then a 3 x 3 convolution to one channel and a deconvolution x8; the sigmoid is the map.

``pooling="average"`` is the paper's baseline (Figure 2b, "FC + average pooling"): each image's
mean pool5 vector through a fully connected layer, averaged over the group, then a second one.

Beyond the paper, for a frozen backbone: the three levels are scaled to a standard deviation near 1
(:data:`FEATURE_SCALES`), and the image vectors and ``s`` are layer-normalised, because the quadratic
forms of LRBP otherwise start orders of magnitude apart from the features they are joined with (the
paper fine-tunes the whole network and does not say how it scales them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cosal_cli.models.heads import FrozenBackboneNetwork, bilinear_kernel
from cosal_cli.models.vgg import VGG16Features, imagenet_normalise

LEVELS = ("pool3", "pool4", "pool5")
#: ``VGG16Features.features`` slices from the previous level: conv1_1 .. pool3, conv4 .. pool4, conv5 .. pool5.
STAGES = {"pool3": slice(0, 17), "pool4": slice(17, 24), "pool5": slice(24, 31)}
CHANNELS = {"pool3": 256, "pool4": 512, "pool5": 512}
#: Powers of two (exact in float16) that bring each level's standard deviation near 1 (measured on the
#: examples: pool3 576, pool4 121, pool5 12; the Keras VGG's layers work on Caffe's 0..255 scale).
FEATURE_SCALES = {"pool3": 2.0**-9, "pool4": 2.0**-7, "pool5": 2.0**-4}
POOLINGS = ("hlrbp", "average")
DEFAULT_CONFIG: dict[str, Any] = {
    "channels": 128,  # decoder width
    "semantic": 256,  # D, the length of s
    "image_classes": 128,  # the first LRBP layer's C (the length of an image's vector)
    "rank": 4,  # r: each of the C classifiers' W has rank r (U+ and U- of r / 2 columns)
    "pooling": "hlrbp",
    "categories": 0,  # L, co-category labels of the classifier (0: none; set by the trainer)
}
FOREGROUND_PRIOR = 0.2  # the share of a map predicted salient before training


class LowRankBilinear(nn.Module):
    """LRBP (eq. 5): C low-rank bilinear classifiers whose scores are the pooled feature.

    ``f_c(X) = 1/K [||U+_c^T X^T||^2 - ||U-_c^T X^T||^2] + b_c`` over the K rows of X: the mean over
    rows of a quadratic form, so it is computed as a sum (:meth:`row_sums`) that chunks can add up.
    """

    def __init__(self, inputs: int, outputs: int, rank: int):
        super().__init__()
        if rank < 2 or rank % 2:
            raise ValueError(f"the LRBP rank must be even and at least 2, not {rank}")
        self.outputs, self.half = outputs, rank // 2
        self.plus = nn.Linear(inputs, outputs * self.half, bias=False)
        self.minus = nn.Linear(inputs, outputs * self.half, bias=False)
        self.bias = nn.Parameter(torch.zeros(outputs))

    def row_sums(self, rows: torch.Tensor) -> torch.Tensor:
        """(..., K, D) to (..., C): the sum over the K rows of the two squared projections' difference."""
        plus = self.plus(rows).unflatten(-1, (self.outputs, self.half)).square().sum(-1)
        minus = self.minus(rows).unflatten(-1, (self.outputs, self.half)).square().sum(-1)
        return (plus - minus).sum(-2)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.row_sums(rows) / rows.shape[-2] + self.bias


class GroupSemantics(nn.Module):
    """pool5 of a group's images to its semantic vector ``s`` (H-LRBP, eq. 6, or FC + average pooling)."""

    def __init__(self, pooling: str, image_classes: int, semantic: int, rank: int):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        self.pooling = pooling
        if pooling == "hlrbp":
            self.image = LowRankBilinear(CHANNELS["pool5"], image_classes, rank)
            self.group = LowRankBilinear(image_classes, semantic, rank)
        else:
            self.image = nn.Linear(CHANNELS["pool5"], image_classes)
            self.group = nn.Linear(image_classes, semantic)
        self.image_norm = nn.LayerNorm(image_classes)
        self.norm = nn.LayerNorm(semantic)

    def image_vectors(self, pool5: torch.Tensor) -> torch.Tensor:
        """(n, 512, h, w) scaled pool5 to one vector per image (n, C)."""
        if self.pooling == "hlrbp":
            pooled = self.image(pool5.flatten(2).transpose(1, 2))  # the h * w positions are LRBP's rows
        else:
            pooled = F.relu(self.image(pool5.mean(dim=(2, 3))))
        return self.image_norm(pooled)

    def add(self, pool5: torch.Tensor, totals: torch.Tensor | None = None) -> torch.Tensor:
        """Running sums over the group's images (what :meth:`vector` needs), with a chunk of images added."""
        vectors = self.image_vectors(pool5)
        sums = self.group.row_sums(vectors) if self.pooling == "hlrbp" else vectors.sum(0)
        return sums if totals is None else totals + sums

    def vector(self, totals: torch.Tensor, count: int) -> torch.Tensor:
        """``s`` (D,) from the running sums over ``count`` images."""
        if self.pooling == "hlrbp":
            pooled = totals / count + self.group.bias
        else:
            pooled = self.group(totals / count)
        return self.norm(pooled)

    def forward(self, pool5_chunks: Iterable[torch.Tensor]) -> torch.Tensor:
        totals, count = None, 0
        for chunk in pool5_chunks:
            totals, count = self.add(chunk, totals), count + chunk.shape[0]
        if totals is None:
            raise ValueError("a group needs at least one image")
        return self.vector(totals, count)


class GsHead(nn.Module):
    """The co-category branch (:class:`GroupSemantics` and its classifier) and the co-saliency decoder."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        channels, semantic = int(config["channels"]), int(config["semantic"])
        self.semantics = GroupSemantics(str(config["pooling"]), int(config["image_classes"]), semantic,
                                        int(config["rank"]))  # fmt: skip
        categories = int(config["categories"])
        self.classifier = nn.Linear(semantic, categories) if categories else None
        self.local = nn.ModuleDict({level: nn.Conv2d(CHANNELS[level], channels, 1) for level in LEVELS})
        self.broadcast = nn.ModuleDict({level: nn.Linear(semantic, channels, bias=False) for level in LEVELS})
        self.up = nn.ModuleDict({level: _upsample(channels, 2) for level in ("pool5", "pool4")})
        self.merge = nn.ModuleDict({level: nn.Conv2d(channels, channels, 3, padding=1) for level in ("pool4", "pool3")})
        self.score = nn.Conv2d(channels, 1, 3, padding=1)
        self.final_up = _upsample(1, 8)
        with torch.no_grad():
            self.score.bias.fill_(math.log(FOREGROUND_PRIOR / (1 - FOREGROUND_PRIOR)))

    def guided(self, level: str, features: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """G at one level: [local features, s broadcast] through a 1 x 1 convolution (and ReLU)."""
        return F.relu(self.local[level](features) + self.broadcast[level](semantic)[None, :, None, None])

    def forward(self, levels: Mapping[str, torch.Tensor], semantic: torch.Tensor) -> torch.Tensor:
        """Scaled pool3/4/5 of k images and the group's ``s`` to logits (k, 1, 8 h3, 8 w3)."""
        x = self.guided("pool5", levels["pool5"], semantic)
        for coarse, fine in (("pool5", "pool4"), ("pool4", "pool3")):
            finer = self.guided(fine, levels[fine], semantic)
            x = F.relu(self.merge[fine](_fit(self.up[coarse](x), finer) + finer))
        return self.final_up(self.score(x))


class GroupSemanticNetwork(FrozenBackboneNetwork):
    """Frozen VGG-16 + the trainable :class:`GsHead`; see the module docstring."""

    def __init__(self, backbone: VGG16Features, config: Mapping[str, Any] | None = None):
        super().__init__(config, DEFAULT_CONFIG)
        self.freeze("backbone", backbone)
        self.head = GsHead(self.config)

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scaled pool3, pool4 and pool5 of (k, 3, S, S) images in [0, 1]."""
        x, levels = imagenet_normalise(images), {}
        for level in LEVELS:
            x = self.backbone.features[STAGES[level]](x)
            levels[level] = x * FEATURE_SCALES[level]
        return levels

    def decode(self, levels: Mapping[str, torch.Tensor], semantic: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        logits = self.head({level: levels[level].float() for level in LEVELS}, semantic)
        return _fit(logits, size)

    def group_semantic(self, pool5: torch.Tensor) -> torch.Tensor:
        return self.head.semantics([pool5.float()])

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            levels = self.encode(images)
        return [self.decode(levels, self.group_semantic(levels["pool5"]), images.shape[-2:])]

    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.encode(images)

    def consensus_from_cache(self, cached: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The ``s`` of a sub-group: exchanged between groups in collaborative batches."""
        return self.group_semantic(cached["pool5"])

    def forward_from_cache(self, cached: Mapping[str, torch.Tensor], size: Sequence[int],
                           consensus: torch.Tensor | None = None) -> list[torch.Tensor]:  # fmt: skip
        semantic = self.consensus_from_cache(cached) if consensus is None else consensus
        return [self.decode(cached, semantic, size)]

    def category_logits(self, cached: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Co-category logits (L,) of a sub-group (eq. 7 before the sigmoid)."""
        if self.head.classifier is None:
            raise ValueError("this GS head has no co-category classifier (trained with --co-category off)")
        return self.head.classifier(self.consensus_from_cache(cached))

    def predict_group(self, images: torch.Tensor, chunk: int) -> torch.Tensor:
        """Maps (N, S, S) in [0, 1] of a group of any size N >= 1.

        ``s`` is pooled over the whole group chunk by chunk; each chunk's pyramid is kept in float16
        (about 0.65 MB per image at 224 px) so that VGG-16 runs once per image, and the decoder then
        runs ``chunk`` images at a time.
        """
        with torch.no_grad():
            kept, totals = [], None
            for part in images.split(chunk):
                levels = self.encode(part)
                totals = self.head.semantics.add(levels["pool5"], totals)
                kept.append({level: value.half() for level, value in levels.items()})
            semantic = self.head.semantics.vector(totals, images.shape[0])
            maps = [torch.sigmoid(self.decode(levels, semantic, images.shape[-2:]))[:, 0] for levels in kept]
        return torch.cat(maps)


def _upsample(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A per-channel deconvolution x ``factor``, initialised bilinear (section 3.2)."""
    layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, groups=channels,
                               bias=False)  # fmt: skip
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(2 * factor).expand(channels, 1, -1, -1))
    return layer


def _fit(x: torch.Tensor, like: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``x`` resized to the spatial size of ``like`` (a tensor or a size), where odd inputs made them differ."""
    size = tuple(like.shape[-2:]) if isinstance(like, torch.Tensor) else tuple(like)
    if x.shape[-2:] != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x

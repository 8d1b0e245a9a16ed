"""CSMG's mask-guided FCN (Zhang et al., CVPR 2019, section 3.2) on a frozen ImageNet VGG-16.

The group's ADMM masks (stage 1, from relu5_3; the method passes
:func:`cosal_cli.refine.admm.co_salient_masks` in as ``masks``) guide the FCN through two branches
that split after conv3:

* the **pool3 branch** multiplies pool3's feature maps by the mask (upsampled to 28 x 28 at 224 px
  input) and runs them through conv4 and conv5 to pool5: category-agnostic mid-level patterns,
  restricted to the common object;
* the **pool5 branch** runs the unmasked pool3 through conv4 and conv5 and multiplies pool5 by the
  mask (averaged down to 7 x 7): the high-level semantics of the common object.

The two pool5 tensors are added and go through the trainable ``head``: conv6 and conv7 (1 x 1,
ReLU, dropout), a 1 x 1 convolution to one channel and a learned deconvolution (x32, initialised
bilinear) back to the input size; the sigmoid of its output is the map. The paper fine-tunes the
whole FCN; here VGG-16 stays frozen, as the backbone of every cosal method (one shared component,
small trained heads), so only the head learns. The mask never enters anywhere but pool3 and pool5.

``branches`` selects the paper's ablations (``("pool3",)`` or ``("pool5",)`` alone). ``output_stride`` 8
(cosal's, not the paper's: its maps are 7 x 7 grids upsampled x32) adds FCN-8s's skip
(:mod:`~cosal_cli.models.fcn_skip`): a correction of the logits at 1/8 of the input from the image's
*unmasked* pool3 and conv7's feature, so the map's edges, and parts of the object the mask missed, can be
drawn from the image itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cosal_cli.models.fcn_skip import Pool3Skip
from cosal_cli.models.heads import FrozenBackboneNetwork, bilinear_kernel
from cosal_cli.models.vgg import VGG16Features, imagenet_normalise

BRANCHES = ("pool3", "pool5")
DEFAULT_CONFIG: dict[str, Any] = {"channels": 256, "dropout": 0.5, "branches": list(BRANCHES), "output_stride": 32}
OUTPUT_STRIDES = (32, 8)  # 32: the paper's x32 deconvolution; 8: the pool3 skip as well
SKIP_INPUT = "skip_pool3"  # the cache's key for the unmasked pool3 the skip reads (the branches are named pool3/5)
#: ``VGG16Features.features`` slices: conv1_1 .. pool3, conv4_1 .. relu5_3, and pool5.
TO_POOL3, TO_RELU5_3, POOL5 = slice(0, 17), slice(17, 30), 30


class CsmgHead(nn.Module):
    """conv6, conv7 (1 x 1, ReLU, dropout), score (1 x 1 to one channel), deconvolution x32; optionally
    the pool3 skip."""

    def __init__(self, channels: int = 256, dropout: float = 0.5, skip: bool = False):
        super().__init__()
        if skip:
            self.skip = Pool3Skip(channels)
        self.conv6 = nn.Conv2d(512, channels, kernel_size=1)
        self.conv7 = nn.Conv2d(channels, channels, kernel_size=1)
        self.score = nn.Conv2d(channels, 1, kernel_size=1)
        self.upsample = nn.ConvTranspose2d(1, 1, kernel_size=64, stride=32, padding=16, bias=False)
        self.dropout = nn.Dropout2d(dropout)
        with torch.no_grad():
            self.upsample.weight.copy_(bilinear_kernel(64))

    def forward(self, fused: torch.Tensor, details: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at 32 x ``fused``'s size; with the skip, ``details`` of pool3 correct them at 1/8."""
        x = self.dropout(F.relu(self.conv6(fused)))
        x = self.dropout(F.relu(self.conv7(x)))
        logits = self.upsample(self.score(x))
        return logits if details is None else self.skip.refine(logits, x, details)


class MaskGuidedFcn(FrozenBackboneNetwork):
    """Frozen VGG-16 + the trainable :class:`CsmgHead`; see the module docstring."""

    #: Training views are cached in sub-groups of 5 to 9 images of one group, each with their ADMM masks.
    cache_sub_group = 5

    def __init__(self, backbone: VGG16Features, masks: Callable[[torch.Tensor], torch.Tensor],
                 config: Mapping[str, Any] | None = None):  # fmt: skip
        super().__init__(config, DEFAULT_CONFIG)
        unknown = set(self.config["branches"]) - set(BRANCHES) or not self.config["branches"]
        if unknown:
            raise ValueError(f"branches must be a non-empty subset of {BRANCHES}, not {self.config['branches']}")
        if self.config["output_stride"] not in OUTPUT_STRIDES:
            raise ValueError(f"CSMG's output_stride is one of {OUTPUT_STRIDES}, not {self.config['output_stride']!r}")
        self.freeze("backbone", backbone)
        self.head = CsmgHead(int(self.config["channels"]), float(self.config["dropout"]), self.skips)
        #: Stage 1: (k, 512, h, w) relu5_3 of a (sub-)group to (k, h, w) masks in [0, 1]. Public so that
        #: benchmarks/csmg_mask_ceiling.py can put ground-truth masks in its place.
        self.stage1 = masks

    @property
    def branches(self) -> tuple[str, ...]:
        return tuple(self.config["branches"])

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pool3 and relu5_3 of (k, 3, S, S) images in [0, 1]."""
        layers = self.backbone.features
        pool3 = layers[TO_POOL3](imagenet_normalise(images))
        return pool3, layers[TO_RELU5_3](pool3)

    def masks(self, relu5_3: torch.Tensor) -> torch.Tensor:
        """The group's masks (k, h, w) in [0, 1], at relu5_3's resolution (stage 1)."""
        return self.stage1(relu5_3).to(relu5_3.device)

    def branch_features(self, pool3: torch.Tensor, relu5_3: torch.Tensor,
                        masks: torch.Tensor) -> dict[str, torch.Tensor]:  # fmt: skip
        """The two branches' pool5 tensors (k, 512, S/32, S/32), before they are added."""
        masks = masks[:, None].to(pool3.dtype)
        out = {}
        if "pool3" in self.branches:
            masked = pool3 * F.interpolate(masks, size=pool3.shape[-2:], mode="bilinear", align_corners=False)
            out["pool3"] = self.backbone.features[POOL5](self.backbone.features[TO_RELU5_3](masked))
        if "pool5" in self.branches:
            pool5 = self.backbone.features[POOL5](relu5_3)
            # plain ints: an exported graph (fixed 224 px input) needs a constant output size
            out["pool5"] = pool5 * F.adaptive_avg_pool2d(masks, tuple(int(side) for side in pool5.shape[-2:]))
        return out

    def decode(self, branches: Mapping[str, torch.Tensor], size: Sequence[int],
               pool3: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Logits (k, 1, S, S) from the branches' pool5 tensors (their sum goes into the head) and, for
        the skip, the unmasked pool3."""
        fused = sum(branches[name].float() for name in self.branches)
        logits = self.head(fused, self.head.skip.details(pool3) if self.skips else None)
        if logits.shape[-2:] != tuple(size):  # inputs that are not a multiple of 32
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> list[torch.Tensor]:
        """One sub-group to ``[logits]``; its masks come from its own ADMM unless given."""
        with torch.no_grad():
            pool3, relu5_3 = self.encode(images)
            masks = self.masks(relu5_3) if masks is None else masks
            branches = self.branch_features(pool3, relu5_3, masks)
        return [self.decode(branches, images.shape[-2:], pool3)]

    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """What :meth:`forward_from_cache` needs of a sub-group: each branch's pool5 (masks applied).

        The masks depend on the sub-group, so the cache is built one sub-group at a time
        (:attr:`cache_sub_group`); a cached view carries the mask of the sub-group it was cached in.
        """
        pool3, relu5_3 = self.encode(images)
        branches = self.branch_features(pool3, relu5_3, self.masks(relu5_3))
        return {**branches, SKIP_INPUT: pool3} if self.skips else branches

    def forward_from_cache(self, cached: Mapping[str, torch.Tensor], size: Sequence[int]) -> list[torch.Tensor]:
        return [self.decode(cached, size, cached.get(SKIP_INPUT))]

    def predict_group(self, images: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps (N, S, S) in [0, 1] of a whole group, and its relu5_3 features (N, 512, S/16, S/16) on the CPU.

        The ADMM sees the whole group (the paper's test time); the backbone runs ``chunk`` images at
        a time, once for relu5_3 and, for the pool3 branch, once more after the masks are known.
        """
        with torch.no_grad():
            encoded = [self.encode(part) for part in images.split(chunk)]
            features = torch.cat([relu5_3 for _, relu5_3 in encoded])
            masks = self.masks(features)
            maps = []
            for (pool3, relu5_3), part_masks in zip(encoded, masks.split(chunk)):
                branches = self.branch_features(pool3, relu5_3, part_masks)
                maps.append(torch.sigmoid(self.decode(branches, images.shape[-2:], pool3))[:, 0])
        return torch.cat(maps), features.cpu()


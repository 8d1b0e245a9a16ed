"""GWD's group-wise FCN (Wei, Zhao, Bourahla, Li, Wu, IJCAI 2017, section 2) on a frozen ImageNet VGG-16.

Five images go in together and five maps come out:

* **semantic block** (eq. 3): VGG-16's 13 convolutions, shared by the five images: relu5_3 ``s_i``
  at 1/16 of the input;
* **group saliency block** (eq. 4): the five ``s_i`` concatenated along channels, then 3 convolutions
  (the first 1 x 1, to keep the 2,560-channel input small, then two 3 x 3): the group feature ``X``;
* **single-image block** (eq. 5): 3 convolutions (3 x 3) on each ``s_i`` alone: ``x_i``;
* **collaborative learning** (eq. 6): each ``x_i`` concatenated with ``X``, a 3 x 3 convolution, a 1 x 1
  score to one channel and a learned deconvolution (x16, initialised bilinear) to the input size;
  the sigmoid is the map. The loss is squared L2 (eq. 7).

With ``output_stride`` 8 the head also has FCN-8s's skip (Long et al., CVPR 2015; GWD is an FCN): a
correction of the logits at 1/8 of the input from VGG-16's pool3 and the collaborative feature
(:class:`~cosal_cli.models.fcn_skip.Pool3Skip`). The paper's single x16 deconvolution draws the maps' edges
from 1/16 of the input.

The paper fine-tunes everything from a saliency VGG-16; here VGG-16 stays frozen, shared with the
other cosal methods, and the blocks above it (the head) are what ``cosal train`` learns: fine-tuning
in spirit, on cosal's frozen backbone. With ``tune_encoder`` the head also tunes VGG-16's conv5 block, as a
low-rank update of its weights (:class:`TunedConv5`): the paper's fine-tuning reaches the semantic block,
and the head file stays small.

The concatenation makes the output depend on the order of the five; :func:`covering_subsets` orders
every subset by the images' content, so a group's maps do not depend on the order it came in.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cosal_cli.models.fcn_skip import Pool3Skip, conv_relu
from cosal_cli.models.heads import FrozenBackboneNetwork, bilinear_kernel
from cosal_cli.models.vgg import VGG16Features, imagenet_normalise

GROUP_SIZE = 5  # the paper's K
COVER = 3  # every image of a group of 5 or more is predicted in at least this many subsets
#: Optional ``tune_encoder``: conv5_1 .. conv5_3 take a trained low-rank update (:class:`TunedConv5`).
#: ``output_stride``: 16, the paper's x16 deconvolution; 8 adds the pool3 skip (:mod:`~cosal_cli.models.fcn_skip`).
DEFAULT_CONFIG: dict[str, Any] = {"channels": 128, "output_stride": 16}
OUTPUT_STRIDES = (16, 8)
# ``VGG16Features.features``: conv1_1 .. pool3, pool3 .. pool4 (what stays frozen) and conv5 (what a tuned head updates)
TO_POOL3, POOL3_TO_POOL4, CONV5 = slice(0, 17), slice(17, 24), slice(24, 30)
CONV5_RANK = 32  # the update's rank per convolution (512 x 4,608 weights each)
ENCODER_LR_SCALE = 1.0  # the update's learning rate / --lr: it starts at zero, so it is learnt, not moved
LAB_BINS = (4, 6, 6)  # L, a, b bins of the colour histogram in the global descriptor
FOREGROUND_PRIOR = 0.2  # the share of a map the head predicts as salient before training
FEATURE_SCALE = 1 / 8  # relu5_3 has a standard deviation of about 8 (up to ~400): brought near 1 for the head


class TunedConv5(nn.Module):
    """conv5_1 .. relu5_3 of VGG-16 with weights ``W + up @ down`` (LoRA, Hu et al., ICLR 2022).

    ``W`` stays the frozen backbone's; only the rank-``rank`` factors are trained and saved (1.97 MB at rank 32,
    against 28 MB for a copy of conv5). ``up`` starts at zero, so an untrained update is VGG-16 itself.
    """

    def __init__(self, rank: int = CONV5_RANK, channels: int = 512, layers: int = 3):
        super().__init__()
        fan_in = channels * 9
        self.down = nn.ParameterList(nn.Parameter(torch.empty(rank, fan_in)) for _ in range(layers))
        self.up = nn.ParameterList(nn.Parameter(torch.zeros(channels, rank)) for _ in range(layers))
        for down in self.down:
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))  # as torch's Linear (and LoRA) initialise theirs

    def forward(self, pool4: torch.Tensor, conv5: nn.Sequential) -> torch.Tensor:
        convolutions = [layer for layer in conv5 if isinstance(layer, nn.Conv2d)]
        x = pool4.float()  # the feature cache stores float16
        for convolution, down, up in zip(convolutions, self.down, self.up, strict=True):
            weight = convolution.weight + (up @ down).view_as(convolution.weight)
            x = F.relu(F.conv2d(x, weight, convolution.bias, padding=1))
        return x


class GwdHead(nn.Module):
    """The group saliency, single-image and collaborative blocks (eqs. 4-6), optionally conv5's update
    and the pool3 skip."""

    def __init__(self, channels: int = 128, tune_encoder: bool = False, skip: bool = False):
        super().__init__()
        if tune_encoder:
            self.conv5 = TunedConv5()
        if skip:
            self.skip = Pool3Skip(channels)
        self.group = nn.Sequential(conv_relu(GROUP_SIZE * 512, channels, 1), conv_relu(channels, channels),
                                   conv_relu(channels, channels))  # fmt: skip
        self.single = nn.Sequential(conv_relu(512, channels), conv_relu(channels, channels),
                                    conv_relu(channels, channels))  # fmt: skip
        self.collaborative = conv_relu(2 * channels, channels)
        self.score = nn.Conv2d(channels, 1, kernel_size=1)
        self.upsample = nn.ConvTranspose2d(1, 1, kernel_size=32, stride=16, padding=8, bias=False)
        with torch.no_grad():
            self.upsample.weight.copy_(bilinear_kernel(32))
            # Maps start at the usual foreground share, not 0.5: from 0.5, the squared L2 of a sigmoid first
            # drives every pixel to 0 and the sigmoid saturates there before the object is learned.
            self.score.bias.fill_(math.log(FOREGROUND_PRIOR / (1 - FOREGROUND_PRIOR)))

    def group_feature(self, semantic: torch.Tensor) -> torch.Tensor:
        """(B, 5, 512, h, w) relu5_3 of B subsets to their group features X (B, C, h, w)."""
        return self.group(semantic.flatten(1, 2))

    def collaborate(self, single: torch.Tensor, group: torch.Tensor, details: torch.Tensor | None) -> torch.Tensor:
        """Single-image features (B, 5, C, h, w), group features (B, C, h, w) and, with the skip, the
        details of pool3 (B * 5, 64, 2h, 2w) to logits (B * 5, 1, 16h, 16w)."""
        joined = torch.cat([single, group[:, None].expand_as(single)], dim=2).flatten(0, 1)
        collaborative = self.collaborative(joined)
        logits = self.upsample(self.score(collaborative))
        if details is None:
            return logits
        return self.skip.refine(logits, collaborative, details)


class GroupWiseFcn(FrozenBackboneNetwork):
    """Frozen VGG-16 + the trainable :class:`GwdHead`; see the module docstring."""

    #: Training sub-groups are an anchor and its 4 nearest neighbours (:mod:`cosal_cli.training.neighbours`).
    neighbour_sub_group = GROUP_SIZE
    #: ``tune_encoder``: conv5's update (zero at the start, so an --init head without one starts from its maps)
    tuned_encoder, tuned_encoder_lr_scale = "conv5", ENCODER_LR_SCALE

    def __init__(self, backbone: VGG16Features, config: Mapping[str, Any] | None = None):
        super().__init__(config, DEFAULT_CONFIG)
        if self.config["output_stride"] not in OUTPUT_STRIDES:
            raise ValueError(f"GWD's output_stride is one of {OUTPUT_STRIDES}, not {self.config['output_stride']!r}")
        self.freeze("backbone", backbone)
        self.head = GwdHead(int(self.config["channels"]), self.tunes_encoder, self.skips)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The semantic block: relu5_3 (k, 512, S/16, S/16) of (k, 3, S, S) images in [0, 1]; and pool3
        (k, 256, S/8, S/8) for the skip (None without one)."""
        with torch.no_grad():
            pool3 = self.backbone.features[TO_POOL3](imagenet_normalise(images))
            pool4 = self.backbone.features[POOL3_TO_POOL4](pool3)
        return self.relu5_3(pool4), pool3 if self.skips else None

    def relu5_3(self, pool4: torch.Tensor) -> torch.Tensor:
        """relu5_3 from pool4: the tuned conv5 (with gradients for its update), or the frozen one."""
        if self.tunes_encoder:
            return self.head.conv5(pool4, self.backbone.features[CONV5])
        return self.backbone.features[CONV5](pool4)

    def decode(self, semantic: torch.Tensor, size: Sequence[int], pool3: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (5, 1, S, S) of one sub-group of exactly five from its relu5_3 (5, 512, h, w) and pool3."""
        if semantic.shape[0] != GROUP_SIZE:
            raise ValueError(f"GWD takes sub-groups of exactly {GROUP_SIZE} images, not {semantic.shape[0]}")
        scaled = semantic.float() * FEATURE_SCALE
        everyone = torch.arange(GROUP_SIZE, device=semantic.device)[None]
        details = None if pool3 is None else self.head.skip.details(pool3)
        return self._subset_logits(scaled, self.head.single(scaled), details, everyone, size)

    def _subset_logits(self, scaled: torch.Tensor, single: torch.Tensor, details: torch.Tensor | None,
                       subsets: torch.Tensor, size: Sequence[int]) -> torch.Tensor:  # fmt: skip
        """Logits (B * 5, 1, S, S) of B subsets (B, 5) of images, from their scaled relu5_3, single features
        and the skip's details."""
        group = self.head.group_feature(scaled[subsets])
        picked = None if details is None else details[subsets].flatten(0, 1)
        return _to_size(self.head.collaborate(single[subsets], group, picked), size)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            semantic, pool3 = self.encode(images)
        return [self.decode(semantic, images.shape[-2:], pool3)]

    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """relu5_3 (pool4 when conv5 is tuned: it changes at every step), and the global descriptor that picks
        the training sub-groups' neighbours (always from the frozen relu5_3, so they do not move)."""
        pool3 = self.backbone.features[TO_POOL3](imagenet_normalise(images))
        pool4 = self.backbone.features[POOL3_TO_POOL4](pool3)
        semantic = self.backbone.features[CONV5](pool4)
        features = {"pool4": pool4} if self.tunes_encoder else {"relu5_3": semantic}
        if self.skips:
            features["pool3"] = pool3
        return {**features, "descriptor": global_descriptor(semantic, images)}

    def forward_from_cache(self, cached: Mapping[str, torch.Tensor], size: Sequence[int]) -> list[torch.Tensor]:
        semantic = self.relu5_3(cached["pool4"]) if self.tunes_encoder else cached["relu5_3"]
        return [self.decode(semantic, size, cached["pool3"] if self.skips else None)]

    def predict_group(self, images: torch.Tensor, chunk: int) -> torch.Tensor:
        """Maps (N, S, S) in [0, 1] of a group of any size N >= 1 (see :func:`covering_subsets`).

        The backbone and the single-image block run once per image; only the group and collaborative
        blocks run per subset, ``chunk`` subsets at a time.
        """
        with torch.no_grad():
            scaled, single, details = self._encode_group(images, chunk)
            subsets = torch.tensor(covering_subsets(content_keys(images)), device=images.device)
            total = torch.zeros(images.shape[0], *images.shape[-2:], device=images.device)
            for part in subsets.split(chunk):
                logits = self._subset_logits(scaled, single, details, part, images.shape[-2:])
                total.index_add_(0, part.flatten(), torch.sigmoid(logits[:, 0].float()))
            count = torch.bincount(subsets.flatten(), minlength=images.shape[0])
        return total / count[:, None, None]

    def encode_each(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """What depends on one image only: its scaled relu5_3, single-image features and the skip's details
        of pool3 (None without a skip; pool3 itself is dropped here, 64 channels kept instead of 256)."""
        semantic, pool3 = self.encode(images)
        scaled = semantic * FEATURE_SCALE
        return scaled, self.head.single(scaled), None if pool3 is None else self.head.skip.details(pool3)

    def _encode_group(self, images: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`encode_each` of every image, ``chunk`` at a time."""
        parts = [self.encode_each(part) for part in images.split(chunk)]
        scaled, single, details = (list(column) for column in zip(*parts))
        return torch.cat(scaled), torch.cat(single), None if details[0] is None else torch.cat(details)


def content_keys(images: torch.Tensor) -> list[str]:
    """A hash of each image's 8-bit pixels: what orders the subsets, whatever order the group came in."""
    pixels = (images.detach() * 255.0).round().to(torch.uint8).cpu().numpy()
    return [hashlib.sha256(image.tobytes()).hexdigest() for image in pixels]


def covering_subsets(keys: Sequence[str], size: int = GROUP_SIZE, cover: int = COVER) -> list[list[int]]:
    """Subsets of ``size`` image indices in which every image appears at least ``cover`` times.

    ``cover`` rounds, each a shuffle of the group cut into blocks of ``size`` (the last block filled
    up with other images from the start of that round's shuffle): ``cover * ceil(N / size)`` subsets,
    so about ``cover`` head passes per image (3 to 3.6 for N >= 5). The shuffles are seeded by the
    sorted content keys and every subset is sorted by key, so the subsets depend on what the images
    are, not on their order. A group of fewer than ``size`` images is one subset, its images
    repeated (in key order) to fill it.
    """
    order = sorted(range(len(keys)), key=lambda index: (keys[index], index))
    if len(order) < size:
        return [[order[position % len(order)] for position in range(size)]]
    seed = int.from_bytes(hashlib.sha256("".join(sorted(keys)).encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    rank = {index: position for position, index in enumerate(order)}
    subsets = []
    for _ in range(cover):
        shuffled = [order[position] for position in rng.permutation(len(order))]
        for start in range(0, len(shuffled), size):
            block = shuffled[start : start + size]
            block += [index for index in shuffled if index not in block][: size - len(block)]
            subsets.append(sorted(block, key=rank.__getitem__))
    return subsets


def global_descriptor(semantic: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(k, 512 + 144): relu5_3 averaged over space and a CIELab colour histogram, each L2-normalised.

    GWD picks the 4 most similar images with GIST and Lab histograms (after Siva et al. 2013); the
    pooled backbone feature stands in for GIST (a global description of the scene's layout and content).
    """
    pooled = F.normalize(semantic.float().mean(dim=(2, 3)), dim=1)
    return torch.cat([pooled, F.normalize(lab_histogram(images).sqrt(), dim=1)], dim=1)


def lab_histogram(images: torch.Tensor) -> torch.Tensor:
    """(k, 3, H, W) RGB in [0, 1] to (k, 4 * 6 * 6) joint CIELab histograms that sum to 1."""
    from skimage.color import rgb2lab

    lab = torch.from_numpy(rgb2lab(images.detach().float().cpu().permute(0, 2, 3, 1).numpy(), channel_axis=-1))
    ranges = ((0.0, 100.0), (-80.0, 80.0), (-80.0, 80.0))
    index = torch.zeros(lab.shape[:3], dtype=torch.int64)
    for channel, (bins, (low, high)) in enumerate(zip(LAB_BINS, ranges)):
        cell = ((lab[..., channel] - low) / (high - low) * bins).long().clamp_(0, bins - 1)
        index = index * bins + cell
    counts = torch.stack([torch.bincount(row.flatten(), minlength=int(np.prod(LAB_BINS))) for row in index])
    return (counts.float() / counts.sum(dim=1, keepdim=True)).to(images.device)


def _to_size(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if logits.shape[-2:] != tuple(size):  # inputs that are not a multiple of 16
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return logits

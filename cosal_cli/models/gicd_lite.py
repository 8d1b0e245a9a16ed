"""cosal's own GICD: the paper's consensus, gradient inducing and ARM decoder on EfficientNet-Lite0.

GICD needs an ImageNet *classifier* (for the consensus and for the gradient). The official network
uses VGG-16 with its 1000-class head; the only classifier with its head that cosal can obtain is
EfficientNet-Lite0 (see ``weights_manifest.yaml``), so here it is both the co-classifier and the
encoder, frozen; the decoder (``head``) is trained (``cosal train --method gicd``), and with
``tune_encoder`` also a copy of Lite0's early blocks that only the decoder reads (:class:`TunedPyramid`).

Per group (in chunks; memory grows with the group only by the encoder outputs kept for the decoder,
at most ``KEEP_ENCODED_BYTES``):

1. consensus = softmax of the summed ImageNet logits of the group's images;
2. GIM per image: the gradient of <consensus, logits> w.r.t. the last convolutional features (the
   1280-channel head conv, stride 32, as conv5 is the last conv of official GICD's VGG); channel
   weights = ReLU(GAP(gradient)) min-max normalised per image; weighted features; CAM = ReLU of
   their channel mean, min-max normalised per image. One autograd call covers a whole chunk (the
   similarity is a sum over images, so the gradients do not mix). Measured on the held-out split,
   this layer's CAM localises the common object far better than earlier ones (README, "gicd");
3. the decoder with attention retaining (ARM): going down the pyramid (strides 16, 8, 4, 2), each
   lateral feature is multiplied by the upsampled previous prediction (the CAM first), added to
   the upsampled top-down feature and smoothed; each level predicts a logit map.

The classifier is frozen, so the GIM needs no graph into trainable weights: training backpropagates
through the decoder (and the tuned pyramid) only, and without a tuned pyramid can run from cached
encoder outputs (:meth:`GicdLite.encode_for_cache`).

Whether an image holds the group's object at all: the channel weights and the CAM are normalised
per image, so an image *without* the object still gets a CAM that peaks at 1. A trained decoder can
still leave it dark (it sees the weighted features, not only the CAM): trained with outsiders whose
loss is not constant (see ``training/losses.py``) and collaborative batches, the held-out outsider /
in-group map ratio went from 0.92 to 0.38-0.43 (README, runs B and D). A learned per-image gate (cues of class
agreement with the consensus, one logit offset per image) was tried and measured to add nothing
(0.379 with it, 0.386 with its output zeroed), so it is not part of the network.

What the decoder cannot see, the classifier can: :class:`~cosal_cli.models.membership.Membership`
dims the map of an image whose ImageNet classes disagree with the group's consensus
(:meth:`GicdLite.predict_group`), with the consensus the GIM already computed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cosal_cli.models.budget import KeptBytes
from cosal_cli.models.efficientnet_lite import STAGES, EfficientNetLite0, lite_normalise, run_stem_and_blocks
from cosal_cli.models.gicd import gradient_cam, group_consensus
from cosal_cli.models.heads import FrozenBackboneNetwork
from cosal_cli.models.membership import Membership, consensus_of

#: Optional ``tune_encoder``: the decoder reads a tuned copy of Lite0's early blocks (:class:`TunedPyramid`).
DEFAULT_CONFIG: dict[str, Any] = {"channels": 32}
#: (block index, channels) of the stage ends the decoder reads: strides 2, 4, 8 and 16, finest first.
PYRAMID_TAPS = ((0, 16), (2, 24), (4, 40), (10, 112))
TAP_BLOCKS = tuple(block for block, _ in PYRAMID_TAPS)
LAST_BLOCK = sum(repeats for repeats, *_ in STAGES) - 1
HEAD_CHANNELS = 1280
#: Encoder outputs a group larger than one chunk keeps from its logits pass for the decoder (1.6 MB per
#: image at 224 px, so 160 images); the chunks beyond are encoded a second time.
KEEP_ENCODED_BYTES = 256 * 2**20
ENCODER_LR_SCALE = 0.1


def _conv_gn_relu(in_channels: int, out_channels: int, kernel: int = 3) -> nn.Sequential:
    # GroupNorm: training sub-groups of 2 to 6 images are too small for BatchNorm statistics.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2),
        nn.GroupNorm(8, out_channels),
        nn.ReLU(inplace=True),
    )


def _resize(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ArmDecoder(nn.Module):
    """Top-down decoder with attention retaining; returns logits per level, finest first."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.top = _conv_gn_relu(HEAD_CHANNELS, channels, kernel=1)
        self.lateral = nn.ModuleList(_conv_gn_relu(tap_channels, channels) for _, tap_channels in PYRAMID_TAPS)
        self.smooth = nn.ModuleList(_conv_gn_relu(channels, channels) for _ in PYRAMID_TAPS)
        self.predict = nn.ModuleList(nn.Conv2d(channels, 1, 3, padding=1) for _ in PYRAMID_TAPS)

    def forward(self, pyramid: list[torch.Tensor], weighted: torch.Tensor, cam: torch.Tensor) -> list[torch.Tensor]:
        top, attention, logits = self.top(weighted), cam, []
        for level in range(len(pyramid) - 1, -1, -1):
            size = pyramid[level].shape[-2:]
            attended = pyramid[level] * _resize(attention, size)  # ARM: the co-salient attention is kept
            top = self.smooth[level](_resize(top, size) + self.lateral[level](attended))
            logits.append(self.predict[level](top))
            attention = torch.sigmoid(logits[-1])
        return logits[::-1]


class TunedPyramid(nn.Module):
    """A trainable copy of Lite0's stem and blocks up to the decoder's deepest tap (stride 16).

    Lite0's early stages are thin (16 to 112 channels) and were never asked to draw object boundaries;
    the decoder reads them, not the classifier. Tuning this copy with the decoder leaves the frozen
    classifier, and so the consensus and the GIM, exactly as they were. Copied from the classifier
    after its BatchNorms were folded into the convolutions (``EfficientNetLite0.from_file``), so it has
    no running statistics to drift on small training sub-groups.
    """

    def __init__(self, classifier: EfficientNetLite0):
        super().__init__()
        self.stem = copy.deepcopy(classifier._conv_stem)
        self.stem_norm = copy.deepcopy(classifier._bn0)  # nn.Identity once folded
        self.blocks = nn.ModuleList(copy.deepcopy(block) for block in classifier._blocks[: TAP_BLOCKS[-1] + 1])
        self.requires_grad_(True)

    def forward(self, normalised: torch.Tensor) -> list[torch.Tensor]:
        return run_stem_and_blocks(self.stem, self.stem_norm, self.blocks, normalised, TAP_BLOCKS)[1]


class GicdLite(FrozenBackboneNetwork):
    """Frozen EfficientNet-Lite0 (co-classifier and encoder) + the trainable ARM decoder ``head``."""

    #: ``tune_encoder``: the head's copy of Lite0's early blocks (copied from Lite0, so an --init head without
    #: one gets it), at a tenth of the decoder's rate: pre-trained weights are moved, not learnt from scratch
    tuned_encoder, tuned_encoder_lr_scale = "encoder", ENCODER_LR_SCALE

    def __init__(self, classifier: EfficientNetLite0, config: Mapping[str, Any] | None = None):
        super().__init__(config, DEFAULT_CONFIG)
        self.freeze("classifier", classifier)
        self.head = ArmDecoder(int(self.config["channels"]))
        if self.tunes_encoder:
            # everything trained is in the head file, so the tuned copy lives in the head
            self.head.encoder = TunedPyramid(classifier)

    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The decoder's pyramid and the last conv features (the GIM's input).

        The frozen classifier runs without autograd; a tuned pyramid (``tune_encoder``) keeps its graph
        when gradients are enabled, since training backpropagates into it.
        """
        normalised = lite_normalise(images)
        taps = () if self.tunes_encoder else TAP_BLOCKS
        with torch.no_grad():
            x, pyramid = self.classifier.blocks_until(normalised, LAST_BLOCK, taps=taps)
            features = self.classifier.head_features(x)
        if self.tunes_encoder:
            pyramid = self.head.encoder(normalised)
        return pyramid, features

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """ImageNet logits from the last conv features (global average pool, then the classifier)."""
        return self.classifier.classify(features)

    def consensus(self, images: torch.Tensor, chunk: int) -> torch.Tensor:
        """softmax(sum of the group's ImageNet logits), (1, 1000), summed ``chunk`` images at a time."""
        return group_consensus(lambda part: self.classifier(lite_normalise(part)), images, chunk)

    def induce(self, features: torch.Tensor, consensus: torch.Tensor | None) -> torch.Tensor:
        """The gradient of <consensus, logits> w.r.t. ``features``; without ``consensus`` the images are the group.

        Lite0's head is a global average pool and one linear layer, so the gradient is ``W^T c / HW`` at
        every position of every image: written out, with no autograd (equal to
        :func:`~cosal_cli.models.gicd.consensus_gradient` to float precision, tested).
        """
        if consensus is None:
            consensus = consensus_of(self.logits(features))
        height, width = features.shape[-2:]
        direction = consensus.to(features.dtype) @ self.classifier.fc.weight / (height * width)  # (1, channels)
        return direction[:, :, None, None].expand_as(features)

    def forward(self, images: torch.Tensor, consensus: torch.Tensor | None = None) -> list[torch.Tensor]:
        """(N, 3, S, S) RGB in [0, 1] to the decoder's logit maps (N, 1, S, S), finest first.

        Without ``consensus`` the images are taken as the whole group (training sub-groups, small
        groups), and one encoder pass serves both the consensus and the GIM.
        """
        pyramid, features = self.encode(images)
        return self.decode(pyramid, features, images.shape[-2:], consensus)

    def decode(
        self, pyramid: list[torch.Tensor], features: torch.Tensor, size: torch.Size, consensus: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """The GIM and the decoder from the encoder's outputs; logit maps at ``size``."""
        return [_resize(logits, size) for logits in self._head_logits(pyramid, features, consensus)]

    def _head_logits(self, pyramid, features: torch.Tensor, consensus: torch.Tensor | None) -> list[torch.Tensor]:
        """The GIM, then the decoder's logit maps at their own levels' sizes, finest first."""
        return self.head(pyramid, *gradient_cam(features, self.induce(features, consensus)))

    # -- training from cached encoder outputs (the encoder is frozen) ------------------------------

    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything :meth:`forward_from_cache` needs of a view: the pyramid taps and the last features."""
        pyramid, features = self.encode(images)
        return {**{f"tap{index}": tap for index, tap in enumerate(pyramid)}, "features": features}

    def forward_from_cache(
        self, cached: Mapping[str, torch.Tensor], size: torch.Size, consensus: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """:meth:`forward` from :meth:`encode_for_cache`'s tensors (of one sub-group)."""
        pyramid = [cached[f"tap{index}"].float() for index in range(len(PYRAMID_TAPS))]
        return self.decode(pyramid, cached["features"].float(), size, consensus)

    def consensus_from_cache(self, cached: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The consensus of the cached views' images (collaborative batches use another group's)."""
        with torch.no_grad():
            return consensus_of(self.logits(cached["features"].float()))

    def predict_group(self, images: torch.Tensor, chunk: int, membership: Membership | None = None) -> torch.Tensor:
        """Saliency maps (N, S, S) in [0, 1] for a whole group, ``chunk`` images at a time.

        One encoder pass per image: the pass that gives the group's logits (for the consensus) keeps its
        outputs for the GIM and the decoder, up to :data:`KEEP_ENCODED_BYTES`; only the chunks beyond
        that bound are encoded again. With ``membership``, images whose classes disagree with the
        group's are dimmed.
        """
        parts, encoded, logits, budget = images.split(chunk), [], [], KeptBytes(KEEP_ENCODED_BYTES)
        with torch.no_grad():
            for part in parts:
                pyramid, features = self.encode(part)
                logits.append(self.logits(features))
                keep = len(parts) == 1 or budget.admit((*pyramid, features))
                encoded.append((pyramid, features) if keep else None)
            logits_of_group = torch.cat(logits)
            consensus = consensus_of(logits_of_group)
            maps = []
            for part, outputs in zip(parts, encoded):
                pyramid, features = outputs if outputs is not None else self.encode(part)
                maps.append(torch.sigmoid(self.decode_finest(pyramid, features, part.shape[-2:], consensus)[:, 0]))
            if membership is None:
                return torch.cat(maps)
            return torch.cat(maps) * membership.weights(logits_of_group, consensus)[:, None, None]

    def decode_finest(self, pyramid, features, size: torch.Size, consensus: torch.Tensor) -> torch.Tensor:
        """:meth:`decode`'s finest logit map alone (inference needs no other level brought to ``size``)."""
        return _resize(self._head_logits(pyramid, features, consensus)[0], size)

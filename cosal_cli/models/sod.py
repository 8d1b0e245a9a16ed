"""cosal's single-image salient object network: frozen VGG-16 taps and a light top-down decoder.

The decoder follows the feature-pyramid pattern the co-saliency papers build on: every VGG tap
(relu1_2 ... relu5_3) goes through a lateral 3x3 conv to 64 channels (with GroupNorm, see
:func:`_lateral`); going top-down, each level
adds the upsampled level above and (except at full resolution, where a conv would cost as much as
the rest of the decoder) smooths the sum with a 3x3 conv; every level predicts a saliency logit
map (deep supervision), upsampled to the input size. The full-resolution prediction is the output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cosal_cli.models.heads import FrozenBackboneNetwork
from cosal_cli.models.vgg import VGG16Features, imagenet_normalise

TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
TAP_CHANNELS = (64, 128, 256, 512, 512)
DEFAULT_CONFIG: dict[str, Any] = {"channels": 64}


def _conv_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))


def _lateral(in_channels: int, out_channels: int) -> nn.Sequential:
    # The converted Keras VGG-16 activations are on Caffe's 0..255 scale (relu taps average ~190 and
    # reach ~9000): without a normalisation a freshly initialised decoder starts with logits of about
    # +-150, saturated sigmoids and vanishing gradients. GroupNorm (batch-size independent, sub-groups
    # are 2 to 6 images) brings every tap to unit scale.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(8, out_channels), nn.ReLU(inplace=True)
    )


class SaliencyDecoder(nn.Module):
    """Top-down decoder over the five VGG taps; returns logits per level, finest first."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.lateral = nn.ModuleList(_lateral(c, channels) for c in TAP_CHANNELS)
        # smooth[i] follows the upsample-add at level i + 1 (levels 2..5); level 1 is not smoothed.
        self.smooth = nn.ModuleList(_conv_relu(channels, channels) for _ in TAP_CHANNELS[1:])
        self.predict = nn.ModuleList(nn.Conv2d(channels, 1, 3, padding=1) for _ in TAP_CHANNELS)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        level = len(features) - 1
        top = self.smooth[level - 1](self.lateral[level](features[level]))
        logits = [self.predict[level](top)]
        for level in range(len(features) - 2, -1, -1):
            lateral = self.lateral[level](features[level])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            if level > 0:
                top = self.smooth[level - 1](top)
            logits.append(self.predict[level](top))
        return logits[::-1]


class SaliencyNetwork(FrozenBackboneNetwork):
    """Frozen backbone + trainable ``head``; ``forward`` gives logits at input size, finest first."""

    def __init__(self, backbone: VGG16Features, config: Mapping[str, Any] | None = None):
        super().__init__(config, DEFAULT_CONFIG)
        self.freeze("backbone", backbone)
        self.head = SaliencyDecoder(self.config["channels"])

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) RGB in [0, 1] to logits (N, 1, H, W) per decoder level."""
        with torch.no_grad():  # the backbone is frozen: no activations kept for backward
            taps = self.backbone(imagenet_normalise(images), taps=TAPS)
        logits = self.head([taps[name] for name in TAPS])
        size = images.shape[-2:]
        return [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in logits]

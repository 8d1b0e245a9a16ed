"""FCN-8s's pool3 skip (Long, Shelhamer, Darrell, CVPR 2015), shared by cosal's VGG-16 FCN heads.

GWD and CSMG are FCNs whose papers upsample coarse logits in one step (x16 and x32): their maps' edges are
drawn at 1/16 or 1/32 of the input. The skip adds a correction of the logits at 1/8 of the input, from
VGG-16's pool3 of each image and the head's coarse feature. Its score starts at zero, so a head that gains
one (``cosal train --output-stride 8 --init HEAD``) starts from exactly that head's maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOL3_SCALE = 1 / 512  # pool3's standard deviation is about 540 (up to ~10,000)
SKIP_CHANNELS = 64
SKIP_STRIDE = 8  # pool3's stride in VGG-16: the ``output_stride`` of a head with the skip


def conv_relu(inputs: int, outputs: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, kernel, padding=kernel // 2), nn.ReLU(inplace=True))


class Pool3Skip(nn.Module):
    """Logits at 1/8 of the input from pool3's details and the head's coarse feature (upsampled to them).

    :meth:`details` depends on one image only, so a method may run it once per image and reuse it.
    """

    def __init__(self, channels: int, detail: int = SKIP_CHANNELS):
        super().__init__()
        self.detail = conv_relu(256, detail)
        self.fuse = conv_relu(channels + detail, detail)
        self.score = nn.Conv2d(detail, 1, kernel_size=1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def details(self, pool3: torch.Tensor) -> torch.Tensor:
        """(k, 256, h, w) pool3 to the (k, 64, h, w) features the skip reads."""
        return self.detail(pool3.float() * POOL3_SCALE)

    def forward(self, coarse: torch.Tensor, details: torch.Tensor) -> torch.Tensor:
        upsampled = F.interpolate(coarse, size=details.shape[-2:], mode="bilinear", align_corners=False)
        return self.score(self.fuse(torch.cat([upsampled, details], dim=1)))

    def refine(self, logits: torch.Tensor, coarse: torch.Tensor, details: torch.Tensor) -> torch.Tensor:
        """``logits`` (at any size) plus the skip's, upsampled bilinear to them."""
        fine = self(coarse, details)
        return logits + F.interpolate(fine, size=logits.shape[-2:], mode="bilinear", align_corners=False)

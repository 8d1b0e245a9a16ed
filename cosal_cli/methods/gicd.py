"""``gicd``: GICD with cosal's own weights (:mod:`cosal_cli.models.gicd_lite`), the default GICD.

EfficientNet-Lite0 (frozen, ImageNet) is the co-classifier and the encoder; the ARM decoder is
trained by ``cosal train --method gicd`` with jigsaw composites and shipped inside the package.
For the authors' VGG-16 network and weights see ``gicd-official``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.methods.options import OutsiderOptions
from cosal_cli.models.efficientnet_lite import EfficientNetLite0
from cosal_cli.models.gicd_lite import GicdLite
from cosal_cli.models.membership import Membership

#: Tuned on groups of shared-v2 *training* images (benchmarks/tune_membership.py, README "Outsiders"): the
#: smallest offset with which at most 1 % of their objects (groups without outsiders) fall below 0.5.
MEMBERSHIP = Membership(offset=4.0, temperature=0.5)


class Method(base.TrainableMethod):
    name = "gicd"
    input_size = 224  # the paper's size; the GIM then works on Lite0's last 7 x 7 grid (official GICD: 14 x 14)
    loss = "soft-iou"
    # the GIM's gradient is written out (GicdLite.induce), so no autograd is needed at inference
    trains_from_cache = True
    options_class = OutsiderOptions

    @classmethod
    def build_network(cls, backbone: Path, config: Mapping | None = None) -> GicdLite:
        return GicdLite(EfficientNetLite0.from_file(backbone), config)

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        membership = MEMBERSHIP if self.options.dim_outsiders else None
        return self.network.predict_group(images, chunk=self.batch_size, membership=membership)

    def export_graphs(self) -> list[base.ExportGraph]:
        """Two passes, as at inference: the group's ImageNet logits, then the GIM and decoder per chunk."""
        size = self.input_size
        images = torch.rand(2, 3, size, size, device=self.device)
        consensus = torch.softmax(torch.randn(1, 1000, device=self.device), dim=1)
        batch = {0: "images"}
        return [
            base.ExportGraph("consensus", _Logits(self.network), (images,), ("images",), ("logits",),
                             {"images": batch, "logits": batch},
                             "ImageNet logits of a chunk; the group's consensus is softmax(sum of all its logits)"),
            base.ExportGraph("gim", _GimMaps(self.network), (images, consensus), ("images", "consensus"),
                             ("maps", "logits"), {"images": batch, "maps": batch, "logits": batch},
                             "maps of a chunk under the group's consensus (1, 1000), and the logits that "
                             "outsider dimming weighs against it"),
        ]  # fmt: skip


class _Logits(torch.nn.Module):
    def __init__(self, network: GicdLite):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.logits(self.network.encode(images)[1])


class _GimMaps(torch.nn.Module):
    def __init__(self, network: GicdLite):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor, consensus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pyramid, features = self.network.encode(images)
        logits = self.network.decode(pyramid, features, images.shape[-2:], consensus)
        return torch.sigmoid(logits[0][:, 0]), self.network.logits(features)

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
from cosal_cli.models.efficientnet_lite import EfficientNetLite0
from cosal_cli.models.gicd_lite import GicdLite


class Method(base.TrainableMethod):
    name = "gicd"
    input_size = 224  # the paper's size; the GIM then works on a 14x14 grid, as official GICD does
    loss = "soft-iou"
    inference_mode = False  # the GIM takes a gradient
    trains_from_cache = True

    @classmethod
    def build_network(cls, backbone: Path, config: Mapping | None = None) -> GicdLite:
        return GicdLite(EfficientNetLite0.from_file(backbone), config)

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        return self.network.predict_group(images, chunk=self.batch_size)

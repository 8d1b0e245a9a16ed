"""``sod``: cosal's single-image salient object detector (:mod:`cosal_cli.models.sod`).

Every image is processed alone, so this is the baseline a co-saliency method must beat, and the
single-image saliency map (SISM) generator that ICNet-style methods consume. Its head is trained by
``cosal train --method sod`` and shipped inside the package (see ``weights_manifest.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.models.sod import SaliencyNetwork
from cosal_cli.models.vgg import VGG16Features


class Method(base.TrainableMethod):
    name = "sod"
    input_size = 224
    loss = "soft-iou"
    group_context = False

    @classmethod
    def build_network(cls, backbone: Path, config: Mapping | None = None) -> SaliencyNetwork:
        return SaliencyNetwork(VGG16Features.from_file(backbone), config)

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        maps = [torch.sigmoid(self.network(chunk)[0][:, 0]) for chunk in images.split(self.batch_size)]
        return torch.cat(maps)

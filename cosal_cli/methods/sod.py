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
        return torch.cat([_maps(self.network, chunk) for chunk in images.split(self.batch_size)])

    def graph_names(self) -> tuple[str, ...]:
        return ("sod",)

    def predict_with_graphs(self, run, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        return torch.cat([torch.from_numpy(run("sod", {"images": chunk.numpy()})[0])
                          for chunk in images.split(self.batch_size)])  # fmt: skip

    def export_graphs(self) -> list[base.ExportGraph]:
        example = self.example_images()
        batch_and_size = {0: "images", 1: "height", 2: "width"}
        return [base.ExportGraph("sod", base.GraphModule(self.network, _maps), (example,), ("images",), ("maps",),
                                 {"images": {0: "images", 2: "height", 3: "width"}, "maps": batch_and_size},
                                 "maps of images of any size: every image alone")]  # fmt: skip


def _maps(network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The network's final output as maps in [0, 1]: (k, 3, H, W) images to (k, H, W)."""
    return torch.sigmoid(network(images)[0][:, 0])

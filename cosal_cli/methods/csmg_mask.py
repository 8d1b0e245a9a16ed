"""``csmg-mask``: the training-free first stage of CSMG (CVPR 2019, section 3.1).

Per group: VGG-16 relu5_3 features of every image at 224 x 224 (14 x 14 locations each), one
1 x 1 filter learned by ADMM over all locations of the group (:mod:`cosal_cli.refine.admm`), the
masks m_n = X_n w oriented so the co-salient side is positive, and bicubic upsampling to the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.models.vgg import VGG16Features, imagenet_normalise
from cosal_cli.refine.admm import AdmmSettings, co_salient_masks


class Method(base.Method):
    name = "csmg-mask"
    roles = ("backbone",)
    input_size = 224
    output_interpolation = "bicubic"  # the paper resizes its masks bicubically
    channels_last = True

    def __init__(
        self,
        weights: Mapping[str, Path],
        device: torch.device,
        batch_size: int = 8,
        options: base.MethodOptions | None = None,
    ):
        super().__init__(weights, device, batch_size, options)
        self.backbone = VGG16Features.from_file(weights["backbone"]).to(device, memory_format=self.memory_format())
        self.settings = AdmmSettings()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """relu5_3 of every image, computed ``batch_size`` images at a time."""
        chunks = [
            self.backbone(imagenet_normalise(chunk), taps=("relu5_3",))["relu5_3"]
            for chunk in images.split(self.batch_size)
        ]
        return torch.cat(chunks)

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        # The ADMM is a 512 x 512 float64 problem: cheaper on the CPU than a round trip of kernels.
        return co_salient_masks(self.features(images).cpu(), self.settings)

    def graph_names(self) -> tuple[str, ...]:
        return ("relu5_3",)

    def export_graphs(self) -> list[base.ExportGraph]:
        example = self.example_images()
        axes = {"images": {0: "images", 2: "height", 3: "width"}, "relu5_3": {0: "images", 2: "rows", 3: "columns"}}
        module = base.GraphModule(self.backbone, _relu5_3)
        return [base.ExportGraph("relu5_3", module, (example,), ("images",), ("relu5_3",), axes,
                                 "VGG-16 relu5_3 of a chunk; the group's ADMM then runs in torch on all of them")]

    def predict_with_graphs(self, run, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        features = torch.cat([torch.from_numpy(run("relu5_3", {"images": chunk.numpy()})[0])
                              for chunk in images.split(self.batch_size)])  # fmt: skip
        return co_salient_masks(features, self.settings)


def _relu5_3(backbone: VGG16Features, images: torch.Tensor) -> torch.Tensor:
    return backbone(imagenet_normalise(images), taps=("relu5_3",))["relu5_3"]

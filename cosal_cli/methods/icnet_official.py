"""``icnet-official``: ICNet with the authors' weights, imported by the user.

``cosal weights import icnet ICNet_vgg16.pth`` checks and converts the official file; this method
runs it as the official test does: the whole group as one batch (``--chunk N`` splits it, which
changes the maps), 224 x 224 input with ImageNet normalisation, one SISM per image. The release was
trained with EGNet SISMs: for its published numbers pass EGNet's maps with ``--sism-dir``; the
default is cosal's ``sod``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from cosal_cli import sism
from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.methods.icnet_graphs import IcnetGraphs
from cosal_cli.models import icnet
from cosal_cli.models.convert import load_state_dict_file
from cosal_cli.models.icnet import ICNet
from cosal_cli.models.vgg import imagenet_normalise

DEFAULT_SISM = "sod"


class Method(IcnetGraphs, base.Method):
    name = "icnet-official"
    roles = ("icnet",)
    input_size = 224
    options_class = base.SismOptions

    def __init__(
        self,
        weights: Mapping[str, Path],
        device: torch.device,
        batch_size: int = 8,
        options: base.SismOptions | None = None,
    ):
        super().__init__(weights, device, batch_size, options)
        model = ICNet()
        model.load_state_dict(load_state_dict_file(weights["icnet"]), strict=True)
        self.model = model.to(device).eval()
        self.sisms = sism.open_source(self.options.sism_choice, DEFAULT_SISM, device, batch_size, self.options.offline)
        if self.options.sism_choice.directory is None:
            self.notices.append(
                f"icnet-official was trained with EGNet SISMs; these maps use {self.sisms.name}'s "
                "(pass EGNet maps with --sism-dir to reproduce the paper's setting)"
            )

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        def encode(part: torch.Tensor, levels: int = 5) -> list[torch.Tensor]:
            return self.model.encode(imagenet_normalise(part), levels)

        def run(part: torch.Tensor, sisms: torch.Tensor) -> torch.Tensor:
            # the official test's single batch, computed in memory bounded by --batch-size (same maps)
            return icnet.predict_group(self.model, encode, part, sisms, self.batch_size)

        return sism.predict_in_subgroups(images, sources, self.options.subgroup, self.sisms, run)

    # -- ONNX graphs (cosal export, --backend onnxruntime): encode and decode, ImageNet normalisation inside --

    def graph_network(self) -> ICNet:
        return self.model

    @staticmethod
    def graph_head(network: ICNet) -> ICNet:
        return network

    @staticmethod
    def graph_taps(network: ICNet, images: torch.Tensor) -> list[torch.Tensor]:
        return network.encode(imagenet_normalise(images))

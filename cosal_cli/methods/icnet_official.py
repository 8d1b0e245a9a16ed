"""``icnet-official``: ICNet with the authors' weights, imported by the user (work in progress, issue 6).

``cosal weights import icnet ICNet_vgg16.pth`` checks and converts the official file; this method
runs it as the official test does: the whole group as one batch, 224 x 224 input with ImageNet
normalisation, one SISM per image from the card's SISM generator (``sod`` until ``--sism`` exists).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from cosal_cli.methods import base
from cosal_cli.models.convert import load_state_dict_file
from cosal_cli.models.icnet import ICNet
from cosal_cli.models.vgg import imagenet_normalise

SISM_GENERATOR = "sod"


class Method(base.Method):
    name = "icnet-official"
    roles = ("icnet",)
    input_size = 224

    def __init__(self, weights: Mapping[str, Path], device: torch.device, batch_size: int = 8):
        from cosal_cli.pipeline import load_method

        super().__init__(weights, device, batch_size)
        model = ICNet()
        model.load_state_dict(load_state_dict_file(weights["icnet"]), strict=True)
        self.model = model.to(device).eval()
        self.sism = load_method(SISM_GENERATOR, device, batch_size)

    def predict_group(self, images: torch.Tensor) -> torch.Tensor:
        sisms = self.sism.predict_group(images)[:, None]  # (N, 1, 224, 224) in [0, 1]
        return self.model(imagenet_normalise(images), sisms)[:, 0]  # the whole group at once, as the official test

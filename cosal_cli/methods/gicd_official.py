"""``gicd-official``: GICD with the authors' weights, which users import themselves.

``cosal weights import gicd gicd_ginet.pth --co-classifier vgg16-397923af.pth`` checks and converts
the two official files (:mod:`cosal_cli.models.gicd` holds the network in the official layout);
this method then runs them as the official test does: 224x224 input with ImageNet normalisation,
consensus over the whole group, GIM per image, pred1 resized back bilinearly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.models.convert import load_state_dict_file
from cosal_cli.models.gicd import GICD
from cosal_cli.models.vgg import imagenet_normalise


class Method(base.Method):
    name = "gicd-official"
    roles = ("ginet", "co_classifier")
    input_size = 224
    output_interpolation = "bilinear-official"  # resized and truncated as the official test saves (README: agreement)
    inference_mode = False  # the GIM takes a gradient

    def __init__(
        self,
        weights: Mapping[str, Path],
        device: torch.device,
        batch_size: int = 8,
        options: base.MethodOptions | None = None,
    ):
        super().__init__(weights, device, batch_size, options)
        model = GICD(chunk=self.batch_size)
        model.ginet.load_state_dict(load_state_dict_file(weights["ginet"]), strict=True)
        model.co_classifier.load_state_dict(load_state_dict_file(weights["co_classifier"]), strict=True)
        self.model = model.to(device).eval().requires_grad_(False)

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        with torch.no_grad():  # GINet.induce turns autograd on for the gradient alone
            return self.model.predict_group(imagenet_normalise(images))

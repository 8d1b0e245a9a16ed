"""``gicd-official``: GICD with the authors' weights, which users import themselves.

``cosal weights import gicd gicd_ginet.pth --co-classifier vgg16-397923af.pth`` checks and converts
the two official files (:mod:`cosal_cli.models.gicd` holds the network in the official layout);
this method then runs them as the official test does: 224x224 input with ImageNet normalisation,
consensus over the whole group, GIM per image, pred1 resized back bilinearly.

Its ONNX graphs (``cosal export``, ``--backend onnxruntime``) are ``consensus`` (the co-classifier's
logits of a chunk) and ``gim`` (a chunk's maps under the group's consensus), with the GIM's gradient
written out through the VGG classifier (:func:`vgg_classifier_gradient`): a graph has no autograd.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch

from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.models.convert import load_state_dict_file
from cosal_cli.models.gicd import GICD, gradient_cam, group_consensus, vgg_classifier_gradient
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

    def graph_names(self) -> tuple[str, ...]:
        return ("consensus", "gim")

    def export_graphs(self) -> list[base.ExportGraph]:
        traced = partial(base.GraphModule, self.model)  # a pass of the network, as a module to trace
        images = self.example_images()
        consensus = torch.softmax(torch.randn(1, 1000, device=self.device), dim=1)
        batch = {0: "images"}
        return [
            base.ExportGraph("consensus", traced(_logits), (images,), ("images",), ("logits",),
                             {"images": batch, "logits": batch},
                             "the co-classifier's ImageNet logits of a chunk; the group's consensus is "
                             "softmax(sum of all its logits)"),
            base.ExportGraph("gim", traced(_gim_maps), (images, consensus), ("images", "consensus"), ("maps",),
                             {"images": batch, "maps": batch},
                             "pred1 of a chunk under the group's consensus (1, 1000), the GIM's gradient written "
                             "out"),
        ]  # fmt: skip

    def predict_with_graphs(self, run, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        chunks = [part.numpy() for part in images.split(self.batch_size)]
        consensus = group_consensus(lambda part: torch.from_numpy(run("consensus", {"images": part.numpy()})[0]),
                                    images, self.batch_size).numpy()  # fmt: skip
        return torch.cat([torch.from_numpy(run("gim", {"images": chunk, "consensus": consensus})[0])
                          for chunk in chunks])  # fmt: skip


def _logits(model: GICD, images: torch.Tensor) -> torch.Tensor:
    return model.co_classifier(imagenet_normalise(images))


def _gim_maps(model: GICD, images: torch.Tensor, consensus: torch.Tensor) -> torch.Tensor:
    ginet = model.ginet
    features = ginet.encode(imagenet_normalise(images))
    gradient = vgg_classifier_gradient(ginet.backbone.avgpool, ginet.backbone.classifier, features[-1], consensus)
    return ginet.decode(features, *gradient_cam(features[-1], gradient))[-1][:, 0]

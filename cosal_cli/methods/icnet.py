"""``icnet``: ICNet with cosal's own weights (:class:`cosal_cli.models.icnet.IcnetNetwork`).

ICNet's head (co-saliency modules and decoder, the official layers) trained by
``cosal train --method icnet`` on the frozen ``vgg16-imagenet`` backbone, with SISMs from the
generator named in the head's config, and shipped inside the package. The official README's rule
is to use the same SISM generator at training and test time, so that generator is the default;
``--sism`` / ``--sism-dir`` choose another one (with a notice). For the authors' weights see
``icnet-official``.

cosal's addition: ICNet has no ImageNet classifier, so it cannot tell an image that does not show the
group's object; the frozen EfficientNet-Lite0 classifier (``gicd``'s) gives each image's agreement
with the group's consensus and the similarity of its logits to the group's, and dims the maps of those
that disagree (:mod:`cosal_cli.models.membership`, ``--outsiders keep`` turns it off).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch

from cosal_cli import sism
from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.methods.icnet_graphs import IcnetGraphs
from cosal_cli.methods.options import SismOutsiderOptions
from cosal_cli.models import icnet
from cosal_cli.models.efficientnet_lite import EfficientNetLite0, lite_normalise
from cosal_cli.models.icnet import IcnetHead, IcnetNetwork
from cosal_cli.models.membership import Membership, group_weights
from cosal_cli.models.vgg import VGG16Features

#: Tuned as gicd's (benchmarks/tune_membership.py -m icnet --similarities 0 5 10 20, on groups of shared-v2
#: training images): of each similarity's smallest offset with which at most 1 % of their objects (groups
#: without outsiders) fall below 0.5, the one with the lowest outsider ratio.
MEMBERSHIP = Membership(offset=9.5, temperature=0.5, similarity=20.0)


class Method(IcnetGraphs, base.TrainableMethod):
    name = "icnet"
    input_size = 224  # fixed by the Co modules' weight shapes
    options_class = SismOutsiderOptions
    roles = ("backbone", "head", "classifier")
    #: The classifier that dims outsiders; None with --outsiders keep and in training's validation.
    classifier: EfficientNetLite0 | None = None
    loss = "soft-iou"  # the paper's IoU loss on the four deep-supervised outputs
    fixed_input = True
    #: sod's decoder, when sod (the SISM generator) runs on this very VGG-16: SISMs come from icnet's own taps.
    sod_head: torch.nn.Module | None = None

    def __init__(
        self,
        weights: Mapping[str, Path],
        device: torch.device,
        batch_size: int = 8,
        options: SismOutsiderOptions | None = None,
    ):
        super().__init__(weights, device, batch_size, options)
        if "classifier" in weights and self.options.dim_outsiders:
            self.classifier = EfficientNetLite0.from_file(weights["classifier"]).to(device).eval()
        trained_with = self.network.config["sism"]
        choice = self.options.sism_choice
        self.sisms = sism.open_source(choice, trained_with, device, batch_size, self.options.offline)
        self.sod_head = self._shared_sod_head()
        if choice.given and self.sisms.name != trained_with:
            self.notices.append(
                f"icnet's head was trained with {trained_with} SISMs; with {self.sisms.name} the maps are not "
                f"what it was trained for (ICNet's rule: the same SISM generator at training and test time)"
            )

    @classmethod
    def build_network(cls, backbone: Path, config: Mapping | None = None) -> IcnetNetwork:
        return IcnetNetwork(VGG16Features.from_file(backbone), config)

    @classmethod
    def prepare_training(cls, network: IcnetNetwork, device: torch.device, offline: bool) -> None:
        """Training SISMs come from the head's generator, run on each augmented training image."""
        network.sism_source = sism.open_source(
            base.SismChoice(), network.config["sism"], device, batch_size=16, offline=offline, cache=False
        )

    @classmethod
    def from_network(cls, network: IcnetNetwork, device: torch.device, batch_size: int = 8) -> Method:
        method = super().from_network(network, device, batch_size)
        method.sisms = network.sism_source
        return method

    def _shared_sod_head(self) -> torch.nn.Module | None:
        """sod's decoder when the SISM generator is sod on the same frozen VGG-16 (then shared: one copy)."""
        source = self.sisms
        if not isinstance(source, sism.GeneratorSisms) or source.name != "sod":
            return None
        sod = source.method.network
        same = source.method.input_size == self.input_size and all(
            torch.equal(mine, theirs) for mine, theirs in zip(self.network.backbone.state_dict().values(),
                                                              sod.backbone.state_dict().values()))  # fmt: skip
        if not same:
            return None
        self.network.backbone = sod.backbone
        return sod.head

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        def run(part: torch.Tensor, sisms) -> torch.Tensor:
            return icnet.predict_group(self.network.head, self.network.encode, part, sisms, self.batch_size)

        maps = sism.predict_in_subgroups(images, sources, self.options.subgroup, self._sism_source(), run)
        return self._dimmed(maps, images)

    def _sism_source(self):
        """The SISM source; with a shared sod, SISMs missing from the cache come from the taps icnet encodes
        anyway (sod's decoder on them: what sod computes), so each image goes through VGG-16 once."""
        if self.sod_head is None:
            return self.sisms
        return lambda part, part_sources: partial(self._sisms_from_taps, part)

    def _sisms_from_taps(self, part: torch.Tensor, rows: slice, taps: list[torch.Tensor]) -> torch.Tensor:
        """The SISMs of ``part[rows]``, those not in the cache from sod's decoder on the rows' VGG ``taps``."""

        def compute(missing: list[int]) -> torch.Tensor:
            return torch.sigmoid(self.sod_head([tap[missing] for tap in taps])[0][:, 0])

        return self.sisms(part[rows], None, compute=compute)

    def _dimmed(self, maps: torch.Tensor, images: torch.Tensor, classify=None) -> torch.Tensor:
        """``maps`` dimmed where an image disagrees with the group's ImageNet consensus (unless --outsiders keep)."""
        if self.classifier is None:
            return maps
        classifier = self.classifier

        def classify_with_torch(part: torch.Tensor) -> torch.Tensor:
            return classifier(lite_normalise(part))

        # The whole group's consensus, also with --subgroup: an outsider is one of the group, not of a sub-group.
        return maps * group_weights(classify or classify_with_torch, images, self.batch_size, MEMBERSHIP)[:, None, None]

    # -- ONNX graphs (cosal export, --backend onnxruntime): encode, decode, and the outsiders' classifier --

    def graph_network(self) -> IcnetNetwork:
        return self.network

    @staticmethod
    def graph_head(network: IcnetNetwork) -> IcnetHead:
        return network.head

    @staticmethod
    def graph_taps(network: IcnetNetwork, images: torch.Tensor) -> list[torch.Tensor]:
        return network.encode(images)

    def graph_names(self) -> tuple[str, ...]:
        return super().graph_names() + (("classify",) if self.classifier is not None else ())

    def export_graphs(self) -> list[base.ExportGraph]:
        graphs = super().export_graphs()
        if self.classifier is not None:
            images = self.example_images()
            axes = {"images": {0: "images"}, "logits": {0: "images"}}
            note = "ImageNet logits of a chunk, for dimming outsiders (cosal's addition)"
            classify = base.GraphModule(self.classifier, _logits)
            graphs.append(base.ExportGraph("classify", classify, (images,), ("images",), ("logits",), axes, note))
        return graphs

    def predict_with_graphs(self, run, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        def classify(part: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(run("classify", {"images": part.numpy()})[0])

        return self._dimmed(super().predict_with_graphs(run, images, sources), images, classify)


def _logits(classifier: EfficientNetLite0, images: torch.Tensor) -> torch.Tensor:
    return classifier(lite_normalise(images))

"""The method registry: a card per method, its implementation imported only when it runs.

A card holds what ``cosal methods`` shows (paper, SISM generator, refiners) and where the code is,
so listing methods never imports torch. The weight components a method needs are not here: the
manifest maps each method's roles (``backbone``, ``head`` ...) to components, and the
implementation declares which roles it reads (``Method.roles``); a test keeps the two in step.

Adding a method: write ``cosal_cli/methods/<module>.py`` with a :class:`cosal_cli.methods.base.Method`
subclass named ``Method``, add its card to ``CARDS`` and its roles to ``weights_manifest.yaml``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cosal_cli.errors import UsageError

if TYPE_CHECKING:
    from cosal_cli.methods.base import Method


@dataclass(frozen=True)
class MethodCard:
    name: str
    paper: str
    summary: str
    module: str  # dotted path of the module holding a class named ``Method``
    sism: str | None = None  # the single-image saliency generator it consumes, if any
    refiners: tuple[str, ...] = ()
    #: A single-image saliency method that other methods can use as their SISM generator.
    sism_generator: bool = False


CARDS: dict[str, MethodCard] = {
    card.name: card
    for card in (
        MethodCard(
            name="csmg-mask",
            paper="Zhang, Li, Liu, Liu. CVPR 2019, section 3.1 (Co-saliency Detection via Mask-guided Fully "
            "Convolutional Networks with Multi-scale Label Smoothing)",
            summary="training-free: one 1x1 filter on VGG-16 conv5_3 learned per group by ADMM (PCA + sparsity)",
            module="cosal_cli.methods.csmg_mask",
            refiners=("admm",),
        ),
        MethodCard(
            name="gicd",
            paper="Zhang, Jin, Xu, Cheng. Gradient-Induced Co-Saliency Detection. ECCV 2020; cosal's weights: "
            "EfficientNet-Lite0 co-classifier and encoder, ARM decoder trained with `cosal train` (jigsaw composites)",
            summary="consensus of the group's ImageNet logits; its gradient picks the channels of the common object",
            module="cosal_cli.methods.gicd",
        ),
        MethodCard(
            name="icnet",
            paper="Jin, Xu, Cheng, Zhang, Guo. ICNet: Intra-saliency Correlation Network for Co-Saliency Detection. "
            "NeurIPS 2020; cosal's weights: ICNet's head trained with `cosal train` on the frozen VGG-16 with sod SISMs",
            summary="single-image saliency vectors correlated across the group; pixels re-ranked by co-saliency "
            "attention; --sism sod|gmr or --sism-dir DIR",
            module="cosal_cli.methods.icnet",
            sism="sod",
        ),
        MethodCard(
            name="icnet-official",
            paper="Jin, Xu, Cheng, Zhang, Guo. ICNet: Intra-saliency Correlation Network for Co-Saliency Detection. "
            "NeurIPS 2020 (official weights, imported by the user)",
            summary="the official ICNet; import it with `cosal weights import icnet`; trained on EGNet SISMs "
            "(--sism-dir), sod by default",
            module="cosal_cli.methods.icnet_official",
            sism="sod",
        ),
        MethodCard(
            name="sod",
            paper="cosal's single-image baseline: frozen VGG-16 (relu1_2 ... relu5_3) with a light top-down "
            "decoder, trained with `cosal train` (see training/splits/)",
            summary="single-image salient object detection, no group context; the default SISM generator",
            module="cosal_cli.methods.sod",
            sism_generator=True,
        ),
        MethodCard(
            name="gmr",
            paper="Yang, Zhang, Lu, Ruan, Yang. Saliency Detection via Graph-Based Manifold Ranking. CVPR 2013",
            summary="training-free single-image saliency: SLIC superpixels ranked from the image boundary, two stages",
            module="cosal_cli.methods.gmr",
            refiners=("manifold-ranking",),
            sism_generator=True,
        ),
        MethodCard(
            name="gicd-official",
            paper="Zhang, Jin, Xu, Cheng. Gradient-Induced Co-Saliency Detection. ECCV 2020 (official weights, "
            "imported by the user)",
            summary="the official GINet and its VGG-16 co-classifier; import them with `cosal weights import gicd`",
            module="cosal_cli.methods.gicd_official",
        ),
    )
}

DEFAULT_METHOD = "gicd"


def card(name: str) -> MethodCard:
    try:
        return CARDS[name]
    except KeyError:
        raise UsageError(f"unknown method {name!r}; available: {', '.join(CARDS)} (see `cosal methods`)") from None


def sism_generators() -> list[str]:
    """Methods that can supply the single-image saliency maps (SISMs) other methods consume."""
    return [name for name, entry in CARDS.items() if entry.sism_generator]


def method_class(name: str) -> type[Method]:
    module = importlib.import_module(card(name).module)
    return module.Method

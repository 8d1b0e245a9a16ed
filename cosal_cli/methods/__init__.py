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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cosal_cli.errors import UsageError
from cosal_cli.methods.options import (
    CsmgOptions,
    GsOptions,
    MethodOptions,
    OutsiderOptions,
    SismOptions,
    SismOutsiderOptions,
)

if TYPE_CHECKING:
    from cosal_cli.methods.base import Method


@dataclass(frozen=True)
class MethodCard:
    name: str
    paper: str
    summary: str
    module: str  # dotted path of the module holding a class named ``Method``
    sism: str | None = None  # the single-image saliency generator it consumes, if any
    #: Refiners (``cosal_cli.refine``) the inference path applies after the method, in order.
    refiners: tuple[str, ...] = ()
    #: A single-image saliency method that other methods can use as their SISM generator.
    sism_generator: bool = False
    #: The options it takes (``--sism`` ...): a :class:`MethodOptions` subclass.
    options: type[MethodOptions] = MethodOptions
    #: Building blocks shown by ``cosal methods`` (not applied after the method: they are the method).
    builds_on: tuple[str, ...] = ()


CARDS: dict[str, MethodCard] = {
    card.name: card
    for card in (
        MethodCard(
            name="csmg-mask",
            paper="Zhang, Li, Liu, Liu. CVPR 2019, section 3.1 (Co-saliency Detection via Mask-guided Fully "
            "Convolutional Networks with Multi-scale Label Smoothing)",
            summary="training-free: one 1x1 filter on VGG-16 conv5_3 learned per group by ADMM (PCA + sparsity)",
            module="cosal_cli.methods.csmg_mask",
            builds_on=("admm",),
        ),
        MethodCard(
            name="csmg",
            paper="Zhang, Li, Liu, Liu. Co-saliency Detection via Mask-guided Fully Convolutional Networks with "
            "Multi-scale Label Smoothing. CVPR 2019; cosal's weights: frozen VGG-16, FCN head trained with "
            "`cosal train`",
            summary="the ADMM masks guide an FCN through pool3 and pool5; multi-scale label smoothing over a "
            "group-wide superpixel graph alternated with a dense CRF (ablations: --smoothing, --branches, --scales)",
            module="cosal_cli.methods.csmg",
            options=CsmgOptions,
            builds_on=("admm", "label-smoothing", "crf"),
        ),
        MethodCard(
            name="gwd",
            paper="Wei, Zhao, Bourahla, Li, Wu. Group-wise Deep Co-saliency Detection. IJCAI 2017; cosal's "
            "weights: frozen VGG-16, group-wise head trained with `cosal train` (anchor + 4 nearest neighbours)",
            summary="five images in, five maps out: their VGG-16 features concatenated into a group feature and "
            "joined with each image's own; any group size through 5-image subsets covering each image 3 times",
            module="cosal_cli.methods.gwd",
        ),
        MethodCard(
            name="gs",
            paper="Wang, Zha, Liu, Xie. Robust Deep Co-saliency Detection with Group Semantic. AAAI 2019; cosal's "
            "weights: frozen VGG-16 (the paper's VGG-19 is not reachable), head trained with `cosal train` "
            "and co-category supervision",
            summary="the group's pool5 features pooled by H-LRBP into one semantic vector, broadcast into a "
            "pool3-pool5 decoder; order- and size-free (ablations: --co-category off, --pooling average)",
            module="cosal_cli.methods.gs",
            options=GsOptions,
        ),
        MethodCard(
            name="gicd",
            paper="Zhang, Jin, Xu, Cheng. Gradient-Induced Co-Saliency Detection. ECCV 2020; cosal's weights: "
            "EfficientNet-Lite0 co-classifier and encoder, ARM decoder trained with `cosal train` (jigsaw composites)",
            summary="consensus of the group's ImageNet logits; its gradient picks the channels of the common object; "
            "images whose classes disagree with it dimmed (--outsiders)",
            module="cosal_cli.methods.gicd",
            options=OutsiderOptions,
        ),
        MethodCard(
            name="icnet",
            paper="Jin, Xu, Cheng, Zhang, Guo. ICNet: Intra-saliency Correlation Network for Co-Saliency Detection. "
            "NeurIPS 2020; cosal's weights: ICNet's head trained with `cosal train` on the frozen VGG-16 "
            "with sod SISMs",
            summary="single-image saliency vectors correlated across the group; pixels re-ranked by co-saliency "
            "attention; --sism sod|gmr or --sism-dir DIR; images whose classes disagree with the group dimmed "
            "(--outsiders)",
            module="cosal_cli.methods.icnet",
            sism="sod",
            options=SismOutsiderOptions,
        ),
        MethodCard(
            name="icnet-official",
            paper="Jin, Xu, Cheng, Zhang, Guo. ICNet: Intra-saliency Correlation Network for Co-Saliency Detection. "
            "NeurIPS 2020 (official weights, imported by the user)",
            summary="the official ICNet; import it with `cosal weights import icnet`; trained on EGNet SISMs "
            "(--sism-dir), sod by default",
            module="cosal_cli.methods.icnet_official",
            sism="sod",
            options=SismOptions,
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
            builds_on=("manifold-ranking",),
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


def check_sism_generator(name: str | None) -> None:
    """A usage error unless ``name`` (``--sism NAME``) is a SISM generator."""
    if name is not None and name not in sism_generators():
        raise UsageError(f"--sism {name}: not a SISM generator; choose one of {', '.join(sism_generators())}")


def method_class(name: str) -> type[Method]:
    module = importlib.import_module(card(name).module)
    return module.Method


def refiners_for(name: str, extra: Iterable[str] = ()) -> list[str]:
    """The refiners applied after method ``name``: its card's, then ``extra`` (``--refine``), in order."""
    return [*card(name).refiners, *extra]


def takers(flag: str) -> list[str]:
    """The methods whose options include ``flag`` (for help texts and errors)."""
    flag = _flag_of(_canonical(flag.removeprefix("--").replace("-", "_")))
    return [name for name, entry in CARDS.items() if flag in entry.options.declared().values()]


def options_for(name: str, values: Mapping[str, Any] | None = None, **more: Any) -> MethodOptions:
    """The typed options of method ``name`` from option names to values; ``None`` values are not given.

    A value the method does not take is a usage error naming the methods that do take it.
    """
    given = {key: value for key, value in {**(values or {}), **more}.items() if value is not None}
    options_class = card(name).options
    declared = options_class.declared()
    unknown = [key for key in given if _canonical(key) not in declared and key != "offline"]
    if unknown:
        raise UsageError(_not_applicable([_flag_of(key) for key in unknown], name))
    check_sism_generator(given.get("sism"))
    return options_class(**{_canonical(key): value for key, value in given.items()})


def check_options(name: str, options: MethodOptions) -> MethodOptions:
    """``options`` if method ``name`` takes every option set in it, else a usage error."""
    declared = set(card(name).options.declared().values())
    unknown = [flag for flag in options.given() if flag not in declared]
    if unknown:
        raise UsageError(_not_applicable(unknown, name))
    return options_for(name, {key: getattr(options, key) for key in type(options).declared()},
                       offline=options.offline)  # fmt: skip


def split_options(names: Iterable[str], values: Mapping[str, Any]) -> dict[str, MethodOptions]:
    """Per method, the options among ``values`` it takes (bench runs several methods with one set of flags).

    An option that no method takes is a usage error.
    """
    names = list(names)
    given = {key: value for key, value in values.items() if value is not None}
    for key in given:
        if not any(_canonical(key) in card(name).options.declared() for name in names):
            raise UsageError(f"{_flag_of(key)} applies to none of the methods benchmarked ({', '.join(names)})")
    return {
        name: options_for(name, {key: value for key, value in given.items()
                                 if _canonical(key) in card(name).options.declared()})  # fmt: skip
        for name in names
    }


#: Old option names still accepted for one release: ``--chunk`` became ``--subgroup``.
DEPRECATED_NAMES = {"chunk": "subgroup"}


def _canonical(key: str) -> str:
    return DEPRECATED_NAMES.get(key, key)


def _flag_of(key: str) -> str:
    return "--" + key.replace("_", "-")


def _not_applicable(flags: list[str], name: str) -> str:
    verb = "does" if len(flags) == 1 else "do"
    takes = [other for other in CARDS if all(other in takers(flag) for flag in flags)]
    return f"{' and '.join(flags)} {verb} not apply to method {name!r}" + (
        f"; methods that take {' and '.join(flags)}: {', '.join(takes)}" if takes else ""
    )

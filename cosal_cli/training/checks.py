"""What ``cosal train`` refuses before it loads anything: a method with nothing to train, and flags that do
not apply to the method or contradict each other. Each refusal is a usage error that names the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cosal_cli import methods
from cosal_cli.errors import UsageError
from cosal_cli.methods.base import TrainableMethod
from cosal_cli.methods.loader import PRECISIONS
from cosal_cli.training.losses import LOSSES

if TYPE_CHECKING:
    from cosal_cli.training.trainer import TrainSettings


def trainable_method(name: str) -> type[TrainableMethod]:
    method_class = methods.method_class(name)
    if not issubclass(method_class, TrainableMethod):
        trainable = [card for card in methods.CARDS if issubclass(methods.method_class(card), TrainableMethod)]
        raise UsageError(f"method {name!r} has nothing to train; trainable: {', '.join(trainable)}")
    if method_class.loss not in LOSSES:
        raise UsageError(f"method {name!r} asks for unknown loss {method_class.loss!r}")
    return method_class


def check_settings(method_class: type[TrainableMethod], settings: TrainSettings) -> None:
    if settings.precision not in ("auto", *PRECISIONS):
        raise UsageError(f"--precision must be auto, {' or '.join(PRECISIONS)}, not {settings.precision!r}")
    _check_head_flags(method_class, settings)
    _check_tuned_encoder(method_class, settings)
    _check_sampling(method_class, settings)
    if method_class.fixed_input and settings.sampler.size != method_class.input_size:
        raise UsageError(
            f"--size {settings.sampler.size}: {settings.method}'s layers fix the input at "
            f"{method_class.input_size}x{method_class.input_size}; add --size {method_class.input_size}"
        )


def _check_head_flags(method_class: type[TrainableMethod], settings: TrainSettings) -> None:
    """The method-specific flags that set the head's config."""
    declared = methods.card(settings.method).options.declared()
    if settings.config.get("sism") is not None:
        if "sism" not in declared:
            raise UsageError(f"--sism does not apply to method {settings.method!r}: it uses no SISMs")
        methods.check_sism_generator(settings.config["sism"])
    if settings.config.get("branches") is not None and "branches" not in declared:
        raise UsageError(f"--branches does not apply to method {settings.method!r}: it has no masked branches")
    for name, what in (("co_category", "co-category branch"), ("pooling", "group semantic pooling")):
        if settings.config.get(name) is not None and name not in declared:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} does not apply to method {settings.method!r}: it has no {what}")
    stride = settings.config.get("output_stride")
    if stride is not None and stride not in method_class.output_strides:
        if not method_class.output_strides:
            raise UsageError(f"--output-stride does not apply to method {settings.method!r}: its output is fixed")
        choices = " or ".join(map(str, method_class.output_strides))
        raise UsageError(f"--output-stride must be {choices} for {settings.method}, not {stride}")


def _check_tuned_encoder(method_class: type[TrainableMethod], settings: TrainSettings) -> None:
    if settings.config.get("tune_encoder") and not method_class.tunable_encoder:
        tunable = sorted(name for name in methods.CARDS
                         if getattr(methods.method_class(name), "tunable_encoder", False))
        raise UsageError(f"--tune-encoder does not apply to method {settings.method!r}: methods that tune one: "
                         f"{', '.join(tunable)}")
    if settings.config.get("tune_encoder") and settings.cache_views and not method_class.tuned_above_cache:
        raise UsageError(f"--tune-encoder: {settings.method} trains from images (the tuned blocks change at every "
                         "step): drop --cache-views")
    if settings.encoder_lr_scale is not None and not settings.config.get("tune_encoder"):
        raise UsageError("--encoder-lr-scale sets the tuned encoder's rate: use it with --tune-encoder")
    if settings.encoder_lr_scale == 0:
        raise UsageError("--encoder-lr-scale 0 would never move the tuned encoder: give a positive fraction, "
                         "or drop --tune-encoder")


def _check_sampling(method_class: type[TrainableMethod], settings: TrainSettings) -> None:
    """Outsiders, collaborative batches and the feature cache."""
    if settings.sampler.outsider_fraction > 0 and not method_class.group_context:
        raise UsageError(
            f"--outsider-fraction: {settings.method} sees one image at a time, so it cannot learn that an image "
            "is outside its group; use it with co-saliency methods"
        )
    if method_class.co_category_loss and not settings.cache_views:
        raise UsageError(f"{settings.method} learns its co-category branch from cached views: add --cache-views 1")
    if settings.cache_views and not method_class.trains_from_cache:
        raise UsageError(f"--cache-views: {settings.method} cannot train from cached encoder outputs yet; drop it")
    if settings.sampler.collaborative_fraction > 0 and not (settings.cache_views and method_class.group_context):
        raise UsageError(
            "--collaborative-fraction: collaborative batches need a co-saliency method trained from the feature "
            "cache (add --cache-views N)"
        )
    mixing = settings.sampler.outsider_fraction > 0 or settings.sampler.collaborative_fraction > 0
    if method_class.cached_sub_groups and settings.cache_views and mixing:
        raise UsageError(f"--outsider-fraction / --collaborative-fraction: {settings.method}'s cached views carry "
                         "the masks of their own sub-group, so they cannot be mixed into another group's batch")

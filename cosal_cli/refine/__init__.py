"""Refiners: a map at its image's original size, plus that image, to a better map.

A refiner is any callable ``refiner(saliency, image) -> saliency``: ``saliency`` is an (H, W)
float32 map in [0, 1], ``image`` the (H, W, 3) uint8 RGB image it belongs to (EXIF orientation
applied), and the result is again an (H, W) float32 map in [0, 1]. The inference path applies the
refiners a method's card lists, then those the user adds with ``--refine NAME`` (repeatable), in
that order, to every map.

This package also holds the building blocks some methods are made of (the CSMG ADMM mask, the
manifold ranking of ``gmr``); those are not refiners.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from typing import Protocol

import numpy as np

from cosal_cli.errors import UsageError


class Refiner(Protocol):
    name: str

    def __call__(self, saliency: np.ndarray, image: np.ndarray) -> np.ndarray: ...


#: name -> "module:factory"; imported only when used, so listing them imports nothing heavy.
REFINERS: dict[str, str] = {
    "ranking": "cosal_cli.refine.ranking:RankingRefiner",
    "crf": "cosal_cli.refine.crf:CrfRefiner",
}


def check_refiners(names: Iterable[str]) -> None:
    """A usage error for the first unknown refiner, raised before anything is downloaded or loaded."""
    for name in names:
        if name not in REFINERS:
            raise UsageError(f"unknown refiner {name!r}; available: {', '.join(REFINERS)}")


def load_refiner(name: str, device: str = "cpu") -> Refiner:
    """The refiner ``name``; those that run on torch (``crf``) run on ``device``, the method's."""
    check_refiners([name])
    module, factory_name = REFINERS[name].split(":")
    factory = getattr(importlib.import_module(module), factory_name)
    takes_device = "device" in inspect.signature(factory).parameters
    return factory(device=device) if takes_device else factory()

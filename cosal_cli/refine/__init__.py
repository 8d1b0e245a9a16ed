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
from typing import Protocol

import numpy as np

from cosal_cli.errors import UsageError


class Refiner(Protocol):
    name: str

    def __call__(self, saliency: np.ndarray, image: np.ndarray) -> np.ndarray: ...


#: name -> "module:factory"; imported only when used, so listing them imports nothing heavy.
REFINERS: dict[str, str] = {
    "ranking": "cosal_cli.refine.ranking:RankingRefiner",
}


def load_refiner(name: str) -> Refiner:
    try:
        module, factory = REFINERS[name].split(":")
    except KeyError:
        raise UsageError(f"unknown refiner {name!r}; available: {', '.join(REFINERS)}") from None
    return getattr(importlib.import_module(module), factory)()

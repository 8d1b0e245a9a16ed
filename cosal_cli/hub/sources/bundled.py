"""``bundled``: a file shipped inside this package (our own small trained heads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cosal_cli.errors import WeightsUnavailable
from cosal_cli.hub.cache import PACKAGE_DIR, ProgressCallback
from cosal_cli.hub.sources.base import WeightSource

if TYPE_CHECKING:
    from cosal_cli.hub.fields import Fields
    from cosal_cli.hub.manifest import Component
    from cosal_cli.hub.weight_hub import WeightHub


@dataclass(frozen=True)
class BundledSource(WeightSource):
    path: str  # relative to the cosal_cli package directory
    converter: str = "identity"

    kind = "bundled"
    repairable = False  # only a reinstall brings back the shipped file

    @classmethod
    def from_manifest(cls, fields: Fields, where: str) -> BundledSource:
        return cls(path=fields.relative_path("path"), converter=fields.converter())

    def describe(self) -> str:
        return f"bundled:{self.path}"

    @property
    def shipped_path(self) -> Path:
        return PACKAGE_DIR / self.path

    def artifact_path(self, component: Component, home: Path) -> Path:
        if self.converter == "identity":
            return self.shipped_path  # used in place, never copied
        return super().artifact_path(component, home)

    def fetch(self, component: Component, hub: WeightHub, offline: bool, progress: ProgressCallback | None) -> Path:
        path = self.shipped_path
        if not path.is_file():
            raise WeightsUnavailable(f"bundled weights {path} for {component.id} are missing; reinstall cosal")
        return path

    def corrupt_fix(self, component: Component) -> str:
        return "reinstall cosal"

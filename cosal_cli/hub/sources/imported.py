"""``import``: a file the user has and cosal may not download or redistribute (the official GICD weights).

It is brought in with ``cosal weights import IMPORTER FILE`` (see ``cosal_cli.hub.importing``) and never fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cosal_cli.errors import ManifestError, WeightsUnavailable, first_line
from cosal_cli.hub.cache import CacheStatus, ProgressCallback, sha256_file
from cosal_cli.hub.fields import COMPONENT_ID, IMPORT_OPTION
from cosal_cli.hub.importing import read_import_record, torch_hub_checkpoints
from cosal_cli.hub.sources.base import WeightSource

if TYPE_CHECKING:
    from cosal_cli.hub.fields import Fields
    from cosal_cli.hub.manifest import Component
    from cosal_cli.hub.weight_hub import WeightHub


@dataclass(frozen=True)
class ImportSource(WeightSource):
    """A file the user imports (``cosal weights import IMPORTER``); cosal never downloads it."""

    importer: str  # the IMPORTER argument, e.g. "gicd"
    option: str  # how the command takes the file: "PATH" (the positional argument) or "--co-classifier"
    file: str  # the file's usual name, for messages
    converter: str  # checks and converts it (CONVERTERS)
    sha256: str | None = None  # the source file's, when it is a published file
    size: int | None = None
    url: str | None = None  # where a user can download a published file (shown, never fetched)

    kind = "import"
    imported = True
    repairable = False  # only the user can bring it back
    cache_label = "imported"

    @classmethod
    def from_manifest(cls, fields: Fields, where: str) -> ImportSource:
        importer = fields.pattern("importer", COMPONENT_ID, "a lowercase name such as 'gicd'")
        option = fields.pattern("option", IMPORT_OPTION, "'PATH' or a long option such as '--co-classifier'")
        file = fields.relative_path("file")
        if "/" in file:
            raise ManifestError(f"{where} source import: 'file' must be a file name, got {file!r}")
        converter = fields.converter()
        if converter == "identity":
            raise ManifestError(f"{where} source import: name the 'converter' that checks and converts the file")
        return cls(
            importer=importer,
            option=option,
            file=file,
            converter=converter,
            sha256=fields.sha256("sha256") if "sha256" in fields.entry else None,
            size=fields.positive_int("size") if "size" in fields.entry else None,
            url=fields.url("url", optional=True),
        )

    def component_pins(self, fields: Fields, where: str) -> tuple[int | None, str | None]:
        pinned = [key for key in ("size", "sha256") if key in fields.entry]
        if pinned:
            raise ManifestError(
                f"{where}: an imported component has no {' or '.join(pinned)} of its own (the converted file is "
                "pinned by its import record); pin the source file with the source's 'sha256' and 'size'"
            )
        return None, None

    def describe(self) -> str:
        return f"import:{self.importer} {self.file}"

    def command(self) -> str:
        """The command that imports this component, with a placeholder path."""
        argument = f"PATH/TO/{self.file}" if self.option == "PATH" else f"{self.option} PATH/TO/{self.file}"
        return f"cosal weights import {self.importer} {argument}"

    def artifact_path(self, component: Component, home: Path) -> Path:
        return home / "imported" / f"{component.id}.safetensors"

    def is_cached(self, component: Component, hub: WeightHub) -> bool:
        return hub.artifact_path(component).is_file() and hub.record_path(component).is_file()

    def verify(self, component: Component, hub: WeightHub) -> CacheStatus:
        """Hash the imported file and compare it with the sha256 its import record holds."""
        path, record_path = hub.artifact_path(component), hub.record_path(component)
        if not path.is_file() or not record_path.is_file():
            return CacheStatus(component, "missing", path, f"not imported; {self.fix_hint(component)}")
        try:
            record = read_import_record(record_path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            detail = f"import record {record_path} is unreadable: {first_line(exc)}"
            return CacheStatus(component, "corrupt", path, detail)
        actual = sha256_file(path)
        if actual != record.sha256:
            detail = f"sha256 {actual}, but its import record says {record.sha256}"
            return CacheStatus(component, "corrupt", path, detail)
        return CacheStatus(component, "ok", path)

    def fetch(self, component: Component, hub: WeightHub, offline: bool, progress: ProgressCallback | None) -> Path:
        """Never fetched: only the user can bring it back."""
        raise WeightsUnavailable(_not_imported_message(component, self, hub))

    def fix_hint(self, component: Component) -> str:
        return f"import it with `{self.command()}`"

    def corrupt_fix(self, component: Component) -> str:
        return f"import them again with `{self.command()}`"

    def published_hint(self) -> str:
        """Where a published file can be downloaded by hand ('' when it is not published)."""
        if not self.url:
            return ""
        return f" ({self.file} is published at {self.url}; torch's hub cache, {torch_hub_checkpoints()}/, often has it)"


def _not_imported_message(component: Component, source: ImportSource, hub: WeightHub) -> str:
    """Says to import the component, and the other files its methods need that are not imported either."""
    manifest = hub.manifest
    users = " and ".join(manifest.users(component.id)) or "a method"
    text = (
        f"weights {component.id} are not imported ({users} needs them; cosal never downloads them): "
        f"import {source.file} with `{source.command()}`" + source.published_hint()
    )
    needed = {cid for method in manifest.users(component.id) for cid in manifest.methods[method].values()}
    for other in manifest.importer(source.importer):
        if other.id != component.id and other.id in needed and not hub.is_cached(other):
            other_source: ImportSource = other.source  # type: ignore[assignment]
            hint = other_source.published_hint()
            text += f"; {other.id} is not imported either: `{other_source.command()}`{hint}"
    return text

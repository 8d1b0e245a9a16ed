"""``WeightHub``: component ids to verified safetensors files, fetching and converting on demand."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cosal_cli.errors import ChecksumMismatch
from cosal_cli.hub import importing
from cosal_cli.hub.cache import CacheStatus, ProgressCallback, cache_home, sha256_file
from cosal_cli.hub.convert import load_converter, write_safetensors
from cosal_cli.hub.importing import ImportOutcome, ImportRecord
from cosal_cli.hub.manifest import Component, Manifest, load_manifest
from cosal_cli.io import atomic_output


class WeightHub:
    """Resolves component ids to verified safetensors files, fetching and converting on demand.

    Cheap to build: the default manifest is parsed once per process (see ``load_manifest``).
    """

    def __init__(self, manifest: Manifest | None = None, home: Path | None = None):
        self.manifest = manifest if manifest is not None else load_manifest()
        self.home = Path(home) if home is not None else cache_home()

    # -- where things live ---------------------------------------------------------------------

    def artifact_path(self, component: Component) -> Path:
        return component.source.artifact_path(component, self.home)

    def record_path(self, component: Component) -> Path:
        """The import record of an imported component."""
        return self.home / "imported" / f"{component.id}.json"

    def is_cached(self, component: Component) -> bool:
        return component.source.is_cached(component, self)

    def import_record(self, component: Component) -> ImportRecord | None:
        """The record of an imported component, or None when it is absent or unreadable."""
        try:
            return importing.read_import_record(self.record_path(component))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def expected_sha256(self, component: Component) -> str | None:
        """The sha256 a component is verified against: the manifest's pin, or its import record's."""
        if not component.imported:
            return component.sha256
        record = self.import_record(component)
        return record.sha256 if record else None

    def method_weights(self, method: str) -> dict[str, tuple[str, str | None]]:
        """``{role: (component id, the sha256 it is verified against)}`` of a method's weights."""
        return {role: (component_id, self.expected_sha256(self.manifest.component(component_id)))
                for role, component_id in self.manifest.roles(method).items()}  # fmt: skip

    def fix_hint(self, component: Component) -> str:
        """What makes a missing component available."""
        return component.source.fix_hint(component)

    # -- public API ------------------------------------------------------------------------------

    def resolve(self, component_id: str, *, offline: bool = False, progress: ProgressCallback | None = None) -> Path:
        """Path of the verified safetensors file, fetched and converted first if needed.

        Raises WeightsUnavailable (exit 3) when it is missing and cannot be fetched, and
        ChecksumMismatch (exit 4) when a cached or fetched file has the wrong sha256.
        """
        return self._ensure(self.manifest.component(component_id), offline, progress, repair=False)

    def pull(self, component_id: str, *, offline: bool = False, progress: ProgressCallback | None = None) -> Path:
        """Like resolve, but a corrupt cached file is replaced instead of reported."""
        return self._ensure(self.manifest.component(component_id), offline, progress, repair=True)

    def verify(self, component: Component) -> CacheStatus:
        return component.source.verify(component, self)

    def method_status(self, method: str, known_ok: Iterable[str] = ()) -> dict[str, CacheStatus]:
        """``{role: status}`` of a method's components; ids in ``known_ok`` were just verified and are not re-hashed."""
        fresh = set(known_ok)
        statuses = {}
        for role, cid in self.manifest.roles(method).items():
            component = self.manifest.component(cid)
            statuses[role] = (
                CacheStatus(component, "ok", self.artifact_path(component)) if cid in fresh else self.verify(component)
            )
        return statuses

    # -- imports: files the user has, checked, converted and recorded (see importing) -------------

    def import_file(self, component_id: str, path: Path) -> ImportRecord:
        """Check ``path`` (pinned sha256, strict converter), convert it and record the import.

        Raises UsageError (exit 2) for a missing or unsuitable file and ChecksumMismatch (exit 4) when the
        manifest pins the source file and this is another one; either way the cache is left unchanged.
        """
        return importing.import_file(self, component_id, path)

    def import_files(self, importer: str, files: Mapping[str, Path]) -> list[ImportOutcome]:
        """``cosal weights import IMPORTER``: ``files`` maps options ("PATH", "--co-classifier") to files.

        A published (pinned) file that was not given and is not imported yet is taken from torch's hub
        cache when it is there. Every file is tried; each outcome holds its record or its error.
        """
        return importing.import_files(self, importer, files)

    def import_summary(self, importer: str, files: Mapping[str, Path]) -> importing.ImportSummary:
        """:meth:`import_files`, and the readiness of every method that uses the importer's components."""
        return importing.summarise_import(self, importer, files)

    def describe(self, component: Component) -> dict[str, Any]:
        """A component as ``cosal weights list --json`` shows it: source, size, sha256, users, cache state."""
        row = {
            "id": component.id,
            "description": component.description,
            "licence": component.licence,
            "source": component.source.describe(),
            "size": component.size,
            "sha256": self.expected_sha256(component),
            "methods": self.manifest.users(component.id),
            "cached": self.is_cached(component),
            "path": str(self.artifact_path(component)),
        }
        if component.imported:  # size and sha256 are the import record's (None until imported)
            record = self.import_record(component)
            row["size"] = record and record.size
            row["import_command"] = component.source.command()
        return row

    # -- the fetch / convert / verify flow ------------------------------------------------------

    def _ensure(self, component: Component, offline: bool, progress: ProgressCallback | None, repair: bool) -> Path:
        status = self.verify(component)
        if status.state == "ok":
            return status.path
        source = component.source
        if status.state == "corrupt":
            if not (repair and source.repairable):
                raise ChecksumMismatch(
                    f"{source.cache_label} weights {status.path} for {component.id} are corrupt ({status.detail}); "
                    f"{source.corrupt_fix(component)}"
                )
            status.path.unlink()
        source_path = source.fetch(component, self, offline, progress)
        self._convert(component, source_path, status.path)
        return status.path

    def _convert(self, component: Component, source_path: Path, target: Path) -> None:
        converter = component.source.converter
        with atomic_output(target) as tmp:
            if converter == "identity":
                shutil.copyfile(source_path, tmp)
            else:
                write_safetensors(load_converter(converter)(source_path), tmp, component, converter)
            actual = sha256_file(tmp)
            if actual != component.sha256 or tmp.stat().st_size != component.size:
                raise ChecksumMismatch(
                    f"converting {component.source.describe()} for {component.id} gave sha256 {actual} "
                    f"({tmp.stat().st_size} bytes, expected {component.size}), "
                    f"but {self.manifest.path.name} pins {component.sha256} (converter {converter!r}); "
                    "the cache was left unchanged. Upgrade cosal, or report this with `cosal --version`."
                )

    def missing_message(self, component: Component, offline: bool) -> str:
        """Why a component that is not cached could not be fetched, and how to bring it here."""
        offline_why = "offline mode is on (--offline, COSAL_OFFLINE or HF_HUB_OFFLINE)"
        why = offline_why if offline else "it could not be fetched"
        target = self.artifact_path(component)
        fix = (
            f"Fix: run `cosal weights pull {component.id}` on a machine with network access and copy "
            f"{target} to the same path here (or set COSAL_HOME to a copied cache)"
        )
        fix += component.source.manual_download_hint(component, self.home)
        return f"weights {component.id} are not in the cache ({self.home}) and {why}. {fix}."

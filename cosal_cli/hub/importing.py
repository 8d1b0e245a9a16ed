"""``cosal weights import``: files the user has, checked, converted and recorded.

An imported component cannot be pinned in advance (its bytes are the user's): the import writes a
record holding the converted file's sha256, and that is what it is verified against.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosal_cli import __version__
from cosal_cli.errors import ChecksumMismatch, CosalError, UsageError, first_line
from cosal_cli.hub.cache import sha256_file
from cosal_cli.hub.convert import load_converter, write_safetensors
from cosal_cli.hub.fields import SHA256
from cosal_cli.io import atomic_output

if TYPE_CHECKING:
    from cosal_cli.hub.manifest import Component
    from cosal_cli.hub.sources.imported import ImportSource
    from cosal_cli.hub.weight_hub import WeightHub


@dataclass(frozen=True)
class ImportRecord:
    """What ``cosal weights import`` wrote (``imported/<id>.json``); verify checks the file against it."""

    component: str
    source_path: str
    source_sha256: str
    source_size: int
    path: str  # the converted safetensors file
    sha256: str
    size: int
    converter: str
    imported_at: str  # UTC, ISO 8601
    cosal_version: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Any) -> ImportRecord:
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        record = cls(**{name: data[name] for name in cls.__dataclass_fields__})
        if not isinstance(record.sha256, str) or not SHA256.match(record.sha256):
            raise ValueError("no converted sha256")
        return record


@dataclass(frozen=True)
class ImportOutcome:
    """One file of ``cosal weights import``: its record, or the error that refused it."""

    component: Component
    path: Path
    found_in: str | None = None  # where cosal found it when the command line did not name it
    record: ImportRecord | None = None
    error: CosalError | None = None


def read_import_record(path: Path) -> ImportRecord:
    """Raises OSError, ValueError, KeyError or TypeError when the record is absent or unreadable."""
    return ImportRecord.from_json(json.loads(path.read_text(encoding="utf-8")))


def torch_hub_checkpoints() -> Path:
    """Where torch.hub (and torchvision) keep downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def import_file(hub: WeightHub, component_id: str, path: Path) -> ImportRecord:
    """Check ``path`` (pinned sha256, strict converter), convert it and record the import.

    Raises UsageError (exit 2) for a missing or unsuitable file and ChecksumMismatch (exit 4) when the
    manifest pins the source file and this is another one; either way the cache is left unchanged.
    """
    component = hub.manifest.component(component_id)
    if not component.imported:
        raise UsageError(f"{component_id} is fetched, not imported; run `cosal weights pull {component_id}`")
    source: ImportSource = component.source  # type: ignore[assignment]
    path = Path(path).expanduser()
    source_size, source_sha256 = _check_source_file(hub, component, source, path)
    tensors = _run_import_converter(component, source, path)
    target, record_path = hub.artifact_path(component), hub.record_path(component)
    provenance = {"source_file": path.name, "source_sha256": source_sha256}
    with atomic_output(target) as tmp:
        write_safetensors(tensors, tmp, component, source.converter, provenance)
        converted_sha256, converted_size = sha256_file(tmp), tmp.stat().st_size
        # The old record goes just before the new file replaces the old one: a crash from here on
        # leaves "missing" (import again), never a record that vouches for another file.
        record_path.unlink(missing_ok=True)
    record = ImportRecord(
        component=component.id,
        source_path=str(path.resolve()),
        source_sha256=source_sha256,
        source_size=source_size,
        path=str(target),
        sha256=converted_sha256,
        size=converted_size,
        converter=source.converter,
        imported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        cosal_version=__version__,
    )
    with atomic_output(record_path) as tmp:
        tmp.write_text(json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return record


def import_files(hub: WeightHub, importer: str, files: Mapping[str, Path]) -> list[ImportOutcome]:
    """``cosal weights import IMPORTER``: ``files`` maps options ("PATH", "--co-classifier") to files.

    A published (pinned) file that was not given and is not imported yet is taken from torch's hub
    cache when it is there. Every file is tried; each outcome holds its record or its error.
    """
    components = hub.manifest.importer(importer)
    by_option = {component.source.option: component for component in components}  # type: ignore[attr-defined]
    unknown = sorted(set(files) - set(by_option))
    if unknown:
        raise UsageError(f"`cosal weights import {importer}` takes no {', '.join(unknown)} file")
    if not files:
        commands = " and/or ".join(f"`{c.source.command()}`" for c in components)  # type: ignore[attr-defined]
        raise UsageError(f"name at least one file to import: {commands}")
    jobs: list[tuple[Component, Path, str | None]] = [(by_option[o], Path(path), None) for o, path in files.items()]
    for component in components:
        source: ImportSource = component.source  # type: ignore[assignment]
        if source.option in files or source.sha256 is None or hub.verify(component).state == "ok":
            continue
        candidate = torch_hub_checkpoints() / source.file
        if candidate.is_file():
            jobs.append((component, candidate, "torch's hub cache"))
    outcomes = []
    for component, path, found_in in jobs:
        try:
            outcomes.append(ImportOutcome(component, path, found_in, record=import_file(hub, component.id, path)))
        except CosalError as exc:
            outcomes.append(ImportOutcome(component, path, found_in, error=exc))
    return outcomes


def _check_source_file(hub: WeightHub, component: Component, source: ImportSource, path: Path) -> tuple[int, str]:
    """The size and sha256 of the file to import; refuses a missing file or another file than the pinned one."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UsageError(f"{path} {what}; `{source.command()}` takes {source.file}")
    try:
        source_size, source_sha256 = path.stat().st_size, sha256_file(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    pinned_sha = source.sha256 is not None and source_sha256 != source.sha256
    if pinned_sha or (source.size is not None and source_size != source.size):
        published = f"the published {source.file}" + (f" ({source.url})" if source.url else "")
        users = " and ".join(hub.manifest.users(component.id)) or component.id
        raise ChecksumMismatch(
            f"{path} is not {published}: its sha256 is {source_sha256} ({source_size} bytes), the published "
            f"file's is {source.sha256 or 'not pinned'} ({source.size or 'any'} bytes). {users} needs exactly "
            "that file; nothing was imported."
        )
    return source_size, source_sha256


def _run_import_converter(component: Component, source: ImportSource, path: Path) -> Mapping[str, Any]:
    import pickle

    try:
        return load_converter(source.converter)(path)
    except pickle.UnpicklingError as exc:
        detail = _unpickling_reason(exc)
        if detail.startswith("Unsupported global"):
            reason = (
                f"torch.load(weights_only=True) refused it ({detail}): it holds Python objects, not only "
                "tensors, and cosal never unpickles those"
            )
        else:
            reason = f"it is not a PyTorch checkpoint (torch.load(weights_only=True): {detail})"
    except EOFError:
        reason = "it is empty or truncated"
    except (ValueError, RuntimeError) as exc:  # the strict key / shape check; a damaged zip archive
        reason = str(exc).strip() or type(exc).__name__
    where = "PATH" if source.option == "PATH" else source.option
    raise UsageError(
        f"cannot import {path} as {component.id}: {reason}. {where} must be {source.file}: "
        f"{' '.join(component.description.split())}; nothing was imported."
    )


def _unpickling_reason(exc: Exception) -> str:
    """What torch's weights_only error says was refused, without its advice to unpickle the file anyway."""
    text = str(exc)
    if "WeightsUnpickler error:" not in text:
        return first_line(exc)
    detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split())
    return re.split(r"\s*(?:Please use|Check the documentation)", detail, maxsplit=1)[0].rstrip(". ")


@dataclass
class ImportSummary:
    """What one ``cosal weights import IMPORTER`` did, and whether the importer's methods are ready."""

    outcomes: list[ImportOutcome]
    readiness: dict[str, dict[str, Any]]  # method -> role -> CacheStatus
    exit_code: int

    def to_json(self) -> dict[str, Any]:
        imported = [outcome for outcome in self.outcomes if outcome.record]
        return {
            "imported": [{**outcome.record.to_json(), "found_in": outcome.found_in} for outcome in imported],
            "errors": [
                {"component": outcome.component.id, "path": str(outcome.path), "found_in": outcome.found_in,
                 "message": str(outcome.error), "exit_code": int(outcome.error.exit_code)}  # fmt: skip
                for outcome in self.outcomes
                if outcome.error
            ],
            "methods": {
                method: {
                    "ready": all(status.state == "ok" for status in statuses.values()),
                    "weights": {
                        role: {"component": status.component.id, "state": status.state, "path": str(status.path)}
                        for role, status in statuses.items()
                    },
                }
                for method, statuses in self.readiness.items()
            },
            "exit_code": int(self.exit_code),
        }


def summarise_import(hub: WeightHub, importer: str, files: Mapping[str, Path]) -> ImportSummary:
    """Import ``files`` for ``importer``, then check every method that uses its components."""
    outcomes = import_files(hub, importer, files)
    worst = max((int(outcome.error.exit_code) for outcome in outcomes if outcome.error), default=0)
    imported = [outcome.component.id for outcome in outcomes if outcome.record]
    users = [method for component in hub.manifest.importer(importer) for method in hub.manifest.users(component.id)]
    readiness = {method: hub.method_status(method, known_ok=imported) for method in dict.fromkeys(users)}
    return ImportSummary(outcomes, readiness, worst)

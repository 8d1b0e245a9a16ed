"""``hf``: a file in a Hugging Face Hub repository at a fixed revision, downloaded with ``hf_hub_download``."""

from __future__ import annotations

import os
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
from cosal_cli.hub.cache import ProgressCallback, sha256_file
from cosal_cli.hub.fields import REVISION
from cosal_cli.hub.sources.base import WeightSource

if TYPE_CHECKING:
    from cosal_cli.hub.fields import Fields
    from cosal_cli.hub.manifest import Component
    from cosal_cli.hub.weight_hub import WeightHub


@dataclass(frozen=True)
class HfSource(WeightSource):
    repo_id: str
    filename: str
    revision: str
    sha256: str
    converter: str = "identity"
    endpoint: str | None = None
    repo_type: str = "model"

    kind = "hf"

    @classmethod
    def from_manifest(cls, fields: Fields, where: str) -> HfSource:
        return cls(
            repo_id=fields.text("repo_id"),
            filename=fields.relative_path("filename"),
            revision=fields.pattern("revision", REVISION, "a full 40-character commit hash"),
            sha256=fields.sha256("sha256"),
            converter=fields.converter(),
            endpoint=fields.url("endpoint", optional=True),
            repo_type=fields.text("repo_type", default="model"),
        )

    def check_component(self, component: Component, where: str) -> None:
        if self.converter == "identity" and self.sha256 != component.sha256:
            raise ManifestError(f"{where}: with converter 'identity' the source sha256 must equal the component's")

    def describe(self) -> str:
        return f"hf:{self.repo_id}/{self.filename}@{self.revision[:12]}"

    def fetch(self, component: Component, hub: WeightHub, offline: bool, progress: ProgressCallback | None) -> Path:
        path = self._download(component, hub, offline)
        actual = sha256_file(path)
        if actual != self.sha256:
            # A blob with the wrong content must not be found again by the next offline run.
            _unlink_hf_entry(path)
            raise ChecksumMismatch(
                f"{self.describe()} for {component.id} has sha256 {actual}, but the manifest pins "
                f"{self.sha256}; the download was discarded. The file on the hub changed or was corrupted."
            )
        return path

    def _download(self, component: Component, hub: WeightHub, offline: bool) -> Path:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        # huggingface_hub reads HF_ENDPOINT once at import; passing it per call honours later changes.
        endpoint = self.endpoint or os.environ.get("HF_ENDPOINT") or None
        try:
            return Path(
                hf_hub_download(
                    self.repo_id,
                    self.filename,
                    revision=self.revision,
                    repo_type=self.repo_type,
                    cache_dir=hub.home / "hf",
                    endpoint=endpoint,
                    local_files_only=offline,
                    library_name="cosal",
                    library_version=__version__,
                )
            )
        except LocalEntryNotFoundError:  # before EntryNotFoundError: in huggingface_hub 2.x it is a subclass
            raise WeightsUnavailable(hub.missing_message(component, offline)) from None
        except (RepositoryNotFoundError, EntryNotFoundError) as exc:
            raise WeightsUnavailable(
                f"{self.describe()} for {component.id} does not exist on {endpoint or 'the Hub'}: "
                f"{first_line(exc)}. Check the manifest entry or HF_ENDPOINT."
            ) from None
        except Exception as exc:  # httpx / OSError / consistency errors: network trouble or partial file
            raise WeightsUnavailable(
                f"could not download {self.describe()} for {component.id}: {first_line(exc)}. "
                f"Check the network (HTTPS_PROXY, HF_ENDPOINT), then run `cosal weights pull {component.id}`."
            ) from None


def _unlink_hf_entry(path: Path) -> None:
    """Remove a snapshot entry of huggingface_hub's cache and the blob behind it."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)

"""The local cache: where ``$COSAL_HOME`` is, offline mode, sha256 of files, a component's cache status,
and what the cache holds by kind (``cosal cache info`` and ``clear``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cosal_cli.hub.manifest import Component

ENV_HOME = "COSAL_HOME"
ENV_OFFLINE = "COSAL_OFFLINE"

#: The ``cosal_cli`` package directory: bundled weights and (in wheel installs) the manifest live there.
PACKAGE_DIR = Path(__file__).resolve().parent.parent

CHUNK = 1 << 20

ProgressCallback = Callable[[str, int, "int | None"], None]
"""``progress(label, bytes_done, bytes_total_or_None)``, called while downloading."""


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
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheStatus:
    component: Component
    state: str  # "ok", "missing" or "corrupt" (verify) / "cached" or "missing" (quick look)
    path: Path
    detail: str = ""


#: What ``$COSAL_HOME`` holds, by kind (``cosal cache info``), and the folders of each kind.
CACHE_KINDS = {
    "weights": ("weights", "sources", "hf"),  # fetched and converted components: fetched again when needed
    "imported": ("imported",),  # the user's imports: only `cosal weights import` can make them again
    "downloads": ("downloads",),  # wheels a user placed by hand for offline machines
    "sism": ("sism",),  # single-image saliency maps, one file per image: recomputed when needed
    "tmp": ("tmp",),  # partial files
}
#: What ``cosal cache clear`` may remove: the rest holds what only the user can put back.
CLEARABLE = ("sism", "tmp", "weights")


@dataclass(frozen=True)
class CacheUsage:
    kind: str
    files: int
    bytes: int


def cache_usage(home: Path) -> list[CacheUsage]:
    """Files and bytes of each kind under ``home`` (links are counted, never followed)."""
    usage = []
    for kind, folders in CACHE_KINDS.items():
        files = size = 0
        for folder in folders:
            for root, _, names in os.walk(home / folder):
                for name in names:
                    status = os.lstat(os.path.join(root, name))
                    files, size = files + 1, size + status.st_size
        usage.append(CacheUsage(kind, files, size))
    return usage


def clear_cache(home: Path, kinds: tuple[str, ...]) -> list[CacheUsage]:
    """Delete the folders of ``kinds`` (of :data:`CLEARABLE`); returns what they held."""
    import shutil

    unknown = [kind for kind in kinds if kind not in CLEARABLE]
    if unknown:
        raise ValueError(f"cannot clear {unknown}: only {CLEARABLE}")
    freed = [entry for entry in cache_usage(home) if entry.kind in kinds]
    for kind in kinds:
        for folder in CACHE_KINDS[kind]:
            path = home / folder
            if path.is_symlink():  # a folder linked from elsewhere: drop the link, never what it points to
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
    return freed

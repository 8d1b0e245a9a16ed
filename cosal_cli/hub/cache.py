"""The local cache: where ``$COSAL_HOME`` is, offline mode, sha256 of files, and a component's cache status."""

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

"""Typed, validating access to the mappings of ``weights_manifest.yaml``."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import PurePosixPath

from cosal_cli.errors import ManifestError
from cosal_cli.hub.convert import CONVERTERS

SHA256 = re.compile(r"^[0-9a-f]{64}$")
REVISION = re.compile(r"^[0-9a-f]{40}$")
COMPONENT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
IMPORT_OPTION = re.compile(r"^(PATH|--[a-z][a-z0-9-]*)$")


class Fields:
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
        return self.pattern(key, SHA256, "64 lowercase hex digits")

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

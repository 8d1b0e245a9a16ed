"""Errors that end a command, each carrying the exit code a shell script sees.

Per-image problems are not exceptions of this kind: the pipeline records them and carries on
(see ``pipeline.Failure``); only whole-run problems (bad usage, missing or corrupt weights)
stop a command.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes of every ``cosal`` command (README, "Exit codes")."""

    OK = 0
    INPUTS_FAILED = 1
    USAGE = 2
    WEIGHTS_UNAVAILABLE = 3
    WEIGHTS_CHECKSUM = 4
    INTERRUPTED = 130


class CosalError(Exception):
    """An error that stops the command; its message is shown as is, so it names the fix."""

    exit_code: ExitCode = ExitCode.INPUTS_FAILED


class UsageError(CosalError):
    exit_code = ExitCode.USAGE


class ManifestError(CosalError):
    """``weights_manifest.yaml`` (or ``$COSAL_MANIFEST``) is malformed or unsafe."""

    exit_code = ExitCode.USAGE


class WeightsUnavailable(CosalError):
    """A weight component is not cached and cannot be fetched (offline, network down, not found)."""

    exit_code = ExitCode.WEIGHTS_UNAVAILABLE


class ChecksumMismatch(CosalError):
    """A downloaded, converted or cached file does not have the sha256 the manifest pins."""

    exit_code = ExitCode.WEIGHTS_CHECKSUM


def first_line(exc: BaseException) -> str:
    """An exception as one short line for a message (libraries put details on later lines)."""
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]

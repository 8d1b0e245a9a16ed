"""Errors that end a command, each carrying the exit code a shell script sees.

Per-image problems are not exceptions of this kind: the runner records them and carries on
(see ``io.Problem``); only whole-run problems (bad usage, missing or corrupt weights)
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
    INTERNAL_ERROR = 5  # a bug met in some group (or the whole run); the others were processed
    INTERRUPTED = 130  # SIGINT (Ctrl-C)
    TERMINATED = 143  # SIGTERM (kill, a cluster scheduler's time limit)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that the same clean-up runs; exits 143."""


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


class InputError(Exception):
    """One input (an image, a group's SISM) cannot be used; the message is the reason and the fix.

    Not a CosalError: it never ends a command. The runner records it against the input and goes on.
    """


def first_line(exc: BaseException) -> str:
    """An exception as one short line for a message (libraries put details on later lines)."""
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]

"""The ``cosal`` command line: one module per command, each only parsing, calling the library and printing.

:mod:`~cosal_cli.cli.app` is the application and every command's common exit handling,
:mod:`~cosal_cli.cli.console` the printing they share. Heavy modules (torch, the runners, the hub)
are imported inside the commands, so that ``cosal --help`` and ``cosal --version`` answer at once.
"""

from __future__ import annotations

from cosal_cli.cli import bench, cache, detect, export, methods, train, weights  # noqa: F401  (each registers its command)
from cosal_cli.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app()

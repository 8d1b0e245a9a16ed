"""Runners: how groups reach a method and their maps reach the disk.

A runner takes discovered groups and writes ``<output>/<group>/<stem>.png``. Each group goes through
the same pure functions (:mod:`cosal_cli.runners.group`) over the one inference path
(:mod:`cosal_cli.inference`); runners differ only in where that runs. :mod:`~cosal_cli.runners.local`
runs it here, decoding ahead and writing behind the computation in threads; :mod:`~cosal_cli.runners.cluster`
runs it in Ray actors (:mod:`~cosal_cli.runners.worker`) and writes here. Both apply the same output
policy (:mod:`~cosal_cli.runners.outputs`) and report through the same
:class:`~cosal_cli.runners.recorder.Recorder` into the same :class:`~cosal_cli.runners.summary.Summary`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from cosal_cli.errors import UsageError

if TYPE_CHECKING:
    from cosal_cli.runners.cluster import ClusterOptions
    from cosal_cli.runners.summary import Summary

RUNNERS = ("local", "ray")


def select(name: str, cluster: ClusterOptions | None = None) -> Callable[..., Summary]:
    """The ``run`` function of runner ``name`` (``local`` or ``ray``); both take the same arguments.

    ``cluster`` (Ray's address, workers, GPUs per worker ...) is only for ``ray``.
    """
    if name == "local":
        if cluster is not None:
            raise UsageError("--ray-address, --workers, --gpus-per-worker, --write-on-workers and --ray-runtime-env "
                             "are for --runner ray")  # fmt: skip
        from cosal_cli.runners import local

        return local.run
    if name == "ray":
        from cosal_cli.runners import cluster as ray_runner

        ray_runner.import_ray()  # without the extra: a usage error naming it, before any work
        return functools.partial(ray_runner.run, cluster=cluster or ray_runner.ClusterOptions())
    raise UsageError(f"--runner must be one of {', '.join(RUNNERS)}, not {name!r}")

"""Options shared by several commands. The methods' own options (``--sism`` ...) take their help text
and the list of methods that take them from the methods' declarations (:mod:`cosal_cli.methods.options`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cosal_cli import methods
from cosal_cli.errors import UsageError
from cosal_cli.refine import REFINERS


def _method_help(name: str) -> str:
    declaring = next(card.options for card in methods.CARDS.values() if name in card.options.declared())
    flag = declaring.declared()[name]
    return f"{declaring.help_of(name)}. Methods: {', '.join(methods.takers(flag))}."


def method_choices() -> str:
    """``gicd (default), icnet, ...``: every method, for --method's help."""
    return ", ".join(f"{name} (default)" if name == methods.DEFAULT_METHOD else name for name in methods.CARDS)


MethodOption = Annotated[
    Optional[str], typer.Option("--method", "-m", metavar="METHOD", show_default=False,
                                help=f"One of {method_choices()}; `cosal methods NAME` describes one.")
]  # fmt: skip
BackendOption = Annotated[
    str, typer.Option("--backend", metavar="torch|onnxruntime", help="Run the method in torch, or its exported "
                      "graphs in ONNX Runtime (every method but gmr; cached in $COSAL_HOME/onnx/).")
]  # fmt: skip
PrecisionOption = Annotated[
    str, typer.Option("--precision", metavar="fp32|bf16", help="The network's arithmetic: float32, or bfloat16 "
                      "autocast (faster on GPUs and on CPUs with AMX or AVX512-BF16; maps within a few 1/255).")
]  # fmt: skip
GpuDecodeOption = Annotated[
    bool, typer.Option("--gpu-decode", help="Decode JPEGs on the GPU (nvJPEG, through torchvision), with --device "
                       "cuda; other files, and those it cannot take, go through Pillow.")
]  # fmt: skip
ThreadsOption = Annotated[
    Optional[int], typer.Option("--threads", min=1, metavar="N", show_default=False,
                                help="CPU threads for torch and onnxruntime (default: one per core).")
]  # fmt: skip
RunnerOption = Annotated[
    str, typer.Option("--runner", metavar="local|ray", help="Where groups are computed: in this process, or by "
                      "Ray actors on a cluster (the ray extra; see the README's \"Running on a cluster\").")
]  # fmt: skip
RayAddressOption = Annotated[
    Optional[str], typer.Option("--ray-address", metavar="HOST:PORT", show_default=False, help="The Ray cluster "
                                "to use (default: the one running on this machine, else a new local one).")
]  # fmt: skip
WorkersOption = Annotated[
    Optional[int], typer.Option("--workers", min=1, metavar="N", show_default=False,
                                help="Ray actors, each holding the method [default: 2].")
]  # fmt: skip
GpusPerWorkerOption = Annotated[
    Optional[float], typer.Option("--gpus-per-worker", min=0.0, metavar="F", show_default=False,
                                  help="GPUs Ray reserves for each actor (0.5: two actors share one) [default: 0].")
]  # fmt: skip
WriteOnWorkersOption = Annotated[
    bool, typer.Option("--write-on-workers", help="Ray actors write the files into OUTPUT themselves (a path "
                       "every node sees) instead of sending them to this process.")
]  # fmt: skip
RayRuntimeEnvOption = Annotated[
    Optional[str], typer.Option("--ray-runtime-env", metavar="JSON", show_default=False, help="Ray's runtime "
                                "environment for the actors, e.g. "
                                "'{\"env_vars\": {\"COSAL_HOME\": \"/shared/cosal\"}}'.")
]  # fmt: skip
SismOption = Annotated[Optional[str], typer.Option("--sism", help=_method_help("sism"))]
SismDirOption = Annotated[Optional[Path], typer.Option("--sism-dir", help=_method_help("sism_dir"))]
SubgroupOption = Annotated[Optional[int], typer.Option("--subgroup", min=1, help=_method_help("subgroup"))]
OutsidersOption = Annotated[
    Optional[str], typer.Option("--outsiders", metavar="dim|keep", help=_method_help("outsiders"))
]
SmoothingOption = Annotated[
    Optional[str], typer.Option("--smoothing", metavar="on|off", help=_method_help("smoothing"))
]
BranchesOption = Annotated[
    Optional[str], typer.Option("--branches", metavar="both|pool3|pool5", help=_method_help("branches"))
]
ScalesOption = Annotated[Optional[str], typer.Option("--scales", metavar="multi|single", help=_method_help("scales"))]
CoCategoryOption = Annotated[
    Optional[str], typer.Option("--co-category", metavar="on|off", help=_method_help("co_category"))
]
PoolingOption = Annotated[
    Optional[str], typer.Option("--pooling", metavar="hlrbp|average", help=_method_help("pooling"))
]
TtaOption = Annotated[
    Optional[str], typer.Option("--tta", metavar="none|flip", show_default=False,
                                help=f"{methods.MethodOptions.help_of('tta')}. Every method.")
]  # fmt: skip
ChunkOption = Annotated[
    Optional[int], typer.Option("--chunk", min=1, hidden=True, help="Deprecated name of --subgroup (one release).")
]
RefineOption = Annotated[
    Optional[list[str]],
    typer.Option("--refine", help=f"Refine every map with this refiner after the method (repeatable): "
                 f"{', '.join(REFINERS)}. ranking propagates the map over the image's SLIC superpixels."),
]
LayoutOption = Annotated[
    str,
    typer.Option("--layout", help="How to read each PATH folder: auto (images inside: one group; only "
                 "sub-folders: a folder of groups; both: an error asking you to choose), group (the folder is "
                 "one group, sub-folders ignored) or groups (each sub-folder is a group, loose images ignored)."),
]
DebugOption = Annotated[
    bool, typer.Option("--debug", help="Print the traceback of an internal error (exit 5) to report it.")
]


def method_values(sism: str | None, sism_dir: Path | None, subgroup: int | None, chunk: int | None,
                  notices: list[str], outsiders: str | None = None, **more: str | None) -> dict[str, Any]:  # fmt: skip
    """The method options given on the command line, by option name (``chunk``: the old ``subgroup``)."""
    if chunk is not None:
        if subgroup is not None:
            raise UsageError("--chunk is the old name of --subgroup: give only --subgroup")
        notices.append("--chunk is deprecated and will be removed in the next release: use --subgroup")
    return {"sism": sism, "sism_dir": sism_dir, "subgroup": subgroup, "chunk": chunk, "outsiders": outsiders, **more}


def chosen_runner(runner: str, address: str | None, workers: int | None, gpus_per_worker: float | None,
                  write_on_workers: bool, runtime_env: str | None) -> Any:  # fmt: skip
    """The run function of ``--runner``, with the cluster options when any is given."""
    import json

    from cosal_cli import runners

    given = address is not None or workers is not None or gpus_per_worker is not None or write_on_workers
    if runtime_env is not None:
        try:
            environment = json.loads(runtime_env)
        except json.JSONDecodeError as exc:
            example = '{"env_vars": {}}'
            raise UsageError(f"--ray-runtime-env is not JSON ({exc}): give an object, e.g. '{example}'") from None
        if not isinstance(environment, dict):
            raise UsageError("--ray-runtime-env must be a JSON object, e.g. '{\"env_vars\": {}}'")
    if not given and runtime_env is None:
        return runners.select(runner)
    from cosal_cli.runners.cluster import ClusterOptions

    cluster = ClusterOptions(address, workers or 2, gpus_per_worker or 0.0, write_on_workers,
                             environment if runtime_env is not None else None)  # fmt: skip
    return runners.select(runner, cluster)

"""``cosal train``: train a method's head on a frozen backbone (parses, calls the trainer, prints)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cosal_cli.cli.app import app, handle_errors
from cosal_cli.cli.console import (
    ConsoleReporter,
    escape,
    print_json,
    progress_bar,
    stdout,
)
from cosal_cli.errors import UsageError
from cosal_cli.methods.options import CSMG_BRANCHES, GS_POOLINGS, check_choice

TRAIN_EPILOG = (
    "Exit codes: 0 trained, 2 usage error (bad data, split or options; a checkpoint from an earlier run "
    "without --resume), 3 weights unavailable, 4 weights checksum mismatch, 130 interrupted (the checkpoint "
    "is saved: rerun with --resume)."
)

if TYPE_CHECKING:
    from rich.progress import Progress



TRAIN_COLUMNS = ("loss {task.fields[loss]:.4f}", "{task.fields[speed]:.1f} img/s")


@app.command(epilog=TRAIN_EPILOG)
@handle_errors
def train(
    method: Annotated[
        str, typer.Option("--method", "-m", metavar="METHOD", show_default=False,
                          help="The method whose head to train: csmg, gwd, gs, gicd, icnet or sod.")
    ],
    data: Annotated[
        list[Path],
        typer.Option("--data", help="A dataset folder in the Image/<group> + GroundTruth/<group> layout "
                     "(repeatable).", show_default=False),
    ],
    split: Annotated[
        Path,
        typer.Option("--split", help="Split file naming the held-out part (training/splits/).", show_default=False),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The head to write (.safetensors).", show_default=False)
    ],
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training images.")] = 4,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate (cosine-decayed to 1 %).")] = 1e-3,
    size: Annotated[int, typer.Option(min=32, help="Side of the square training crops.")] = 192,
    min_group: Annotated[int, typer.Option(min=1, help="Fewest images of one group in a batch.")] = 2,
    max_group: Annotated[int, typer.Option(min=1, help="Most images of one group in a batch.")] = 6,
    composite_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of images given a pasted object of another group.")
    ] = 0.0,
    outsider_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of a sub-group's images (never its first) replaced by "
                            "an image of another group with an all-zero target (co-saliency methods only).")
    ] = 0.0,
    collaborative_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of batches also trained with another group's consensus "
                            "and all-zero targets (GCoNet's collaborative learning; needs --cache-views).")
    ] = 0.0,
    cache_views: Annotated[
        int, typer.Option(min=0, help="Train from N cached augmented views per image: the frozen encoder runs once "
                          "per view instead of once per step (0: no cache).")
    ] = 0,
    cache_dir: Annotated[
        Optional[Path], typer.Option(help="Folder of the feature cache (default: OUTPUT with .cache instead of "
                                     ".safetensors); a matching cache is reused.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the head's initialisation and of every batch.")] = 0,
    init: Annotated[
        Optional[str], typer.Option("--init", metavar="HEAD", help="Fine-tune this head (a .safetensors file, or a "
                                    "component such as icnet-head) instead of starting from a seeded one.")
    ] = None,
    sism: Annotated[
        Optional[str],
        typer.Option("--sism", help="ICNet: the SISM generator to train with (sod or gmr); use the same one at test "
                     "time. Default: sod."),
    ] = None,
    branches: Annotated[
        Optional[str],
        typer.Option("--branches", help="CSMG: the masked branches the head is trained with (both, pool3 or pool5); "
                     "detect picks the matching head with the same flag. Default: both."),
    ] = None,
    tune_encoder: Annotated[
        bool,
        typer.Option("--tune-encoder", help="GICD: also tune a copy of the backbone's early blocks, which the decoder "
                     "reads (the classifier, its consensus and gradient stay frozen; trains from images, not "
                     "--cache-views). GWD: also tune VGG-16's conv5 block, as a low-rank update of its weights "
                     "(trains from --cache-views, which then hold pool4)."),
    ] = False,
    encoder_lr_scale: Annotated[
        Optional[float],
        typer.Option(min=0.0, help="With --tune-encoder: the tuned encoder's learning rate as a "
                     "fraction of --lr. Default: 0.1 for GICD's copy, 1 for GWD's update (it starts at zero)."),
    ] = None,
    output_stride: Annotated[
        Optional[int],
        typer.Option("--output-stride", metavar="N", help="GWD: 16 (the paper's x16 deconvolution); CSMG: 32 (the "
                     "paper's x32). 8 adds FCN-8s's skip from pool3 to either (--init from a head without one starts "
                     "it at zero, from that head's maps). Default: the paper's."),
    ] = None,
    co_category: Annotated[
        Optional[str],
        typer.Option("--co-category", metavar="table|imagenet|off", help="GS: the co-category supervision: the "
                     "category table (training/categories.yaml), each group's top ImageNet classes, or none "
                     "(the lambda = 0 ablation). Default: table."),
    ] = None,
    pooling: Annotated[
        Optional[str],
        typer.Option("--pooling", metavar="hlrbp|average", help="GS: H-LRBP, or FC + average pooling (the paper's "
                     "baseline). Default: hlrbp."),
    ] = None,
    val_limit: Annotated[
        int, typer.Option(min=0, help="Held-out images per group validated each epoch (0: all).")
    ] = 24,
    per_group: Annotated[
        int, typer.Option(min=0, help="Train on at most N images of each group, evenly spaced (0: all).")
    ] = 0,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Batches between checkpoints.")] = 50,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUTPUT's checkpoint.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(metavar="auto|fp32|bf16", help="bf16 autocast or float32 for the forward "
                                           "passes; auto: bf16 on CUDA, fp32 on the CPU.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for torch.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network for weights.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the kept head's metadata as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors (and --json).")] = False,
) -> None:
    """Train a method's head on datasets, validating on a split's held-out part after every epoch."""
    from cosal_cli import hub, methods
    from cosal_cli.splits import load_split
    from cosal_cli.training.sampler import SamplerSettings
    from cosal_cli.training.trainer import TrainSettings
    from cosal_cli.training.trainer import train as run_training

    methods.card(method)
    if output.suffix != ".safetensors":
        raise UsageError(f"--output {output}: heads are written as .safetensors files")
    try:
        sampler = SamplerSettings(size=size, min_group=min_group, max_group=max_group,
                                  composite_fraction=composite_fraction, outsider_fraction=outsider_fraction,
                                  collaborative_fraction=collaborative_fraction, seed=seed)  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if threads is not None:
        from cosal_cli.methods.loader import use_threads

        use_threads(threads)
    settings = TrainSettings(
        method=method, data=list(data), split=load_split(split), output=output, epochs=epochs, lr=lr,
        sampler=sampler, val_limit=val_limit, per_group=per_group, checkpoint_every=checkpoint_every, device=device,
        precision=precision, resume=resume, offline=hub.offline_mode(offline),
        config=_config(sism, branches, co_category, pooling, tune_encoder, output_stride), cache_views=cache_views,
        cache_dir=cache_dir, init=init, encoder_lr_scale=encoder_lr_scale,
    )  # fmt: skip
    with progress_bar(quiet, None, TRAIN_COLUMNS) as progress:
        metadata = run_training(settings, _TrainConsoleReporter(progress, quiet))
    if json_output:
        print_json(metadata)
    elif not quiet:
        kept = metadata["validation"]["kept"]
        stdout.print(
            f"wrote {escape(str(output))}: epoch {kept['epoch']} of {metadata['training']['epochs_run']}, held-out "
            f"S {kept['sm']:.3f}, max F {kept['max_fm']:.3f}, mean E {kept['mean_em']:.3f}, MAE {kept['mae']:.3f}"
        )


def _config(sism: str | None, branches: str | None, co_category: str | None, pooling: str | None,
            tune_encoder: bool = False, output_stride: int | None = None) -> dict:
    """The head's config from the method-specific flags (checked against the method by the trainer)."""
    from cosal_cli.training.co_category import SOURCES

    check_choice("--co-category", co_category, SOURCES)
    check_choice("--pooling", pooling, GS_POOLINGS)
    config: dict = {name: value for name, value in (("co_category", co_category), ("pooling", pooling)) if value}
    if sism is not None:
        config["sism"] = sism
    if branches is not None:
        check_choice("--branches", branches, CSMG_BRANCHES)
        config["branches"] = ["pool3", "pool5"] if branches == "both" else [branches]
    if tune_encoder:
        config["tune_encoder"] = True
    if output_stride is not None:
        config["output_stride"] = output_stride
    return config


class _TrainConsoleReporter(ConsoleReporter):
    """A progress bar per epoch with the running loss and images/s; plain lines when not a terminal."""

    LOG_EVERY = 50  # batches between plain progress lines

    def __init__(self, progress: Progress | None, quiet: bool):
        import time

        super().__init__(progress, quiet)
        self.clock = time.perf_counter
        self.epoch = self.batch = self.batches = 0
        self.loss: float | None = None
        self.images, self.started = 0, self.clock()

    def epoch_start(self, epoch: int, epochs: int, batches: int, done: int) -> None:
        self.epoch, self.batch, self.batches = epoch, done, batches
        self.images, self.started = 0, self.clock()
        if self.progress is not None:
            self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=batches, completed=done,
                                               loss=0.0, speed=0.0)  # fmt: skip

    def step(self, images: int, loss: float) -> None:
        self.batch += 1
        self.images += images
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss  # smoothed for display
        speed = self.images / max(self.clock() - self.started, 1e-9)
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=self.loss, speed=speed)
        elif not self.quiet and self.batch % self.LOG_EVERY == 0:
            self.console.print(f"epoch {self.epoch} batch {self.batch}/{self.batches}: loss {self.loss:.4f}, "
                               f"{speed:.1f} img/s")  # fmt: skip

    def validation_start(self, images: int) -> None:
        if not self.quiet:
            self.console.print(f"epoch {self.epoch}: validating on {images} held-out images")

    def validated(self, epoch: int, scores: dict[str, float], kept: bool) -> None:
        if not self.quiet:
            self.console.print(
                f"epoch {epoch}: held-out S {scores['sm']:.4f}, max F {scores['max_fm']:.4f}, "
                f"mean E {scores['mean_em']:.4f}, MAE {scores['mae']:.4f}" + (" [green](kept)[/]" if kept else "")
            )

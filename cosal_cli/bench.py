"""Benchmarks: run methods over datasets (through the local runner) and score their maps.

For each dataset, each ``--method`` writes its maps with :func:`cosal_cli.runners.local.run` under
``<output>/<method>/<dataset>/<group>/<stem>.png`` (reused with ``--skip-existing``), and each
folder of predictions (a method's or a ``--pred`` folder from any other tool) is scored against the
masks, one image at a time, so memory does not grow with the dataset. Every mask without a
prediction, and every unreadable file, is reported by name and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cosal_cli import __version__, io, metrics
from cosal_cli.datasets import Dataset, Item, files_by_stem, subfolders
from cosal_cli.errors import ExitCode, Terminated, first_line
from cosal_cli.io import InputError, Problem


class BenchReporter(Protocol):
    """What the command line shows while a benchmark runs (the detect reporter plus stages)."""

    def stage(self, description: str, total: int) -> None: ...
    def notice(self, message: str) -> None: ...
    def problem(self, problem: Problem) -> None: ...
    def advance(self, images: float) -> None: ...
    def doing(self, text: str) -> None: ...
    def group_done(self, report: Any) -> None: ...


@dataclass
class MethodScores:
    """One method's (or one prediction folder's) scores on one dataset."""

    name: str
    predictions: Path
    accumulator: metrics.MetricAccumulator
    expected: int = 0  # masks in the dataset
    missing: list[str] = field(default_factory=list)  # "<group>/<stem>" with no prediction
    failures: list[Problem] = field(default_factory=list)  # unreadable predictions or masks
    resized: int = 0  # predictions resized to their mask's size
    seconds: float = 0.0
    detect: dict[str, Any] | None = None  # the detect summary, when the maps were made here
    #: Each scored image's S-measure and prediction file, by "<group>/<stem>" (the report's worst images).
    image_sm: dict[str, float] = field(default_factory=dict)
    prediction_of: dict[str, Path] = field(default_factory=dict)

    @property
    def evaluated(self) -> int:
        return self.accumulator.images

    @property
    def complete(self) -> bool:
        return not self.missing and not self.failures and (self.detect is None or self.detect["exit_code"] == 0)


@dataclass
class DatasetScores:
    dataset: Dataset
    methods: list[MethodScores] = field(default_factory=list)


@dataclass
class BenchResult:
    protocol: str
    group_average: bool
    datasets: list[DatasetScores] = field(default_factory=list)
    interrupted: bool = False
    terminated: bool = False  # the interruption was SIGTERM

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.TERMINATED if self.terminated else ExitCode.INTERRUPTED
        internal = any(
            method.detect and method.detect["exit_code"] == ExitCode.INTERNAL_ERROR
            for scores in self.datasets
            for method in scores.methods
        )
        if internal:
            return ExitCode.INTERNAL_ERROR
        incomplete = any(
            scores.dataset.problems or not method.complete for scores in self.datasets for method in scores.methods
        )
        return ExitCode.INPUTS_FAILED if incomplete else ExitCode.OK

    def to_json(self, details: bool = False) -> dict[str, Any]:
        """The machine-readable result; ``details`` adds per-group metrics and the curves."""
        return {
            "cosal_version": __version__,
            "protocol": self.protocol,
            "averaging": "group" if self.group_average else "image",
            "exit_code": int(self.exit_code),
            "interrupted": self.interrupted,
            "datasets": [self._dataset_json(scores, details) for scores in self.datasets],
        }

    def _dataset_json(self, scores: DatasetScores, details: bool) -> dict[str, Any]:
        dataset = scores.dataset
        return {
            "name": dataset.name,
            "root": str(dataset.root),
            "layout": dataset.layout,
            "subset": dataset.subset,
            "groups": len(dataset.groups),
            "images": len(dataset.items),
            "validation": dataset.validation(),
            "problems": [_problem_json(problem) for problem in dataset.problems],
            "methods": [self._method_json(method, details) for method in scores.methods],
        }

    def _method_json(self, method: MethodScores, details: bool) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": method.name,
            "predictions": str(method.predictions),
            "expected": method.expected,
            "evaluated": method.evaluated,
            "missing": len(method.missing),
            "failed": len(method.failures),
            "resized": method.resized,
            "metrics": method.accumulator.summary(self.group_average),
            "missing_predictions": method.missing,
            "failures": [_problem_json(problem) for problem in method.failures],
            "seconds": round(method.seconds, 3),
        }
        if method.detect is not None:
            row["detect"] = {key: method.detect[key] for key in ("counts", "timings", "images_per_second", "device",
                                                                 "runner")}
        if details:
            _, curves = method.accumulator.averages(self.group_average)
            row["curves"] = {
                "thresholds": metrics.thresholds(self.protocol).tolist(),
                **{name: curve.tolist() for name, curve in curves.items()},
            }
            row["per_group"] = method.accumulator.per_group()
        return row


def _problem_json(problem: Problem) -> dict[str, Any]:
    return {"path": str(problem.path), "group": problem.group, "message": problem.message}


# ----------------------------------------------------------------------------------------------
# Finding predictions
# ----------------------------------------------------------------------------------------------


def predictions_root(pred_dir: Path, dataset: Dataset) -> Path:
    """The folder holding ``<group>/`` maps: ``pred_dir`` or its ``<Dataset>/`` sub-folder.

    Tools write ``<save_root>/<Dataset>/<group>/<stem>.png``, so pointing at the save root works too.
    """
    names = {dataset.name.casefold(), dataset.root.resolve().name.casefold(), dataset.mask_root.name.casefold()}
    groups = {group.name.casefold() for group in dataset.groups}
    if pred_dir.is_dir():
        for child in sorted(pred_dir.iterdir()):
            if child.is_dir() and child.name.casefold() in names and child.name.casefold() not in groups:
                return child
    return pred_dir


def _prediction_index(root: Path) -> dict[str, dict[str, Path]]:
    """Prediction files by casefolded group name, then casefolded stem."""
    if not root.is_dir():
        return {}
    return {key: files_by_stem(folder) for key, folder in subfolders(root).items()}


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


#: How each protocol's toolbox reads maps and masks (they differ on colour and 16-bit files).
DECODERS = {"pysodmetrics": "opencv", "eval-co-sod": "pillow"}


@dataclass
class _Scored:
    item: Item
    scores: metrics.ImageScores | None = None
    problem: Problem | None = None
    resized: bool = False


def evaluate(dataset: Dataset, pred_dir: Path, name: str, protocol: str, reporter: BenchReporter) -> MethodScores:
    """Score every prediction in ``pred_dir`` against the dataset's masks."""
    started = time.perf_counter()
    root = predictions_root(pred_dir, dataset)
    result = MethodScores(name, root, metrics.MetricAccumulator(protocol), expected=len(dataset.items))
    if not root.is_dir():
        reporter.notice(f"{name}: no predictions folder {root}")
    index = _prediction_index(root)
    unmatched = sorted(set(index) - {group.name.casefold() for group in dataset.groups})
    if unmatched and index:
        reporter.notice(
            f"{name}: prediction folders in {root} that match no group of {dataset.name}: {', '.join(unmatched)}"
        )
    pairs: list[tuple[Item, Path]] = []
    for item in dataset.items:
        prediction = index.get(item.group.casefold(), {}).get(item.stem.casefold())
        if prediction is None:
            result.missing.append(item.key)
        else:
            pairs.append((item, prediction))
    if result.missing:
        reporter.notice(
            f"{name}: {len(result.missing)} of {len(dataset.items)} masks have no prediction in {root}: "
            f"{io.abbreviate(result.missing)}"
        )
        reporter.advance(len(result.missing))
    # One pair at a time: scoring in threads gave no speed-up (the metrics hold the GIL).
    for scored in (_score_one(item, path, protocol) for item, path in pairs):
        if scored.problem is not None:
            result.failures.append(scored.problem)
            reporter.problem(scored.problem)
        else:
            result.accumulator.add(scored.item.group, scored.scores)
            result.image_sm[scored.item.key] = float(scored.scores.scalars["sm"])
            result.prediction_of[scored.item.key] = index[scored.item.group.casefold()][scored.item.stem.casefold()]
            result.resized += scored.resized
        reporter.advance(1)
    if result.resized:
        reporter.notice(f"{name}: {result.resized} prediction(s) differ in size from their mask and were resized to it")
    result.seconds = time.perf_counter() - started
    return result


def _score_one(item: Item, prediction: Path, protocol: str) -> _Scored:
    decoder = DECODERS[protocol]
    try:
        mask = io.load_grey(item.mask, decoder)
    except InputError as exc:
        return _Scored(item, problem=Problem(item.mask, f"unreadable mask: {exc}", item.group))
    try:
        pred = io.load_grey(prediction, decoder)
    except InputError as exc:
        return _Scored(item, problem=Problem(prediction, f"unreadable prediction: {exc}", item.group))
    resized = pred.shape != mask.shape
    try:
        pred = metrics.match_size(pred, mask.shape, protocol)
        return _Scored(item, metrics.evaluate_pair(np.ascontiguousarray(pred), mask, protocol), resized=resized)
    except (ValueError, TypeError, MemoryError) as exc:
        return _Scored(item, problem=Problem(prediction, f"cannot be scored: {first_line(exc)}", item.group))


# ----------------------------------------------------------------------------------------------
# Running methods, then scoring
# ----------------------------------------------------------------------------------------------


def method_output(output: Path, method: str, dataset: Dataset) -> Path:
    return output / method / dataset.name


def run(
    datasets: list[Dataset],
    *,
    methods: list[str],
    predictions: list[tuple[str, Path]],
    output: Path,
    protocol: str,
    group_average: bool,
    reporter: BenchReporter,
    existing: str = "error",
    device_spec: str = "auto",
    batch_size: int = 8,
    offline: bool = False,
    options=None,
    refine: Sequence[str] = (),
    download_progress=None,
    backend: str = "torch",
    threads: int | None = None,
    runner: Callable[..., Any] | None = None,
    precision: str = "fp32",
) -> BenchResult:
    """Run ``methods`` on every dataset and score them together with the ``predictions`` folders.

    ``options`` maps a method name to its typed options (``--sism``, ``--subgroup``: see
    :func:`cosal_cli.methods.split_options`); ``refine`` names refiners applied after every method,
    and a method's maps and row are then labelled ``method+refiner`` (``gicd+ranking``). ``runner`` is
    the run function that computes the maps (:func:`cosal_cli.runners.select`; default: the local runner).
    ``precision="bf16"`` maps are labelled apart (``gicd,precision=bf16``): they differ by a few 1/255.
    """
    result = BenchResult(protocol, group_average)
    try:
        for dataset in datasets:
            scores = DatasetScores(dataset)
            result.datasets.append(scores)
            for problem in dataset.problems:
                reporter.problem(problem)
            for method in methods:
                method_options = (options or {}).get(method)
                label = method_label(method, refine, method_options, precision)
                run = _MethodRun(method, label, method_options, list(refine), backend, threads, runner, precision)
                summary = _detect(dataset, run, output, existing, device_spec, batch_size, offline, reporter,
                                  download_progress)  # fmt: skip
                reporter.stage(f"{dataset.name}: scoring {label}", len(dataset.items))
                method_scores = evaluate(dataset, method_output(output, label, dataset), label, protocol, reporter)
                method_scores.detect = summary
                scores.methods.append(method_scores)
            for name, folder in predictions:
                reporter.stage(f"{dataset.name}: scoring {name}", len(dataset.items))
                scores.methods.append(evaluate(dataset, folder, name, protocol, reporter))
    except KeyboardInterrupt as exc:
        result.interrupted, result.terminated = True, isinstance(exc, Terminated)
    return result


def method_label(method: str, refine: Sequence[str], options: Any = None, precision: str = "fp32") -> str:
    """The name of a method's row and map folder: ``gicd``; with options that change the maps
    ``csmg,smoothing=off`` (each given option, in declaration order, then a precision other than fp32);
    ``gicd+ranking`` with refiners."""
    given = []
    for name, flag in (options.declared().items() if options is not None else ()):
        value = getattr(options, name)
        if value is not None:
            given.append(f"{flag.removeprefix('--')}={Path(value).name if isinstance(value, Path) else value}")
    if precision != "fp32":
        given.append(f"precision={precision}")
    return "+".join([",".join([method, *given]), *refine])


@dataclass(frozen=True)
class _MethodRun:
    method: str
    label: str
    options: Any
    refine: list[str]
    backend: str = "torch"
    threads: int | None = None  # torch's (and onnxruntime's) CPU threads; None: the default
    runner: Callable[..., Any] | None = None  # the runner's run function; None: the local runner
    precision: str = "fp32"


def _detect(dataset, run: _MethodRun, output, existing, device_spec, batch_size, offline, reporter, download_progress):
    from cosal_cli import runners  # torch is only needed when a method runs

    groups = [group.image_dir for group in dataset.groups if group.image_dir is not None]
    discovery = io.discover(groups, layout="group")  # each is a group folder of the dataset
    if dataset.subset is not None:  # run on the selected images only: they form the groups
        selected = {item.image.resolve() for item in dataset.items if item.image is not None}
        for group in discovery.groups:
            group.images = [image for image in group.images if image.path.resolve() in selected]
    total = sum(len(group.images) + len(group.problems) for group in discovery.groups)
    reporter.stage(f"{dataset.name}: running {run.label}", total)
    summary = (run.runner or runners.select("local"))(
        discovery,
        run.method,
        method_output(output, run.label, dataset),
        device_spec=device_spec,
        existing=existing,
        batch_size=batch_size,
        offline=offline,
        options=run.options,
        refine=run.refine,
        reporter=reporter,
        download_progress=download_progress,
        backend=run.backend,
        threads=run.threads,
        precision=run.precision,
    )
    if summary.interrupted:
        raise Terminated if summary.terminated else KeyboardInterrupt
    return summary.to_json()


def unique_datasets(found: list) -> list:
    """Each dataset once, however often it was named (``-d coca -d CoCA``)."""
    unique: dict[Path, Any] = {}
    for dataset in found:
        unique.setdefault(dataset.mask_root.resolve(), dataset)
    return list(unique.values())


def prediction_names(folders: list[Path], found: list, taken: list[str]) -> list[tuple[str, Path]]:
    """Name each --pred folder after itself (its parent when it is named after the dataset), uniquely."""
    dataset_names = {dataset.name.casefold() for dataset in found}
    used = set(taken)
    named: list[tuple[str, Path]] = []
    for folder in folders:
        resolved = folder.resolve()
        name = resolved.parent.name if resolved.name.casefold() in dataset_names else resolved.name
        unique, counter = name, 2
        while unique in used:
            unique, counter = f"{name}~{counter}", counter + 1
        used.add(unique)
        named.append((unique, folder))
    return named

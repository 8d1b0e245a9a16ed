"""Benchmark reports on disk: metrics.json, metrics.csv, per_group.csv and curves.png.

Every file is written to a temporary name and renamed, so a report folder never holds a half-written
file, and the CSVs are plain (one header row, one row per method or per group) for spreadsheets.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from cosal_cli.bench import BenchResult
from cosal_cli.io import atomic_output
from cosal_cli.metrics import SUMMARY

COUNTS = ("expected", "evaluated", "missing", "failed")
#: Column titles, as the papers print them.
TITLES = {
    "sm": "S", "max_fm": "maxF", "mean_fm": "meanF", "adp_fm": "adpF", "max_em": "maxE", "mean_em": "meanE",
    "adp_em": "adpE", "mae": "MAE", "wfm": "wF", "auc": "AUC", "ap": "AP",
}  # fmt: skip


def write_report(result: BenchResult, folder: Path) -> list[Path]:
    """Write the four report files into ``folder`` (created if needed); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    document = result.to_json(details=True)
    written = [
        _write_text(folder / "metrics.json", json.dumps(document, indent=2) + "\n"),
        _write_csv(folder / "metrics.csv", ["dataset", "method", *COUNTS, *SUMMARY], _method_rows(document)),
        _write_csv(folder / "per_group.csv", ["dataset", "method", "group", "images", *SUMMARY], _group_rows(document)),
    ]
    written.append(_write_curves(document, folder / "curves.png"))
    return written


def _method_rows(document: dict[str, Any]) -> list[list[Any]]:
    return [
        [dataset["name"], method["name"], *(method[key] for key in COUNTS),
         *(_number(method["metrics"].get(key)) for key in SUMMARY)]
        for dataset in document["datasets"]
        for method in dataset["methods"]
    ]


def _group_rows(document: dict[str, Any]) -> list[list[Any]]:
    return [
        [dataset["name"], method["name"], group, values["images"], *(_number(values[key]) for key in SUMMARY)]
        for dataset in document["datasets"]
        for method in dataset["methods"]
        for group, values in method["per_group"].items()
    ]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _write_text(path: Path, text: str) -> Path:
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with atomic_output(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_curves(document: dict[str, Any], path: Path) -> Path:
    """Precision-recall and F-measure-threshold curves: one row of two plots per dataset."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    datasets = document["datasets"]
    figure, axes = plt.subplots(len(datasets), 2, figsize=(11, 4.5 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        pr_axis, f_axis = row
        for method in dataset["methods"]:
            curves = method.get("curves")
            if not method["evaluated"] or not curves:
                continue
            label = f"{method['name']} (maxF {method['metrics']['max_fm']:.3f})"
            pr_axis.plot(curves["recall"], curves["precision"], label=label)
            f_axis.plot(curves["thresholds"], curves["fm"], label=label)
        pr_axis.set(title=f"{dataset['name']}: precision-recall", xlabel="recall", ylabel="precision",
                    xlim=(0, 1), ylim=(0, 1.02))  # fmt: skip
        f_axis.set(title=f"{dataset['name']}: F-measure by threshold", xlabel="threshold",
                   ylabel="F-measure (beta^2 = 0.3)", xlim=(0, 1), ylim=(0, 1.02))  # fmt: skip
        for axis in row:
            axis.grid(alpha=0.3)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(loc="lower left", fontsize="small")
    figure.suptitle(f"cosal bench ({document['protocol']} protocol, averaged per {document['averaging']})")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
    return path

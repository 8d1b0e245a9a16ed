"""Benchmark reports on disk: metrics.json, metrics.csv, per_group.csv, curves.png and index.html.

``index.html`` is a static page to look at: the metrics table, the curves, and for each dataset,
group and method its :data:`WORST` images by S-measure, each row showing the photo, the ground
truth and every method's map of that image (thumbnails in ``index_files/``, relative links only).

Every file is written to a temporary name and renamed, so a report folder never holds a half-written
file, and the CSVs are plain (one header row, one row per method or per group) for spreadsheets.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from cosal_cli.bench import BenchResult
from cosal_cli.errors import InputError
from cosal_cli.io import atomic_output, load_grey, load_rgb
from cosal_cli.io.preview import THUMBNAILS, html_page, relative_link, save_thumbnail, text
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
    written.append(write_page(result, document, folder))
    return written


WORST = 3  # images shown per method and group


def write_page(result: BenchResult, document: dict[str, Any], folder: Path) -> Path:
    """``index.html``: the metrics table, the curves and the worst images (see the module docstring)."""
    body = [f"<h1>cosal bench ({text(document['protocol'])} protocol, averaged per {text(document['averaging'])})"
            "</h1>", _metrics_table(document), "<p><img src='curves.png' alt='curves' class='curves'></p>"]  # fmt: skip
    for scores in result.datasets:
        body += _worst_images(scores, folder)
    page = folder / "index.html"
    with atomic_output(page) as temporary:
        temporary.write_text(html_page("cosal bench", body), encoding="utf-8")
    return page


def _metrics_table(document: dict[str, Any]) -> str:
    header = "".join(f"<th>{text(title)}</th>" for title in TITLES.values())
    rows = [f"<table><tr><th>dataset</th><th>method</th><th>scored</th>{header}</tr>"]
    for dataset in document["datasets"]:
        for method in dataset["methods"]:
            values = "".join(f"<td>{_number(method['metrics'].get(key))[:5]}</td>" for key in TITLES)
            rows.append(f"<tr><td>{text(dataset['name'])}</td><td>{text(method['name'])}</td>"
                        f"<td>{method['evaluated']}/{method['expected']}</td>{values}</tr>")  # fmt: skip
    return "\n".join([*rows, "</table>"])


def _worst_images(scores: Any, folder: Path) -> list[str]:
    """Per group and method, the WORST images by S: photo | ground truth | every method's map."""
    dataset, methods = scores.dataset, scores.methods
    items = {item.key: item for item in dataset.items}
    lines = [f"<h2>{text(dataset.name)}: worst {WORST} images per method and group, by S-measure</h2>"]
    header = "".join(f"<th>{text(method.name)}</th>" for method in methods)
    for group in dataset.groups:
        for method in methods:
            keys = sorted((key for key in method.image_sm if items[key].group == group.name),
                          key=lambda key: method.image_sm[key])[:WORST]  # fmt: skip
            if not keys:
                continue
            lines.append(f"<h3>{text(group.name)}, {text(method.name)}</h3><table><tr><th>image</th><th>photo</th>"
                         f"<th>ground truth</th>{header}</tr>")  # fmt: skip
            lines += [_image_row(items[key], methods, folder, dataset.name) for key in keys]
            lines.append("</table>")
    return lines


def _image_row(item: Any, methods: list, folder: Path, dataset: str) -> str:
    base = folder / THUMBNAILS / dataset / item.group / item.stem
    cells = [_thumbnail_cell(_rgb_pixels, item.image, base.with_name(base.name + ".photo.jpg"), folder),
             _thumbnail_cell(load_grey, item.mask, base.with_name(base.name + ".gt.png"), folder)]  # fmt: skip
    for method in methods:
        prediction = method.prediction_of.get(item.key)
        cells.append(_thumbnail_cell(load_grey, prediction, base.with_name(f"{base.name}.{method.name}.png"), folder,
                                     method.image_sm.get(item.key)))  # fmt: skip
    return f"<tr><td class='name'>{text(item.stem)}</td>{''.join(cells)}</tr>"


def _rgb_pixels(path: Path) -> np.ndarray:
    return np.asarray(load_rgb(path).rgb)


def _thumbnail_cell(load, source: Path | None, target: Path, folder: Path, sm: float | None = None) -> str:
    if source is None:
        return "<td>-</td>"
    try:
        pixels = load(source)
    except InputError as exc:
        return f"<td class='failure'>{text(exc)}</td>"
    save_thumbnail(pixels, target)
    caption = f"<br>S {sm:.3f}" if sm is not None else ""
    return f"<td><img src='{text(relative_link(folder, target))}' alt='{text(target.name)}'>{caption}</td>"


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

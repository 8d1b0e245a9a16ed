"""``cosal detect --preview``: a static page to look at a run, ``<output>/index.html``.

One section per group (its notes and failures), one row per image: the photo, its map and an
overlay, as small thumbnails in ``<output>/index_files/<group>/`` (written beside the maps, atomically,
while the run goes). Only relative links and inline CSS: the folder can be moved, zipped or opened
offline, and nothing is fetched from the network. An image skipped by ``--skip-existing`` has no
thumbnails from this run: its row links the map already on disk and the photo where it was read.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cosal_cli.io.outputs import Threshold, encoded, overlay
from cosal_cli.io.writing import atomic_output

PAGE = "index.html"
THUMBNAILS = "index_files"  # like a browser's "save page as": the page's files beside it
THUMBNAIL_SIDE = 192
KINDS = ("photo", "map", "overlay")
STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; } td, th { padding: 4px 8px; text-align: left; vertical-align: top; }
img { max-width: 128px; max-height: 128px; background: #eee; }
.note { color: #555; } .failure { color: #b00; } .name { font-family: monospace; }
img.curves { max-width: 100%; max-height: none; }
"""


def thumbnail_paths(output_dir: Path, group: str, map_name: str) -> dict[str, Path]:
    stem = map_name.removesuffix(".png")
    folder = output_dir / THUMBNAILS / group
    return {"photo": folder / f"{stem}.photo.jpg", "map": folder / f"{stem}.map.png",
            "overlay": folder / f"{stem}.overlay.jpg"}  # fmt: skip


def encode_thumbnails(photo: np.ndarray, values: np.ndarray) -> dict[str, bytes]:
    """The thumbnails of one image, encoded in memory (kind -> file bytes, kinds as :data:`KINDS`)."""
    scale = THUMBNAIL_SIDE / max(values.shape)
    size = (max(1, round(values.shape[1] * scale)), max(1, round(values.shape[0] * scale)))
    small_photo = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))
    small_map = np.asarray(Image.fromarray(values).resize(size, Image.BILINEAR))
    mask = Threshold("adaptive").mask(values)
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    images = {"photo": Image.fromarray(small_photo), "map": Image.fromarray(small_map),
              "overlay": Image.fromarray(overlay(small_photo, small_map, small_mask))}  # fmt: skip
    return {kind: encoded(image, {"format": "PNG" if kind == "map" else "JPEG", "quality": 85})
            for kind, image in images.items()}  # fmt: skip


def save_thumbnail(pixels: np.ndarray, path: Path) -> Path:
    """(H, W) grey (PNG) or (H, W, 3) RGB (JPEG) uint8 pixels, at most THUMBNAIL_SIDE a side, atomically."""
    image = Image.fromarray(pixels)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.BILINEAR)
    with atomic_output(path) as temporary:
        image.save(temporary, format="PNG" if pixels.ndim == 2 else "JPEG", quality=85)
    return path


def html_page(title: str, body: list[str]) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{text(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")  # fmt: skip


def write_page(output_dir: Path, summary: dict[str, Any]) -> Path:
    """``index.html`` for a run, from its JSON summary (``Summary.to_json()``)."""
    page = output_dir / PAGE
    parts = [_header(summary)]
    failures_by_group: dict[str | None, list[dict]] = {}
    for failure in summary["failures"]:
        failures_by_group.setdefault(failure["group"], []).append(failure)
    for failure in failures_by_group.pop(None, []):  # inputs that are not groups at all
        parts.append(f"<p class='failure'>{text(failure['path'])}: {text(failure['message'])}</p>")
    for group in summary["groups"]:
        parts.append(_group_section(output_dir, group, summary["notices"], failures_by_group.get(group["name"], [])))
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(page) as temporary:
        temporary.write_text(html_page(f"cosal detect: {summary['method']}", parts), encoding="utf-8")
    return page


def _header(summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    return (f"<h1>cosal detect: {text(summary['method'])} on {text(summary['device'])}</h1><p>{counts['groups']} "
            f"group(s), {counts['images']} image(s): {counts['written']} written, {counts['skipped']} skipped, "
            f"{counts['failed']} failed (exit code {summary['exit_code']}).</p>")  # fmt: skip


def _group_section(output_dir: Path, group: dict[str, Any], notices: list[str], failures: list[dict]) -> str:
    name = group["name"]
    lines = [f"<h2 id='{text(name)}'>{text(name)} <span class='note'>({group['images']} image(s), "
             f"from {text(group['input'])})</span></h2>"]  # fmt: skip
    lines += [f"<p class='note'>{text(note)}</p>" for note in notices if note.startswith(f"{name}: ")]
    lines += [f"<p class='failure'>{text(Path(item['path']).name)}: {text(item['message'])}</p>"
              for item in failures]  # fmt: skip
    rows = [_row(output_dir, name, entry) for entry in group["outputs"] if entry["status"] != "failed"]
    if rows:
        lines.append("<table><tr><th>image</th><th>photo</th><th>map</th><th>overlay</th></tr>")
        lines += rows
        lines.append("</table>")
    return "\n".join(lines)


def _row(output_dir: Path, group: str, entry: dict[str, Any]) -> str:
    map_path = Path(entry["files"].get("map", entry["output"])) if entry.get("files") else Path(entry["output"])
    thumbnails = thumbnail_paths(output_dir, group, map_path.name)
    if all(path.exists() for path in thumbnails.values()):
        sources = {kind: relative_link(output_dir, path) for kind, path in thumbnails.items()}
    else:  # skipped in this run: the map on disk and the photo where it was read, no overlay
        on_disk = relative_link(output_dir, map_path) if map_path.exists() else None
        sources = {"photo": relative_link(output_dir, Path(entry["input"])), "map": on_disk, "overlay": None}
    cells = "".join(f"<td><img src='{text(src)}' alt='{kind}' loading='lazy'></td>" if src else "<td>-</td>"
                    for kind, src in sources.items())  # fmt: skip
    return f"<tr><td class='name'>{text(Path(entry['input']).name)}<br>{text(entry['status'])}</td>{cells}</tr>"


def relative_link(output_dir: Path, path: Path) -> str:
    """A relative URL from the page to ``path`` (forward slashes, percent-encoded)."""
    from urllib.parse import quote

    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(output_dir))
    return quote(relative.replace(os.sep, "/"))


def text(value: Any) -> str:
    return html.escape(str(value), quote=True)

"""`cosal cache info | clear`: sizes by kind; clearing SISMs never touches weights, and imports never go."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cosal_cli.cli import app


def seed(home: Path) -> None:
    for relative, size in (("weights/a.safetensors", 100), ("sources/b", 50), ("imported/c.safetensors", 70),
                           ("sism/sod-1/ab/x.png", 10), ("sism/sod-1/cd/y.png", 20), ("tmp/partial", 5)):  # fmt: skip
        path = home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)


def cache(home: Path, *args: str):
    result = CliRunner().invoke(app, ["cache", *args, "--json"], env={"COSAL_HOME": str(home)})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_info_counts_files_and_bytes_by_kind(tmp_path):
    seed(tmp_path)
    kinds = {entry["kind"]: (entry["files"], entry["bytes"]) for entry in cache(tmp_path, "info")["kinds"]}
    assert kinds == {"weights": (2, 150), "imported": (1, 70), "downloads": (0, 0), "sism": (2, 30), "tmp": (1, 5)}


def test_clear_takes_the_sisms_and_partial_files_and_leaves_the_weights(tmp_path):
    seed(tmp_path)
    cleared = cache(tmp_path, "clear")["cleared"]
    assert {entry["kind"]: entry["files"] for entry in cleared} == {"sism": 2, "tmp": 1}
    assert not (tmp_path / "sism").exists() and (tmp_path / "weights" / "a.safetensors").exists()
    cleared = cache(tmp_path, "clear", "--weights")["cleared"]
    assert {entry["kind"]: entry["files"] for entry in cleared} == {"tmp": 0, "weights": 2}
    assert not (tmp_path / "weights").exists() and (tmp_path / "imported" / "c.safetensors").exists()


def test_a_linked_sism_folder_is_unlinked_never_emptied(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "ab").mkdir(parents=True)
    (elsewhere / "ab" / "keep.png").write_bytes(b"x")
    home = tmp_path / "home"
    home.mkdir()
    (home / "sism").symlink_to(elsewhere, target_is_directory=True)
    cache(home, "clear", "--sism")
    assert not (home / "sism").exists() and (elsewhere / "ab" / "keep.png").exists()

"""Help and listings read like a Unix tool's and fit a terminal: no type labels, one line per method
or component at 80 columns, full detail with --json or `cosal methods NAME`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cosal_cli import methods
from cosal_cli.cli import app

COMMANDS = (["--help"], ["detect", "--help"], ["bench", "--help"], ["train", "--help"], ["methods", "--help"],
            ["weights", "--help"], ["weights", "list", "--help"], ["weights", "pull", "--help"],
            ["weights", "import", "--help"], ["cache", "info", "--help"], ["cache", "clear", "--help"],
            ["export", "--help"])  # fmt: skip


def run(*args: str, columns: int = 80):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns), "TERM": "dumb"})


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_help_shows_names_not_type_labels(args):
    result = run(*args, columns=120)
    assert result.exit_code == 0, result.output
    for label in ("<bool>", "<str>", "<list[str]>", "<path>", "<int", "<float", "{paths}"):
        assert label not in result.output, (label, result.output)


def test_method_help_names_every_method_and_the_default():
    output = run("detect", "--help", columns=200).output
    assert f"{methods.DEFAULT_METHOD} (default)" in output
    assert all(name in output for name in methods.CARDS)
    assert "Usage: cosal detect [OPTIONS] PATH..." in output
    assert "official GICD and ICNet files" in run("weights", "--help", columns=200).output


@pytest.mark.parametrize("args", [["methods"], ["weights", "list"]], ids=" ".join)
def test_listings_are_one_line_per_entry_at_80_columns(args):
    # a real process: the console takes its width from the terminal when cosal starts
    environment = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    result = subprocess.run([sys.executable, "-m", "cosal_cli", *args], capture_output=True, text=True,
                            env=environment, check=True)  # fmt: skip
    lines = result.stdout.rstrip("\n").splitlines()
    entries = len(methods.CARDS) if args == ["methods"] else len(json.loads(run(*args, "--json").output))
    assert max(len(line) for line in lines[: entries + 2]) <= 80  # not counting the paths of the footer
    assert len(lines) <= entries + 4  # a header, the entries, a few footer lines
    first_column = [line.split()[0] for line in lines[1 : entries + 1]]
    if args == ["methods"]:
        assert [name.rstrip("*").strip() for name in first_column] == list(methods.CARDS)  # names never cut


def test_one_methods_card_in_full_and_as_json():
    result = run("methods", "gs", columns=100)
    assert result.exit_code == 0, result.output
    assert "AAAI 2019" in result.output and "--co-category" in result.output and "--pooling" in result.output
    card = json.loads(run("methods", "gs", "--json").output)
    assert card["name"] == "gs" and card["options"] == ["--tta", "--co-category", "--pooling"]
    assert run("methods", "nope").exit_code == 2

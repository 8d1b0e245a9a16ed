"""``--tta flip``: each group's maps averaged with the maps of the same group mirrored left to right.

The mean makes any method mirror-equivariant: the maps of the mirrored photos are the mirrored maps.
That holds exactly in the network's resolution and to a grey level at the photos' size, and it does not
hold without the option, so the tests check it, and that the option reaches every seam (CLI, bench
labels, summaries, SISMs read from a folder, the ONNX cache key).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

import cosal_cli
from cosal_cli import bench, inference, methods
from cosal_cli.cli import app
from cosal_cli.errors import UsageError
from cosal_cli.methods import loader, onnx_backend
from cosal_cli.methods.base import GroupImages
from cosal_cli.sism import DirectorySisms

from .conftest import EXAMPLES

CATS = sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))
runner = CliRunner()


def _photos() -> list[Image.Image]:
    photos = []
    for path in CATS[:4]:
        with Image.open(path) as image:
            photos.append(ImageOps.exif_transpose(image).convert("RGB"))
    return photos


def _pixels(photos: list[Image.Image], size: int) -> np.ndarray:
    return np.stack([inference.network_pixels(photo, size) for photo in photos])


def test_flip_is_the_mean_of_the_maps_and_of_the_mirrored_groups_maps_mirrored_back():
    plain = loader.load_method("gmr", "cpu", offline=True)
    flipped = loader.load_method("gmr", "cpu", offline=True, options=methods.options_for("gmr", tta="flip"))
    pixels = _pixels(_photos(), plain.input_size)
    mirrored = np.ascontiguousarray(pixels[:, :, ::-1])
    expected = (inference.predict(plain, pixels) + inference.predict(plain, mirrored).flip(-1)) / 2
    assert torch.allclose(inference.predict(flipped, pixels), expected, atol=1e-6)
    # and so the flipped method is mirror-equivariant, which gmr alone is not (its superpixels are not)
    assert torch.allclose(inference.predict(flipped, mirrored), expected.flip(-1), atol=1e-6)
    assert (inference.predict(plain, mirrored) - inference.predict(plain, pixels).flip(-1)).abs().max() > 0.01


@pytest.mark.weights
def test_gicd_with_flip_gives_mirrored_photos_the_mirrored_maps(linked_home):
    linked_home("efficientnet-lite0-imagenet")
    photos = _photos()
    mirrored = [ImageOps.mirror(photo) for photo in photos]
    detector = cosal_cli.load("gicd", device="cpu", offline=True, tta="flip")
    maps = detector.predict(photos, name="cat")
    for ours, theirs in zip(maps, detector.predict(mirrored, name="cat")):
        assert np.abs(ours - theirs[:, ::-1]).max() <= 1 / 255 + 1e-6  # the resizes round alike up to a level
    plain = cosal_cli.load("gicd", device="cpu", offline=True).predict(photos, name="cat")
    moved = max(float(np.abs(a - b).max()) for a, b in zip(maps, plain))
    assert moved > 2 / 255, "--tta flip changed nothing"


@pytest.mark.weights
def test_detect_writes_flipped_maps_and_says_so_in_its_summary(linked_home, tmp_path):
    linked_home("efficientnet-lite0-imagenet")
    arguments = ["detect", str(EXAMPLES / "Image" / "cat"), "--offline", "--json", "--threads", "2"]
    result = runner.invoke(app, [*arguments, "-o", str(tmp_path / "flip"), "--tta", "flip"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["tta"] == "flip" and summary["counts"]["written"] == len(CATS)
    detector = cosal_cli.load("gicd", device="cpu", offline=True, tta="flip")
    for path, values in zip(CATS, detector.predict(CATS, name="cat")):
        written = np.asarray(Image.open(tmp_path / "flip" / "cat" / f"{path.stem}.png"), dtype=np.float32) / 255
        assert np.abs(written - values).max() <= 1 / 255 + 1e-6
    result = runner.invoke(app, [*arguments, "-o", str(tmp_path / "plain")])
    assert json.loads(result.stdout)["tta"] == "none"


def test_a_bad_tta_is_a_usage_error_naming_the_choices(tmp_path):
    result = runner.invoke(app, ["detect", str(EXAMPLES / "Image" / "cat"), "-o", str(tmp_path), "-m", "gmr",
                                 "--offline", "--tta", "rotate"])  # fmt: skip
    assert result.exit_code == 2 and "--tta must be none or flip, not 'rotate'" in result.output
    assert not any(tmp_path.iterdir())
    with pytest.raises(UsageError, match="--tta must be none or flip"):
        cosal_cli.load("gmr", tta="mirror")


def test_every_method_takes_tta_and_its_own_checks_still_run():
    for name in methods.CARDS:
        assert methods.options_for(name, tta="flip").flip
    with pytest.raises(UsageError, match="--subgroup must be at least 1"):
        methods.options_for("icnet", subgroup=0, tta="flip")
    with pytest.raises(UsageError, match="--outsiders must be dim or keep"):
        methods.options_for("icnet", outsiders="drop")


def test_flipped_maps_have_their_own_bench_label():
    options = methods.options_for("gicd", tta="flip")
    assert bench.method_label("gicd", [], options) == "gicd,tta=flip"
    assert bench.method_label("gicd", ["crf"], options, "bf16") == "gicd,tta=flip,precision=bf16+crf"
    assert bench.method_label("gicd", [], methods.options_for("gicd")) == "gicd"
    assert bench.method_label("gicd", [], methods.options_for("gicd", tta="none")) == "gicd"


def test_sisms_read_from_a_folder_are_mirrored_with_the_mirrored_group(tmp_path):
    folder = tmp_path / "sisms" / "cat"
    folder.mkdir(parents=True)
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # dark on the left, bright on the right
    Image.fromarray(ramp).save(folder / "one.png")
    source = DirectorySisms(tmp_path / "sisms")
    images = torch.zeros(1, 3, 224, 224)
    upright = source(images, GroupImages("cat", ("one",)))
    mirrored = source(images, GroupImages("cat", ("one",), mirrored=True))
    assert upright[0, 0, 0, -1] > upright[0, 0, 0, 0]
    assert torch.equal(mirrored, upright.flip(-1))


def test_one_onnx_export_serves_both_tta_settings():
    class Named:
        def __init__(self, options):
            self.options = options

    flipped = onnx_backend._graph_options(Named(methods.options_for("icnet", tta="flip", outsiders="keep")))
    assert flipped == onnx_backend._graph_options(Named(methods.options_for("icnet", outsiders="keep")))
    assert flipped["--outsiders"] == "keep" and "--tta" not in flipped

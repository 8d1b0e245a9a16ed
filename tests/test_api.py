"""The Python API, used only through what it exports: ``cosal_cli.load``, ``Detector``, ``BadInput``.

Its maps are the maps ``cosal detect`` writes, to 1/255, for every method whose weights ship or are
pulled (the two official methods need the user's own import and are tested with it elsewhere).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

import cosal_cli
from cosal_cli.cli import app

from .conftest import EXAMPLES

CATS = sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))
METHODS = ["gicd", "icnet", "sod", "gmr", "csmg-mask", "gwd", "gs"]


@pytest.fixture
def pulled_home(linked_home):
    return linked_home("vgg16-imagenet", "efficientnet-lite0-imagenet")


def cli_maps(tmp_path, *arguments: str) -> list[np.ndarray]:
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["detect", str(EXAMPLES / "Image" / "cat"), "-o", str(out), "--offline",
                                      *arguments])  # fmt: skip
    assert result.exit_code == 0, result.output
    return [np.asarray(Image.open(out / "cat" / f"{path.stem}.png"), dtype=np.float32) / 255.0 for path in CATS]


@pytest.mark.weights
@pytest.mark.parametrize("method", METHODS)
def test_api_maps_equal_the_cli_pngs_to_one_grey_level(pulled_home, tmp_path, method):
    detector = cosal_cli.load(method, device="cpu", offline=True)
    maps = detector.predict(CATS, name="cat")
    assert detector.method == method and len(maps) == len(CATS)
    for path, values in zip(CATS, maps):
        with Image.open(path) as image:
            assert values.shape == ImageOps.exif_transpose(image).size[::-1] and values.dtype == np.float32
        assert 0.0 <= values.min() and values.max() <= 1.0
    for ours, written in zip(maps, cli_maps(tmp_path, "--method", method)):
        assert np.abs(ours - written).max() <= 1 / 255 + 1e-6
    assert float(np.std(maps[0])) > 0.01  # real maps, not a constant


@pytest.mark.weights
def test_paths_pil_images_and_arrays_give_the_same_maps(pulled_home):
    detector = cosal_cli.load("sod", device="cpu", offline=True)
    group = CATS[:3]
    from_paths = detector.predict(group)
    images = [Image.open(path).convert("RGB") for path in group]
    mixed = detector.predict([images[0], np.asarray(images[1]), str(group[2])])
    for first, second in zip(from_paths, mixed):
        np.testing.assert_allclose(first, second, atol=1e-6)


@pytest.mark.weights
def test_detector_reports_its_method_weights_and_input_size(pulled_home):
    detector = cosal_cli.load("gicd", device="cpu", offline=True)
    assert detector.input_size == 224 and detector.device == "cpu"
    assert {role: info.component for role, info in detector.weights.items()} == {
        "backbone": "efficientnet-lite0-imagenet", "head": "gicd-head"}  # fmt: skip
    assert all(len(info.sha256) == 64 for info in detector.weights.values())


def test_bad_items_raise_bad_input_naming_the_item(tmp_path):
    detector = cosal_cli.load("gmr", device="cpu")  # training-free: no weights needed
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a picture")
    with pytest.raises(cosal_cli.BadInput, match=r"item 1 \(.*broken\.jpg\): not an image|item 1 .*broken\.jpg"):
        detector.predict([CATS[0], broken])
    with pytest.raises(cosal_cli.BadInput, match=r"item 0 \(array float64 \(4, 4, 3\)\): arrays must be"):
        detector.predict([np.zeros((4, 4, 3))])
    with pytest.raises(cosal_cli.BadInput, match="expected a path"):
        detector.predict([42])
    with pytest.raises(cosal_cli.BadInput, match="empty group"):
        detector.predict([])


def test_options_are_typed_and_checked_by_the_loader():
    with pytest.raises(cosal_cli.errors.UsageError, match="--sism does not apply to method 'gmr'"):
        cosal_cli.load("gmr", device="cpu", sism="sod")
    with pytest.raises(cosal_cli.errors.UsageError, match="unknown refiner 'blur'"):
        cosal_cli.load("gmr", device="cpu", refine=["blur"])


def test_ranking_refiner_follows_the_image_regions():
    """A map covering the left half of a two-colour image whose boundary is at 3/4: ranking moves it there."""
    image = np.zeros((64, 96, 3), np.uint8)
    image[:, 72:] = (250, 30, 30)
    image[:, :72] = (20, 90, 200)
    detector = cosal_cli.load("gmr", device="cpu", refine=["ranking"])
    assert repr(detector) == "Detector(gmr+ranking on cpu)"
    from cosal_cli.refine import load_refiner

    coarse = np.zeros((64, 96), np.float32)
    coarse[:, :40] = 1.0
    refined = load_refiner("ranking")(coarse, image)
    assert refined.shape == coarse.shape and refined.dtype == np.float32
    inside, outside = refined[:, 45:70].mean(), refined[:, 75:].mean()
    assert inside > 0.8 and outside < 0.2  # the blue region is filled, the red one stays dark


@pytest.mark.weights
def test_detect_and_bench_take_refine_ranking(pulled_home, tmp_path):
    plain = cli_maps(tmp_path / "plain", "--method", "gicd")
    refined = cli_maps(tmp_path / "refined", "--method", "gicd", "--refine", "ranking")
    assert any(np.abs(a - b).max() > 0.1 for a, b in zip(plain, refined))
    result = CliRunner().invoke(app, ["bench", "-d", str(EXAMPLES), "-m", "gicd", "--refine", "ranking", "--offline",
                                      "-o", str(tmp_path / "bench"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    import json

    row = json.loads(result.stdout)["datasets"][0]["methods"][0]
    assert row["name"] == "gicd+ranking" and row["evaluated"] == 14
    assert (tmp_path / "bench" / "gicd+ranking").is_dir()


def test_every_method_class_takes_the_options_its_card_declares():
    from cosal_cli import methods

    for name, card in methods.CARDS.items():
        assert methods.method_class(name).options_class is card.options, name


def test_a_methods_notices_about_a_group_are_warnings(fake_method, monkeypatch):
    from .conftest import BrightnessMethod

    monkeypatch.setattr(BrightnessMethod, "group_notices", lambda self, count: ["padded"] if count < 3 else [])
    detector = cosal_cli.load("test-brightness", device="cpu", offline=True)
    picture = np.zeros((8, 8, 3), np.uint8)
    with pytest.warns(UserWarning, match="^pair: padded$"):
        detector.predict([picture, picture], name="pair")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(detector.predict([picture] * 3)) == 3

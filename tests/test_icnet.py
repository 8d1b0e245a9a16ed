"""ICNet in the official layout (work in progress, issue 6): keys and shapes of ICNet_vgg16.pth."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cosal_cli.models.icnet import ICNet
from cosal_cli.models.vgg import imagenet_normalise

from .conftest import EXAMPLES


def test_keys_and_sizes_match_the_official_checkpoint():
    state = ICNet().state_dict()
    assert len(state) == 190
    floats = sum(value.numel() for key, value in state.items() if not key.endswith("num_batches_tracked"))
    assert floats == 18_435_396  # section 3.7: the float values, besides 16 BatchNorm step counters
    assert sum(key.endswith("num_batches_tracked") for key in state) == 16
    assert state["vgg.vgg.28.weight"].shape == (512, 512, 3, 3)
    assert state["Co6.cosal_feat.conv.0.weight"].shape == (128, 49, 1, 1)
    assert state["Co5.cosal_feat.conv.0.weight"].shape == (128, 196, 1, 1)
    assert state["Co4.cosal_feat.conv.0.weight"].shape == (128, 784, 1, 1)
    assert state["conv6_cmprs.8.weight"].shape == (128, 128, 3, 3) and "conv6_cmprs.6.running_var" in state
    assert state["merge_co_45.1.weight"].shape == (32, 128, 1, 1)
    assert state["refine_1.cmprs.weight"].shape == (32, 64, 1, 1)
    assert state["refine_3.merge_conv.4.running_mean"].shape == (32,)
    assert state["refine_2.pred.pred.0.weight"].shape == (1, 32, 1, 1)


def test_a_group_gives_one_map_per_image_and_other_sizes_are_refused():
    torch.manual_seed(0)
    model = ICNet().eval()
    with torch.no_grad():
        maps = model(torch.randn(3, 3, 224, 224), torch.rand(3, 1, 224, 224))
        deep = model(torch.randn(3, 3, 224, 224), torch.rand(3, 1, 224, 224), training=True)
    assert maps.shape == (3, 1, 224, 224) and 0 <= float(maps.min()) and float(maps.max()) <= 1
    assert [tuple(m.shape) for m in deep] == [(3, 1, 224, 224)] * 4
    with pytest.raises(ValueError, match="224x224"):
        model(torch.randn(1, 3, 256, 256), torch.rand(1, 1, 256, 256))


def test_the_official_file_imports_and_other_sizes_are_named(tmp_path):
    from cosal_cli.hub import WeightHub
    from cosal_cli.models import icnet

    state = ICNet().state_dict()
    wrapped = tmp_path / "ICNet_vgg16.pth"
    torch.save({"state_dict": state, "optimizer": {}}, wrapped)  # a training checkpoint: state_dict unwrapped
    hub = WeightHub(home=tmp_path / "home")
    record = hub.import_file("icnet-official", wrapped)
    assert hub.verify(hub.manifest.component("icnet-official")).state == "ok"
    from safetensors.torch import load_file

    loaded = load_file(record.path)
    assert set(loaded) == set(state) and torch.equal(loaded["Co4.cosal_feat.conv.0.weight"], state["Co4.cosal_feat.conv.0.weight"])
    ICNet().load_state_dict(loaded, strict=True)

    other = dict(state)
    other["Co6.cosal_feat.conv.0.weight"] = torch.zeros(128, 64, 1, 1)  # the 256-input copy: 8x8 at stride 32
    torch.save(other, tmp_path / "icnet256.pth")
    with pytest.raises(ValueError, match=r"ICNet for 256x256 input"):
        icnet.convert_icnet(tmp_path / "icnet256.pth")


@pytest.mark.weights
def test_icnet_official_runs_imported_weights_with_sod_sisms(real_weights, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from cosal_cli.hub import WeightHub
    from cosal_cli.methods.icnet_official import Method

    real_weights("vgg16-imagenet")
    torch.manual_seed(0)
    torch.save(ICNet().state_dict(), tmp_path / "ICNet_vgg16.pth")
    record = WeightHub(home=tmp_path / "home").import_file("icnet-official", tmp_path / "ICNet_vgg16.pth")
    method = Method({"icnet": Path(record.path)}, torch.device("cpu"))
    files = sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))[:3]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR)) for f in files])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        maps = method.predict_group(images)
        sisms = method.sism.predict_group(images)[:, None]
        direct = method.model(imagenet_normalise(images), sisms)[:, 0]
    assert maps.shape == (3, 224, 224)
    torch.testing.assert_close(maps, direct)

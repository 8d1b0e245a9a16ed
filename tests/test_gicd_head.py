"""The shipped `gicd` (cosal's weights): what the manifest pins, what the head promises, that it works.

The head is bundled; these tests need only the EfficientNet-Lite0 classifier from the cache. Most
example cats are training images of the head (the split holds out 2 of the 14), so the quality
checks are sanity floors; held-out and composite-set scores are in the README.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cosal_cli.models.gicd import gradient_cam

from .conftest import EXAMPLES, auc, check_shipped_head, detect_examples, not_a_cat

pytestmark = pytest.mark.weights

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def gicd_weights(real_hub, real_weights):
    return {role: real_weights(component) for role, component in real_hub.manifest.roles("gicd").items()}


@pytest.fixture(scope="module")
def gicd_method(gicd_weights):
    from cosal_cli.methods.gicd import Method

    return Method(gicd_weights, torch.device("cpu"), batch_size=4)


def cat_group() -> tuple[torch.Tensor, list[np.ndarray]]:
    """The 8 example cats at 224 x 224, with their masks at the same size."""
    files = sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))
    pixels = np.stack(
        [np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)) for path in files]
    )
    masks = [
        np.asarray(Image.open(EXAMPLES / "GroundTruth" / "cat" / f"{path.stem}.png").convert("L").resize((224, 224)))
        > 127
        for path in files
    ]
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255, masks


def test_the_head_is_a_small_bundled_component_trained_on_the_shipped_split(real_hub, gicd_weights):
    assert real_hub.manifest.roles("gicd")["backbone"] == "efficientnet-lite0-imagenet"
    # 3.3 MB: the decoder and the tuned copy of Lite0's early blocks (0.7 M parameters)
    metadata = check_shipped_head(real_hub, "gicd", gicd_weights["head"], max_bytes=4_000_000)
    assert metadata["training"]["split"]["name"] == "shared-v2"  # with DUTS_class
    assert metadata["config"]["tune_encoder"] is True
    sampler = metadata["training"]["sampler"]
    assert sampler["composite_fraction"] > 0 and sampler["outsider_fraction"] > 0  # jigsaw training, outsiders
    # tuning trains from images, which have no collaborative batches: it starts from a head that had them
    assert metadata["training"]["init"]["sha256"]
    assert metadata["validation"]["kept"]["sm"] > 0.8


def test_the_consensus_of_the_cat_group_is_a_cat_and_its_gradient_finds_them(gicd_method):
    images, masks = cat_group()
    network = gicd_method.network
    consensus = network.consensus(images, chunk=3)  # three chunks: the sum spans them
    assert int(consensus.argmax()) in IMAGENET_CATS
    assert float(consensus[0, list(IMAGENET_CATS)].sum()) > 0.5
    _, features = network.encode(images)
    _, cams = gradient_cam(features, network.induce(features, consensus))
    cams = torch.nn.functional.interpolate(cams, size=(224, 224), mode="bilinear")[:, 0].numpy()
    aucs = [auc(cam, mask) for cam, mask in zip(cams, masks)]
    assert np.mean(aucs) > 0.75, aucs  # before any decoder: the training-free GIM alone


def test_chunking_changes_no_map(gicd_method):
    images, _ = cat_group()
    with torch.inference_mode(False):
        gicd_method.batch_size = 3  # a consensus pass, then chunks of 3
        chunked = gicd_method.predict_group(images)
        gicd_method.batch_size = len(images)  # one pass
        whole = gicd_method.predict_group(images)
    # Real weights: convolution kernels chosen per batch size round differently (measured up to 1.2e-4);
    # a quarter of one 8-bit level. The exact equivalence is tested on random weights in test_gicd.py.
    torch.testing.assert_close(chunked, whole, atol=1e-3, rtol=0)


def test_detect_with_gicd_finds_the_cats(real_hub, gicd_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("COSAL_HOME", str(real_hub.home))
    monkeypatch.delenv("COSAL_MANIFEST", raising=False)
    summary, scores = detect_examples(tmp_path / "maps")  # the default method
    assert summary["method"] == "gicd"
    # Measured with the shipped head (tuned pyramid, its copy tuned at a third of the rate): 3.7x to 140x
    # brighter on the cats than off them, AUC 0.90 to 0.997 (mean 0.97); the two held-out photos
    # (group0255_jpg, group0294_jpeg) score AUC 0.997 and 0.942. (The first tuned head: 4.7x to 115x, AUC
    # 0.92 to 0.997; the decoder-only head before it: 8.7x to 155x, AUC 0.91 to 0.997.)
    assert all(ratio > 3 for ratio, _ in scores.values()), scores
    aucs = [value for _, value in scores.values()]
    assert min(aucs) > 0.8 and float(np.mean(aucs)) > 0.9, scores


def test_an_image_that_is_not_of_the_group_is_dimmed_and_keep_turns_it_off(gicd_weights):
    from cosal_cli.methods.gicd import Method
    from cosal_cli.methods.options import OutsiderOptions

    images, _ = cat_group()
    group = torch.cat([images, not_a_cat()[None]])  # eight cats and a picture of no cat
    with torch.inference_mode(False):
        dimmed = Method(gicd_weights, torch.device("cpu"), batch_size=4).predict_group(group)
        kept = Method(gicd_weights, torch.device("cpu"), batch_size=4,
                      options=OutsiderOptions(outsiders="keep")).predict_group(group)  # fmt: skip
    brightest_dimmed, brightest_kept = float(dimmed[-1].max()), float(kept[-1].max())
    assert brightest_dimmed < 0.5 * brightest_kept, (brightest_dimmed, brightest_kept)
    # The cats: the typical ones untouched, none dimmed to half.
    ratios = dimmed[:-1].amax(dim=(1, 2)) / kept[:-1].amax(dim=(1, 2))
    assert int((ratios == 1.0).sum()) >= 4 and float(ratios.min()) > 0.5, ratios


def test_outsiders_is_an_option_of_the_methods_that_dim_them(gicd_weights):
    from cosal_cli import methods
    from cosal_cli.errors import UsageError

    assert methods.takers("--outsiders") == ["gicd", "icnet"]
    with pytest.raises(UsageError, match="--outsiders must be dim or keep"):
        methods.options_for("gicd", {"outsiders": "off"})
    with pytest.raises(UsageError, match="does not apply to method 'sod'"):
        methods.options_for("sod", {"outsiders": "keep"})

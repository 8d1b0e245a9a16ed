"""GICD in the official layout: keys, and the batched GIM against a per-image reference.

The reference below is written straight from the description of the official test
(../shared/reference/architectures.md, section 2.4): one image at a time, conv5 with autograd, a
backward pass of the similarity, *global* min / max (per image because its batch is 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosal_cli.models.gicd import GICD, GINet

# section 2.7: 92 keys of gicd_ginet.pth; the co-classifier has torchvision's 32
GINET_KEYS = 92
GINET_PARAMETERS = 139_686_572


def random_gicd(seed: int = 0) -> GICD:
    torch.manual_seed(seed)
    model = GICD(chunk=2).eval()
    for module in model.modules():  # the default init gives near-constant maps; widen it so outputs differ
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=(2.0 / (module.in_channels * 9)) ** 0.5)
    return model


def test_ginet_keys_and_sizes_match_the_official_checkpoint():
    state = GINet().state_dict()
    assert len(state) == GINET_KEYS
    assert sum(value.numel() for value in state.values()) == GINET_PARAMETERS
    assert state["backbone.conv1.conv1_1.weight"].shape == (64, 3, 3, 3)
    assert state["backbone.conv5.conv5_3.weight"].shape == (512, 512, 3, 3)
    assert state["backbone.classifier.6.weight"].shape == (1000, 4096)
    assert state["toplayer.2.weight"].shape == (64, 64, 1, 1)
    assert state["latlayer1.convlayer.0.weight"].shape == (64, 64, 3, 3)
    assert state["latlayer4.convlayer.0.weight"].shape == (64, 512, 3, 3)
    assert state["dslayer2.predlayer.0.weight"].shape == (1, 64, 1, 1)
    assert "dslayer3.enlayer.2.bias" in state and "enlayer1.enlayer.2.weight" in state
    co_classifier = GICD().co_classifier.state_dict()
    assert len(co_classifier) == 32 and "features.28.weight" in co_classifier and "classifier.6.bias" in co_classifier


def reference_cam(x5: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 5 and 6 of the official GIM for one image (batch of 1): global min / max, as the code has it."""
    with torch.no_grad():
        cweight = F.relu(F.adaptive_avg_pool2d(grad, 1))
        cweight = (cweight - torch.min(cweight)) / (torch.max(cweight) - torch.min(cweight) + 1e-20)
        weighted_x5 = x5 * cweight
        cam = F.relu(torch.mean(weighted_x5, dim=1, keepdim=True))
        cam = cam - torch.min(cam)
        return weighted_x5, (cam / (torch.max(cam) + 1e-6)).clamp(0, 1)


def reference_gicd(model: GICD, images: torch.Tensor) -> list[torch.Tensor]:
    """The official test loop: consensus, then GINet image by image with a backward hook on conv5."""
    ginet, backbone = model.ginet, model.ginet.backbone
    with torch.no_grad():
        logits = torch.cat([model.co_classifier(images[i : i + 1]) for i in range(len(images))])
    co_coding = torch.softmax(logits.sum(dim=0, keepdim=True), dim=1)
    results = []
    for i in range(len(images)):
        x = images[i : i + 1]
        with torch.no_grad():
            x1 = backbone.conv1(x)
            x2 = backbone.conv2(x1)
            x3 = backbone.conv3(x2)
            x4 = backbone.conv4(x3)
        x5 = backbone.conv5(x4)
        x5.retain_grad()
        pred_vector = backbone.classifier(torch.flatten(backbone.avgpool(x5), 1))
        similarity = torch.sum(co_coding * pred_vector)
        similarity.backward(retain_graph=True)
        weighted_x5, cam = reference_cam(x5, x5.grad)
        with torch.no_grad():

            def up(a, b):
                return F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=True)

            p5 = ginet.toplayer(weighted_x5)
            p4 = ginet.enlayer4(up(p5, x4) + ginet.latlayer4(x4 * up(cam, x4)))
            pred4 = ginet.dslayer4(p4)
            p3 = ginet.enlayer3(up(p4, x3) + ginet.latlayer3(x3 * up(pred4, x3)))
            pred3 = ginet.dslayer3(p3)
            p2 = ginet.enlayer2(up(p3, x2) + ginet.latlayer2(x2 * up(pred3, x2)))
            pred2 = ginet.dslayer2(p2)
            p1 = ginet.enlayer1(up(p2, x1) + ginet.latlayer1(x1 * up(pred2, x1)))
            pred1 = ginet.dslayer1(p1)
            results.append([up(p, x) for p in (cam, pred4, pred3, pred2, pred1)])
    return [torch.cat(level) for level in zip(*results)]


@pytest.mark.parametrize("size", [64, 96])
def test_batched_gim_equals_the_per_image_official_loop(size):
    torch.set_num_threads(1)
    model = random_gicd()
    images = torch.randn(5, 3, size, size)  # 5 images in chunks of 2: the consensus spans all chunks
    with torch.inference_mode(False):
        ours = model(images)
        reference = reference_gicd(model, images)
    assert len(ours) == 5
    for got, expected in zip(ours, reference):
        assert got.shape == (5, 1, size, size)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert float(ours[-1].std()) > 1e-3  # the maps are not constant, so the comparison means something


def test_consensus_does_not_depend_on_the_chunk_size():
    model = random_gicd()
    images = torch.randn(5, 3, 64, 64)
    first = model.consensus(images)
    model.chunk = 5
    # Chunks change only the order of the float32 additions, so the sums agree to rounding (about 1e-6).
    torch.testing.assert_close(model.consensus(images), first, atol=1e-5, rtol=0)


def official_state(**changes) -> dict[str, torch.Tensor]:
    state = {key: torch.zeros(value.shape) for key, value in GINet().state_dict().items()}
    state.update(changes)
    return state


def test_an_official_layout_state_dict_passes_the_strict_check_with_or_without_module_prefix():
    from cosal_cli.models.convert import check_state_dict

    model = GINet()
    state = official_state()
    model.load_state_dict(check_state_dict(state, model, "gicd_ginet.pth"), strict=True)
    prefixed = {f"module.{key}": value for key, value in state.items()}
    assert set(check_state_dict(prefixed, model, "gicd_ginet.pth")) == set(state)


def test_a_state_dict_that_does_not_fit_gets_a_readable_diff():
    from cosal_cli.models.convert import check_state_dict

    model = GINet()
    state = official_state(**{"extra.weight": torch.zeros(1), "toplayer.0.weight": torch.zeros(64, 256, 1, 1)})
    del state["dslayer1.predlayer.0.bias"]
    with pytest.raises(ValueError) as info:
        check_state_dict(state, model, "gicd.pth")
    message = str(info.value)
    assert message.startswith("gicd.pth does not fit GINet (90 of 92 keys match)")
    assert "1 missing keys: dslayer1.predlayer.0.bias" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "1 shape mismatches: toplayer.0.weight (64, 256, 1, 1) (expected (64, 512, 1, 1))" in message
    with pytest.raises(ValueError, match=r"\(0 of 92 keys match\)"):
        check_state_dict(GICD().co_classifier.state_dict(), model, "vgg16-397923af.pth")  # the wrong file


# -- cosal's own GICD (EfficientNet-Lite0 co-classifier and encoder, ARM decoder) ----------------------


def random_gicd_lite(seed: int = 0):
    from cosal_cli.models.efficientnet_lite import EfficientNetLite0
    from cosal_cli.models.gicd_lite import GicdLite

    torch.manual_seed(seed)
    classifier = EfficientNetLite0()
    for module in classifier.modules():
        if isinstance(module, torch.nn.Conv2d):  # He init: with the default one the features forget the image
            fan_in = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            torch.nn.init.normal_(module.weight, std=(2.0 / fan_in) ** 0.5)
        if isinstance(module, torch.nn.BatchNorm2d):  # random statistics, so the network is not near-linear
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    classifier._fc.weight.data.mul_(200)  # peaked logits: a consensus that differs from group to group
    return GicdLite(classifier).eval()


def reference_gicd_lite(model, images: torch.Tensor) -> torch.Tensor:
    """One image at a time with a backward pass, straight from the description in gicd_lite's docstring."""
    from cosal_cli.models.efficientnet_lite import lite_normalise
    from cosal_cli.models.gicd_lite import LAST_BLOCK, PYRAMID_TAPS

    lite = model.classifier
    with torch.no_grad():
        logits = torch.cat([lite(lite_normalise(images[i : i + 1])) for i in range(len(images))])
    consensus = torch.softmax(logits.sum(dim=0, keepdim=True), dim=1)
    maps = []
    for i in range(len(images)):
        x, pyramid = lite.blocks_until(lite_normalise(images[i : i + 1]), LAST_BLOCK, tuple(b for b, _ in PYRAMID_TAPS))
        x = x.detach()
        features = lite.head_features(x).detach().requires_grad_(True)
        similarity = torch.sum(consensus * lite._fc(features.mean(dim=(2, 3))))
        similarity.backward()
        weighted, cam = reference_cam(features, features.grad)
        with torch.no_grad():
            logit_maps = model.head([p.detach() for p in pyramid], weighted, cam)
            full = F.interpolate(logit_maps[0], size=images.shape[-2:], mode="bilinear", align_corners=False)
            maps.append(torch.sigmoid(full[:, 0]))
    return torch.cat(maps)


@pytest.mark.parametrize("chunk", [2, 5])
def test_gicd_lite_batched_gim_equals_a_per_image_loop(chunk):
    torch.set_num_threads(1)
    model = random_gicd_lite()
    images = torch.rand(5, 3, 64, 64)
    with torch.inference_mode(False):
        ours = model.predict_group(images, chunk=chunk)  # chunk 2: consensus pass first; 5: one pass
        reference = reference_gicd_lite(model, images)
    assert ours.shape == (5, 64, 64)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    assert float(ours.std()) > 1e-3


def test_gicd_lite_maps_follow_the_consensus():
    """Another consensus (another group) gives another map for the same image; the same one, the same map."""
    torch.set_num_threads(1)
    model = random_gicd_lite()
    images = torch.rand(2, 3, 64, 64)
    one_class, other_class = torch.zeros(1, 1000), torch.zeros(1, 1000)
    one_class[0, 3], other_class[0, 700] = 1.0, 1.0
    with torch.inference_mode(False), torch.no_grad():
        first = model(images, one_class)[0]
        again = model(images, one_class)[0]
        second = model(images, other_class)[0]
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert float((first - second).abs().max()) > 1e-3


def test_gicd_lite_training_reaches_only_the_decoder():
    model = random_gicd_lite().train()
    outputs = model(torch.rand(3, 3, 64, 64))
    assert len(outputs) == 4 and all(output.shape == (3, 1, 64, 64) for output in outputs)
    sum(output.mean() for output in outputs).backward()
    assert all(p.grad is None for p in model.classifier.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    assert not model.classifier.training  # frozen BatchNorm stays in eval mode


def test_official_output_resizing_equals_gicds_save_step():
    """test.py: interpolate(align_corners=True) to (H, W), then ToPILImage (x * 255 truncated to 8 bits)."""
    from torchvision.transforms import ToPILImage

    from cosal_cli.inference import to_image_size

    torch.manual_seed(0)
    low_res = torch.rand(56, 56)
    official = F.interpolate(low_res[None, None], size=(97, 131), mode="bilinear", align_corners=True)[0]
    expected = np.asarray(ToPILImage()(official))
    ours = to_image_size(low_res, (131, 97), "bilinear-official")
    assert ours.dtype == np.uint8 and ours.shape == (97, 131)
    np.testing.assert_array_equal(ours, expected)
    assert (to_image_size(low_res, (131, 97), "bilinear") != expected).any()  # the default differs, as documented


def test_membership_never_dims_the_typical_image_and_dims_one_that_disagrees():
    from cosal_cli.models.gicd_lite import Membership

    membership = Membership(offset=3.0, temperature=0.5)
    consensus = torch.zeros(1, 1000)
    consensus[0, 281] = 1.0  # a group of tabby cats
    confidence = torch.tensor([6.0, 5.0, 4.0, 5.5, -2.0])  # the last image's logit for the class is low
    logits = torch.zeros(5, 1000)
    logits[:, 281] = confidence
    weights = membership.weights(logits, consensus)
    assert torch.all(weights[:4] > 0.9) and torch.all(weights <= 1.0)
    assert float(weights[[0, 3]].min()) == 1.0  # at or above the median image: untouched
    assert float(weights[4]) < 0.01
    # Half at `offset` nats below the median image; order of the images does not matter.
    assert abs(float(membership.weights_of_relative(torch.tensor([-3.0]))[0]) - 0.5) < 0.01
    order = torch.tensor([4, 2, 0, 3, 1])
    torch.testing.assert_close(membership.weights(logits[order], consensus), weights[order])
    # A group of one is its own median: never dimmed.
    assert float(membership.weights(logits[4:], consensus)[0]) == 1.0


def test_membership_similarity_dims_an_image_whose_classes_differ_at_equal_agreement():
    from cosal_cli.models.membership import Membership, consensus_of

    generator = torch.Generator().manual_seed(0)
    profile = 2.0 * torch.randn(1000, generator=generator)  # the group's other classes (a cat's: lynx, fox...)
    logits = profile + 0.1 * torch.randn(6, 1000, generator=generator)
    logits[5] = profile[torch.randperm(1000, generator=generator)]  # the same values on unrelated classes
    logits[:, 281] = 12.0  # everyone's top class: the agreement alone cannot tell the last image apart
    consensus = consensus_of(logits)
    agreement_only = Membership(offset=4.0, temperature=0.5).weights(logits, consensus)
    with_similarity = Membership(offset=4.0, temperature=0.5, similarity=20.0).weights(logits, consensus)
    assert float(agreement_only.min()) > 0.9
    assert float(with_similarity[5]) < 0.01 and float(with_similarity[:5].min()) > 0.9
    # bf16 logits (autocast) give the weights of their float32 values
    torch.testing.assert_close(
        Membership(4.0, 0.5, 20.0).weights(logits.bfloat16(), consensus),
        Membership(4.0, 0.5, 20.0).weights(logits.bfloat16().float(), consensus),
    )


# -- the GIM's gradient written out (no autograd) -----------------------------------------------------


@pytest.mark.parametrize("with_consensus", [True, False])
def test_lite0s_explicit_gradient_equals_autograd(with_consensus):
    from cosal_cli.models.efficientnet_lite import EfficientNetLite0
    from cosal_cli.models.gicd import consensus_gradient
    from cosal_cli.models.gicd_lite import GicdLite

    torch.manual_seed(0)
    network = GicdLite(EfficientNetLite0().eval()).eval()
    features = torch.rand(3, 1280, 5, 6) * 4
    consensus = torch.softmax(torch.randn(1, 1000), dim=1) if with_consensus else None
    explicit = network.induce(features, consensus)
    expected = consensus_gradient(network.logits, features, consensus)
    scale = float(expected.abs().max())
    assert scale > 0  # not a comparison of zeros
    torch.testing.assert_close(explicit / scale, expected / scale, atol=1e-5, rtol=0)  # 1e-5 of its range


@pytest.mark.parametrize(("height", "width", "with_consensus"), [(14, 14, True), (13, 17, False), (7, 7, False)])
def test_the_vgg_classifiers_explicit_gradient_equals_autograd(height, width, with_consensus):
    """fc8 -> fc7 -> fc6 (ReLU masks) -> the adaptive average pool -> conv5_3, on a small VGG-shaped head."""
    from torch import nn

    from cosal_cli.models.gicd import consensus_gradient, vgg_classifier_gradient

    torch.manual_seed(1)
    channels, hidden, classes = 6, 32, 20
    avgpool = nn.AdaptiveAvgPool2d((7, 7))
    classifier = nn.Sequential(nn.Linear(channels * 49, hidden), nn.ReLU(True), nn.Dropout(),
                               nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
                               nn.Linear(hidden, classes)).eval()  # fmt: skip
    features = torch.relu(torch.randn(4, channels, height, width))
    consensus = torch.softmax(torch.randn(1, classes), dim=1) if with_consensus else None

    def logits(x):
        return classifier(torch.flatten(avgpool(x), 1))

    expected = consensus_gradient(logits, features, consensus)
    with torch.no_grad():
        explicit = vgg_classifier_gradient(avgpool, classifier, features, consensus)
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(explicit / scale, expected / scale, atol=1e-5, rtol=0)  # 1e-5 of its range

"""gwd's FCN-8s skip (`cosal train --method gwd --output-stride 8`): logits at 1/8 of the input from pool3,
added to the paper's x16 maps, starting at zero so that a stride-16 head it starts from keeps its maps."""

from __future__ import annotations

import pytest
import torch

from cosal_cli.errors import UsageError
from cosal_cli.models.gwd import GroupWiseFcn
from cosal_cli.models.vgg import VGG16Features
from cosal_cli.training import checks, trainer
from cosal_cli.training.sampler import SamplerSettings


def pair(tune_encoder: bool = False) -> tuple[GroupWiseFcn, GroupWiseFcn]:
    """GWD at stride 16 and 8, on one randomly initialised VGG-16 and with the same blocks."""
    torch.manual_seed(0)
    backbone = VGG16Features().eval().requires_grad_(False)
    config = {"tune_encoder": True} if tune_encoder else {}
    plain, skipping = GroupWiseFcn(backbone, config), GroupWiseFcn(backbone, {**config, "output_stride": 8})
    missing, unexpected = skipping.head.load_state_dict(plain.head.state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("skip.") for name in missing)
    assert skipping.init_may_add() == ({**config, "output_stride": 8}, ("conv5.",) * tune_encoder + ("skip.",))
    return plain.eval(), skipping.eval()


@pytest.mark.parametrize("tune_encoder", [False, True])
def test_an_untrained_skip_keeps_the_stride_16_maps_and_caches_pool3(tune_encoder):
    plain, skipping = pair(tune_encoder)
    images = torch.rand(7, 3, 64, 64)
    torch.testing.assert_close(skipping.predict_group(images, 5), plain.predict_group(images, 5), atol=0, rtol=0)
    with torch.no_grad():
        cached = skipping.encode_for_cache(images[:5])
        assert set(cached) - set(plain.encode_for_cache(images[:5])) == {"pool3"}
        assert cached["pool3"].shape == (5, 256, 8, 8)  # 1/8 of the input
        (expected,) = plain.forward_from_cache(cached, (64, 64))
        (got,) = skipping.forward_from_cache(cached, (64, 64))
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_a_trained_skip_draws_the_maps_from_pool3():
    plain, skipping = pair()
    assert_a_trained_skip_reads(plain, skipping, torch.rand(5, 3, 64, 64), "pool3")


def assert_a_trained_skip_reads(plain, skipping, images: torch.Tensor, key: str) -> None:
    """With a non-zero score, the skipping network's maps differ from the plain one's and follow the cached
    pool3 under ``key``, which the plain network never reads. Shared with csmg's skip tests."""
    size = images.shape[-2:]
    with torch.no_grad():
        torch.nn.init.normal_(skipping.head.skip.score.weight, std=0.5)
        cached = skipping.encode_for_cache(images)
        (coarse,), (fine,) = plain.forward_from_cache(cached, size), skipping.forward_from_cache(cached, size)
        assert (fine - coarse).abs().max() > 1e-3
        # other pool3 features, at the scale of a trained VGG-16's (the random one's are near zero)
        other = {**cached, key: torch.rand_like(cached[key]) * 1000}
        assert not torch.allclose(skipping.forward_from_cache(other, size)[0], fine, atol=1e-4)
        assert torch.equal(plain.forward_from_cache(other, size)[0], coarse)


def test_the_skip_learns_from_its_zero_start():
    _, skipping = pair()
    assert_the_skip_learns_from_zero(skipping.train(), torch.rand(5, 3, 64, 64))


def assert_the_skip_learns_from_zero(skipping, images: torch.Tensor) -> None:
    """Two steps from the cache: the first moves the score (the convolutions under it get no gradient while
    it is zero), the second reaches every weight of the skip. Shared with csmg's skip tests."""
    cached = skipping.encode_for_cache(images)
    optimiser = torch.optim.Adam(skipping.parameter_groups(1e-3))
    for _ in range(2):
        optimiser.zero_grad()
        skipping.forward_from_cache(cached, images.shape[-2:])[0].sigmoid().mean().backward()
        optimiser.step()
    assert skipping.head.skip.score.weight.abs().max() > 0
    assert all(param.grad is not None and param.grad.abs().sum() > 0 for param in skipping.head.skip.parameters())


@pytest.mark.parametrize(("method", "stride", "message"), [
    ("sod", 8, "--output-stride does not apply to method 'sod'"),
    ("gwd", 4, "--output-stride must be 16 or 8 for gwd, not 4"),
    ("csmg", 16, "--output-stride must be 32 or 8 for csmg, not 16"),
])  # fmt: skip
def test_output_strides_the_method_cannot_give_are_refused(tmp_path, method, stride, message):
    settings = trainer.TrainSettings(method=method, data=[], split=None, output=tmp_path / "h.safetensors",
                                     sampler=SamplerSettings(), config={"output_stride": stride})  # fmt: skip
    with pytest.raises(UsageError, match=message):
        checks.check_settings(checks.trainable_method(method), settings)


def test_a_stride_the_network_cannot_build_is_a_value_error():
    with pytest.raises(ValueError, match="output_stride is one of"):
        GroupWiseFcn(VGG16Features(), {"output_stride": 32})

"""Image losses: each term's value, weighted sums, SSIM from MONAI, config errors."""

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.io import load_volume
from medseg.losses import build_image_loss
from medseg.metrics.image import ssim
from medseg.sample_data import path as sample_path


@pytest.fixture(scope="module")
def pair():
    mr = load_volume(sample_path("brain_mri")).array[:, :, 12].astype(np.float32)
    x = mr / np.percentile(mr[mr > 0], 99.5)
    noisy = x + np.random.default_rng(0).normal(0, 0.05, x.shape).astype(np.float32)
    return torch.as_tensor(noisy)[None, None], torch.as_tensor(x)[None, None]


def test_terms_match_their_definitions_and_sum(pair):
    pred, target = pair
    loss = build_image_loss({"mse": 1.0, "l1": 0.5, "ssim": 0.1})
    terms = loss.terms(pred, target)
    assert float(terms["mse"]) == pytest.approx(float(((pred - target) ** 2).mean()), rel=1e-6)
    assert float(terms["l1"]) == pytest.approx(0.5 * float((pred - target).abs().mean()), rel=1e-6)
    # 1 − SSIM with data range 1 (network units): the metric's SSIM up to float32
    expected = 0.1 * (1 - ssim(pred[0, 0].numpy(), target[0, 0].numpy(), 1.0))
    assert float(terms["ssim"]) == pytest.approx(expected, rel=1e-3)
    assert float(loss(pred, target)) == pytest.approx(sum(float(v) for v in terms.values()), rel=1e-6)
    assert float(loss(target, target)) == pytest.approx(0.0, abs=1e-6)


def test_gradients_flow_and_default_is_mse(pair):
    pred, target = pair
    p = pred.clone().requires_grad_(True)
    loss = build_image_loss({"ssim": 1.0, "l1": 1.0})
    loss(p, target).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert set(build_image_loss().weights) == {"mse"}


def test_3d_ssim_term():
    x = torch.rand(1, 1, 12, 12, 12)
    assert float(build_image_loss({"ssim": 1.0}, spatial_dims=3)(x, x)) == pytest.approx(0.0, abs=1e-5)


def test_bad_weights_are_explained():
    with pytest.raises(ConfigError, match="unknown term.*perceptual; valid: mse, l1, ssim"):
        build_image_loss({"perceptual": 1.0})
    with pytest.raises(ConfigError, match="≥ 0"):
        build_image_loss({"mse": -1.0})
    with pytest.raises(ConfigError, match="at least one weight"):
        build_image_loss({"mse": 0.0})


def test_noise_weights_make_each_level_count_the_same(pair):
    """Two patches of the real MR at σ and 10σ: plain MSE is ~100× more the noisy one's; with
    `noise_weights` the identity (output = input) costs the same for both, and weights average 1."""
    from medseg.losses.image import noise_weights

    _, clean = pair
    rng = np.random.default_rng(1)
    noisy = torch.cat([clean + torch.as_tensor(rng.normal(0, s, clean.shape), dtype=torch.float32) for s in (0.01, 0.1)])
    clean2 = torch.cat([clean, clean])
    w = noise_weights(noisy, clean2)
    assert float(w.mean()) == pytest.approx(1.0, rel=1e-6)
    assert float(w[0] / w[1]) == pytest.approx(100.0, rel=0.05)
    loss = build_image_loss({"mse": 1.0})
    per_sample = ((noisy - clean2) ** 2).flatten(1).mean(1)
    assert float(per_sample[1] / per_sample[0]) == pytest.approx(100.0, rel=0.05)
    weighted = w * per_sample
    assert float(weighted[0]) == pytest.approx(float(weighted[1]), rel=1e-5)
    assert float(loss.terms(noisy, clean2, w)["mse"]) == pytest.approx(float(weighted.mean()), rel=1e-5)
    # the centre slice of a 2.5-D stack is the one compared with the target
    stack = torch.cat([noisy + 1.0, noisy, noisy - 1.0], dim=1)
    assert torch.allclose(noise_weights(stack, clean2, channel=1), w)

"""Denoisers: shapes (2-D, 3-D, 2.5-D), identity at initialisation, the VAE's KL, build_model."""

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.models import build_model
from medseg.models.denoise import REDCNN, UNetDenoiser, VAEDenoiser, build_denoiser

SMALL = {
    "redcnn": {"features": 8},
    "unet_denoiser": {"features": [4, 4, 8, 8, 16, 4]},
    "vae_denoiser": {"features": 4, "levels": 2, "latent_channels": 2},
}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize(("spatial_dims", "in_channels", "shape"), [(2, 1, (37, 45)), (2, 5, (40, 33)), (3, 1, (22, 24, 21))])
def test_shapes_and_identity_at_initialisation(name, spatial_dims, in_channels, shape):
    torch.manual_seed(0)
    net = build_model({"name": name, "spatial_dims": spatial_dims, "in_channels": in_channels, **SMALL[name]}).eval()
    x = torch.rand(2, in_channels, *shape)
    with torch.no_grad():
        y, kl = net(x, return_kl=True)
    assert y.shape == (2, 1, *shape)
    # zero-initialised last layer: the untrained network returns its input's centre channel
    torch.testing.assert_close(y, x[:, in_channels // 2 : in_channels // 2 + 1], rtol=0, atol=1e-6)
    assert kl.ndim == 0 and float(kl) >= 0


@pytest.mark.parametrize("name", sorted(SMALL))
def test_min_value_floors_outputs_when_applied_not_while_training(name):
    """``min_value`` (MR magnitude: 0): evaluation outputs never go below it, and where the
    clean image lies above the floor the floored output is never further from it; training
    outputs are left alone (the loss keeps its gradient)."""
    torch.manual_seed(0)
    cfg = {"name": name, "spatial_dims": 2, "in_channels": 1, **SMALL[name]}
    x = torch.rand(1, 1, 32, 32) - 0.5  # half the input below 0: the untrained network returns it
    plain, floored = build_model(cfg), build_model({**cfg, "min_value": 0.0})
    floored.load_state_dict(plain.state_dict())
    with torch.no_grad():
        y_plain, y = plain.eval()(x), floored.eval()(x)
        assert float(y.min()) == 0.0 and float(y_plain.min()) < 0
        torch.testing.assert_close(y, y_plain.clamp(min=0.0))
        clean = torch.rand_like(x)  # any image ≥ the floor
        assert bool(((y - clean).abs() <= (y_plain - clean).abs()).all())
        outs = []
        for net in (floored.train(), plain.train()):
            torch.manual_seed(1)  # the VAE samples its latent in training
            outs.append(net(x))
        torch.testing.assert_close(outs[0], outs[1])
        assert float(outs[0].min()) < 0


def test_min_value_goes_from_the_workflow_into_the_checkpoint_model():
    from medseg.config.schema import DenoisingModelConfig

    assert DenoisingModelConfig(min_value=0.0).build_dict()["min_value"] == 0.0
    assert "min_value" not in DenoisingModelConfig().build_dict()  # checkpoints without it load as before


def test_training_moves_away_from_identity_and_gradients_reach_the_last_layer():
    torch.manual_seed(0)
    net = REDCNN(2, 1, features=8)
    x = torch.rand(1, 1, 32, 32)
    loss = (net(x) - 0.5).pow(2).mean()
    loss.backward()
    assert net.decoder[-1].weight.grad.abs().sum() > 0


def test_vae_kl_is_nonnegative_and_sampling_only_in_training():
    torch.manual_seed(0)
    net = VAEDenoiser(2, 3, features=4, levels=2, latent_channels=2)
    for p in net.head.parameters():  # a non-zero head so the sample shows in the output
        torch.nn.init.normal_(p, std=0.1)
    x = torch.rand(2, 3, 30, 30)
    net.train()
    a, kl = net(x, return_kl=True)
    b, _ = net(x, return_kl=True)
    assert float(kl.detach()) >= 0 and torch.isfinite(kl)
    assert not torch.equal(a, b)  # z = μ + σ·ε
    net.eval()
    with torch.no_grad():
        c, d = net(x), net(x)
    assert torch.equal(c, d)  # z = μ
    kl.backward()
    assert net.to_logvar.weight.grad is not None


def test_vae_kl_matches_closed_form():
    net = VAEDenoiser(2, 1, features=4, levels=1, latent_channels=1)
    torch.nn.init.zeros_(net.to_mu.weight); torch.nn.init.constant_(net.to_mu.bias, 1.0)
    torch.nn.init.zeros_(net.to_logvar.weight); torch.nn.init.constant_(net.to_logvar.bias, np.log(4.0))
    _, kl = net(torch.rand(1, 1, 8, 8), return_kl=True)
    # KL(N(1, 4) ‖ N(0, 1)) = ½(μ² + σ² − 1 − log σ²)
    assert float(kl) == pytest.approx(0.5 * (1 + 4 - 1 - np.log(4.0)), rel=1e-5)


def test_parameter_counts_match_the_architectures():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # RED-CNN, paper settings (96 features, 5×5): 1 + 8 hidden + 1 layers ≈ 1.85 M parameters
    assert count(REDCNN(2, 1)) == (25 * 96 + 96) + 8 * (96 * 96 * 25 + 96) + (96 * 25 + 1)
    assert count(REDCNN(3, 1, features=32, kernel_size=3)) == (27 * 32 + 32) + 8 * (32 * 32 * 27 + 32) + (32 * 27 + 1)
    assert 1e6 < count(UNetDenoiser(2, 1)) < 3e6  # BasicUNet default widths, 2-D
    assert count(VAEDenoiser(2, 1)) < count(UNetDenoiser(2, 1))


def test_bad_configs_say_what_is_wrong():
    with pytest.raises(ConfigError, match="in_channels must be odd"):
        build_denoiser({"name": "redcnn", "in_channels": 4})
    with pytest.raises(ConfigError, match=r"model\.kernel: Extra inputs.*valid keys: name, spatial_dims"):
        build_denoiser({"name": "redcnn", "kernel": 3})
    with pytest.raises(ConfigError, match="not a denoiser"):
        build_denoiser({"name": "resunet3d"})
    with pytest.raises(ConfigError, match="≥ 21 voxels"):
        REDCNN(2, 1, features=4)(torch.zeros(1, 1, 20, 40))


def test_build_model_still_builds_the_segmentation_network():
    from medseg.models import ResUNet3D

    net = build_model({"name": "resunet3d", "out_channels": 3, "encoder": "resnet10", "encoder_channels": [8, 8, 8, 8]})
    assert isinstance(net, ResUNet3D)


def test_local_noise_map_estimates_white_noise_sigma_on_a_real_slice():
    """`local_noise_map` (Haar HH median per block): on the real 512² CT slice with white noise of
    σ 25 / 50 HU it reads σ (with the scan's own grain added in quadrature) within 10 % in the air and the body, on the slice and on a 64² patch
    alike; `noise_map: true` adds it as an input channel and stays identity at initialisation."""
    from medseg.io import load_volume
    from medseg.models.denoise import local_noise_map
    from medseg.sample_data import path as sample_path

    hu = load_volume(sample_path("ct_dicom")).array[:, :, 10].astype(np.float32)
    rng = np.random.default_rng(0)
    own = local_noise_map(torch.as_tensor(hu)[None, None])[0, 0].numpy()  # the scan's own grain (body ~8 HU)
    for sigma in (25.0, 50.0):
        noisy = torch.as_tensor(hu + rng.normal(0, sigma, hu.shape).astype(np.float32))[None, None]
        m = local_noise_map(noisy)[0, 0].numpy()
        assert m.shape == hu.shape
        for region in (hu > -900, (hu < -900) & (hu > -1020)):
            assert np.median(m[region]) == pytest.approx(np.hypot(sigma, np.median(own[region])), rel=0.1)
        patch = local_noise_map(noisy[..., 200:264, 150:214])
        assert float(patch.median()) == pytest.approx(float(np.median(m[200:264, 150:214])), rel=0.1)
    net = build_model({"name": "unet_denoiser", "in_channels": 3, "noise_map": True, **SMALL["unet_denoiser"]}).eval()
    assert net.unet.conv_0.conv_0.conv.in_channels == 4
    x = torch.rand(1, 3, 40, 36)
    torch.testing.assert_close(net(x), x[:, 1:2], rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="noise_map"):
        build_model({"name": "unet_denoiser", "spatial_dims": 3, "noise_map": True, **SMALL["unet_denoiser"]})


def test_a_larger_noise_map_block_reads_uniform_noise_more_steadily():
    """`noise_map_block`: on the real slice with white noise of σ 25 HU, the map with blocks of 16
    coefficients reads σ in the air as the default 8 does (within 10 %), with less spread
    between blocks; the network uses the block it is built with, and a block below 1 is refused."""
    from medseg.io import load_volume
    from medseg.models.denoise import local_noise_map
    from medseg.sample_data import path as sample_path

    hu = load_volume(sample_path("ct_dicom")).array[:, :, 10].astype(np.float32)
    noisy = torch.as_tensor(hu + np.random.default_rng(1).normal(0, 25.0, hu.shape).astype(np.float32))[None, None]
    air = (hu < -900) & (hu > -1020)
    spread = {}
    for block in (8, 16):
        m = local_noise_map(noisy, block)[0, 0].numpy()[air]
        assert np.median(m) == pytest.approx(25.0, rel=0.1)
        spread[block] = float(np.std(m) / np.mean(m))
    assert spread[16] < 0.8 * spread[8]
    net = build_model({"name": "unet_denoiser", "in_channels": 1, "noise_map": True, "noise_map_block": 16, **SMALL["unet_denoiser"]})
    assert net.noise_map_block == 16
    seen = []
    net.unet.register_forward_pre_hook(lambda mod, args: seen.append(args[0][:, 1:2].detach().clone()))
    x = noisy[..., 100:164, 100:164] / 4095.0
    net.eval()(x)
    torch.testing.assert_close(seen[0][..., :64, :64], local_noise_map(x, 16) * net.noise_map_scale)
    with pytest.raises(ConfigError, match="noise_map_block"):
        build_model({"name": "unet_denoiser", "noise_map": True, "noise_map_block": 0, **SMALL["unet_denoiser"]})

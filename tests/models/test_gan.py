"""GAN networks: shapes (2-D, 2.5-D, odd sizes), identity at initialisation, build_model by
name, spectral norm of the critic's convs ≈ 1."""

from __future__ import annotations

import pytest
import torch

from medseg.models import build_model
from medseg.models.gan import PatchCritic, RDBGenerator


@pytest.mark.parametrize("k", [0, 2])
def test_generator_shapes_and_identity_at_init(k):
    torch.manual_seed(0)
    gen = RDBGenerator(context_slices=k, channels=16, n_blocks=2, growth=8, layers_per_block=2)
    x = torch.randn(2, 2 * k + 1, 37, 30)
    y = gen(x)
    assert y.shape == (2, 1, 37, 30)
    assert torch.equal(y, x[:, k : k + 1])  # zero-initialised tail: the residual is 0
    # after one optimiser step the residual is no longer zero and depends on the input
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    (gen(x) - torch.zeros_like(y)).pow(2).mean().backward()
    opt.step()
    y2 = gen(x)
    assert not torch.equal(y2, x[:, k : k + 1]) and torch.isfinite(y2).all()
    with pytest.raises(ValueError, match="expects"):
        gen(torch.randn(1, 2 * k + 2, 16, 16))


def test_build_model_by_name():
    g = build_model({"name": "rdb_generator", "context_slices": 1, "channels": 8, "n_blocks": 1, "growth": 4})
    assert isinstance(g, RDBGenerator) and g.context_slices == 1
    c = build_model({"name": "patch_critic", "in_channels": 1, "channels": 8})
    assert isinstance(c, PatchCritic)
    from medseg.errors import ConfigError

    with pytest.raises(ConfigError, match="rdb_generator"):
        build_model({"name": "rdb_generator", "bogus": 1})


def test_patch_critic_is_spectrally_normalised():
    torch.manual_seed(0)
    critic = PatchCritic(in_channels=1, channels=8, n_layers=3)
    x = torch.randn(2, 1, 64, 64)
    for _ in range(30):  # power iterations run in training-mode forward passes
        out = critic(x)
    assert out.shape[0] == 2 and out.shape[1] == 1 and out.shape[2] > 1  # a map of patch scores
    convs = [m for m in critic.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    for conv in convs:
        w = conv.weight  # the normalised weight (parametrization)
        sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
        assert 0.9 < float(sigma) < 1.05

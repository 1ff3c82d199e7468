"""WGAN-GP gradient penalty against critics whose input-gradient is known, fp32 under autocast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg.losses.gan import gradient_penalty, wasserstein_critic_loss, wasserstein_generator_loss
from medseg.models.gan import PatchCritic


class LinearCritic(nn.Module):
    """f(x) = <w, x> per sample: ∇ₓf = w everywhere, so the penalty is (‖w‖ − 1)²."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("norm", [3.0, 1.0, 0.25])
def test_penalty_of_a_linear_critic(norm):
    torch.manual_seed(0)
    w = torch.randn(1, 8, 8)
    w = w / w.norm() * norm
    critic = LinearCritic(w)
    real, fake = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    gp = gradient_penalty(critic, real, fake)
    assert gp.dtype == torch.float32
    assert abs(float(gp) - (norm - 1.0) ** 2) < 1e-5
    gp.backward()  # differentiable w.r.t. the critic: d/dw (‖w‖−1)² = 2(‖w‖−1)·w/‖w‖
    expected = 2 * (norm - 1.0) * critic.w.detach() / norm
    assert torch.allclose(critic.w.grad, expected, atol=1e-5)


def test_penalty_is_fp32_and_unchanged_under_autocast():
    torch.manual_seed(0)
    critic = PatchCritic(in_channels=1, channels=8, n_layers=2)
    real, fake = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    g = torch.Generator().manual_seed(5)
    ref = gradient_penalty(critic.eval(), real, fake, generator=g)
    g = torch.Generator().manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = gradient_penalty(critic, real.bfloat16(), fake.bfloat16(), generator=g)
    assert amp.dtype == torch.float32
    # the only difference left is the bf16 rounding of the inputs themselves
    g = torch.Generator().manual_seed(5)
    ref_rounded = gradient_penalty(critic, real.bfloat16().float(), fake.bfloat16().float(), generator=g)
    assert torch.allclose(amp, ref_rounded, rtol=1e-6, atol=1e-7)
    assert torch.isfinite(ref)


def test_wasserstein_losses_and_shape_check():
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([-1.0, 1.0])
    assert float(wasserstein_critic_loss(real, fake)) == -3.0
    assert float(wasserstein_generator_loss(fake)) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        gradient_penalty(LinearCritic(torch.ones(1, 4, 4)), torch.zeros(1, 1, 4, 4), torch.zeros(2, 1, 4, 4))

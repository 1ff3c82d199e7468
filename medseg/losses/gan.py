"""Wasserstein GAN losses with gradient penalty (Gulrajani et al., "Improved Training of
Wasserstein GANs", NeurIPS 2017).

A critic's score of a sample is the mean of its output (one value for a global critic, the
mean over patches for `medseg.models.gan.PatchCritic`), the same in the losses and in the
penalty. λ (10 in the paper) and n_critic are the caller's (the GAN task's) business.
"""

from __future__ import annotations

import torch
from torch import nn


def critic_scores(critic: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample critic scores ``(B,)``: the mean of the critic's output for each sample."""
    return critic(x).flatten(1).mean(dim=1)


def wasserstein_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Critic loss ``E[D(fake)] − E[D(real)]`` (minimised: real scored high, fake low)."""
    return fake_scores.float().mean() - real_scores.float().mean()


def wasserstein_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Generator's adversarial loss ``−E[D(fake)]``."""
    return -fake_scores.float().mean()


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty ``E[(‖∇_x̂ D(x̂)‖₂ − 1)²]`` at ``x̂ = ε·real + (1−ε)·fake``, ε ~ U(0, 1)
    per sample; differentiable w.r.t. the critic's parameters (multiply by λ yourself).

    Computed in float32 with autocast disabled, even inside an AMP region, because (1) the
    penalty is a function of a *gradient*: under fp16 the critic's input-gradients of a
    whole image, squared and summed, under- or overflow long before its loss does, and the
    penalty's own backward is a second-order pass that fp16 handles worst; (2) a GradScaler
    scales only ``loss.backward()``, not the inner ``torch.autograd.grad`` here, so in fp16
    that inner gradient would be unscaled and flush small values to zero. The critic's
    weights stay as they are; only this forward pass runs in fp32.

    Args:
        critic: maps ``(B, …)`` to scores (any output shape; see `critic_scores`).
        real, fake: batches of the same shape (detached here: the penalty trains the critic).
        generator: random generator for ε (reproducible runs).

    Returns:
        Scalar float32 tensor.

    Raises:
        ValueError: `real` and `fake` differ in shape.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
    real32, fake32 = real.detach().float(), fake.detach().float()
    eps_shape = (real.shape[0],) + (1,) * (real.ndim - 1)
    eps = torch.rand(eps_shape, generator=generator, device="cpu" if generator is not None else real.device)
    eps = eps.to(real.device)
    x_hat = (eps * real32 + (1.0 - eps) * fake32).requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        scores = critic_scores(critic, x_hat).float()
        (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
        norms = grad.flatten(1).norm(2, dim=1)
        return ((norms - 1.0) ** 2).mean()

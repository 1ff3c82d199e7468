"""Image-to-image losses: MSE, L1, SSIM (MONAI's ``SSIMLoss``) and weighted sums of them.

A loss is described by a plain dict of weights, ``{"mse": 1.0, "ssim": 0.1}``:
``loss = Σ wᵢ · lossᵢ(prediction, target)``, each term a mean over voxels and the batch, with

- ``mse``: mean squared error;
- ``l1``: mean absolute error (sharper edges than MSE, less over-smoothing);
- ``ssim``: ``1 − SSIM`` (MONAI ``SSIMLoss``: Gaussian window σ = 1.5, 11 px, K₁ = 0.01,
  K₂ = 0.03), computed with ``data_range`` in network units (1.0 for the ``hu_linear`` and
  ``percentile_scale`` plans' nominal span). Inputs need every spatial size ≥ 11.

`ImageLoss.terms` returns each weighted term too, for logging, and takes optional per-sample
weights for the MSE and L1 terms (`noise_weights`: every noise level weighs the same).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.losses import SSIMLoss
from torch import nn

from medseg.errors import ConfigError

__all__ = ["IMAGE_LOSS_NAMES", "ImageLoss", "build_image_loss", "noise_weights"]

#: Loss names a weight dict may use.
IMAGE_LOSS_NAMES = ("mse", "l1", "ssim")


class ImageLoss(nn.Module):
    """Weighted sum of MSE, L1 and SSIM losses between a prediction and its target.

    Args:
        weights: ``{name: weight}`` with names from `IMAGE_LOSS_NAMES`, weights ≥ 0 (not all 0).
        spatial_dims: 2 or 3 (the SSIM window's dimensionality).
        data_range: value span of the images for SSIM, in network units.

    Raises:
        ConfigError: unknown name, negative weight, or all weights zero.
    """

    def __init__(self, weights: Mapping[str, float], spatial_dims: int = 2, data_range: float = 1.0) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(IMAGE_LOSS_NAMES))
        if unknown:
            raise ConfigError(f"loss: unknown term(s) {', '.join(unknown)}; valid: {', '.join(IMAGE_LOSS_NAMES)}")
        bad = {k: w for k, w in weights.items() if not float(w) >= 0}
        if bad:
            raise ConfigError(f"loss: weights must be ≥ 0, got {bad}")
        self.weights = {k: float(w) for k, w in weights.items() if float(w) > 0}
        if not self.weights:
            raise ConfigError(f"loss: at least one weight must be > 0, got {dict(weights)}")
        if spatial_dims not in (2, 3):
            raise ConfigError(f"loss: spatial_dims must be 2 or 3, got {spatial_dims}")
        self.ssim = SSIMLoss(spatial_dims=spatial_dims, data_range=data_range) if "ssim" in self.weights else None

    def terms(
        self, prediction: torch.Tensor, target: torch.Tensor, sample_weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Each weighted term ``wᵢ · lossᵢ`` by name (their sum is `forward`).

        Args:
            sample_weights: optional ``(N,)`` weights of the batch's samples for the MSE and L1
                terms (their per-sample means are averaged with these weights); SSIM is not
                weighted.
        """
        out: dict[str, torch.Tensor] = {}
        for name, w in self.weights.items():
            if name in ("mse", "l1"):
                err = (prediction - target) ** 2 if name == "mse" else torch.abs(prediction - target)
                if sample_weights is None:
                    value = torch.mean(err)
                else:
                    value = torch.mean(err.flatten(1).mean(1) * sample_weights)
            else:
                assert self.ssim is not None
                value = self.ssim(prediction, target)
            out[name] = w * value
        return out

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self.terms(prediction, target).values())).sum()


def build_image_loss(weights: Mapping[str, float] | None = None, *, spatial_dims: int = 2, data_range: float = 1.0) -> ImageLoss:
    """`ImageLoss` from a weight dict (default ``{"mse": 1.0}``); see the module docstring."""
    return ImageLoss(weights or {"mse": 1.0}, spatial_dims=spatial_dims, data_range=data_range)


def noise_weights(noisy: torch.Tensor, clean: torch.Tensor, channel: int = 0) -> torch.Tensor:
    """Per-sample weights ∝ 1 / (mean squared noise of the sample), normalised to mean 1.

    With a plain MSE over patches drawn at noise levels a decade apart, the noisiest patches
    make nearly all of the loss (the error left scales with σ²), so a blind denoiser is tuned
    for the top of its range and over-smooths low-noise scans. Dividing each patch's error by
    its own noise power makes the loss a mean of *relative* errors, the quantity PSNR gains are
    made of, whatever the noise model. Normalised within the batch, so the loss keeps the
    plain MSE's scale (learning rate and gradient clipping unchanged).

    Args:
        noisy: ``(N, C, ...)`` network input; ``channel`` is the slice the target belongs to
            (the centre slice of a 2.5-D stack).
        clean: ``(N, 1, ...)`` target.
    """
    power = ((noisy[:, channel : channel + 1].float() - clean.float()) ** 2).flatten(1).mean(1)
    inv = 1.0 / power.clamp_min(1e-12)
    return (inv / inv.mean()).detach()

"""A residual image-to-image U-Net on MONAI's `BasicUNet` (the denoising task's default network).

The U-Net predicts the noise and the module returns ``input − noise`` (residual learning: the
identity is free, the network only learns the correction, which trains in a few CPU minutes).
With 2.5-D input (``2k+1`` neighbouring slices as channels) the residual is taken on the
centre slice. Input and output are in network units (`medseg.data.intensity`),
``(B, C_in, H, W[, D]) → (B, 1, H, W[, D])``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet
from torch import nn

__all__ = ["ResidualBasicUNet"]


class ResidualBasicUNet(nn.Module):
    """``x_centre − BasicUNet(x)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (2k+1 for k context slices each side).
        features: BasicUNet's six widths.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, features: Sequence[int] = (16, 16, 32, 64, 128, 16)) -> None:
        super().__init__()
        self.spatial_dims, self.in_channels = int(spatial_dims), int(in_channels)
        self.unet = BasicUNet(spatial_dims=self.spatial_dims, in_channels=self.in_channels, out_channels=1, features=tuple(features))
        # the last layer starts at zero: the untrained network is the identity (its input)
        for p in self.unet.final_conv.parameters():
            nn.init.zeros_(p)

    @property
    def size_divisor(self) -> int:
        """Spatial sizes must be multiples of this (four 2× poolings)."""
        return 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = self.in_channels // 2
        return x[:, centre : centre + 1] - self.unet(x)

"""Small image-to-image networks (denoising / enhancement) for tests, demos and baselines."""

from __future__ import annotations

import torch
from torch import nn


class ResidualConvNet(nn.Module):
    """A plain residual convolution net: ``y = x_centre + body(x)``.

    ``body`` is ``n_layers`` 3×3(×3) convolutions with ReLU between them; its last convolution
    starts at zero, so a freshly built network is exactly the identity on the centre input
    channel (training learns the residual, the usual start for denoisers such as DnCNN). With
    2.5-D context (``in_channels = 2k + 1`` neighbouring slices stacked as channels) the centre
    channel ``k`` is the slice being restored.

    Args:
        spatial_dims: 2 (slices) or 3 (volumes).
        in_channels: input channels (1, or 2k+1 for 2.5-D context).
        channels: width of the hidden convolutions.
        n_layers: number of convolutions (≥ 2).

    Shapes: ``(B, in_channels, H, W[, D])`` → ``(B, 1, H, W[, D])``, same units as the input.

    Example:
        >>> net = ResidualConvNet(2, in_channels=3, channels=8)
        >>> net(torch.zeros(1, 3, 16, 16)).shape
        torch.Size([1, 1, 16, 16])
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, channels: int = 32, n_layers: int = 3) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if in_channels < 1 or in_channels % 2 == 0:
            raise ValueError(f"in_channels must be odd (1 or 2k+1 context slices), got {in_channels}")
        if n_layers < 2:
            raise ValueError(f"n_layers must be at least 2, got {n_layers}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        layers: list[nn.Module] = [conv(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(n_layers - 2):
            layers += [conv(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        last = conv(channels, 1, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.body = nn.Sequential(*layers)
        self.centre = in_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.centre : self.centre + 1] + self.body(x)


#: Image-to-image networks `medseg.models.build_model` builds by ``model["name"]``.
IMAGE_NETWORKS: dict[str, type[nn.Module]] = {"residual_conv": ResidualConvNet}

"""Networks of the low-dose CT GAN: a residual-dense encoder-decoder generator and a
spectral-normalised patch critic.

- `RDBGenerator`: head conv → stride-2 conv (encoder) → residual dense blocks (Zhang et al.,
  "Residual Dense Network for Image Super-Resolution", CVPR 2018, with ESRGAN's residual
  scaling) → transposed conv (decoder) + skip from the head → tail conv predicting the
  **residual**, added to the centre input slice. 2-D (``context_slices = 0``) or 2.5-D
  (``2k+1`` neighbouring slices stacked as channels in, the centre slice out, per
  CONTRACTS.md). The tail is initialised to zero, so an untrained generator is the identity —
  GAN training starts from "change nothing", not from noise.
- `PatchCritic`: a PatchGAN-style critic (Isola et al. 2017) with spectral normalisation
  (Miyato et al. 2018) on every conv and no batch norm (the WGAN-GP penalty is per sample;
  batch statistics would couple samples), giving one score per receptive-field patch.

Both map network-unit images ``(B, C, H, W)``; H and W need not be even (the decoder output
is cropped to the input size).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class ResidualDenseBlock(nn.Module):
    """``layers`` densely connected 3×3 convs (each sees all earlier features), a 1×1 local
    feature fusion, and a scaled residual: ``x + scale · fuse([x, f1, …, fL])``.

    Args:
        channels: input/output channels.
        growth: channels each conv adds.
        layers: convs in the block.
        scale: residual scaling (0.2 as in ESRGAN keeps deep stacks stable).
    """

    def __init__(self, channels: int = 64, growth: int = 32, layers: int = 4, scale: float = 0.2) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels + i * growth, growth, 3, padding=1) for i in range(layers)
        )
        self.fuse = nn.Conv2d(channels + layers * growth, channels, 1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(self.act(conv(torch.cat(feats, dim=1))))
        return x + self.scale * self.fuse(torch.cat(feats, dim=1))


class RDBGenerator(nn.Module):
    """Residual encoder-decoder with residual dense blocks; predicts the residual.

    Args:
        context_slices: k neighbour slices on each side (in_channels = 2k+1); 0 for 2-D.
        channels: feature channels.
        n_blocks: residual dense blocks at half resolution.
        growth, layers_per_block: of each `ResidualDenseBlock`.

    Input ``(B, 2k+1, H, W)``, output ``(B, 1, H, W)`` = centre slice + residual.
    """

    def __init__(self, context_slices: int = 0, channels: int = 64, n_blocks: int = 4, growth: int = 32,
                 layers_per_block: int = 4) -> None:
        super().__init__()
        if context_slices < 0:
            raise ValueError(f"context_slices must be ≥ 0, got {context_slices}")
        self.context_slices = int(context_slices)
        in_ch = 2 * self.context_slices + 1
        self.head = nn.Conv2d(in_ch, channels, 3, padding=1)
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*(ResidualDenseBlock(channels, growth, layers_per_block) for _ in range(n_blocks)))
        self.trunk = nn.Conv2d(channels, channels, 3, padding=1)
        self.up = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
        self.merge = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.tail = nn.Conv2d(channels, 1, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.context_slices
        if x.ndim != 4 or x.shape[1] != 2 * k + 1:
            raise ValueError(f"RDBGenerator expects (B, {2 * k + 1}, H, W), got {tuple(x.shape)}")
        h = self.act(self.head(x))
        d = self.act(self.down(h))
        d = d + self.trunk(self.blocks(d))
        u = self.act(self.up(d))[..., : h.shape[-2], : h.shape[-1]]
        u = self.act(self.merge(torch.cat((u, h), dim=1)))
        return x[:, k : k + 1] + self.tail(u)


class PatchCritic(nn.Module):
    """Spectral-normalised patch critic: ``n_layers`` stride-2 4×4 convs (channels doubling,
    capped at 8×), one stride-1 4×4 conv, then a 1-channel 4×4 conv: a map of unbounded
    (Wasserstein) scores, one per patch.

    Args:
        in_channels: image channels (1, or 2 when conditioned on the low-dose input).
        channels: channels of the first conv.
        n_layers: stride-2 convs (receptive field grows with each).
    """

    def __init__(self, in_channels: int = 1, channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch_in, ch = in_channels, channels
        for i in range(n_layers):
            layers += [spectral_norm(nn.Conv2d(ch_in, ch, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
            ch_in, ch = ch, min(ch * 2, channels * 8)
        layers += [spectral_norm(nn.Conv2d(ch_in, ch, 4, stride=1, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
        layers += [spectral_norm(nn.Conv2d(ch, 1, 4, stride=1, padding=1))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


#: GAN networks `medseg.models.build_model` builds by ``model["name"]``.
GAN_NETWORKS: dict[str, type[nn.Module]] = {"rdb_generator": RDBGenerator, "patch_critic": PatchCritic}

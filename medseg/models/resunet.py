"""`ResUNet3D`: a 3-D ResNet encoder + ASPP-style dilated context module + U-Net decoder.

Everything is built from MONAI components:

- encoder: `monai.networks.nets.resnet.ResNet` (ResNet-10/18/34/50; the same module names and
  tensor shapes as MedicalNet, so MedicalNet weights load into it, see `medseg.models.pretrained`);
- context module: `monai.networks.blocks.SimpleASPP` (parallel dilated 3×3×3 convolutions, e.g.
  dilations 1/2/4/8, concatenated) followed by a 1×1×1 `Convolution`;
- decoder: one stage per encoder level, each a `monai.networks.blocks.UpSample` (transposed
  convolution) of the deeper features, concatenation with the encoder's skip features, and a
  `monai.networks.blocks.ResidualUnit`; a full-resolution skip comes from a small residual unit on
  the input so thin structures keep their borders.

Feature sizes for an input ``(B, C, X, Y, Z)`` with the default ``stem_stride=2``: stem ``/2``,
``layer1`` ``/4`` (after max-pool), ``layer2`` ``/8``, ``layer3`` ``/16``, ``layer4`` ``/32``.
Input sizes must therefore be divisible by `ResUNet3D.size_divisor` (32 per axis; 16 along an
axis whose stem stride is 1). Sliding-window inference with a divisible ``roi_size`` handles
any volume size.

With ``deep_supervision=True`` the network returns, in training mode, a list
``[main, aux_half, aux_quarter]`` of logits all at input resolution (the auxiliary heads read
the ``/2`` and ``/4`` decoder stages and are upsampled trilinearly); in eval mode it returns only
the main logits, so inference code never sees the difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit, SimpleASPP, UpSample
from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck
from torch import nn

#: Encoder depth → (block type, blocks per stage), as in MedicalNet / MONAI.
RESNET_LAYERS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet10": (ResNetBlock, [1, 1, 1, 1]),
    "resnet18": (ResNetBlock, [2, 2, 2, 2]),
    "resnet34": (ResNetBlock, [3, 4, 6, 3]),
    "resnet50": (ResNetBottleneck, [3, 4, 6, 3]),
}

#: MedicalNet's shortcut type per depth ("A": zero-padded identity, no weights; "B": 1×1 conv + BN).
MEDICALNET_SHORTCUT = {"resnet10": "B", "resnet18": "A", "resnet34": "A", "resnet50": "B"}


def resnet_encoder(
    in_channels: int,
    encoder: str,
    encoder_channels: Sequence[int],
    stem_stride: Sequence[int],
    shortcut_type: str | None,
    encoder_norm: str,
) -> ResNet:
    """The MONAI ResNet encoder of `ResUNet3D` (MedicalNet's module names; no pooling/FC head).

    Shared with the encoder-pretraining denoiser (`medseg.models.denoise.ResNetDenoiser`), so a
    checkpoint of one loads into the other's ``encoder`` (`medseg.models.pretrained`).
    """
    if encoder not in RESNET_LAYERS:
        raise ValueError(f"unknown encoder {encoder!r}; expected one of {sorted(RESNET_LAYERS)}")
    if len(encoder_channels) != 4:
        raise ValueError(f"encoder_channels needs 4 widths, got {list(encoder_channels)}")
    block, layers = RESNET_LAYERS[encoder]
    return ResNet(
        block=block,
        layers=layers,
        block_inplanes=list(encoder_channels),
        spatial_dims=3,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=tuple(stem_stride),
        shortcut_type=shortcut_type or MEDICALNET_SHORTCUT[encoder],
        bias_downsample=False,
        feed_forward=False,
        norm=("instance", {"affine": True}) if encoder_norm == "instance" else encoder_norm,
    )


def stem_strides(stem_stride: int | Sequence[int]) -> list[int]:
    """The stem convolution's stride per axis (each 1 or 2) from one value or three."""
    stride = [int(stem_stride)] * 3 if isinstance(stem_stride, int) else [int(s) for s in stem_stride]
    if len(stride) != 3 or any(s not in (1, 2) for s in stride):
        raise ValueError(f"stem_stride must be 1 or 2 (or three such values), got {stem_stride}")
    return stride


def encoder_feature_channels(encoder: str, encoder_channels: Sequence[int]) -> list[int]:
    """Channels of the encoder's stem and layer1..layer4 outputs."""
    exp = RESNET_LAYERS[encoder][0].expansion  # type: ignore[attr-defined]
    c = list(encoder_channels)
    return [c[0], c[0] * exp, c[1] * exp, c[2] * exp, c[3] * exp]


def encoder_features(encoder: ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The stem and layer1..layer4 feature maps of `resnet_encoder`'s network on ``x``."""
    stem = encoder.act(encoder.bn1(encoder.conv1(x)))
    l1 = encoder.layer1(encoder.maxpool(stem))
    l2 = encoder.layer2(l1)
    l3 = encoder.layer3(l2)
    return [stem, l1, l2, l3, encoder.layer4(l3)]


def _norm(name: str, channels: int) -> str | tuple:
    """MONAI norm spec for a config name ("instance", "batch", "group") on `channels` channels."""
    if name == "group":
        return ("group", {"num_groups": math.gcd(8, channels)})
    return name


def _context_norm(name: str, channels: int) -> str | tuple:
    # the bottleneck can be 1×1×1 voxels for small patches, where instance norm is undefined;
    # group norm over channels behaves like it on larger maps and works there too
    return _norm("group" if name == "instance" else name, channels)


class ResUNet3D(nn.Module):
    """3-D U-Net with a MONAI ResNet encoder and a dilated (ASPP) bottleneck.

    Args:
        in_channels: image channels (1 for CT or a single MR sequence).
        out_channels: classes including background.
        encoder: ``"resnet10" | "resnet18" | "resnet34" | "resnet50"``.
        encoder_channels: widths of the four ResNet stages before the block expansion
            (MedicalNet/torchvision: ``[64, 128, 256, 512]``; smaller, e.g. ``[16, 32, 64, 128]``,
            trains fast on a CPU but cannot load MedicalNet weights).
        stem_stride: stride of the 7×7×7 stem convolution, an int or one per axis (use 1 along a
            thin axis, e.g. ``[2, 2, 1]`` for few thick slices).
        shortcut_type: ResNet shortcut ``"A"`` or ``"B"``; None = MedicalNet's choice for the depth.
        aspp_dilations: dilations of the parallel 3×3×3 branches of the context module (a 1×1×1
            branch is always added).
        aspp_channels: output channels of each ASPP branch.
        decoder_channels: channels of the five decoder stages, deepest first (``/16 … /1``).
        norm: normalisation of the new (non-encoder) layers: ``"instance" | "batch" | "group"``
            (with "instance", the context module uses group norm: its maps can be 1 voxel).
        encoder_norm: normalisation inside the ResNet encoder: ``"batch"`` (MedicalNet's; its
            running statistics load from pretrained files) or ``"instance"`` (per-image statistics,
            more robust to scanner/contrast shifts; pretrained files then load convolutions and
            affine norm weights, their running statistics are skipped).
        dropout: dropout probability in the decoder's residual units.
        deep_supervision: add auxiliary heads at the ``/2`` and ``/4`` decoder stages.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        encoder: str = "resnet18",
        encoder_channels: Sequence[int] = (64, 128, 256, 512),
        stem_stride: int | Sequence[int] = 2,
        shortcut_type: str | None = None,
        aspp_dilations: Sequence[int] = (1, 2, 4, 8),
        aspp_channels: int = 64,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        norm: str = "instance",
        encoder_norm: str = "batch",
        dropout: float = 0.0,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if encoder not in RESNET_LAYERS:
            raise ValueError(f"unknown encoder {encoder!r}; expected one of {sorted(RESNET_LAYERS)}")
        if len(encoder_channels) != 4:
            raise ValueError(f"encoder_channels needs 4 widths, got {list(encoder_channels)}")
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 widths (deepest first), got {list(decoder_channels)}")
        stride = stem_strides(stem_stride)
        self.stem_stride = tuple(stride)
        self.deep_supervision = deep_supervision
        self.encoder = resnet_encoder(in_channels, encoder, encoder_channels, stride, shortcut_type, encoder_norm)
        *skip_ch, deep_ch = encoder_feature_channels(encoder, encoder_channels)
        n_branches = len(aspp_dilations) + 1
        self.context = nn.Sequential(
            SimpleASPP(
                3,
                deep_ch,
                aspp_channels,
                kernel_sizes=(1, *([3] * len(aspp_dilations))),
                dilations=(1, *aspp_dilations),
                norm_type=_context_norm(norm, aspp_channels),
                acti_type="LEAKYRELU",
            ),
            Convolution(
                3, aspp_channels * n_branches, decoder_channels[0], kernel_size=1,
                norm=_context_norm(norm, decoder_channels[0]), act="LEAKYRELU",
            ),
        )
        # the input-resolution skip (the encoder's first feature map is already /2)
        self.input_skip = ResidualUnit(
            3, in_channels, decoder_channels[4], subunits=1, norm=_norm(norm, decoder_channels[4]), act="LEAKYRELU"
        )

        # decoder stage i upsamples from level (4 - i) to level (3 - i); level scale factors:
        # layer4→layer3 ×2, layer3→layer2 ×2, layer2→layer1 ×2, layer1→stem ×2 (max-pool), stem→input ×stem_stride
        up_factors = [(2, 2, 2)] * 4 + [tuple(stride)]
        skips = [*reversed(skip_ch), decoder_channels[4]]
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        prev = decoder_channels[0]
        for i, (ch, skip, factor) in enumerate(zip(decoder_channels, skips, up_factors)):
            self.ups.append(UpSample(3, prev, ch, scale_factor=factor, kernel_size=factor, mode="deconv"))
            in_block = ch + skip if i < 4 else ch + decoder_channels[4]
            self.blocks.append(
                ResidualUnit(3, in_block, ch, subunits=2, norm=_norm(norm, ch), act="LEAKYRELU", dropout=dropout or None)
            )
            prev = ch
        self.head = nn.Conv3d(decoder_channels[4], out_channels, kernel_size=1)
        if deep_supervision:
            self.aux_heads = nn.ModuleList(
                [nn.Conv3d(decoder_channels[3], out_channels, 1), nn.Conv3d(decoder_channels[2], out_channels, 1)]
            )

    @property
    def size_divisor(self) -> tuple[int, int, int]:
        """Each input spatial size must be a multiple of this (per axis)."""
        return tuple(16 * s for s in self.stem_stride)  # type: ignore[return-value]

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the (pretrainable) ResNet encoder."""
        return list(self.encoder.parameters())

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters of everything that is not the encoder (context module, decoder, heads)."""
        enc = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in enc]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, out_channels, X, Y, Z)`` (a list with deep supervision in training)."""
        div = self.size_divisor
        if any(s % d for s, d in zip(x.shape[2:], div)):
            raise ValueError(
                f"ResUNet3D input size {tuple(x.shape[2:])} must be divisible by {div} per axis "
                "(use a patch/roi size that is, or pad)"
            )
        stem, l1, l2, l3, l4 = encoder_features(self.encoder, x)
        d = self.context(l4)
        skips = [l3, l2, l1, stem, self.input_skip(x)]
        stages = []
        for up, block, skip in zip(self.ups, self.blocks, skips):
            d = block(torch.cat([up(d), skip], dim=1))
            stages.append(d)
        out = self.head(d)
        if self.deep_supervision and self.training:
            size = x.shape[2:]
            aux = [
                F.interpolate(h(s), size=size, mode="trilinear", align_corners=False)
                for h, s in zip(self.aux_heads, (stages[3], stages[2]))
            ]
            return [out, *aux]
        return out


def pooled_encoder_features(encoder: ResNet, x: torch.Tensor) -> torch.Tensor:
    """One descriptor per input: the global average of each of the five encoder levels, concatenated.

    ``(B, C, X, Y, Z)`` → ``(B, sum of encoder_feature_channels)``; what the latent-space report
    (`medseg.report.latent`) embeds. Every level is kept so shallow (texture, intensity) and deep
    (context) features both count.
    """
    return torch.cat([f.mean(dim=(2, 3, 4)) for f in encoder_features(encoder, x)], dim=1)

"""Denoising networks: RED-CNN, a residual U-Net and a convolutional VAE, in 2-D and 3-D, and
the segmentation encoder with a light decoder (`ResNetDenoiser`, for encoder pretraining).

Every denoiser maps ``(B, C_in, H, W[, D])`` in network units to ``(B, 1, H, W[, D])``: the clean
image in network units. They are residual: ``output = x_centre + f(x)`` where ``x_centre`` is
the input's centre channel (``C_in // 2``). With 2.5-D input (``k`` neighbour slices each side
stacked as channels, ``C_in = 2k + 1``) that is the slice being denoised; with one channel it is
the input itself. The last layer of ``f`` starts at zero, so an untrained network is the
identity and training starts from "no change" rather than from noise.

``model(x, return_kl=True)`` returns ``(output, kl)`` for every denoiser (``kl`` is 0 except for
the VAE) so a training task can add ``β · kl`` without knowing which network it has; it goes
through ``forward`` so DistributedDataParallel sees the call.

Config dicts (``model:`` of a workflow, ``Checkpoint.model``) select one by ``name``; see
`REDCNNConfig`, `UNetDenoiserConfig`, `VAEDenoiserConfig` and `build_denoiser`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from medseg.errors import ConfigError

__all__ = [
    "DENOISER_NAMES",
    "REDCNN",
    "REDCNNConfig",
    "ResNetDenoiser",
    "ResNetDenoiserConfig",
    "UNetDenoiser",
    "UNetDenoiserConfig",
    "VAEDenoiser",
    "VAEDenoiserConfig",
    "build_denoiser",
    "local_noise_map",
]


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _tconv(spatial_dims: int) -> type[nn.Module]:
    return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d


def _centre(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1] // 2
    return x[:, c : c + 1]


def _check_channels(in_channels: int) -> None:
    if in_channels < 1 or in_channels % 2 == 0:
        raise ConfigError(
            f"model.in_channels must be odd (1, or 2k+1 for k context slices each side), got {in_channels}"
        )


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, list[int]]:
    """Replicate-pad the spatial axes up to a multiple (U-Net/VAE strides); returns the sizes to crop back."""
    sizes = list(x.shape[2:])
    pads: list[int] = []
    for s in reversed(sizes):  # F.pad wants the last axis first
        pads += [0, (-s) % multiple]
    if any(pads):
        x = F.pad(x, pads, mode="replicate")
    return x, sizes


def _crop(y: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    return y[(slice(None), slice(None), *[slice(0, s) for s in sizes])]


@torch.no_grad()
def local_noise_map(image: torch.Tensor, block: int = 8) -> torch.Tensor:
    """A spatially varying noise σ estimated from the image itself: ``(B, 1, X, Y)`` → same shape.

    Donoho's wavelet estimator, locally: the finest orthonormal Haar diagonal band ``HH`` of the
    image (``(a − b − c + d)/2`` over each 2×2 pixel block, which keeps white noise's σ and
    cancels smooth anatomy), the median of ``|HH|`` over blocks of ``block × block``
    coefficients (``2·block`` pixels: edges and fine structure are a minority in a block)
    divided by 0.6745, then bilinear back to the pixels. Local blocks rather than a whole-image
    figure so that a 64² training patch and a 512² slice get the same statistic for the same
    tissue (a whole-slice σ of a CT is mostly its air's).
    """
    if image.ndim != 4 or image.shape[1] != 1:
        raise ConfigError(f"local_noise_map expects (B, 1, X, Y), got {tuple(image.shape)}")
    x = image.float()
    h, w = x.shape[-2:]
    x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]).abs() / 2
    gh, gw = -(-hh.shape[-2] // block), -(-hh.shape[-1] // block)
    # pad with reflections of |HH| (replicated pixels would give zero coefficients)
    ph, pw = gh * block - hh.shape[-2], gw * block - hh.shape[-1]
    if ph or pw:
        hh = F.pad(hh, (0, pw, 0, ph), mode="reflect" if min(hh.shape[-2:]) > max(ph, pw) else "replicate")
    blocks = hh.unfold(2, block, block).unfold(3, block, block)
    sigma = blocks.reshape(*blocks.shape[:4], -1).median(dim=-1).values / 0.6745
    full = F.interpolate(sigma, size=(gh * block * 2, gw * block * 2), mode="bilinear", align_corners=False)
    return full[..., :h, :w].to(image.dtype)


def output_floor(net: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """``max(out, net.min_value)`` in evaluation mode (unchanged while training, or without a floor).

    For images that cannot go below a value (MR magnitude ≥ 0): where the clean image lies
    above the floor, raising an output to it can only bring it closer, so the floor never adds
    error. A blind denoiser that removes the Rician floor of a dark background overshoots
    below zero on part of it (seen as a negative background mean on a held-out brain scan),
    which SSIM, with its small constant for dark flat regions, punishes hard. Training keeps the
    unclamped output, so the loss still has a gradient there.
    """
    floor = getattr(net, "min_value", None)
    if floor is None or net.training:
        return out
    return out.clamp(min=float(floor))


class REDCNN(nn.Module):
    """Residual encoder-decoder CNN (Chen et al., "Low-dose CT with a residual encoder-decoder
    convolutional neural network", IEEE TMI 2017).

    Five unpadded convolutions (each shrinks by ``kernel_size − 1``) and five transposed
    convolutions that grow back, ReLU between them, with the paper's three shortcuts: conv2's
    output is added after the 3rd transposed conv, conv4's after the 1st, and the input (here its
    centre channel) after the last. The paper's final ReLU is dropped: network units may be
    negative (HU below ``hu_min``), and the identity at initialisation needs a linear output.

    Args:
        spatial_dims: 2 (slices) or 3 (volumes).
        in_channels: 1, or 2k+1 for 2.5-D context.
        features: channels of every hidden layer (paper: 96).
        kernel_size: convolution size (paper: 5); inputs need every size ≥ ``5·(kernel_size−1)+1``.
        min_value: see `output_floor`.
    """

    def __init__(
        self, spatial_dims: int = 2, in_channels: int = 1, features: int = 96, kernel_size: int = 5, min_value: float | None = None
    ) -> None:
        super().__init__()
        _check_channels(in_channels)
        self.min_value = min_value
        conv, tconv = _conv(spatial_dims), _tconv(spatial_dims)
        self.min_size = 5 * (kernel_size - 1) + 1
        self.encoder = nn.ModuleList(
            [conv(in_channels if i == 0 else features, features, kernel_size) for i in range(5)]
        )
        self.decoder = nn.ModuleList(
            [tconv(features, 1 if i == 4 else features, kernel_size) for i in range(5)]
        )
        nn.init.zeros_(self.decoder[-1].weight)
        nn.init.zeros_(self.decoder[-1].bias)

    def forward(self, x: torch.Tensor, return_kl: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if min(x.shape[2:]) < self.min_size:
            raise ConfigError(f"RED-CNN needs every spatial size ≥ {self.min_size} voxels, got {tuple(x.shape[2:])}")
        out = F.relu(self.encoder[0](x))
        out = F.relu(self.encoder[1](out))
        skip2 = out
        out = F.relu(self.encoder[2](out))
        out = F.relu(self.encoder[3](out))
        skip4 = out
        out = F.relu(self.encoder[4](out))
        out = self.decoder[0](out) + skip4
        out = self.decoder[1](F.relu(out))
        out = self.decoder[2](F.relu(out)) + skip2
        out = self.decoder[3](F.relu(out))
        out = output_floor(self, self.decoder[4](F.relu(out)) + _centre(x))
        return (out, out.new_zeros(())) if return_kl else out


class UNetDenoiser(nn.Module):
    """A residual U-Net denoiser: MONAI's `BasicUNet` predicts ``f(x)``, output ``x_centre + f(x)``.

    Inputs of any size: the spatial axes are replicate-padded to a multiple of 16 (four 2×
    poolings) and cropped back, so whole slices of any matrix size go through.

    Args:
        spatial_dims: 2 or 3.
        in_channels: 1, or 2k+1 for 2.5-D context.
        features: BasicUNet's six widths (encoder ×5, last decoder).
        norm: ``"instance"``, ``"batch"`` or ``"none"``.
        dropout: dropout probability.
        min_value: see `output_floor`.
        noise_map: 2-D only: the network also gets `local_noise_map` of the centre slice
            (× ``noise_map_scale``) as one more input channel, FFDNet-style but estimated from
            the input, so it stays blind: it sees how noisy each region is instead of inferring it.
        noise_map_scale: the map's factor (network units are small: 10 HU = 0.0024 of hu_linear).
        noise_map_block: the map's block, in Haar coefficients (``2·block`` pixels): larger
            blocks give a steadier σ where the noise is uniform, smaller ones follow noise that
            varies across the image more closely.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        features: tuple[int, ...] = (32, 32, 64, 128, 256, 32),
        norm: str = "instance",
        dropout: float = 0.0,
        min_value: float | None = None,
        noise_map: bool = False,
        noise_map_scale: float = 30.0,
        noise_map_block: int = 8,
    ) -> None:
        super().__init__()
        _check_channels(in_channels)
        if noise_map and spatial_dims != 2:
            raise ConfigError("model.noise_map is for 2-D models (spatial_dims 2)")
        self.min_value = min_value
        if int(noise_map_block) < 1:
            raise ConfigError(f"model.noise_map_block must be ≥ 1 (Haar coefficients), got {noise_map_block}")
        self.noise_map, self.noise_map_scale = bool(noise_map), float(noise_map_scale)
        self.noise_map_block = int(noise_map_block)
        norm_arg: Any = ("instance", {"affine": True}) if norm == "instance" else (None if norm == "none" else norm)
        self.unet = BasicUNet(
            spatial_dims=spatial_dims, in_channels=in_channels + int(self.noise_map), out_channels=1, features=tuple(features),
            norm=norm_arg, dropout=dropout,
        )
        nn.init.zeros_(self.unet.final_conv.weight)
        nn.init.zeros_(self.unet.final_conv.bias)

    def forward(self, x: torch.Tensor, return_kl: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.cat([x, local_noise_map(_centre(x), self.noise_map_block) * self.noise_map_scale], dim=1) if self.noise_map else x
        padded, sizes = _pad_to_multiple(inputs, 16)
        out = output_floor(self, _crop(self.unet(padded), sizes) + _centre(x))
        return (out, out.new_zeros(())) if return_kl else out


class VAEDenoiser(nn.Module):
    """A convolutional variational autoencoder denoiser with a spatial latent and a residual output.

    Encoder: a convolution then ``levels`` stride-2 convolutions (width doubling), ending in two
    1×1 heads for the latent mean ``μ`` and log-variance ``log σ²`` (``latent_channels`` maps at
    1/2^levels resolution, so any image size works). Training samples ``z = μ + σ·ε``,
    ``ε ~ N(0, I)`` (reparameterisation); evaluation uses ``z = μ`` (deterministic outputs). The
    decoder mirrors the encoder with transposed convolutions and predicts ``f``; output
    ``x_centre + f``. No skip connections: all information passes the stochastic bottleneck,
    which regularises but costs detail (it is expected to score below RED-CNN / U-Net).

    ``model(x, return_kl=True)`` also returns ``KL(q(z|x) ‖ N(0, I))`` averaged over latent
    elements and the batch: ``½·mean(μ² + σ² − 1 − log σ²)`` (≥ 0, nats per latent element).

    Args:
        spatial_dims: 2 or 3.
        in_channels: 1, or 2k+1.
        features: width of the first level (doubles per level).
        levels: number of stride-2 down/up steps.
        latent_channels: latent maps.
        min_value: see `output_floor`.
    """

    def __init__(
        self, spatial_dims: int = 2, in_channels: int = 1, features: int = 32, levels: int = 3, latent_channels: int = 8,
        min_value: float | None = None,
    ) -> None:
        super().__init__()
        _check_channels(in_channels)
        self.min_value = min_value
        conv, tconv = _conv(spatial_dims), _tconv(spatial_dims)
        self.multiple = 2**levels
        widths = [features * 2**i for i in range(levels + 1)]
        enc: list[nn.Module] = [conv(in_channels, widths[0], 3, padding=1), nn.LeakyReLU(0.1)]
        for i in range(levels):
            enc += [conv(widths[i], widths[i + 1], 4, stride=2, padding=1), nn.LeakyReLU(0.1)]
        self.encoder = nn.Sequential(*enc)
        self.to_mu = conv(widths[-1], latent_channels, 1)
        self.to_logvar = conv(widths[-1], latent_channels, 1)
        dec: list[nn.Module] = [conv(latent_channels, widths[-1], 3, padding=1), nn.LeakyReLU(0.1)]
        for i in reversed(range(levels)):
            dec += [tconv(widths[i + 1], widths[i], 4, stride=2, padding=1), nn.LeakyReLU(0.1)]
        self.decoder = nn.Sequential(*dec)
        self.head = conv(widths[0], 1, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, return_kl: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        padded, sizes = _pad_to_multiple(x, self.multiple)
        h = self.encoder(padded)
        mu = self.to_mu(h)
        # bounded log-variance: exp() of an unbounded head overflows early in training
        logvar = self.to_logvar(h).clamp(-10.0, 10.0)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        out = output_floor(self, _crop(self.head(self.decoder(z)), sizes) + _centre(x))
        if not return_kl:
            return out
        kl = 0.5 * torch.mean(mu.pow(2) + logvar.exp() - 1.0 - logvar)
        return out, kl


class ResNetDenoiser(nn.Module):
    """Encoder pretraining: the segmentation model's 3-D ResNet encoder with a light decoder.

    The encoder is `medseg.models.resunet.resnet_encoder` with the same arguments as
    `ResUNet3D`'s (same module names and shapes), so this network's checkpoint loads as
    ``model.pretrained`` of a segmentation workflow with the same ``encoder``,
    ``encoder_channels``, ``stem_stride``, ``shortcut_type`` and ``encoder_norm``
    (`medseg.models.pretrained` takes the tensors under ``encoder.``).

    Decoder (light, feature-pyramid style): each of the five encoder levels (stem, layer1..4) is
    projected by a 1×1×1 convolution to ``decoder_channels``, summed top-down after trilinear
    upsampling (so every level, the deepest included, gets a direct gradient from the
    reconstruction), refined by one 3×3×3 convolution per level, upsampled to the input size and
    turned into ``f`` by a 3×3×3 refinement and a zero-initialised head; output ``x + f``. There
    is deliberately no skip from the input itself: every detail has to pass the encoder, which is
    what the pretraining is for.

    Inputs of any size: replicate-padded to a multiple of 32 and cropped back.

    Args:
        spatial_dims: must be 3 (the segmentation encoder is 3-D).
        in_channels: image channels (1).
        encoder, encoder_channels, stem_stride, shortcut_type, encoder_norm: as `ResUNet3D`.
        decoder_channels: width of the decoder.
        min_value: see `output_floor`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        encoder: str = "resnet18",
        encoder_channels: tuple[int, ...] = (64, 128, 256, 512),
        stem_stride: int | tuple[int, ...] = 2,
        shortcut_type: str | None = None,
        encoder_norm: str = "batch",
        decoder_channels: int = 16,
        min_value: float | None = None,
    ) -> None:
        super().__init__()
        from medseg.models.resunet import encoder_feature_channels, resnet_encoder, stem_strides

        self.min_value = min_value
        if spatial_dims != 3:
            raise ConfigError("resnet_denoiser is 3-D (the segmentation encoder's); set model.spatial_dims: 3")
        _check_channels(in_channels)
        try:
            self.encoder = resnet_encoder(in_channels, encoder, encoder_channels, stem_strides(stem_stride), shortcut_type, encoder_norm)
        except ValueError as exc:
            raise ConfigError(f"resnet_denoiser: {exc}") from None
        self.lateral = nn.ModuleList(nn.Conv3d(c, decoder_channels, 1) for c in encoder_feature_channels(encoder, encoder_channels))
        self.smooth = nn.ModuleList(nn.Conv3d(decoder_channels, decoder_channels, 3, padding=1) for _ in self.lateral)
        self.refine = nn.Conv3d(decoder_channels, decoder_channels, 3, padding=1)
        self.head = nn.Conv3d(decoder_channels, 1, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, return_kl: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        from medseg.models.resunet import encoder_features

        padded, sizes = _pad_to_multiple(x, 32)
        feats = encoder_features(self.encoder, padded)
        d = self.lateral[-1](feats[-1])
        d = F.leaky_relu(self.smooth[-1](d), 0.1)
        for i in range(len(feats) - 2, -1, -1):
            d = F.interpolate(d, size=feats[i].shape[2:], mode="trilinear", align_corners=False) + self.lateral[i](feats[i])
            d = F.leaky_relu(self.smooth[i](d), 0.1)
        d = F.interpolate(d, size=padded.shape[2:], mode="trilinear", align_corners=False)
        f = self.head(F.leaky_relu(self.refine(d), 0.1))
        out = output_floor(self, _crop(f, sizes) + _centre(x))
        return (out, out.new_zeros(())) if return_kl else out


# ------------------------------------------------------------------------------- configs


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _DenoiserConfig(_Strict):
    """What every denoiser's config has: its name (a Literal in each subclass), dimensionality and channels."""

    name: str
    spatial_dims: Literal[2, 3] = Field(2, description="2: axial slices (2.5-D with in_channels = 2k+1); 3: volumes.")
    in_channels: int = Field(1, ge=1, description="1, or 2k+1 for k context slices each side.")
    out_channels: Literal[1] = Field(1, description="Always 1: the clean image.")
    min_value: float | None = Field(
        None, description="Lowest value the image can take, in network units (MR magnitude: 0); outputs below it are "
        "raised to it at evaluation (`output_floor`); null: no floor."
    )


class REDCNNConfig(_DenoiserConfig):
    """RED-CNN (`REDCNN`): Chen et al. 2017's residual encoder-decoder."""

    name: Literal["redcnn"] = "redcnn"
    features: int = Field(96, ge=1, description="Hidden channels (paper: 96; fewer train faster on CPU, above all in 3-D).")
    kernel_size: int = Field(5, ge=2, description="Convolution size (paper: 5).")


class UNetDenoiserConfig(_DenoiserConfig):
    """Residual U-Net denoiser (`UNetDenoiser`, MONAI BasicUNet)."""

    name: Literal["unet_denoiser"] = "unet_denoiser"
    features: list[int] = Field(default_factory=lambda: [32, 32, 64, 128, 256, 32], min_length=6, max_length=6,
                                description="BasicUNet widths: 5 encoder levels and the last decoder level.")
    norm: Literal["instance", "batch", "none"] = Field("instance", description="Normalisation layers.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability.")
    noise_map: bool = Field(False, description="2-D: one more input channel, the noise σ the network estimates from "
                            "its input locally (`local_noise_map`): blind, FFDNet-style.")
    noise_map_scale: float = Field(30.0, gt=0, description="Factor of the noise map channel.")
    noise_map_block: int = Field(8, ge=1, description="Block of the noise map's median, in Haar coefficients (2·block "
                                 "pixels): larger = steadier where the noise is uniform.")


class VAEDenoiserConfig(_DenoiserConfig):
    """Convolutional VAE denoiser (`VAEDenoiser`); the task adds β·KL to its loss."""

    name: Literal["vae_denoiser"] = "vae_denoiser"
    features: int = Field(32, ge=1, description="Width of the first level (doubles per level).")
    levels: int = Field(3, ge=1, le=6, description="Stride-2 down/up steps (latent at 1/2^levels resolution).")
    latent_channels: int = Field(8, ge=1, description="Latent maps (μ and log σ² each).")


class ResNetDenoiserConfig(_DenoiserConfig):
    """The segmentation encoder with a light decoder (`ResNetDenoiser`): encoder pretraining."""

    name: Literal["resnet_denoiser"] = "resnet_denoiser"
    spatial_dims: Literal[3] = Field(3, description="3 only: the segmentation encoder is 3-D.")
    encoder: Literal["resnet10", "resnet18", "resnet34", "resnet50"] = Field("resnet18", description="As the segmentation model's.")
    encoder_channels: list[int] = Field(default_factory=lambda: [64, 128, 256, 512], min_length=4, max_length=4,
                                        description="As the segmentation model's (must match for model.pretrained).")
    stem_stride: int | list[int] = Field(2, description="As the segmentation model's.")
    shortcut_type: Literal["A", "B"] | None = Field(None, description="As the segmentation model's.")
    encoder_norm: Literal["batch", "instance"] = Field("batch", description="As the segmentation model's.")
    decoder_channels: int = Field(16, ge=1, description="Width of the light decoder.")


_CONFIGS: dict[str, tuple[type[_Strict], type[nn.Module]]] = {
    "resnet_denoiser": (ResNetDenoiserConfig, ResNetDenoiser),
    "redcnn": (REDCNNConfig, REDCNN),
    "unet_denoiser": (UNetDenoiserConfig, UNetDenoiser),
    "vae_denoiser": (VAEDenoiserConfig, VAEDenoiser),
}

#: The ``model.name`` values `build_denoiser` (and `medseg.models.build_model`) accept.
DENOISER_NAMES = tuple(_CONFIGS)


def build_denoiser(model_cfg: dict[str, Any]) -> nn.Module:
    """Build the denoiser named by ``model_cfg["name"]`` with fresh weights.

    Args:
        model_cfg: a config dict, e.g. ``{"name": "redcnn", "spatial_dims": 2, "in_channels": 5}``.

    Returns:
        The network (maps ``(B, C_in, ...)`` to ``(B, 1, ...)``).

    Raises:
        ConfigError: unknown name, unknown key or invalid value (the message lists valid keys).
    """
    name = model_cfg.get("name")
    if name not in _CONFIGS:
        raise ConfigError(f"model.name {name!r} is not a denoiser; expected one of {', '.join(DENOISER_NAMES)}")
    cfg_cls, net_cls = _CONFIGS[name]
    try:
        cfg = cfg_cls.model_validate(dict(model_cfg))
    except ValidationError as exc:
        problems = "; ".join(f"model.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid {name} config ({problems}); valid keys: {', '.join(cfg_cls.model_fields)}") from None
    kwargs = cfg.model_dump(exclude={"name", "out_channels"})
    for key in ("features", "encoder_channels", "stem_stride"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    return net_cls(**kwargs)

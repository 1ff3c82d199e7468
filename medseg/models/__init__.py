"""Networks. `build_model` rebuilds one from the model config stored in a checkpoint."""

from __future__ import annotations

from typing import Any

from torch import nn

from medseg.errors import ConfigError
from medseg.models.denoise import DENOISER_NAMES, build_denoiser
from medseg.models.pretrained import PretrainedReport, load_pretrained_encoder
from medseg.models.resunet import ResUNet3D

__all__ = ["DENOISER_NAMES", "PretrainedReport", "ResUNet3D", "build_denoiser", "build_model", "load_pretrained_encoder"]


def build_model(model_cfg: dict[str, Any]) -> nn.Module:
    """Build the network described by `model_cfg` (``Checkpoint.model``, a dumped `ModelConfig`).

    The returned network has freshly initialised weights (load ``Checkpoint.state_dict`` into
    it); the ``pretrained`` entry is ignored here (training applies it).

    By ``name``: denoisers (`DENOISER_NAMES`: redcnn, unet_denoiser, vae_denoiser) via
    `medseg.models.denoise.build_denoiser`; the low-dose CT GAN's networks (``rdb_generator``,
    ``patch_critic``) and ``residual_conv`` from their keyword arguments; anything else is a
    segmentation `ModelConfig` (`ResUNet3D`).

    Raises:
        ConfigError: unknown architecture or keys, or ``out_channels`` missing.
    """
    from medseg.models.gan import GAN_NETWORKS
    from medseg.models.image_nets import IMAGE_NETWORKS

    name = dict(model_cfg).get("name")
    if name in DENOISER_NAMES:
        return build_denoiser(dict(model_cfg))
    if name in GAN_NETWORKS or name in IMAGE_NETWORKS:  # image-to-image networks built from their keyword arguments
        network = GAN_NETWORKS.get(name) or IMAGE_NETWORKS[name]
        try:
            return network(**{k: v for k, v in dict(model_cfg).items() if k != "name"})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid model config for {name!r}: {exc}") from None
    from pydantic import ValidationError

    from medseg.config.schema import ModelConfig

    try:
        cfg = ModelConfig.model_validate(dict(model_cfg))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid model config ({problems}); valid keys: {', '.join(ModelConfig.model_fields)}") from None
    if cfg.out_channels is None:
        raise ConfigError("model config has no out_channels (number of classes including background)")
    return ResUNet3D(**cfg.network_kwargs())

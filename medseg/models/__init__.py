"""Networks. `build_model` rebuilds one from the model config stored in a checkpoint."""

from __future__ import annotations

from typing import Any

from torch import nn

from medseg.models.pretrained import PretrainedReport, load_pretrained_encoder
from medseg.models.resunet import ResUNet3D

__all__ = ["PretrainedReport", "ResUNet3D", "build_model", "load_pretrained_encoder"]


def build_model(model_cfg: dict[str, Any]) -> nn.Module:
    """Build the network described by `model_cfg` (``Checkpoint.model``, a dumped `ModelConfig`).

    The returned network has freshly initialised weights (load ``Checkpoint.state_dict`` into
    it); the ``pretrained`` entry is ignored here (training applies it).

    Raises:
        ConfigError: unknown architecture or keys, or ``out_channels`` missing.
    """
    from pydantic import ValidationError

    from medseg.config.schema import ModelConfig
    from medseg.errors import ConfigError
    from medseg.models.image_nets import IMAGE_NETWORKS

    name = dict(model_cfg).get("name")
    if name in IMAGE_NETWORKS:
        kwargs = {k: v for k, v in dict(model_cfg).items() if k != "name"}
        try:
            return IMAGE_NETWORKS[name](**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid model config for {name!r}: {exc}") from None

    try:
        cfg = ModelConfig.model_validate(dict(model_cfg))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid model config ({problems}); valid keys: {', '.join(ModelConfig.model_fields)}") from None
    if cfg.out_channels is None:
        raise ConfigError("model config has no out_channels (number of classes including background)")
    return ResUNet3D(**cfg.network_kwargs())

"""A perceptual loss on the features of a CT network medseg trained itself (from a local file).

WGAN-VGG-style enhancement compares generator output and full-dose target in the feature
space of an ImageNet VGG. Those weights would be a download, torchvision does not import with
the CPU torch build, and natural-image features are not CT features; instead the frozen
encoder of a medseg checkpoint is used:

- a segmentation checkpoint (`ResUNet3D`): its 3-D ResNet encoder (stem, then layer1…); an
  axial slice ``(B, 1, H, W)`` enters as a one-slice volume ``(B, 1, H, W, 1)`` (the 3-D
  convolutions are zero-padded along z, as at a volume's first slice);
- any checkpoint whose network has such an ``encoder`` (e.g. a pretraining autoencoder);
- a 2-D RED-CNN denoiser (`medseg.models.denoise.REDCNN`): its encoder convolutions.

The generator's network units are first brought to the feature network's own plan
(``hu_linear``: ``(HU − hu_min)/(hu_max − hu_min)``; ``ct_window``: the same, clipped to
[0, 1]), so the encoder sees what it was trained on. The loss is the mean over the chosen
stages of the mean squared feature difference; the encoder is frozen (eval mode, no
gradients to its weights; gradients flow to the generator's output).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from medseg.errors import ConfigError

__all__ = ["EncoderFeatureLoss"]


class EncoderFeatureLoss(nn.Module):
    """Mean squared difference of frozen encoder features of a medseg CT checkpoint.

    Args:
        checkpoint: the medseg checkpoint file (loaded with ``weights_only=True``).
        intensity: the generator's ``hu_linear`` intensity plan (``hu_min``, ``hu_max``).
        stages: encoder stages compared (1 = the first feature map only).

    Raises:
        CheckpointError: not a readable medseg checkpoint. ConfigError: not a CT network, or
            a network without an encoder this loss knows.
    """

    def __init__(self, checkpoint: str | os.PathLike[str], intensity: dict[str, Any], stages: int = 2) -> None:
        super().__init__()
        from medseg.checkpoint import load_checkpoint
        from medseg.models import build_model
        from medseg.models.denoise import REDCNN

        ckpt = load_checkpoint(checkpoint)
        where = f"loss.perceptual_checkpoint {checkpoint}"
        plan = dict(ckpt.preprocessing.get("intensity") or {})
        if ckpt.preprocessing.get("modality") != "CT" or plan.get("kind") not in ("ct_window", "hu_linear"):
            raise ConfigError(f"{where}: needs a CT network (intensity plan ct_window or hu_linear), found {plan or 'none'}")
        net = build_model(ckpt.model)
        net.load_state_dict(ckpt.state_dict)
        encoder = getattr(net, "encoder", None)
        if encoder is not None and all(hasattr(encoder, a) for a in ("conv1", "bn1", "act", "maxpool", "layer1")):
            self.kind = "resnet3d"
        elif isinstance(net, REDCNN) and isinstance(net.encoder[0], nn.Conv2d):
            self.kind = "redcnn2d"
        else:
            raise ConfigError(f"{where}: a {ckpt.model.get('name', type(net).__name__)} network has no encoder the perceptual loss can use "
                              "(a ResUNet3D/ResNet encoder or a 2-D RED-CNN)")
        self.encoder = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.stages = int(stages)
        self.src = (float(intensity["hu_min"]), float(intensity["hu_max"]))
        self.dst = (float(plan["hu_min"]), float(plan["hu_max"]))
        self.clip = plan["kind"] == "ct_window"

    def train(self, mode: bool = True) -> EncoderFeatureLoss:
        super().train(mode)
        self.encoder.eval()  # frozen: batch-norm statistics stay the trained ones
        return self

    def _units(self, x: torch.Tensor) -> torch.Tensor:
        hu = x * (self.src[1] - self.src[0]) + self.src[0]
        y = (hu - self.dst[0]) / (self.dst[1] - self.dst[0])
        return y.clamp(0.0, 1.0) if self.clip else y

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps of axial slices ``(B, 1, H, W)`` (generator units)."""
        x = self._units(x)
        e, out = self.encoder, []
        if self.kind == "resnet3d":
            h = e.act(e.bn1(e.conv1(x[..., None])))
            out.append(h)
            h = e.maxpool(h)
            for name in ("layer1", "layer2", "layer3")[: self.stages - 1]:
                h = getattr(e, name)(h)
                out.append(h)
            return out
        h = x
        for conv in list(e)[: self.stages]:
            h = torch.relu(conv(h))
            out.append(h)
        return out

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = self.features(target)
        got = self.features(prediction)
        return torch.stack([torch.mean((a.float() - b.float()) ** 2) for a, b in zip(got, ref)]).mean()

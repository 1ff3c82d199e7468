"""Load pretrained encoder weights from a local file into a `ResUNet3D` encoder.

Two layouts are understood:

- **MedicalNet** ResNet checkpoints (Chen et al. 2019, ``resnet_18_23dataset.pth`` …): a dict
  ``{"state_dict": {...}}`` (or a bare state dict) whose keys carry DataParallel's ``module.``
  prefix and a segmentation head ``conv_seg.*`` that is skipped;
- **medseg checkpoints** (`medseg.checkpoint`), e.g. a segmentation model or the encoder of a
  denoising autoencoder: the tensors under ``encoder.`` are used.

Nothing is downloaded: the file must exist locally. Files are read with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg.errors import CheckpointError

log = logging.getLogger(__name__)

_PREFIXES = ("", "module.", "encoder.", "module.encoder.", "backbone.", "model.")


@dataclass
class PretrainedReport:
    """What `load_pretrained_encoder` did: counts of tensors loaded and skipped."""

    path: Path
    layout: str
    loaded: int
    skipped: int
    skipped_names: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        more = f" (e.g. {', '.join(self.skipped_names[:3])})" if self.skipped_names else ""
        return f"{self.path.name} ({self.layout}): loaded {self.loaded} encoder tensors, skipped {self.skipped}{more}"


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    state_dict, kind = _read_raw_state_dict(path)
    from medseg.checkpoint import first_non_finite_tensor

    bad = first_non_finite_tensor(state_dict)
    if bad is not None:
        name, n_bad, n_all = bad
        raise CheckpointError(
            f"{path}: the pretrained weights are not finite ({name}: {n_bad} of {n_all} values are NaN or ±Inf); "
            "use a checkpoint from a run that did not diverge"
        )
    return state_dict, kind


def _read_raw_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if not path.is_file():
        raise CheckpointError(f"{path}: pretrained weights file not found (medseg never downloads weights)")
    try:
        raw: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot read pretrained weights ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc
    if isinstance(raw, dict) and "format" in raw and isinstance(raw.get("state_dict"), dict):
        return raw["state_dict"], f"medseg {raw.get('task', '?')} checkpoint"
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        return raw["state_dict"], "MedicalNet state_dict"
    if isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return raw, "bare state dict"
    raise CheckpointError(f"{path}: not a state dict, MedicalNet checkpoint or medseg checkpoint")


def load_pretrained_encoder(model: nn.Module, path: str | os.PathLike[str]) -> PretrainedReport:
    """Copy matching tensors from `path` into ``model.encoder`` (in place).

    The key prefix (``module.``, ``encoder.``, none …) is detected as the one that matches the most
    encoder tensors. Tensors of the file that are not encoder tensors (MedicalNet's ``conv_seg``,
    a decoder) are skipped and counted.

    Raises:
        CheckpointError: file missing/unreadable, no tensor matches, an encoder tensor is missing
            from the file, or shapes differ (another ResNet depth or width, other input channels).
    """
    path = Path(path)
    source, layout = _read_state_dict(path)
    target = model.encoder.state_dict()  # type: ignore[union-attr]

    def strip(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in source.items() if k.startswith(prefix)}

    best = max(_PREFIXES, key=lambda p: sum(k in target for k in strip(p)))
    mapped = strip(best)
    matched = [k for k in mapped if k in target]
    if not matched:
        raise CheckpointError(
            f"{path}: no tensor matches the {type(model.encoder).__name__} encoder "  # type: ignore[union-attr]
            f"(file keys look like {', '.join(list(source)[:3])}); is it a 3-D ResNet?"
        )
    bad_shape = [f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)}" for k in matched if mapped[k].shape != target[k].shape]
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    # an instance-norm encoder has no running statistics: the file's are skipped (counted below)
    if bad_shape or missing:
        details = "; ".join(bad_shape[:3]) if bad_shape else f"missing {', '.join(missing[:3])}"
        raise CheckpointError(
            f"{path}: pretrained weights do not fit the encoder ({len(bad_shape)} shape mismatches, "
            f"{len(missing)} tensors missing; {details}). Check model.encoder (resnet10/18/34/50), "
            "model.encoder_channels ([64, 128, 256, 512] for MedicalNet) and model.in_channels."
        )
    with torch.no_grad():
        new_state = dict(target)
        new_state.update({k: mapped[k] for k in matched})
        model.encoder.load_state_dict(new_state)  # type: ignore[union-attr]
    skipped = [k for k in source if not (k.startswith(best) and k[len(best) :] in target)]
    report = PretrainedReport(path, layout, loaded=len(matched), skipped=len(skipped), skipped_names=skipped)
    log.info("pretrained encoder: %s", report)
    return report

"""Loading checkpoints for inference (once per batch, shared by every series): segmentation
and image-to-image (denoising, GAN generator) networks alike, rebuilt by `medseg.models.build_model`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from medseg.device import resolve_device
from medseg.errors import CheckpointError
from medseg.inference.loaded_model import LoadedModel, file_fingerprint

__all__ = ["LoadedModel", "file_fingerprint", "load_model", "load_models", "resolve_device"]

log = logging.getLogger(__name__)


def load_model(path: str | os.PathLike[str], device: str | Any = "auto") -> LoadedModel:
    """Load one checkpoint (any task) and rebuild its network for inference.

    Args:
        path: a medseg checkpoint (``best.pt`` / ``last.pt`` written by training), or a
            ``.onnx`` / ``.ts`` file written by `medseg export` (with its sidecar JSON).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.

    Raises:
        CheckpointError: missing/corrupt file, a segmentation checkpoint without labels, no
            preprocessing plan, or weights that do not fit the network the config describes.
    """
    import torch

    from medseg.checkpoint import load_checkpoint
    from medseg.models import build_model

    path = Path(path)
    if path.suffix in (".onnx", ".ts"):  # exported by `medseg export`, with a sidecar JSON
        from medseg.inference.exported import load_exported

        return load_exported(path, device)
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt.task == "segmentation" and not ckpt.labels:
        raise CheckpointError(f"{path}: segmentation checkpoint without 'labels'; cannot name the output classes")
    if not ckpt.preprocessing:
        raise CheckpointError(f"{path}: checkpoint has no 'preprocessing' plan; re-save it with medseg train")
    try:
        network = build_model(ckpt.model)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot rebuild the network from its model config ({exc})") from exc
    try:
        network.load_state_dict(ckpt.state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not match the network its config describes ({first})") from exc
    network.to(dev).eval()
    inference = dict(ckpt.inference or {})
    if ckpt.task == "segmentation":
        inference.setdefault("roi_size", [96, 96, 96])
    inference.setdefault("overlap", 0.25)
    inference.setdefault("sw_batch_size", 1)
    return LoadedModel(
        path=path,
        network=network,
        labels=dict(sorted(ckpt.labels.items())),
        plan=dict(ckpt.preprocessing),
        inference=inference,
        device=dev,
        fingerprint=file_fingerprint(path),
        metrics=dict(ckpt.metrics or {}),
        task=str(ckpt.task),
    )


def load_models(paths: list[str | os.PathLike[str]], device: str | Any = "auto") -> list[LoadedModel]:
    """Load one checkpoint, or several for an ensemble and check they can be averaged.

    Several checkpoints must all be segmentation checkpoints with the same label set (values
    and names) and the same modality (image-to-image models are applied one at a time); their preprocessing plans may differ (each model sees its
    own preprocessing; probabilities are averaged on a common grid).

    Raises:
        CheckpointError: no path given, or checkpoints that disagree on labels or modality.
    """
    if not paths:
        raise CheckpointError("no checkpoint given (use --model CKPT, repeat it to ensemble several)")
    models = [load_model(p, device) for p in paths]
    ref = models[0]
    if len(models) > 1 and any(m.task != "segmentation" for m in models):
        raise CheckpointError(
            f"cannot ensemble {', '.join(f'{m.path.name} ({m.task})' for m in models)}: only segmentation "
            "checkpoints are ensembled; apply an image model on its own"
        )
    for m in models[1:]:
        if m.labels != ref.labels:
            only_ref = {k: v for k, v in ref.labels.items() if m.labels.get(k) != v}
            only_m = {k: v for k, v in m.labels.items() if ref.labels.get(k) != v}
            raise CheckpointError(
                f"cannot ensemble {ref.path} and {m.path}: their label sets differ "
                f"({ref.path.name} has {only_ref}, {m.path.name} has {only_m}); "
                "ensemble only checkpoints trained on the same labels"
            )
        if m.modality != ref.modality:
            raise CheckpointError(
                f"cannot ensemble {ref.path} ({ref.modality}) and {m.path} ({m.modality}): different modalities"
            )
    return models

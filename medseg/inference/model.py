"""Loading checkpoints for inference (once per batch, shared by every series): segmentation
and image-to-image (denoising, GAN generator) networks alike, rebuilt by `medseg.models.build_model`."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medseg.device import resolve_device
from medseg.errors import CheckpointError

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A network ready for inference, with everything its checkpoint carries.

    Attributes:
        path: the checkpoint file.
        task: the checkpoint's task: ``"segmentation"``, ``"denoising"`` or ``"gan"`` (the
            batch runner picks its writers by it).
        network: the rebuilt network in ``eval()`` mode on `device`.
        labels: label value → structure name (background 0 implicit); {} for image tasks.
        plan: the preprocessing plan (``modality``, ``spacing_mm``, ``orientation``, ``intensity``).
        inference: sliding-window defaults (``roi_size``, ``overlap``, ``sw_batch_size``; image
            tasks also ``spatial_dims``, ``context_slices``).
        device: where the network runs.
        fingerprint: short SHA-256 of the checkpoint file (recorded in outputs for provenance
            and used to decide whether a finished series was made by the same model).
    """

    path: Path
    network: Any
    labels: dict[int, str]
    plan: dict[str, Any]
    inference: dict[str, Any]
    device: Any
    fingerprint: str
    metrics: dict[str, Any] = field(default_factory=dict)
    task: str = "segmentation"

    def without_network(self) -> LoadedModel:
        """A copy without its network (plans, labels, fingerprint): what background stages need."""
        import torch

        return replace(self, network=None, device=torch.device("cpu"))

    @property
    def modality(self) -> str | None:
        """Modality the model was trained on (``"CT"`` / ``"MR"``) or None when unknown."""
        mod = self.plan.get("modality")
        return str(mod).upper() if mod else None

    @property
    def channel_values(self) -> list[int]:
        """Label value of each output channel: background 0, then the label values in order."""
        return [0, *sorted(self.labels)]


def file_fingerprint(path: str | os.PathLike[str], n: int = 16) -> str:
    """Short SHA-256 hex digest of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


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
        from medseg.inference.export import load_exported

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

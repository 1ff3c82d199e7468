"""Loading segmentation checkpoints for inference (once per batch, shared by every series)."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import CheckpointError

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A segmentation network ready for inference, with everything its checkpoint carries.

    Attributes:
        path: the checkpoint file.
        network: the rebuilt network in ``eval()`` mode on `device`.
        labels: label value → structure name (background 0 implicit).
        plan: the preprocessing plan (``modality``, ``spacing_mm``, ``orientation``, ``intensity``).
        inference: sliding-window defaults (``roi_size``, ``overlap``, ``sw_batch_size``).
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

    @property
    def modality(self) -> str | None:
        """Modality the model was trained on (``"CT"`` / ``"MR"``) or None when unknown."""
        mod = self.plan.get("modality")
        return str(mod).upper() if mod else None

    @property
    def channel_values(self) -> list[int]:
        """Label value of each output channel: background 0, then the label values in order."""
        return [0, *sorted(self.labels)]


def resolve_device(device: str = "auto") -> Any:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"`` as given.

    Raises:
        InputError: CUDA asked for but not available, or an unknown device name.
    """
    import torch

    from medseg.errors import InputError

    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device {device!r} (expected auto, cpu, cuda or cuda:N)") from exc


def file_fingerprint(path: str | os.PathLike[str], n: int = 16) -> str:
    """Short SHA-256 hex digest of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def load_model(path: str | os.PathLike[str], device: str | Any = "auto") -> LoadedModel:
    """Load one segmentation checkpoint and rebuild its network for inference.

    Args:
        path: a medseg checkpoint (``best.pt`` / ``last.pt`` written by training), or a
            ``.onnx`` / ``.ts`` file written by `medseg export` (with its sidecar JSON).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.

    Raises:
        CheckpointError: missing/corrupt file, not a segmentation checkpoint (e.g. a denoising
            one), no labels, or weights that do not fit the network the config describes.
    """
    import torch

    from medseg.checkpoint import load_checkpoint
    from medseg.models import build_model

    path = Path(path)
    if path.suffix in (".onnx", ".ts"):  # exported by `medseg export`, with a sidecar JSON
        from medseg.inference.export import load_exported

        return load_exported(path, device)
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    ckpt = load_checkpoint(path, map_location="cpu", expected_task="segmentation")
    if not ckpt.labels:
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
    )


def load_models(paths: list[str | os.PathLike[str]], device: str | Any = "auto") -> list[LoadedModel]:
    """Load several checkpoints for an ensemble and check they can be averaged.

    Every checkpoint must be a segmentation checkpoint with the same label set (values and
    names) and the same modality; their preprocessing plans may differ (each model sees its
    own preprocessing; probabilities are averaged on a common grid).

    Raises:
        CheckpointError: no path given, or checkpoints that disagree on labels or modality.
    """
    if not paths:
        raise CheckpointError("no checkpoint given (use --model CKPT, repeat it to ensemble several)")
    models = [load_model(p, device) for p in paths]
    ref = models[0]
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

"""medseg's one checkpoint format (training writes it; inference, export and napari read it).

A checkpoint is a ``torch.save``'d dict of plain Python containers, strings, numbers and
tensors only, so that it loads with ``torch.load(..., weights_only=True)`` (no pickle code
execution). It carries everything inference needs (nnU-Net's "plans travel with the model"):

- ``format``: `CHECKPOINT_FORMAT`
- ``task``: ``"segmentation"``, ``"denoising"`` or ``"gan"``
- ``model``: the model config (``medseg.models.build_model(model)`` rebuilds the network)
- ``state_dict``: the network weights
- ``labels``: ``{"1": "liver", ...}`` label value (as str) → name; background 0 is implicit
- ``preprocessing``: the preprocessing plan, see `PreprocessingPlan`
- ``inference``: defaults for sliding-window inference (``roi_size``, ``overlap``, ...)
- ``config``: the full resolved workflow config (for provenance)
- ``versions``: medseg/torch/monai versions that wrote it
- ``metrics``: e.g. ``{"epoch": 12, "val_mean_dice": 0.87}``
- ``training_state``: optional; optimizer/scheduler/scaler/RNG state for exact ``--resume``
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import CheckpointError

CHECKPOINT_FORMAT = 1
TASKS = ("segmentation", "denoising", "gan")


@dataclass
class Checkpoint:
    """In-memory form of a medseg checkpoint (see the module docstring for each field).

    ``preprocessing`` keys (the plan every consumer applies the same way):
    ``modality`` ("CT" | "MR"), ``spacing_mm`` ([x, y, z] or None = keep native),
    ``orientation`` ("RAS"), ``intensity``: for CT ``{"kind": "ct_window", "hu_min": .., "hu_max": ..}``
    (clip then scale to [0, 1]); for MR ``{"kind": "percentile_zscore", "lower": 0.5, "upper": 99.5}``
    (clip to those percentiles of the volume, then z-score over non-zero voxels).
    """

    task: str
    model: dict[str, Any]
    state_dict: dict[str, Any]
    labels: dict[int, str] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training_state: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The on-disk dict (label keys as strings, for weights-only loading)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "task": self.task,
            "model": self.model,
            "state_dict": self.state_dict,
            "labels": {str(k): v for k, v in self.labels.items()},
            "preprocessing": self.preprocessing,
            "inference": self.inference,
            "config": self.config,
            "versions": self.versions or current_versions(),
            "metrics": self.metrics,
            "training_state": self.training_state,
        }


def current_versions() -> dict[str, str]:
    """Versions of medseg, torch and monai (recorded in every checkpoint)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for dist in ("medseg", "torch", "monai"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "unknown"
    return out


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write `ckpt` to `path` atomically (temp file + rename) and return the path."""
    import torch

    from medseg.io.atomic import atomic_path

    if ckpt.task not in TASKS:
        raise CheckpointError(f"unknown checkpoint task {ckpt.task!r}; expected one of {TASKS}")
    path = Path(path)
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(ckpt.to_dict(), tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | Any = "cpu", expected_task: str | None = None
) -> Checkpoint:
    """Load a medseg checkpoint safely (``weights_only=True``) and check its format.

    Args:
        path: the ``.pt`` file.
        map_location: passed to ``torch.load`` (default CPU).
        expected_task: if given, a checkpoint of another task is a `CheckpointError`.

    Raises:
        CheckpointError: missing/corrupt file, not a medseg checkpoint, newer format, wrong
            task, a file holding Python objects besides weights (refused unread), or weights
            that are NaN/±Inf (the first bad tensor is named).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, unsafe globals...
        raise CheckpointError(_load_failure(path, exc)) from exc
    if not isinstance(raw, dict) or "format" not in raw or "state_dict" not in raw:
        raise CheckpointError(
            f"{path}: not a medseg checkpoint (expected a dict with 'format' and 'state_dict'; "
            "for MedicalNet or other raw state dicts use the workflow's pretrained-weights option)"
        )
    if int(raw["format"]) > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {raw['format']} is newer than this medseg supports "
            f"({CHECKPOINT_FORMAT}); upgrade medseg"
        )
    task = raw.get("task")
    if expected_task is not None and task != expected_task:
        raise CheckpointError(f"{path}: this is a {task!r} checkpoint, but a {expected_task!r} checkpoint is needed")
    bad = first_non_finite_tensor(raw["state_dict"])
    if bad is not None:
        name, n_bad, n_all = bad
        raise CheckpointError(
            f"{path}: the weights are not finite ({name}: {n_bad} of {n_all} values are NaN or ±Inf); "
            "the training that wrote it diverged — use an earlier checkpoint or retrain (e.g. with a lower optim.lr)"
        )
    return Checkpoint(
        task=task,
        model=raw.get("model", {}),
        state_dict=raw["state_dict"],
        labels={int(k): v for k, v in (raw.get("labels") or {}).items()},
        preprocessing=raw.get("preprocessing", {}),
        inference=raw.get("inference", {}),
        config=raw.get("config", {}),
        versions=raw.get("versions", {}),
        metrics=raw.get("metrics", {}),
        training_state=raw.get("training_state"),
    )


def first_non_finite_tensor(state_dict: dict[str, Any]) -> tuple[str, int, int] | None:
    """The first floating-point tensor of `state_dict` holding NaN/±Inf.

    Returns:
        ``(name, non-finite count, element count)``, or None when every weight is finite.
    """
    import torch

    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                return str(name), int(finite.numel() - int(finite.sum())), int(finite.numel())
    return None


def _load_failure(path: Path, exc: Exception) -> str:
    """medseg's own sentence for a checkpoint `torch.load(weights_only=True)` would not load."""
    import pickle
    import re

    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "weights only" in text.lower():
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" (it asks for {found.group(1)})" if found else ""
        return (
            f"{path}: refused: the file holds Python objects besides tensors and plain containers{what}, which "
            "could run code while loading; medseg only loads weights (torch.load with weights_only=True) and "
            "never unpickles code. Use a checkpoint written by medseg, or re-save only the state dict of a "
            "file you trust"
        )
    first = text.strip().splitlines()[0] if text.strip() else "no details"
    return f"{path}: not a readable checkpoint file ({type(exc).__name__}: {first}); it may be truncated or of another kind"

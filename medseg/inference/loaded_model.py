"""`LoadedModel`: a network ready for inference with what its checkpoint carries (the type only;
loading is `medseg.inference.model`)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


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

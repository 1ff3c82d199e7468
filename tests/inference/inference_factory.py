"""Helpers of the inference tests (imported as ``from inference_factory import ...``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medseg.inference.model import LoadedModel

CT_PLAN = {
    "modality": "CT",
    "spacing_mm": [2.0, 2.5, 4.0],
    "orientation": "RAS",
    "intensity": {"kind": "ct_window", "hu_min": -200.0, "hu_max": 300.0},
}
#: The HU value the threshold model separates at (middle of the plan's window).
THRESHOLD_HU = 50.0

TINY_RESUNET = {
    "encoder": "resnet10",
    "encoder_channels": [8, 16, 32, 64],
    "decoder_channels": [32, 16, 16, 8, 8],
    "aspp_channels": 8,
}


class ThresholdNet(torch.nn.Module):
    """Logits (0, 40·(x − 0.5)): class 1 where the window-normalised intensity exceeds 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 40.0 * (x - 0.5)], dim=1)


def make_threshold_model(plan: dict | None = None, roi=(48, 48, 32), name: str = "threshold") -> LoadedModel:
    return LoadedModel(
        path=Path(f"{name}.pt"),
        network=ThresholdNet().eval(),
        labels={1: "bright"},
        plan=dict(plan or CT_PLAN),
        inference={"roi_size": list(roi), "overlap": 0.25, "sw_batch_size": 2},
        device=torch.device("cpu"),
        fingerprint=name,
    )


def save_random_ckpt(path: Path, labels: dict[int, str], task: str = "segmentation", modality: str = "CT") -> Path:
    from medseg.checkpoint import Checkpoint, save_checkpoint
    from medseg.models import build_model

    cfg = {**TINY_RESUNET, "out_channels": len(labels) + 1}
    torch.manual_seed(0)
    net = build_model(cfg)
    plan = {**CT_PLAN, "modality": modality, "spacing_mm": [3.0, 3.0, 3.0]}
    return save_checkpoint(
        Checkpoint(
            task=task, model=cfg, state_dict=net.state_dict(), labels=labels, preprocessing=plan,
            inference={"roi_size": [64, 64, 32], "overlap": 0.25, "sw_batch_size": 2},
        ),
        path,
    )


def reoriented(volume, perm=(2, 0, 1), flip_axis=1):
    """The same image with permuted / flipped voxel axes and an affine keeping world positions."""
    from medseg.io import Volume

    arr = np.transpose(volume.array, perm)
    aff = volume.affine.copy()
    aff[:3, :3] = volume.affine[:3, :3][:, list(perm)]
    arr = np.flip(arr, axis=flip_axis)
    n = arr.shape[flip_axis]
    aff[:3, 3] = aff[:3, 3] + aff[:3, flip_axis] * (n - 1)
    aff[:3, flip_axis] = -aff[:3, flip_axis]
    return Volume(np.ascontiguousarray(arr), aff, dict(volume.meta))


def undo_reoriented(array, perm=(2, 0, 1), flip_axis=1):
    return np.transpose(np.flip(array, axis=flip_axis), np.argsort(perm))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum() + b.sum())
    return 2.0 * np.logical_and(a, b).sum() / s if s else 1.0


def corrupt_j2k_series(src: Path, dst: Path, indices: tuple[int, ...] = (4, 10, 15)) -> Path:
    """Copy a JPEG 2000 series and overwrite part of some files' compressed pixel data.

    The headers stay valid (the scan accepts the series); decoding those slices fails. An
    undecodable slice is a missing slice (interpolated); the default 3 of 20 (15 %) is more
    than `medseg.io.dicom.MAX_MISSING_SLICE_FRACTION`, so the series fails.
    """
    import shutil

    shutil.copytree(src, dst)
    files = sorted(p for p in dst.iterdir() if p.is_file())
    rng = np.random.default_rng(0)
    for index in indices:
        data = bytearray(files[index].read_bytes())
        data[-5000:-100] = rng.integers(0, 256, 4900, dtype=np.uint8).tobytes()
        files[index].write_bytes(bytes(data))
    return dst

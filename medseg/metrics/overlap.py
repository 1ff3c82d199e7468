"""Overlap metrics of binary masks: Dice, IoU (Jaccard) and volumes.

* Dice = ``2|G∩P| / (|G| + |P|)``; IoU = ``|G∩P| / |G∪P|``.
* Both masks empty → 1 (a correct "absent" call); exactly one empty → 0.
* Volume in mL = voxel count × voxel volume (product of the spacings in mm) / 1000.

MONAI's ``DiceMetric`` / ``MeanIoU`` give the same values, except that with their default
``ignore_empty=True`` an empty ground truth gives ``nan``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["dice", "dice_from_counts", "iou", "iou_from_counts", "volume_ml"]


def dice_from_counts(n_gt: int, n_pred: int, n_both: int) -> float:
    """Dice from voxel counts ``|G|``, ``|P|``, ``|G∩P|`` (1.0 when both are empty)."""
    if n_gt + n_pred == 0:
        return 1.0
    return 2.0 * n_both / (n_gt + n_pred)


def iou_from_counts(n_gt: int, n_pred: int, n_both: int) -> float:
    """IoU from voxel counts ``|G|``, ``|P|``, ``|G∩P|`` (1.0 when both are empty)."""
    union = n_gt + n_pred - n_both
    if union == 0:
        return 1.0
    return n_both / union


def _counts(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    g = np.asarray(gt) != 0
    p = np.asarray(pred) != 0
    if g.shape != p.shape:
        raise ValueError(f"gt and pred must have the same shape, got {g.shape} and {p.shape}")
    return int(np.count_nonzero(g)), int(np.count_nonzero(p)), int(np.count_nonzero(g & p))


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Dice coefficient ``2|G∩P| / (|G|+|P|)`` of two binary masks (nonzero = inside).

    Example: a 10-voxel-long bar and the same bar shifted by one voxel → 2·9/20 = 0.9.
    """
    return dice_from_counts(*_counts(gt, pred))


def iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """Intersection over union ``|G∩P| / |G∪P|`` (Jaccard index) of two binary masks."""
    return iou_from_counts(*_counts(gt, pred))


def volume_ml(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Volume of a binary mask in millilitres (1 mL = 1000 mm³)."""
    return float(np.count_nonzero(mask)) * float(np.prod(np.asarray(spacing_mm, dtype=np.float64))) / 1000.0

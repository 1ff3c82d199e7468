"""Segmentation metrics: Dice, IoU, Hausdorff (HD), HD95, ASSD, NSD and volumes.

Exact definitions are in `medseg.metrics.surface` (boundary distances) and
`medseg.metrics.overlap` (Dice, IoU); `evaluate_case` computes all of them for every label of a
case. The evaluation report (`medseg.report`) and training validation use these functions.

Example:
    >>> from medseg.metrics import evaluate_case, hd95
    >>> rows = evaluate_case(gt_labels, pred_labels, spacing_mm=(0.8, 0.8, 2.0),
    ...                      labels={1: "liver", 2: "spleen"}, nsd_tolerance_mm=1.0)
"""

from medseg.metrics.case import METRIC_KEYS, ROW_KEYS, evaluate_case, label_map
from medseg.metrics.overlap import dice, dice_from_counts, iou, iou_from_counts, volume_ml
from medseg.metrics.surface import SurfaceDistances, assd, boundary, bounding_box, hausdorff, hd95, nsd, surface_distances

__all__ = [
    "METRIC_KEYS",
    "ROW_KEYS",
    "SurfaceDistances",
    "assd",
    "boundary",
    "bounding_box",
    "dice",
    "dice_from_counts",
    "evaluate_case",
    "hausdorff",
    "hd95",
    "iou",
    "iou_from_counts",
    "label_map",
    "nsd",
    "surface_distances",
    "volume_ml",
]

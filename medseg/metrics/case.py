"""All metrics of one case (a ground-truth and a predicted label map) for every label at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.metrics.overlap import dice_from_counts, iou_from_counts
from medseg.metrics.surface import _check_spacing, _surface_distances_cropped

__all__ = ["METRIC_KEYS", "ROW_KEYS", "empty_row", "evaluate_case", "label_map"]

#: The per-label metrics, in report order.
METRIC_KEYS: tuple[str, ...] = ("dice", "iou", "hd", "hd95", "assd", "nsd", "volume_gt_ml", "volume_pred_ml")
#: Keys of each dict `evaluate_case` returns, in order.
ROW_KEYS: tuple[str, ...] = ("label", "name", *METRIC_KEYS)


def default_label_name(label: int) -> str:
    """Name used for a label that the caller did not name: ``label_3``."""
    return f"label_{label}"


def label_map(array: Any, what: str = "label map") -> np.ndarray:
    """`array` (or a `Volume`'s array) as an integer label map.

    Booleans become 0/1; floating-point arrays are accepted when every value is a whole number
    (label maps saved as float NIfTI), else an `InputError` is raised.
    """
    array = np.asarray(getattr(array, "array", array))
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if np.issubdtype(array.dtype, np.floating):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise InputError(f"{what} holds non-integer values (e.g. {array[array != rounded].flat[0]!r}); expected integer labels")
        lo, hi = (float(rounded.min()), float(rounded.max())) if rounded.size else (0.0, 0.0)
        dtype = np.uint8 if lo >= 0 and hi < 256 else np.uint16 if lo >= 0 and hi < 65536 else np.int64
        return rounded.astype(dtype)
    raise InputError(f"{what} has data type {array.dtype}; expected integer labels")


def _label_boxes(labels_arr: np.ndarray, max_label: int | None) -> list[tuple[slice, ...] | None]:
    """Bounding box of every label 1..max in one pass (scipy's find_objects)."""
    from scipy import ndimage

    if labels_arr.size == 0:
        return []
    arr = labels_arr
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
        arr = arr.astype(np.int64)
    if max_label is None:
        hi = int(arr.max())
        if hi <= 0:
            return []
        max_label = hi
    return list(ndimage.find_objects(arr, max_label=max_label))


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, shape: tuple[int, ...], margin: int) -> tuple[slice, ...] | None:
    if a is None and b is None:
        return None
    boxes = [s for s in (a, b) if s is not None]
    return tuple(
        slice(max(min(bx[d].start for bx in boxes) - margin, 0), min(max(bx[d].stop for bx in boxes) + margin, shape[d]))
        for d in range(len(shape))
    )


def empty_row(label: int, name: str) -> dict[str, Any]:
    """The row of a label absent from both ground truth and prediction (a correct "absent")."""
    return {
        "label": int(label),
        "name": name,
        "dice": 1.0,
        "iou": 1.0,
        "hd": 0.0,
        "hd95": 0.0,
        "assd": 0.0,
        "nsd": 1.0,
        "volume_gt_ml": 0.0,
        "volume_pred_ml": 0.0,
    }


def evaluate_case(
    gt: np.ndarray,
    pred: np.ndarray,
    spacing_mm: Sequence[float],
    labels: Mapping[int, str] | None = None,
    nsd_tolerance_mm: float = 1.0,
    *,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Dice, IoU, HD, HD95, ASSD, NSD and volumes of every label of one case.

    Definitions: see `medseg.metrics.surface` (boundary = mask minus its 6-connected erosion,
    Euclidean distances in mm between boundary voxel centres; HD, HD95 = max of the two
    directed 95th percentiles, ASSD pooled mean, NSD at `nsd_tolerance_mm`) and
    `medseg.metrics.overlap` (Dice, IoU). Both masks empty → Dice = IoU = NSD = 1 and distances
    0; exactly one empty → Dice = IoU = NSD = 0 and distances ``inf``.

    Each label is evaluated on the bounding box of its union in both maps plus one voxel (one
    pass over the arrays finds all boxes), so the cost follows the organ size, not the image.

    Args:
        gt: ground-truth integer label map (0 = background); booleans count as label 1.
        pred: predicted label map of the same shape (same grid: resample before calling).
        spacing_mm: voxel size in mm along each array axis (``Volume.spacing``).
        labels: ``{label value: name}`` of the labels to report, in this order; labels absent
            from both maps are reported as both-empty; a 0 (background) entry is skipped. None:
            every nonzero label present in either map, named ``label_<value>``.
        nsd_tolerance_mm: tolerance τ of the normalised surface Dice, in mm.
        threads: threads for the nearest-neighbour searches (-1 = all cores).

    Returns:
        One dict per label with keys ``label, name, dice, iou, hd, hd95, assd, nsd,
        volume_gt_ml, volume_pred_ml`` (floats; ``inf`` where a distance is undefined).

    Raises:
        GeometryError: the two arrays have different shapes.
        InputError: a map is not made of integer labels.
        ValueError: bad spacing or tolerance.

    Example:
        >>> gt = np.zeros((10, 10, 10), np.uint8); gt[2:6, 2:6, 2:6] = 1
        >>> pred = np.roll(gt, 1, axis=0)
        >>> evaluate_case(gt, pred, (1, 1, 1))[0]["dice"]
        0.75
    """
    g = label_map(gt, "ground truth")
    p = label_map(pred, "prediction")
    if g.shape != p.shape:
        raise GeometryError(f"ground truth shape {g.shape} and prediction shape {p.shape} differ")
    spacing = _check_spacing(spacing_mm, g.ndim)
    if not (np.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise ValueError(f"nsd_tolerance_mm must be a finite number >= 0, got {nsd_tolerance_mm}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if labels is not None:
        wanted = [(int(k), str(v)) for k, v in labels.items() if int(k) != 0]  # 0 = background: skipped
        if any(k < 0 for k, _ in wanted):
            raise ValueError(f"labels must be positive integers (0 is background), got {sorted(labels)}")
        max_label = max((k for k, _ in wanted), default=0)
        boxes_g = _label_boxes(g, max_label) if max_label else []
        boxes_p = _label_boxes(p, max_label) if max_label else []
    else:
        boxes_g = _label_boxes(g, None)
        boxes_p = _label_boxes(p, None)
        present = {i + 1 for i, b in enumerate(boxes_g) if b is not None} | {i + 1 for i, b in enumerate(boxes_p) if b is not None}
        wanted = [(k, default_label_name(k)) for k in sorted(present)]

    rows: list[dict[str, Any]] = []
    for label, name in wanted:
        bg = boxes_g[label - 1] if label <= len(boxes_g) else None
        bp = boxes_p[label - 1] if label <= len(boxes_p) else None
        box = _union_box(bg, bp, g.shape, margin=1)
        if box is None:
            rows.append(empty_row(label, name))
            continue
        gm = g[box] == label
        pm = p[box] == label
        n_g = int(np.count_nonzero(gm))
        n_p = int(np.count_nonzero(pm))
        n_both = int(np.count_nonzero(gm & pm))
        sd = _surface_distances_cropped(gm, pm, spacing, threads)
        rows.append(
            {
                "label": label,
                "name": name,
                "dice": dice_from_counts(n_g, n_p, n_both),
                "iou": iou_from_counts(n_g, n_p, n_both),
                "hd": sd.hausdorff(),
                "hd95": sd.hd95(),
                "assd": sd.assd(),
                "nsd": sd.nsd(nsd_tolerance_mm),
                "volume_gt_ml": n_g * voxel_ml,
                "volume_pred_ml": n_p * voxel_ml,
            }
        )
    return rows

"""Post-processing of integer label maps: largest connected component, hole filling.

Connected components come from ``cc3d`` (connected-components-3d, seung-lab's C++ labelling
library: all labels in one multi-label pass) and holes from ``fill_voids`` (same authors).
Written with them because they measured faster than the per-label ``scipy.ndimage.label``
versions they replace (`benchmarks/bench_inference.py`, docs/benchmarks.md). The tests check
both give the scipy definitions' result.

Both work on a copy of the box around the labels (`foreground_box`), not on the whole map:
segmentations fill a small part of a CT.
"""

from __future__ import annotations

import numpy as np

from medseg.io.volume import box_copy, count_label_values, foreground_box, label_values_present


def _unsigned(labels: np.ndarray) -> np.ndarray:
    if labels.dtype.kind == "u" or labels.dtype == np.bool_:
        return labels
    if labels.size and labels.min() < 0:
        from medseg.errors import InputError

        raise InputError("label maps must be >= 0 (0 = background)")
    return labels.astype(np.uint16 if labels.max(initial=0) < 65536 else np.uint32, order="K")


def keep_largest_component(labels: np.ndarray, values: list[int] | None = None, *, in_place: bool = False) -> np.ndarray:
    """Keep, for each label value, only its largest connected component (26-connectivity).

    Voxels of the smaller components become background (0). Spurious islands far from an
    organ are the typical failure of patch-based networks; the organ itself is one piece.
    Of components of equal (largest) size one is kept; which one is unspecified.

    Args:
        labels: integer label map (3-D, 0 = background).
        values: label values to process (default: all present). Leave out classes made of
            several structures (e.g. "kidneys" = left + right).
        in_place: modify `labels` itself instead of returning a modified copy.

    Returns:
        The label map with the same dtype and memory order (`labels` itself when `in_place`).
    """
    import cc3d
    import fastremap

    out = labels if in_place else labels.copy(order="K")  # keep the memory order (DICOM/NIfTI maps are Fortran-ordered)
    box = foreground_box(out) if labels.ndim == 3 else None
    if box is None:
        return out
    # only the box around the labels is labelled (the rest is background, whatever the values)
    region = out[box]
    lab = _unsigned(box_copy(out, box))
    # one multi-label pass: a component never spans two label values
    comp = cc3d.connected_components(lab, connectivity=26)
    parent = fastremap.component_map(comp, lab)  # component id → label value
    sizes = count_label_values(comp)
    best: dict[int, int] = {}
    for cid in sorted(parent):
        value = int(parent[cid])
        if cid == 0 or value == 0 or (values is not None and value not in values):
            continue
        if value not in best or sizes[cid] > sizes[best[value]]:
            best[value] = cid
    drop = np.zeros(sizes.size, dtype=bool)
    for cid, value in parent.items():
        if int(value) in best and cid != best[int(value)]:
            drop[cid] = True
    if drop.any():
        # a 1-D lookup over the components in memory order, reshaped in that order (boolean
        # indexing walks C order, against the memory order of a Fortran-ordered map)
        flat = drop[comp.ravel(order="K")]
        mask = flat.reshape(comp.shape, order="F" if comp.flags.f_contiguous and not comp.flags.c_contiguous else "C")
        np.copyto(region, 0, where=mask)
    return out


def fill_holes(labels: np.ndarray, values: list[int] | None = None, *, in_place: bool = False) -> np.ndarray:
    """Fill enclosed background holes inside each label (3-D, per label value).

    A hole is a background region (6-connected) of the label's bounding box that does not reach
    the box's faces, ``scipy.ndimage.binary_fill_holes``' definition. Only background voxels
    are filled; a hole that holds another label (e.g. a vessel inside the liver) is left as it is.

    Args:
        labels: integer label map, 0 = background.
        values: label values to process (default: all present).
        in_place: modify `labels` itself instead of returning a modified copy.

    Returns:
        The label map with the same dtype and memory order (`labels` itself when `in_place`).
    """
    import fill_voids

    out = labels if in_place else labels.copy(order="K")
    box = foreground_box(out) if labels.ndim == 3 else None
    if box is None:
        return out
    region = out[box]
    work = box_copy(out, box)
    for value in label_values_present(work):
        if values is not None and value not in values:
            continue
        mask = work == value
        sub = foreground_box(mask)  # the label's own box inside the foreground box
        filled = fill_voids.fill(mask[sub], in_place=False)
        target = region[sub]
        np.copyto(target, value, where=filled & (target == 0))
    return out

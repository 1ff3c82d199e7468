"""napari writers for Labels layers: NIfTI on the source grid, DICOM SEG for DICOM images.

The layer's data goes back to the source volume's voxel order and affine through
`medseg.io.viewer.volume_from_layer` (exact: flips/permutations only); NIfTI is written by
`medseg.io.write_nifti`, the SEG by `medseg.io.seg.write_dicom_seg` (atomic writes both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DicomError
from medseg.io import Volume, write_nifti
from medseg.io.viewer import volume_from_layer

from napari_plugin._layers import LABELS_KEY, SOURCE_KEY


def _label_names(meta: dict[str, Any]) -> dict[int, str]:
    names = (meta.get("metadata") or {}).get(LABELS_KEY) or {}
    return {int(k): str(v) for k, v in names.items()}


def labels_volume(data: Any, meta: dict[str, Any]) -> Volume:
    """A Labels layer's data and state as a label `Volume` on its source grid."""
    name = str(meta.get("name") or "labels")
    return volume_from_layer(np.asarray(data), meta.get("metadata") or {}, what=f"layer {name!r}")


def write_labels_nifti(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a Labels layer as NIfTI with the source image's geometry (affine and voxel order)."""
    volume = labels_volume(data, meta)
    arr = volume.array
    dtype = np.uint8 if arr.max(initial=0) <= 255 else np.uint16
    return [str(write_nifti(volume, path, dtype=dtype))]


def write_labels_dicom_seg(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a Labels layer as a DICOM SEG (BINARY) referencing the DICOM series it was drawn on.

    Raises:
        DicomError: the layer's image did not come from a DICOM series.
    """
    return _write_seg(path, data, meta, "binary")


def write_labels_dicom_seg_labelmap(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a Labels layer as a LABELMAP DICOM SEG (one frame per slice holding every label).

    Raises:
        DicomError: the layer's image did not come from a DICOM series.
    """
    return _write_seg(path, data, meta, "labelmap")


def _write_seg(path: str, data: Any, meta: dict[str, Any], seg_type: str) -> list[str]:
    from medseg.io.seg import write_dicom_seg

    name = str(meta.get("name") or "labels")
    source_meta = (meta.get("metadata") or {}).get(SOURCE_KEY) or {}
    if source_meta.get("format") != "dicom":
        raise DicomError(
            f"layer {name!r}: its image did not come from a DICOM series, so there is nothing for a SEG to "
            "reference; save it as NIfTI (.nii.gz) instead"
        )
    volume = labels_volume(data, meta)
    source = Volume(volume.array, volume.affine, dict(source_meta))
    out = write_dicom_seg(volume.array, source, _label_names(meta), path, seg_type=seg_type)
    return [str(out)]

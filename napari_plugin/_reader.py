"""napari reader: DICOM folders (one layer per image series), NIfTI / NRRD / MHA files.

Images open with their true geometry (`medseg.io.viewer.layer_geometry`: scale = spacing,
translate = origin, rotation for oblique series with a warning, the source affine in the
layer metadata) and a display window (CT: soft tissue). Files that hold a label map open as
Labels layers, named and coloured from a labels JSON next to them (`medseg.io.label_names`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from medseg.io.nifti import case_name, volume_suffix

from napari_plugin._layers import LayerData, image_layer, labels_layer

PathOrPaths = str | list[str]


def napari_get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """Return `read_paths` when every path is a volume file or a folder; else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    for p in map(Path, paths):
        if not (p.is_dir() or volume_suffix(p) is not None):
            return None
    return read_paths


def read_paths(path: PathOrPaths) -> list[LayerData]:
    """Layer-data tuples for every path (see the module docstring)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerData] = []
    for p in map(Path, paths):
        layers += read_dicom_folder(p) if p.is_dir() else [read_volume_file(p)]
    return layers


def read_volume_file(path: Path, label_names: dict[int, str] | None = None) -> LayerData:
    """One NIfTI/NRRD/MHA file as an Image or (for a label map) a Labels layer."""
    from medseg.io import load_volume
    from medseg.io.label_names import find_label_names
    from medseg.io.viewer import looks_like_label_map

    volume = load_volume(path)
    name = case_name(path)
    if looks_like_label_map(volume):
        if label_names is None:
            found = find_label_names(path)
            label_names = found[0] if found else None
        return labels_layer(volume, name, label_names)
    return image_layer(volume, name)


def read_dicom_folder(path: Path) -> list[LayerData]:
    """Every image series under a folder, one Image layer each, named by series number and description.

    Raises:
        DicomError: the folder holds no DICOM image series.
    """
    from medseg.errors import DicomError
    from medseg.io.dicom import read_dicom_series, scan_dicom_folder

    scan = scan_dicom_folder(path)
    if not scan.image_series:
        raise DicomError(f"{path}: no DICOM image series found ({len(scan.skipped)} file(s) skipped)")
    out = []
    for series in scan.image_series:
        volume = read_dicom_series(series)
        volume.meta["source_path"] = str(path)
        out.append(image_layer(volume, series.label))
    return out



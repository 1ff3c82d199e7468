"""`load_volume`: one entry point for every image input medseg accepts."""

from __future__ import annotations

import os
from pathlib import Path

from medseg.errors import InputError
from medseg.io.nifti import read_volume, volume_suffix
from medseg.io.volume import Volume


def load_volume(path: str | os.PathLike[str], series_uid: str | None = None) -> Volume:
    """Read a NIfTI/NRRD/MHA file, a DICOM file, or a folder holding a DICOM series.

    Args:
        path: image file (by suffix: .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd), or a DICOM
            file / folder tree (any other file name).
        series_uid: for a DICOM folder holding several image series, the SeriesInstanceUID to
            read (see `medseg info`).

    Returns:
        The `Volume` (RAS affine).

    Raises:
        InputError: the path does not exist or cannot be read (DicomError for DICOM input,
            e.g. when a folder holds several series and `series_uid` is not given).
    """
    from medseg.io.dicom import read_dicom_series

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_file() and volume_suffix(p) is not None:
        if series_uid is not None:
            raise InputError(f"{p}: series_uid applies to DICOM input only")
        return read_volume(p)
    return read_dicom_series(p, series_uid=series_uid)

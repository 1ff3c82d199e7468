"""NIfTI (nibabel) and NRRD/MHA/MHD (SimpleITK) reading and writing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.io.orientation import affine_from_itk, itk_geometry_from_affine
from medseg.io.volume import Volume, replace_non_finite

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


def volume_suffix(path: str | os.PathLike[str]) -> str | None:
    """The recognised image-file suffix of `path` (``'.nii.gz'``, ``'.nrrd'`` …) or None."""
    name = Path(path).name.lower()
    for suf in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.endswith(suf):
            return suf
    return None


def case_name(path: str | os.PathLike[str]) -> str:
    """File name without its image suffix: ``liver_001.nii.gz`` → ``liver_001``."""
    p = Path(path)
    suf = volume_suffix(p)
    return p.name[: -len(suf)] if suf else p.stem


def read_nifti(path: str | os.PathLike[str]) -> Volume:
    """Read a NIfTI file into a `Volume` (array in the file's voxel order, RAS affine).

    NaN/±Inf voxels follow medseg's policy (`medseg.io.volume.replace_non_finite`): replaced
    by the finite minimum with a warning in ``meta["warnings"]``, refused above 10 %.

    Raises:
        InputError: the file is missing, not NIfTI, truncated, or not 3-D/4-D; no finite
            voxel, or more than 10 % non-finite.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc
    if array.ndim == 5 and array.shape[3] == 1:  # NIfTI vector images put components on axis 4
        array = array[:, :, :, 0, :]
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim not in (3, 4):
        raise InputError(f"{path}: expected a 3-D or 4-D image, found {array.ndim}-D shape {array.shape}")
    affine = img.affine if img.affine is not None else np.eye(4)
    return _checked(Volume(array, affine, {"source_path": str(path), "format": "nifti"}), path)


def _checked(volume: Volume, path: Path) -> Volume:
    """Apply medseg's non-finite voxel policy (`replace_non_finite`) to a volume just read.

    A repair is logged as a warning and recorded in ``volume.meta["warnings"]``; an image with
    no finite voxel or more than `medseg.io.volume.MAX_NON_FINITE_FRACTION` of them refused.
    """
    volume.array, warning = replace_non_finite(volume.array, str(path))
    if warning is not None:
        log.warning("%s: %s", path, warning)
        volume.meta.setdefault("warnings", []).append(warning)
    return volume


def read_itk(path: str | os.PathLike[str]) -> Volume:
    """Read NRRD/MHA/MHD through SimpleITK into a `Volume` (LPS geometry converted to RAS).

    Non-finite voxels as in `read_nifti` (repaired with a warning, refused above 10 %).

    Raises:
        InputError: missing/unreadable file, not 3-D, no finite voxel or > 10 % non-finite.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputError(f"{path}: cannot read image ({first})") from exc
    if img.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3-D image, found {img.GetDimension()}-D")
    arr = sitk.GetArrayFromImage(img)  # (z, y, x[, c])
    arr = np.transpose(arr, (2, 1, 0) + tuple(range(3, arr.ndim)))
    affine = affine_from_itk(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    return _checked(Volume(np.ascontiguousarray(arr), affine, {"source_path": str(path), "format": "itk"}), path)


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read any single-file volume medseg knows (NIfTI, NRRD, MHA/MHD) by its suffix.

    DICOM folders are read with `medseg.io.dicom`; `medseg.io.load` dispatches both.
    """
    suf = volume_suffix(path)
    if suf in NIFTI_SUFFIXES:
        return read_nifti(path)
    if suf in ITK_SUFFIXES:
        return read_itk(path)
    raise InputError(f"{path}: unknown image format (expected one of {', '.join(VOLUME_SUFFIXES)})")


def write_nifti(volume: Volume, path: str | os.PathLike[str], dtype: np.dtype | type | None = None) -> Path:
    """Write `volume` to a NIfTI file atomically and return the path.

    Args:
        volume: what to write; its RAS affine becomes both qform and sform (code 1, scanner).
        path: target ``.nii`` or ``.nii.gz``.
        dtype: on-disk data type (default: the array's).
    """
    import nibabel as nib

    path = Path(path)
    arr = np.asarray(volume.array)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    img = nib.Nifti1Image(arr, volume.affine)
    img.set_qform(volume.affine, code=1)
    img.set_sform(volume.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def write_itk(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write `volume` to NRRD/MHA through SimpleITK atomically (RAS→LPS handled here)."""
    import SimpleITK as sitk

    path = Path(path)
    arr = np.asarray(volume.array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    img = sitk.GetImageFromArray(np.transpose(arr, (2, 1, 0) + tuple(range(3, arr.ndim))), isVector=arr.ndim == 4)
    origin, spacing, direction = itk_geometry_from_affine(volume.affine)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
    return path


def write_volume(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write `volume` by the suffix of `path` (NIfTI via nibabel, others via SimpleITK)."""
    suf = volume_suffix(path)
    if suf in NIFTI_SUFFIXES:
        return write_nifti(volume, path)
    if suf in ITK_SUFFIXES:
        return write_itk(volume, path)
    raise InputError(f"{path}: unknown output format (expected one of {', '.join(VOLUME_SUFFIXES)})")

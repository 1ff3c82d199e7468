"""The single place where DICOM/ITK (LPS) and NIfTI/medseg (RAS) world coordinates meet."""

from __future__ import annotations

import numpy as np

#: Diagonal flip between LPS and RAS world axes (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras_affine(affine_lps: np.ndarray) -> np.ndarray:
    """Convert a voxel→LPS affine to a voxel→RAS affine (same voxel order)."""
    return LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)


def ras_to_lps_affine(affine_ras: np.ndarray) -> np.ndarray:
    """Convert a voxel→RAS affine to a voxel→LPS affine (same voxel order)."""
    return LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)


def affine_from_itk(origin: tuple[float, ...], spacing: tuple[float, ...], direction: tuple[float, ...]) -> np.ndarray:
    """Voxel→RAS affine from SimpleITK's LPS origin, spacing and row-major 3×3 direction.

    ITK index order is (i, j, k) = (x, y, z), the same as medseg's array order after
    transposing ``sitk.GetArrayFromImage`` (which returns z, y, x).
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = d * np.asarray(spacing, dtype=np.float64)[None, :]
    aff[:3, 3] = origin
    return lps_to_ras_affine(aff)


def itk_geometry_from_affine(affine_ras: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Inverse of `affine_from_itk`: (origin, spacing, direction) in LPS for SimpleITK."""
    lps = ras_to_lps_affine(affine_ras)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing[None, :]
    return tuple(lps[:3, 3].tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def to_ras_view(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`array` with its voxel axes reordered/flipped to run towards R, A, S, and the spacing
    (mm) along those axes: the view every picture of medseg (QA, report panels) draws from.

    Voxel axis ``a`` becomes RAS axis ``ornt[a, 0]``, so the spacing of RAS axis ``r`` is that
    of the voxel axis mapped onto it: the inverse permutation, ``spacing[argsort(ornt[:, 0])]``.

    Returns:
        ``(view, spacing_ras)``; the view shares memory with `array` where it can.
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    view = nib.orientations.apply_orientation(array, ornt)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return view, spacing[np.argsort(ornt[:, 0])]

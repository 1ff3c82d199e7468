"""Finding, pairing and loading the ground-truth / prediction (/ image) files of an evaluation."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.io import Volume, case_name, read_volume
from medseg.io.nifti import volume_suffix

log = logging.getLogger(__name__)

#: Suffixes of single DICOM files (a DICOM SEG prediction is one file).
DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class CasePaths:
    """The files of one case; `pred` is None when no prediction of that name exists."""

    case: str
    gt: Path
    pred: Path | None
    image: Path | None = None


def _entry_name(path: Path) -> str:
    if path.is_dir():
        return path.name
    if path.suffix.lower() in DICOM_SUFFIXES:
        return path.stem
    return case_name(path)


def _is_case_entry(path: Path, allow_dicom: bool) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_dir():  # a DICOM series folder, where medseg.io can read DICOM
        import medseg.io as mio

        return allow_dicom and hasattr(mio, "load_volume")
    if volume_suffix(path) is not None:
        return True
    return allow_dicom and path.suffix.lower() in DICOM_SUFFIXES


def list_cases(folder: Path, allow_dicom: bool = True) -> dict[str, Path]:
    """``{case name: path}`` of the volumes in `folder` (files by name without suffix; with
    `allow_dicom`, also ``.dcm`` files such as DICOM SEG, and subfolders as DICOM series).

    Raises:
        InputError: two entries share a case name (e.g. ``a.nii.gz`` and ``a.nrrd``).
    """
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not _is_case_entry(path, allow_dicom):
            continue
        name = _entry_name(path)
        if name in cases:
            raise InputError(f"{folder}: two files for case {name!r}: {cases[name].name} and {path.name}; keep one")
        cases[name] = path
    return cases


def pair_cases(gt: str | os.PathLike[str], pred: str | os.PathLike[str], images: str | os.PathLike[str] | None = None) -> tuple[list[CasePaths], list[str]]:
    """Match ground truth and predictions by case name (file name without its suffix).

    Args:
        gt: a ground-truth file, or a folder of them.
        pred: a prediction file (with a file `gt`), or a folder (with a folder `gt`).
        images: optional image file / folder, matched by the same case names.

    Returns:
        (cases in name order — `pred` None where no prediction exists, names of predictions
        without ground truth).

    Raises:
        InputError: a path is missing, a file is paired with a folder, or no ground truth found.
    """
    gt, pred = Path(gt), Path(pred)
    img = Path(images) if images is not None else None
    for what, p in (("ground truth", gt), ("prediction", pred), ("image", img)):
        if p is not None and not p.exists():
            raise InputError(f"{what} path {p} does not exist")
    if gt.is_file() or pred.is_file():
        if gt.is_dir() or pred.is_dir():
            raise InputError(f"give two files or two folders, got {'folder' if gt.is_dir() else 'file'} {gt} and {'folder' if pred.is_dir() else 'file'} {pred}")
        if img is not None and img.is_dir():
            found = list_cases(img).get(case_name(gt))
            img = found
        return [CasePaths(case_name(gt), gt, pred, img)], []
    gt_cases = list_cases(gt)
    if not gt_cases:
        raise InputError(f"{gt}: no ground-truth volumes found (.nii, .nii.gz, .nrrd, .mha, .mhd, DICOM)")
    pred_cases = list_cases(pred)
    img_cases = list_cases(img) if img is not None and img.is_dir() else {}
    if img is not None and img.is_file():
        raise InputError(f"--images must be a folder when GT and PRED are folders, got file {img}")
    pairs = [CasePaths(name, path, pred_cases.get(name), img_cases.get(name)) for name, path in gt_cases.items()]
    unmatched = sorted(set(pred_cases) - set(gt_cases))
    return pairs, unmatched


def _is_dicom_seg(path: Path) -> bool:
    if not path.is_file() or volume_suffix(path) is not None:
        return False
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # not DICOM at all: let the normal reader report it
        return False
    return str(getattr(ds, "Modality", "")) == "SEG"


def load_volume_any(path: Path) -> Volume:
    """Read a NIfTI/NRRD/MHA file, or a DICOM series (file/folder) when `medseg.io` can."""
    if path.is_file() and volume_suffix(path) is not None:
        return read_volume(path)
    import medseg.io as mio

    loader = getattr(mio, "load_volume", None)
    if loader is None:
        raise InputError(f"{path}: DICOM input needs medseg.io.load_volume, which this version lacks")
    return loader(path)


def load_prediction(path: Path, reference: Volume) -> Volume:
    """Read a prediction; a DICOM SEG file is decoded onto the ground truth's grid."""
    if _is_dicom_seg(path):
        try:
            from medseg.io.seg import read_dicom_seg
        except ImportError as exc:
            raise InputError(f"{path}: DICOM SEG predictions need medseg.io.seg.read_dicom_seg ({exc})") from exc
        try:
            return read_dicom_seg(path, reference)
        except GeometryError:
            # The ground truth may hold the same grid in another axis order (e.g. a NIfTI
            # written in RAS order from an LPS DICOM series): decode onto that grid reoriented
            # like the SEG's frames, then put the labels back in the ground truth's order.
            oriented = _reorient_like_seg(path, reference)
            if oriented is None:
                raise
            seg = read_dicom_seg(path, oriented)
            return Volume(resample_nearest(seg, reference), reference.affine.copy(), seg.meta)
    return load_volume_any(path)


def _reorient_like_seg(path: Path, reference: Volume) -> Volume | None:
    """`reference` with its axes flipped/permuted so that i and j run along the SEG frames'
    row and column directions (None when that changes nothing or cannot be worked out)."""
    import nibabel as nib
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        groups = [g for g in (ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")) if g]
        iop = next(g[0].PlaneOrientationSequence[0].ImageOrientationPatient for g in groups if "PlaneOrientationSequence" in g[0])
    except (StopIteration, AttributeError, IndexError, KeyError, TypeError, ValueError, OSError):
        return None
    row_ras = np.array([-float(iop[0]), -float(iop[1]), float(iop[2])])  # LPS → RAS
    col_ras = np.array([-float(iop[3]), -float(iop[4]), float(iop[5])])
    start = nib.orientations.io_orientation(reference.affine)
    target = np.zeros((3, 2))
    for axis, vec in enumerate((row_ras, col_ras)):
        world = int(np.argmax(np.abs(vec)))
        target[axis] = (world, 1.0 if vec[world] > 0 else -1.0)
    remaining = ({0, 1, 2} - {int(target[0, 0]), int(target[1, 0])})
    if len(remaining) != 1:
        return None
    world_k = remaining.pop()
    target[2] = next((w, f) for w, f in start if int(w) == world_k)
    transform = nib.orientations.ornt_transform(start, target)
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return None
    array = nib.orientations.apply_orientation(np.asarray(reference.array), transform)
    affine = reference.affine @ nib.orientations.inv_ornt_aff(transform, reference.shape)
    return Volume(np.ascontiguousarray(array), affine, dict(reference.meta))


def describe_grid(v: Volume) -> str:
    origin = ", ".join(f"{x:.2f}" for x in v.affine[:3, 3])
    spacing = ", ".join(f"{x:.4g}" for x in v.spacing)
    return f"shape {v.shape}, spacing ({spacing}) mm, origin ({origin}), orientation {v.orientation}"


def check_same_grid(case: str, gt: Volume, pred: Volume, atol_mm: float = 1e-3) -> None:
    """Raise a `GeometryError` naming the case when `pred` is not on `gt`'s grid."""
    if gt.same_grid(pred, atol_mm=atol_mm):
        return
    raise GeometryError(
        f"case {case!r}: prediction grid differs from ground truth — ground truth {describe_grid(gt)}; "
        f"prediction {describe_grid(pred)}. Resample the prediction onto the ground truth "
        f"(medseg evaluate --resample, nearest neighbour) or fix the file."
    )


def resample_nearest(moving: Volume, reference: Volume) -> np.ndarray:
    """`moving`'s label map sampled onto `reference`'s grid by nearest neighbour (0 outside).

    Voxel ``ijk`` of the reference takes the value of the moving voxel nearest to the same
    world point: ``round(A_moving⁻¹ · A_reference · ijk)``.
    """
    if reference.same_grid(moving, atol_mm=1e-6):
        return np.asarray(moving.array)
    src = np.asarray(moving.array)
    if src.ndim != 3:
        raise GeometryError(f"can only resample 3-D label maps, got shape {src.shape}")
    m = np.linalg.inv(moving.affine) @ reference.affine
    out = np.zeros(reference.shape, dtype=src.dtype)
    # slice by slice along k keeps the index arrays small (bounded memory on 512×512×N grids)
    ii, jj = np.meshgrid(np.arange(reference.shape[0]), np.arange(reference.shape[1]), indexing="ij")
    base = m[:3, 0, None, None] * ii + m[:3, 1, None, None] * jj + m[:3, 3, None, None]
    for k in range(reference.shape[2]):
        coords = np.rint(base + m[:3, 2, None, None] * k).astype(np.int64)
        inside = np.all((coords >= 0) & (coords < np.array(src.shape)[:, None, None]), axis=0)
        out[:, :, k][inside] = src[coords[0][inside], coords[1][inside], coords[2][inside]]
    return out

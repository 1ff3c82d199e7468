"""Paired real low-dose CT data: a full-dose and a low-dose series per patient, slice by slice.

Layout (the Mayo/AAPM low-dose CT challenge's, folder names configurable)::

    ROOT/<patient>/full_dose/*.dcm       one series (any file names, any depth)
    ROOT/<patient>/quarter_dose/*.dcm    the same slices at lower dose

The two series of a patient are paired **by slice position**, not by file name or instance
number (scanners number reconstructions independently): each slice's position along the
full-dose series' slice normal, ``(origin + k·Δ)·n``, is matched within a tolerance. Every
low-dose slice must find a full-dose partner; full-dose slices beyond the low-dose range are
dropped (a longer full-dose reconstruction is common); both series must share the in-plane
grid (rows, columns, pixel spacing, orientation, in-plane offset). Anything else is a
`DataError` naming the patient, the folder and the positions that do not match.

`read_pair` returns both as `Volume`s on one grid, reoriented to RAS by a permutation/flip of
axes (no interpolation), so slice ``k`` of one is slice ``k`` of the other.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import DataError, MedsegError
from medseg.io.volume import Volume

__all__ = ["PairedCase", "check_paired_cases", "find_paired_cases", "orient_ras", "read_pair"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairedCase:
    """One patient's two series folders."""

    name: str
    full_dose: Path
    low_dose: Path


def find_paired_cases(root: str | os.PathLike[str], full_dose_dir: str = "full_dose", low_dose_dir: str = "quarter_dose") -> list[PairedCase]:
    """The patients under `root` (sorted by folder name) that hold both series folders.

    Raises:
        DataError: `root` is not a folder, no patient folder holds both series, or a patient
            folder holds only one of them (named, with the folder that is missing).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.paired.root {root}: not a folder (expected <root>/<patient>/{full_dose_dir}/ and .../{low_dose_dir}/)")
    cases, incomplete = [], []
    for patient in sorted(p for p in root.iterdir() if p.is_dir()):
        full, low = patient / full_dose_dir, patient / low_dose_dir
        if full.is_dir() and low.is_dir():
            cases.append(PairedCase(patient.name, full, low))
        elif full.is_dir() or low.is_dir():
            incomplete.append(f"{patient.name}: no {low_dose_dir if full.is_dir() else full_dose_dir}/ folder")
    if incomplete:
        raise DataError(f"{root}: patient folder(s) with only one of the two series: " + "; ".join(incomplete))
    if not cases:
        raise DataError(f"{root}: no patient folder holds both {full_dose_dir}/ and {low_dose_dir}/")
    return cases


def orient_ras(volume: Volume) -> Volume:
    """`volume` with its array axes permuted/flipped to RAS (closest axis codes; no interpolation)."""
    import nibabel as nib

    start = nib.orientations.io_orientation(volume.affine)
    target = nib.orientations.axcodes2ornt(("R", "A", "S"))
    tf = nib.orientations.ornt_transform(start, target)
    if np.array_equal(tf, [[0, 1], [1, 1], [2, 1]]):
        return volume
    array = nib.orientations.apply_orientation(np.asarray(volume.array), tf)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(tf, np.asarray(volume.array).shape[:3])
    return Volume(np.ascontiguousarray(array), affine, dict(volume.meta))


def _slice_positions(volume: Volume, normal: np.ndarray) -> np.ndarray:
    """Position (mm) of each slice ``k`` (array axis 2) along `normal`."""
    origin, step = volume.affine[:3, 3], volume.affine[:3, 2]
    return np.array([float((origin + k * step) @ normal) for k in range(volume.array.shape[2])])


def _fmt(values: np.ndarray | list[float], n: int = 5) -> str:
    vals = [f"{v:.2f}" for v in list(values)[:n]]
    return ", ".join(vals) + (f" … ({len(values)} in all)" if len(values) > n else "")


def read_pair(case: PairedCase, position_tolerance_mm: float = 0.05) -> tuple[Volume, Volume]:
    """Read a patient's full- and low-dose series and pair them slice by slice (module docstring).

    Returns:
        ``(full, low)``: float32 HU volumes on the same RAS grid.

    Raises:
        DataError: unreadable series, different in-plane grids, low-dose slices without a
            full-dose slice at their position, or matched full-dose slices with a gap.
    """
    from medseg.io.dicom import read_dicom_series

    vols = {}
    for role, folder in (("full-dose", case.full_dose), ("low-dose", case.low_dose)):
        try:
            vols[role] = read_dicom_series(folder)
        except MedsegError as exc:
            raise DataError(f"patient {case.name}: {role} series {folder}: {exc}") from None
    full, low = vols["full-dose"], vols["low-dose"]
    where = f"patient {case.name} ({case.full_dose} vs {case.low_dose})"
    fa, la = np.asarray(full.array), np.asarray(low.array)
    if fa.shape[:2] != la.shape[:2] or not np.allclose(full.affine[:3, :2], low.affine[:3, :2], atol=1e-3):
        raise DataError(
            f"{where}: the two series do not share the in-plane grid (full dose {list(fa.shape[:2])} px at "
            f"{[round(s, 4) for s in full.spacing[:2]]} mm, low dose {list(la.shape[:2])} px at "
            f"{[round(s, 4) for s in low.spacing[:2]]} mm, or a different orientation); pair reconstructions of the same field of view"
        )
    normal = full.affine[:3, 2] / np.linalg.norm(full.affine[:3, 2])
    offset = (low.affine[:3, 3] - full.affine[:3, 3]) - ((low.affine[:3, 3] - full.affine[:3, 3]) @ normal) * normal
    if np.linalg.norm(offset) > max(position_tolerance_mm, 1e-3):
        raise DataError(f"{where}: the low-dose slices are shifted in-plane by {np.linalg.norm(offset):.3g} mm against the full-dose slices")
    pos_full, pos_low = _slice_positions(full, normal), _slice_positions(low, normal)
    real_low = [k for k, src in enumerate(low.meta.get("source_frames") or [0] * la.shape[2]) if src is not None]
    match = []
    unmatched = []
    for j in real_low:
        k = int(np.argmin(np.abs(pos_full - pos_low[j])))
        if abs(pos_full[k] - pos_low[j]) <= position_tolerance_mm:
            match.append((k, j))
        else:
            unmatched.append(pos_low[j])
    if unmatched:
        raise DataError(
            f"{where}: {len(unmatched)} low-dose slice(s) have no full-dose slice at their position (within "
            f"{position_tolerance_mm} mm): low-dose positions {_fmt(unmatched)} mm; full-dose positions "
            f"{_fmt(pos_full)} mm. The series must be reconstructed at the same slice positions"
        )
    ks = sorted(k for k, _ in match)
    if ks != list(range(ks[0], ks[-1] + 1)):
        missing = sorted(set(range(ks[0], ks[-1] + 1)) - set(ks))
        raise DataError(f"{where}: the low-dose series has gaps: no slice at full-dose position(s) {_fmt(pos_full[missing])} mm")
    if len(ks) < fa.shape[2]:
        log.info("%s: %d full-dose slice(s) outside the low-dose range dropped", case.name, fa.shape[2] - len(ks))
    order = [j for _, j in sorted(match)]
    affine = full.affine.copy()
    affine[:3, 3] = full.affine[:3, 3] + ks[0] * full.affine[:3, 2]
    meta = {"modality": "CT", "source_path": str(case.full_dose), "patient_folder": case.name}
    full_v = Volume(np.ascontiguousarray(fa[:, :, ks[0] : ks[-1] + 1], dtype=np.float32), affine, meta)
    low_v = Volume(np.ascontiguousarray(la[:, :, order], dtype=np.float32), affine.copy(), {**meta, "source_path": str(case.low_dose)})
    return orient_ras(full_v), orient_ras(low_v)


def check_paired_cases(root: str | os.PathLike[str], full_dose_dir: str, low_dose_dir: str, position_tolerance_mm: float) -> None:
    """Read and pair every patient once (training's pre-flight); one `DataError` lists every problem."""
    problems = []
    for case in find_paired_cases(root, full_dose_dir, low_dose_dir):
        try:
            read_pair(case, position_tolerance_mm)
        except DataError as exc:
            problems.append(f"  - {exc}")
    if problems:
        raise DataError(f"{len(problems)} patient(s) under {root} cannot be trained on:\n" + "\n".join(problems))

"""Slice-stack geometry of a DICOM series: grouping, sorting, spacing checks, the affine.

Pure functions on header values (no file access), so they are easy to test. All positions
here are DICOM patient coordinates (LPS, mm); `medseg.io.orientation` converts the final
affine to RAS.

DICOM conventions used (PS3.3 C.7.6.2):
- ImageOrientationPatient = (row direction cosines, column direction cosines): the first
  triple is the direction in which the *column index* grows (along a row), the second the
  direction in which the *row index* grows.
- PixelSpacing = (spacing between rows, spacing between columns), i.e. (dy, dx).
- Volume index order is ``[i, j, k]`` = (column, row, slice), so the affine's first column is
  ``row_cosines * dx`` and its second ``column_cosines * dy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Two slices closer than this along the normal (mm) are the same position (duplicates).
DUPLICATE_TOLERANCE_MM = 0.01
#: Relative tolerance on slice gaps before spacing counts as non-uniform.
SPACING_RELATIVE_TOLERANCE = 0.01
#: Absolute tolerance on slice gaps (mm): IPP strings are often rounded to 0.01 mm.
SPACING_ABSOLUTE_TOLERANCE_MM = 0.02
#: At most this many interpolated slices per real slice when filling gaps / resampling; beyond
#: that the stack is too sparse to be a volume and reading it fails with the reason.
MAX_INTERPOLATED_PER_REAL_SLICE = 1.0
#: In-plane drift of slice origins beyond which the stack is called tilted (degrees).
TILT_TOLERANCE_DEG = 0.05


@dataclass
class StackGeometry:
    """Where each output slice comes from and the resulting voxel→LPS affine.

    Attributes:
        order: indices (into the caller's frame list) of the kept frames, sorted along the
            slice normal (duplicates removed).
        duplicates: indices of frames dropped because another frame has the same position.
        affine_lps: 4×4 voxel→LPS affine of the output grid (index order column, row, slice).
        n_slices: number of slices of the output grid (may exceed ``len(order)`` when missing
            slices are filled or spacing is resampled).
        interpolation: for each output slice, ``(a, b, w)`` meaning
            ``(1 - w) * kept[a] + w * kept[b]`` with ``a``/``b`` positions in `order`;
            None when each output slice is exactly one kept frame (the usual case).
        slice_spacing_mm: spacing between output slices along the normal.
        warnings: human-readable notes (duplicates, gaps, tilt…).
        tilt_deg: gantry tilt (angle between the stacking direction and the normal).
    """

    order: list[int]
    duplicates: list[int]
    affine_lps: np.ndarray
    n_slices: int
    interpolation: list[tuple[int, int, float]] | None = None
    slice_spacing_mm: float = 1.0
    warnings: list[str] = field(default_factory=list)
    tilt_deg: float = 0.0


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit normal (row cosines × column cosines) of an ImageOrientationPatient 6-vector."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        values = ", ".join(f"{float(v):g}" for v in np.ravel(orientation))
        raise ValueError(f"degenerate ImageOrientationPatient [{values}]: its row and column directions are parallel or zero")
    return n / norm


def orientation_key(orientation: np.ndarray | None, decimals: int = 3) -> tuple[float, ...] | None:
    """A hashable, rounding-tolerant key of an ImageOrientationPatient (for grouping)."""
    if orientation is None:
        return None
    return tuple(float(round(v, decimals)) + 0.0 for v in orientation)


def _gap_tolerance(gap: float) -> float:
    return max(SPACING_ABSOLUTE_TOLERANCE_MM, SPACING_RELATIVE_TOLERANCE * abs(gap))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def build_stack_geometry(
    positions: np.ndarray,
    orientation: np.ndarray,
    pixel_spacing: tuple[float, float],
    *,
    tie_break: list[tuple] | None = None,
    fallback_slice_spacing_mm: float | None = None,
    labels: list[str] | None = None,
    resample_irregular: bool = True,
) -> StackGeometry:
    """Sort frames along the slice normal and derive an exact grid for them.

    Args:
        positions: (N, 3) ImagePositionPatient of each frame (LPS mm).
        orientation: the shared ImageOrientationPatient (6 values).
        pixel_spacing: the shared PixelSpacing (row spacing dy, column spacing dx) in mm.
        tie_break: per frame sort key used among frames at the same position (the first wins);
            e.g. ``(InstanceNumber, path)``. Default: input order.
        fallback_slice_spacing_mm: slice spacing for a single-slice stack (SpacingBetweenSlices
            or SliceThickness); 1 mm if None.
        labels: per frame text used in warnings (e.g. file names).
        resample_irregular: fill missing slices / resample non-uniform spacing onto a uniform
            grid (linear interpolation along the normal). If False, raise ValueError instead.

    Returns:
        The `StackGeometry`.

    Raises:
        ValueError: positions are not on one line (several stacks mixed) or, with
            ``resample_irregular=False``, the spacing is not uniform.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    n_frames = len(positions)
    orientation = np.asarray(orientation, dtype=np.float64)
    row, col = orientation[:3], orientation[3:]
    row = row / np.linalg.norm(row)
    col = col / np.linalg.norm(col)
    normal = slice_normal(orientation)
    dy, dx = float(pixel_spacing[0]), float(pixel_spacing[1])
    labels = labels or [str(i) for i in range(n_frames)]
    tie_break = tie_break or [(i,) for i in range(n_frames)]

    dist = positions @ normal
    # Sort along the normal; among frames at one position the caller's key decides which is kept
    # (lowest InstanceNumber, then path), whatever the file-system order.
    idx = sorted(range(n_frames), key=lambda i: (dist[i], tie_break[i]))
    warnings: list[str] = []

    order: list[int] = []
    duplicates: list[int] = []
    for i in idx:
        if order and abs(dist[i] - dist[order[-1]]) < DUPLICATE_TOLERANCE_MM:
            # keep whichever of the two has the better tie-break key
            if tie_break[i] < tie_break[order[-1]]:
                duplicates.append(order[-1])
                order[-1] = i
            else:
                duplicates.append(i)
            continue
        order.append(i)
    if duplicates:
        shown = ", ".join(labels[i] for i in duplicates[:5]) + (" …" if len(duplicates) > 5 else "")
        warnings.append(
            f"{len(duplicates)} duplicate slice(s) at an already used position removed ({shown}); "
            "several echoes/phases in one series?"
        )

    base = np.eye(4)
    base[:3, 0] = row * dx
    base[:3, 1] = col * dy

    if len(order) == 1:
        s = float(fallback_slice_spacing_mm or 1.0)
        base[:3, 2] = normal * s
        base[:3, 3] = positions[order[0]]
        return StackGeometry(order, duplicates, base, 1, None, s, warnings)

    d = dist[order]
    p = positions[order]
    gaps = np.diff(d)
    first, last = p[0], p[-1]
    span = d[-1] - d[0]

    # Collinearity: every origin must lie on the line first→last (else mixed stacks).
    line = (last - first) / span  # per mm along the normal
    residual = np.linalg.norm(p - (first + np.outer(d - d[0], line)), axis=1).max()
    if residual > 0.5 * min(dx, dy) + 1e-3:
        raise ValueError(
            f"slice positions do not lie on one line (off by up to {residual:.2f} mm): "
            "the series mixes several stacks with the same orientation"
        )
    in_plane = line - normal  # drift per mm along the normal
    tilt = math.degrees(math.atan(float(np.linalg.norm(in_plane))))
    if tilt > TILT_TOLERANCE_DEG:
        warnings.append(
            f"gantry tilt of {tilt:.2f}°: exact sheared affine (ITK/NRRD and NIfTI qform cannot hold shear; "
            "resample before using those)"
        )
        direction = line
    else:
        tilt = 0.0
        direction = normal

    min_gap, max_gap = float(gaps.min()), float(gaps.max())
    median_gap = float(np.median(gaps))
    interpolation = None
    if max_gap - min_gap <= _gap_tolerance(median_gap):
        spacing = span / (len(order) - 1)
        n_out = len(order)
    else:
        ratios = gaps / min_gap
        is_missing = bool(np.all(np.abs(ratios - np.round(ratios)) * min_gap <= _gap_tolerance(min_gap)))
        if is_missing:
            n_missing = int(np.round(ratios).sum() - len(gaps))
            where = [int(k) for k in np.nonzero(np.round(ratios) > 1)[0]][:5]
            problem = (
                f"{n_missing} missing slice(s) (gaps up to {_fmt(max_gap)} mm, {_fmt(min_gap)} mm expected, "
                f"after sorted slice(s) {where})"
            )
        else:
            problem = f"non-uniform slice spacing ({_fmt(min_gap)}–{_fmt(max_gap)} mm)"
        if not resample_irregular:
            raise ValueError(problem)
        spacing = min_gap
        n_out = int(round(span / spacing)) + 1
        if n_out - len(order) > MAX_INTERPOLATED_PER_REAL_SLICE * len(order):
            raise ValueError(
                f"{problem}: too sparse to read as a volume (would invent {n_out - len(order)} slices "
                f"for {len(order)} real ones)"
            )
        spacing = span / (n_out - 1)
        targets = d[0] + spacing * np.arange(n_out)
        interpolation = []
        for t in targets:
            b = int(np.searchsorted(d, t - 1e-6))
            b = min(max(b, 0), len(d) - 1)
            if abs(d[b] - t) <= DUPLICATE_TOLERANCE_MM:
                interpolation.append((b, b, 0.0))
                continue
            a = max(b - 1, 0)
            w = float((t - d[a]) / (d[b] - d[a])) if d[b] != d[a] else 0.0
            interpolation.append((a, b, w))
        warnings.append(f"{problem}: {n_out} slices {_fmt(spacing)} mm apart, gaps filled by linear interpolation")

    base[:3, 2] = direction * spacing
    base[:3, 3] = first
    return StackGeometry(order, duplicates, base, n_out, interpolation, float(spacing), warnings, tilt)

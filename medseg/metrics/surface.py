"""Boundary-based segmentation metrics: Hausdorff distance, HD95, ASSD and NSD.

Definitions (these are the ones in the evaluation report and in ``docs/benchmarks.md``):

* **Boundary** of a binary mask ``M``: the voxels of ``M`` removed by one binary erosion with
  the 6-connected (face) structuring element, ``∂M = M ∖ erode₆(M)``. Outside the array counts
  as background, so mask voxels on the array's border are boundary voxels (this is scipy's
  ``binary_erosion`` with ``border_value=0``, and what MONAI does).
* **Directed surface distances** ``d(A→B)``: for every boundary voxel of ``A``, the Euclidean
  distance in mm between its centre and the centre of the nearest boundary voxel of ``B``,
  with the voxel spacing ``s`` applied per axis: ``‖(a − b) ⊙ s‖₂``.
* **HD** (Hausdorff) = ``max(max d(P→G), max d(G→P))``.
* **HD95** = ``max(q95(d(P→G)), q95(d(G→P)))``, ``q95`` the 95th percentile with linear
  interpolation between order statistics (numpy's default, ``torch.quantile``'s too).
* **ASSD** (average symmetric surface distance) = the mean of the two distance sets pooled:
  ``(Σ d(P→G) + Σ d(G→P)) / (|∂P| + |∂G|)``.
* **NSD(τ)** (normalised surface Dice at tolerance τ mm) =
  ``(#{d(P→G) ≤ τ} + #{d(G→P) ≤ τ}) / (|∂P| + |∂G|)``. A distance within 1e-9·τ of τ counts
  as ≤ τ, so that a distance mathematically equal to τ is not lost to rounding.
* **Empty masks**: both empty → HD = HD95 = ASSD = 0, NSD = 1 (a correct "absent" call). Exactly
  one empty → HD = HD95 = ASSD = ``inf`` and NSD = 0.

These equal MONAI 1.6's ``compute_hausdorff_distance`` (``percentile=95`` for HD95),
``compute_average_surface_distance(symmetric=True)`` and ``compute_surface_dice`` (with
``spacing`` set, ``use_subvoxels=False``; MONAI's boundary is the same scipy erosion, its
distances the same Euclidean mm via a KD-tree, its percentile ``torch.quantile``'s linear one)
up to MONAI's float32 rounding (relative differences ~1e-7), except when both masks are empty,
where MONAI returns ``nan``.

How it is computed fast (exactly, no approximation):

1. Crop both masks to the bounding box of their union plus a 1-voxel margin (clipped to the
   array). Every boundary voxel lies inside, and the voxels beyond the margin are background
   (or outside the array, which counts as background), so the boundaries are unchanged.
2. Boundaries by a 6-neighbour erosion done with array slicing on the crop.
3. Nearest-boundary distances by an exact nearest-neighbour search (``scipy.spatial.cKDTree``)
   over the boundary voxel centres scaled to mm. Voxels on both boundaries have distance 0 and
   skip the search. Its cost grows with the number of boundary voxels, not the crop volume,
   unlike ``scipy.ndimage.distance_transform_edt(~∂G, sampling=spacing)``, which gives the same
   values (to rounding) but visits every cropped voxel (figures in docs/benchmarks.md). Memory is a few bytes per
   cropped voxel (boolean masks) plus ~100 bytes per boundary voxel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SurfaceDistances",
    "assd",
    "boundary",
    "bounding_box",
    "hausdorff",
    "hd95",
    "nsd",
    "surface_distances",
]

#: Relative allowance when comparing a distance to the NSD tolerance (see module docstring).
NSD_RELATIVE_SLACK = 1e-9


def _check_spacing(spacing_mm: Sequence[float], ndim: int) -> np.ndarray:
    sp = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if sp.size == 1 and ndim > 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise ValueError(f"spacing_mm must have {ndim} values (one per array axis), got {tuple(spacing_mm)}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing_mm must be positive and finite, got {tuple(spacing_mm)}")
    return sp


def _as_bool(mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        mask = mask != 0
    if mask.ndim == 0:
        raise ValueError(f"{what} must be an array with at least one axis")
    return mask


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding all nonzero voxels, grown by `margin` voxels per side
    and clipped to the array; None for an empty mask."""
    mask = np.asarray(mask)
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other) if other else mask)
        if nz.size == 0:
            return None
        slices.append(slice(max(int(nz[0]) - margin, 0), min(int(nz[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(slices)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a binary mask: ``mask`` minus its 6-connected (face) erosion.

    Outside the array counts as background, so mask voxels on the array border are boundary.
    Equals ``mask & ~scipy.ndimage.binary_erosion(mask)`` (default cross structure,
    ``border_value=0``), computed with slicing, which is several times faster.

    Args:
        mask: binary array (any number of axes; nonzero = inside).

    Returns:
        Boolean array of the same shape.
    """
    m = _as_bool(mask, "mask")
    padded = np.pad(m, 1, mode="constant", constant_values=False)
    core = (slice(1, -1),) * m.ndim
    eroded = m.copy()
    for axis in range(m.ndim):
        lo = list(core)
        hi = list(core)
        lo[axis] = slice(0, -2)
        hi[axis] = slice(2, None)
        eroded &= padded[tuple(lo)]
        eroded &= padded[tuple(hi)]
    return m & ~eroded


@dataclass(frozen=True)
class SurfaceDistances:
    """The two directed boundary-distance sets of a (ground truth, prediction) pair, in mm.

    Attributes:
        pred_to_gt: for each boundary voxel of the prediction, distance to the nearest
            ground-truth boundary voxel (``inf`` for each one when the ground truth is empty).
        gt_to_pred: the same from the ground-truth boundary to the prediction's.
    """

    pred_to_gt: np.ndarray
    gt_to_pred: np.ndarray

    @property
    def n_boundary(self) -> int:
        """``|∂P| + |∂G|``."""
        return int(self.pred_to_gt.size + self.gt_to_pred.size)

    @property
    def both_empty(self) -> bool:
        return self.n_boundary == 0

    @property
    def one_empty(self) -> bool:
        return (self.pred_to_gt.size == 0) != (self.gt_to_pred.size == 0)

    def hausdorff(self) -> float:
        """HD = max of both directed maxima (0 when both masks are empty, inf when one is)."""
        if self.both_empty:
            return 0.0
        if self.one_empty:
            return math.inf
        return float(max(self.pred_to_gt.max(), self.gt_to_pred.max()))

    def percentile_hausdorff(self, percentile: float = 95.0) -> float:
        """max of the two directed `percentile`-th percentiles (numpy's linear interpolation)."""
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be within [0, 100], got {percentile}")
        if self.both_empty:
            return 0.0
        if self.one_empty:
            return math.inf
        return float(max(np.percentile(self.pred_to_gt, percentile), np.percentile(self.gt_to_pred, percentile)))

    def hd95(self) -> float:
        """HD95 = max of the two directed 95th percentiles."""
        return self.percentile_hausdorff(95.0)

    def assd(self) -> float:
        """Mean of both directed distance sets pooled (0 both empty, inf one empty)."""
        if self.both_empty:
            return 0.0
        if self.one_empty:
            return math.inf
        return float((self.pred_to_gt.sum() + self.gt_to_pred.sum()) / self.n_boundary)

    def nsd(self, tolerance_mm: float = 1.0) -> float:
        """Fraction of boundary voxels of both masks within `tolerance_mm` of the other boundary."""
        if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
            raise ValueError(f"NSD tolerance must be a finite number of mm >= 0, got {tolerance_mm}")
        if self.both_empty:
            return 1.0
        if self.one_empty:
            return 0.0
        limit = tolerance_mm * (1.0 + NSD_RELATIVE_SLACK)
        within = np.count_nonzero(self.pred_to_gt <= limit) + np.count_nonzero(self.gt_to_pred <= limit)
        return float(within / self.n_boundary)


def _nearest_distances(query_idx: np.ndarray, target_idx: np.ndarray, spacing: np.ndarray, skip: np.ndarray, threads: int) -> np.ndarray:
    """Distances (mm) from each query voxel (N×D indices) to the nearest target voxel.

    `skip` marks query voxels known to be target voxels too (distance 0).
    """
    from scipy.spatial import cKDTree

    out = np.zeros(query_idx.shape[0], dtype=np.float64)
    todo = ~skip
    if np.any(todo):
        tree = cKDTree(target_idx * spacing, leafsize=32, balanced_tree=False, compact_nodes=False)
        out[todo] = tree.query(query_idx[todo] * spacing, k=1, workers=threads)[0]
    return out


def surface_distances(gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float], *, threads: int = 1) -> SurfaceDistances:
    """Both directed boundary-distance sets of a binary ground truth and prediction.

    Args:
        gt: ground-truth binary mask (nonzero = inside); any number of axes.
        pred: predicted binary mask of the same shape.
        spacing_mm: voxel size in mm along each array axis (a single number = isotropic).
        threads: threads for the nearest-neighbour queries (-1 = all cores).

    Returns:
        `SurfaceDistances` (float64 arrays in mm); its methods give HD, HD95, ASSD, NSD.

    Raises:
        ValueError: shapes differ, or the spacing is not positive / of the wrong length.
    """
    g = _as_bool(gt, "gt")
    p = _as_bool(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gt and pred must have the same shape, got {g.shape} and {p.shape}")
    spacing = _check_spacing(spacing_mm, g.ndim)
    box = bounding_box(g | p, margin=1)
    empty = np.zeros(0, dtype=np.float64)
    if box is None:
        return SurfaceDistances(empty, empty)
    return _surface_distances_cropped(g[box], p[box], spacing, threads)


def _surface_distances_cropped(g: np.ndarray, p: np.ndarray, spacing: np.ndarray, threads: int) -> SurfaceDistances:
    """`surface_distances` on masks already cropped with a 1-voxel margin (or to the array edge)."""
    bg = boundary(g)
    bp = boundary(p)
    gi = np.argwhere(bg)
    pi = np.argwhere(bp)
    if gi.shape[0] == 0 or pi.shape[0] == 0:
        # one empty mask: every boundary voxel of the other is infinitely far from "nothing"
        return SurfaceDistances(np.full(pi.shape[0], np.inf), np.full(gi.shape[0], np.inf))
    return SurfaceDistances(
        pred_to_gt=_nearest_distances(pi, gi, spacing, bg[bp], threads),
        gt_to_pred=_nearest_distances(gi, pi, spacing, bp[bg], threads),
    )


def hausdorff(gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Hausdorff distance in mm between the boundaries of two binary masks (see module doc).

    Example: two 1-voxel cubes 3 voxels apart along an axis of 2 mm spacing → 6.0.
    """
    return surface_distances(gt, pred, spacing_mm).hausdorff()


def hd95(gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm (max of the two directed 95th percentiles)."""
    return surface_distances(gt, pred, spacing_mm).hd95()


def assd(gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Average symmetric surface distance in mm (mean of both directed distance sets pooled)."""
    return surface_distances(gt, pred, spacing_mm).assd()


def nsd(gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float], tolerance_mm: float = 1.0) -> float:
    """Normalised surface Dice at `tolerance_mm` (fraction of both boundaries within tolerance)."""
    return surface_distances(gt, pred, spacing_mm).nsd(tolerance_mm)

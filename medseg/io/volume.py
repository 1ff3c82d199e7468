"""The one in-memory volume type of medseg."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.errors import GeometryError


@dataclass
class Volume:
    """A 3-D image (or label map) with its geometry.

    Attributes:
        array: voxel data indexed ``[i, j, k]`` (optionally ``[i, j, k, c]``), the same index
            order as NIfTI/nibabel. For DICOM input, ``i`` runs along the columns of a slice,
            ``j`` along its rows, ``k`` along the slice normal.
        affine: 4×4 matrix mapping a voxel index ``(i, j, k, 1)`` to **RAS** world coordinates
            in mm (x grows to the patient's Right→Left is *negative*: R = -x_LPS, A = -y_LPS,
            S = z). Conversions from DICOM/ITK LPS happen only in `medseg.io.orientation`.
        meta: source metadata (e.g. ``modality``, ``series_instance_uid``, ``source_path``,
            ``warnings``). Never holds patient names or IDs.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise GeometryError(f"affine must be 4×4, got shape {self.affine.shape}")
        if self.array.ndim not in (3, 4):
            raise GeometryError(f"volume array must be 3-D (or 4-D with channels last), got {self.array.ndim}-D")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(ni, nj, nk)``."""
        return tuple(int(s) for s in self.array.shape[:3])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing in mm along i, j, k (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Three-letter RAS orientation code, e.g. ``'LPS'`` or ``'RAS'`` (nibabel convention)."""
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    def world_coordinates(self, ijk: np.ndarray) -> np.ndarray:
        """Map voxel indices (N×3) to RAS mm (N×3)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def same_grid(self, other: Volume, atol_mm: float = 1e-3) -> bool:
        """True when `other` has the same spatial shape and an affine equal within `atol_mm`."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol_mm))

    def with_array(self, array: np.ndarray, **meta: Any) -> Volume:
        """A new Volume on the same grid with another array (e.g. a label map), meta updated."""
        if tuple(array.shape[:3]) != self.shape:
            raise GeometryError(f"array shape {array.shape[:3]} does not match volume shape {self.shape}")
        return Volume(array, self.affine.copy(), {**self.meta, **meta})


def count_label_values(labels: np.ndarray, chunk_voxels: int = 1 << 20) -> np.ndarray:
    """Voxel count of every value of an unsigned-integer label map: ``counts[v]`` = voxels equal to v.

    ``np.bincount`` over 1 M-voxel chunks: a single ``np.bincount`` call first copies the whole
    map to int64 (eight bytes a voxel of new memory), and ``np.unique`` sorts or hashes.

    Args:
        labels: uint8/uint16/uint32 array of any shape (bool is counted as uint8).

    Returns:
        int64 array of length ``labels.max() + 1`` (length 1 for an empty map).

    Raises:
        TypeError: a signed or non-integer dtype (count those with ``np.unique``).
    """
    if labels.dtype == np.bool_:
        labels = labels.view(np.uint8)
    if labels.dtype.kind != "u":
        raise TypeError(f"count_label_values needs an unsigned integer label map, got {labels.dtype}")
    flat = labels.ravel(order="K")  # a view for C- and Fortran-ordered maps alike
    counts = np.zeros(1, dtype=np.int64)
    for i in range(0, flat.size, chunk_voxels):
        chunk = np.bincount(flat[i : i + chunk_voxels])
        if chunk.size > counts.size:
            counts = np.pad(counts, (0, chunk.size - counts.size))
        counts[: chunk.size] += chunk
    return counts


def label_values_present(labels: np.ndarray) -> list[int]:
    """Sorted non-zero values of an integer (or boolean) label map.

    uint8/uint16 maps are counted with `count_label_values` (no sort, no int64 copy); other types
    take ``np.unique``.

    Raises:
        InputError: fractional or negative values.
    """
    from medseg.errors import InputError

    if labels.dtype == np.bool_ or (labels.dtype.kind == "u" and labels.itemsize <= 2):
        return [int(v) for v in np.flatnonzero(count_label_values(labels)) if v > 0]
    if not np.issubdtype(labels.dtype, np.integer) and not np.all(np.mod(labels, 1) == 0):
        raise InputError(f"labels must be integers, got {labels.dtype} with fractional values")
    if labels.size and labels.min() < 0:
        raise InputError("labels must be >= 0 (0 = background)")
    return [int(v) for v in np.unique(labels) if v > 0]



def foreground_box(labels: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the non-zero voxels of a label map, as slices; None when all are zero.

    Segmentations fill a small part of a CT, so post-processing, statistics and the SEG writer
    work on this box instead of the whole map. One pass over memory: the outer (slowest) axis is
    scanned as 8-byte words per plane, the two inner axes as one OR-reduction of the planes
    inside the range (three ``np.any`` projections would read the map three times).

    Args:
        labels: integer or boolean array of any dimension ≥ 1 (any memory order).
    """
    a = np.asarray(labels)
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    if a.dtype.kind not in "ui":
        raise TypeError(f"foreground_box needs an integer or boolean label map, got {a.dtype}")
    if a.size == 0:
        return None
    fortran = a.flags.f_contiguous and not a.flags.c_contiguous
    view = a.T if fortran else a  # outer axis first, C-contiguous when the array is contiguous
    outer = view.shape[0]
    if view.flags.c_contiguous:
        planes = view.reshape(outer, -1).view(np.uint8)
        if planes.shape[1] % 8 == 0:
            planes = planes.view(np.uint64)
        any_outer = planes.any(axis=1)
    else:
        any_outer = view.reshape(outer, -1).any(axis=1)
    idx = np.flatnonzero(any_outer)
    if idx.size == 0:
        return None
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    slices = [slice(lo, hi)]
    if view.ndim > 1:
        inner = np.bitwise_or.reduce(view[lo:hi], axis=0)  # OR of the planes in the range
        for axis in range(inner.ndim):
            along = inner.any(axis=tuple(b for b in range(inner.ndim) if b != axis))
            nz = np.flatnonzero(along)
            slices.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(reversed(slices)) if fortran else tuple(slices)


def box_copy(array: np.ndarray, box: tuple[slice, ...], like: np.ndarray | None = None) -> np.ndarray:
    """A contiguous copy of ``array[box]`` in the memory order of `like` (default: `array`).

    Keeps Fortran-ordered maps (DICOM volumes, NIfTI) Fortran-ordered: a C-order copy of a box
    of one transposes it, which walks memory with a plane-sized stride.
    """
    ref = array if like is None else like
    fortran = ref.flags.f_contiguous and not ref.flags.c_contiguous
    return np.asfortranarray(array[box]) if fortran else np.ascontiguousarray(array[box])


#: Largest share of non-finite voxels (NaN, ±Inf) an image may hold and still be repaired by
#: `replace_non_finite`; above it the image is refused (a scan that is 10 % holes is broken,
#: not noisy, and a repaired copy would mislead a network and its user).
MAX_NON_FINITE_FRACTION = 0.10


def replace_non_finite(
    array: np.ndarray, source: str, max_fraction: float = MAX_NON_FINITE_FRACTION
) -> tuple[np.ndarray, str | None]:
    """medseg's one policy for NaN/±Inf voxels in an image read from a file.

    Every reader (NIfTI/NRRD/MHA in `medseg.io.nifti`, DICOM in `medseg.io.dicom`) calls this:
    non-finite voxels are replaced by the image's finite minimum (air/background in CT and MR,
    so a hole reads as "nothing there" rather than as tissue) and the repair is reported. A
    NaN left in place makes every window/z-score NaN and a network predict background
    everywhere without a word; replacing by 0 would paint water (0 HU) into a CT.

    Args:
        array: voxel data; integer and boolean arrays cannot hold NaN and are returned as is.
        source: the file or series, named in the messages.
        max_fraction: largest share of non-finite voxels that is repaired (default
            `MAX_NON_FINITE_FRACTION`, 10 %).

    Returns:
        ``(array, warning)``: the array (repaired in place when writable, else a repaired copy)
        and ``"N non-finite voxel(s) (x %) replaced by the finite minimum V"``, or None when
        every voxel was finite.

    Raises:
        InputError: no voxel is finite, or more than `max_fraction` of them are not.
    """
    from medseg.errors import InputError

    if array.dtype.kind not in "fc" or array.size == 0:
        return array, None
    finite = np.isfinite(array)
    n_bad = int(array.size - np.count_nonzero(finite))
    if n_bad == 0:
        return array, None
    share = n_bad / array.size
    if n_bad == array.size:
        raise InputError(
            f"{source}: no voxel is finite (all {array.size} are NaN or ±Inf); the file is broken or was written "
            "with a wrong data type — re-export the image"
        )
    if share > max_fraction:
        raise InputError(
            f"{source}: {n_bad} of {array.size} voxels ({100 * share:.1f} %) are NaN or ±Inf, more than the "
            f"{100 * max_fraction:g} % medseg repairs; re-export the image or fill the holes first"
        )
    fill = array[finite].min()
    if not array.flags.writeable:
        array = array.copy()
    array[~finite] = fill
    return array, (
        f"{n_bad} non-finite voxel(s) ({100 * share:.3g} %) replaced by the finite minimum {float(fill):g}"
    )

"""Resampling between voxel grids through their affines: images for preprocessing, class
probabilities and label maps back onto a series' original grid.

One resampler for everything that goes back to an original grid: `medseg segment`
(`medseg.inference.predict`) and the engine's validation (`medseg.engine.validation`) both
call `labels_on_grid`, so validation scores exactly the label map `segment` writes.

Axis-aligned grids (the case after Orientation + Spacing, even for oblique scans) are
resampled by three separable 1-D linear interpolations, which equal trilinear
``grid_sample`` with border padding on voxel centres; other grids use ``grid_sample``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medseg.io.volume import foreground_box

def _slab_grid(
    src_affine: np.ndarray, src_shape: tuple[int, ...], dst_affine: np.ndarray, dst_shape: tuple[int, ...], k0: int, k1: int
) -> tuple[Any, Any]:
    """grid_sample grid mapping dst voxels [:, :, k0:k1] into src, and an "inside src" mask."""
    import torch

    m = np.linalg.inv(src_affine) @ dst_affine
    mt = torch.as_tensor(m, dtype=torch.float64)
    i = torch.arange(dst_shape[0], dtype=torch.float64)[:, None, None]
    j = torch.arange(dst_shape[1], dtype=torch.float64)[None, :, None]
    k = torch.arange(k0, k1, dtype=torch.float64)[None, None, :]
    coords = []
    inside = None
    for axis in range(3):
        c = mt[axis, 0] * i + mt[axis, 1] * j + mt[axis, 2] * k + mt[axis, 3]
        c = c.expand(dst_shape[0], dst_shape[1], k1 - k0)
        # a voxel within one source voxel of the grid's edge voxels still belongs to the image
        ok = (c >= -1.0) & (c <= src_shape[axis])
        inside = ok if inside is None else inside & ok
        n = src_shape[axis]
        coords.append((2.0 * c / (n - 1) - 1.0) if n > 1 else torch.zeros_like(c))
    # grid_sample's last dim is (W, H, D) = (Z, Y, X) of a (N, C, X, Y, Z) input
    grid = torch.stack([coords[2], coords[1], coords[0]], dim=-1).float().unsqueeze(0)
    return grid, inside


def _axis_aligned(m: np.ndarray, tol: float = 1e-6) -> list[int] | None:
    """For ``m = inv(A_src) @ A_dst``: the source axis of each destination axis when every
    destination axis maps onto exactly one source axis (the case after Orientation + Spacing,
    even for oblique scans), else None."""
    block = np.abs(m[:3, :3]) > tol
    if not (block.sum(axis=0) == 1).all() or not (block.sum(axis=1) == 1).all():
        return None
    return [int(np.argmax(block[:, a])) for a in range(3)]


def _linear_maps(m: np.ndarray, perm: list[int], src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> list[tuple[Any, ...]]:
    """Per destination axis a: ``(i0, i1, w, inside)`` of the 1-D linear interpolation along
    source axis ``perm[a]`` (``m = inv(A_src) @ A_dst``), coordinates clamped to the source
    (border padding); ``inside`` flags destination voxels within one source voxel of the grid."""
    import torch

    maps = []
    for a, p in enumerate(perm):
        n_src = src_shape[p]
        c = m[p, a] * np.arange(dst_shape[a], dtype=np.float64) + m[p, 3]
        inside = torch.as_tensor((c >= -1.0) & (c <= n_src))
        c = np.clip(c, 0.0, n_src - 1)
        i0 = np.minimum(np.floor(c).astype(np.int64), n_src - 1)
        i1 = np.minimum(i0 + 1, n_src - 1)
        w = torch.as_tensor(c - i0, dtype=torch.float32)
        maps.append((torch.as_tensor(i0), torch.as_tensor(i1), w, inside))
    return maps


def _lerp_along(x: Any, dim: int, i0: Any, i1: Any, w: Any) -> Any:
    """1-D linear interpolation of `x` along `dim` (a `_linear_maps` entry), as float32.

    Gathers with advanced indexing (much faster than index_select on inner dims), converting
    after the gather (an int16 CT is gathered at its own width). Where every destination voxel
    sits on a source voxel centre (1.5 → 3 mm slices) it is the gather alone, the same values.
    """
    import torch

    lead = (slice(None),) * dim
    a = x[(*lead, i0)].float()
    if not bool(w.any()):
        return a
    shape = [1] * x.ndim
    shape[dim] = -1
    return torch.lerp(a, x[(*lead, i1)].float(), w.view(shape))


def resample_image_linear(
    array: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, int, int]
) -> Any:
    """Trilinear resampling of a 3-D image onto an axis-aligned grid, in the array's memory order.

    Equal to ``grid_sample``/MONAI ``Spacingd`` (bilinear, border padding) on voxel centres, as
    three 1-D interpolations. Each runs along one source axis, slowest-varying first, on the
    array as it lies in memory (a DICOM volume is usually Fortran-ordered): no full-volume
    transposing copy, which is most of what MONAI's resampling of a big CT costs
    (``AffineTransform`` makes the input contiguous before its ``grid_sample``; docs/benchmarks.md).

    Returns:
        float32 tensor of `dst_shape`, or None when the grids are not axis-aligned.
    """
    import torch

    m = np.linalg.inv(src_affine) @ dst_affine
    perm = _axis_aligned(m)
    if perm is None or array.ndim != 3:
        return None
    maps = _linear_maps(m, perm, array.shape, dst_shape)
    order = [int(a) for a in np.argsort([-abs(st) for st in array.strides], kind="stable")]  # slowest axis first
    view = np.transpose(array, order)
    if not view.flags.c_contiguous:
        view = np.ascontiguousarray(view)
    x = torch.from_numpy(view)
    for dim, src_axis in enumerate(order):
        i0, i1, w, _ = maps[perm.index(src_axis)]
        x = _lerp_along(x, dim, i0, i1, w)
    # x's axes are the source axes in `order`; destination axis a is source axis perm[a]
    return x.permute([order.index(p) for p in perm]).contiguous()


class _SlabSampler:
    """Trilinear resampling of ``(C, X', Y', Z')`` probabilities onto destination z-slabs.

    Axis-aligned grids (the usual case) use three separable 1-D linear interpolations
    (gather + ``lerp``): the same values as trilinear ``grid_sample`` with border padding at a
    fraction of its cost. Other grids fall back to ``grid_sample``. Destination voxels more
    than one source voxel outside the source grid are flagged "outside".

    Slabs come out as ``(ks, C, X, Y)``: slab axis first, so that selecting source planes and
    the per-voxel argmax over C run on contiguous memory.
    """

    def __init__(self, probs: Any, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, int, int]) -> None:
        self.probs, self.dst_shape = probs, tuple(dst_shape)
        self.src_affine, self.dst_affine = src_affine, dst_affine
        self.src_shape = tuple(int(n) for n in probs.shape[1:])
        self.identity = self.src_shape == self.dst_shape and np.allclose(src_affine, dst_affine, atol=1e-4)
        m = np.linalg.inv(src_affine) @ dst_affine
        self.perm = None if self.identity else _axis_aligned(m)
        self._src = self._cl = self._cells = self._cells_zyx = None
        if self.perm is not None:
            self.axes = _linear_maps(m, self.perm, self.src_shape, self.dst_shape)

    @property
    def src(self) -> Any:
        """The source as ``(Z', C, X', Y')`` in destination axis order (made on first use)."""
        if self._src is None:
            px, py, pz = (1 + p for p in self.perm)
            self._src = self.probs.permute(pz, 0, px, py).contiguous()
        return self._src

    def cell_maps_zyx(self) -> tuple[np.ndarray, np.ndarray]:
        """`cell_maps` as contiguous numpy arrays ``(Z', Y', X')`` (cached)."""
        if self._cells_zyx is None:
            lab, uniform = self.cell_maps()
            self._cells_zyx = (
                np.ascontiguousarray(lab.permute(0, 2, 1).numpy()), np.ascontiguousarray(uniform.permute(0, 2, 1).numpy())
            )
        return self._cells_zyx

    def channels_last(self) -> Any:
        """The source as ``(Z', X', Y', C)`` (cached): corner gathers read C contiguous values."""
        if self._cl is None:
            px, py, pz = (1 + p for p in self.perm)
            self._cl = self.probs.permute(pz, px, py, 0).contiguous()
        return self._cl

    def cell_maps(self) -> tuple[Any, Any]:
        """Source argmax ``(Z', X', Y')`` and whether each cell's 8 corners share it (cached)."""
        import torch

        if self._cells is None:
            # from the channels-last copy the cell shortcut gathers from anyway (the (Z', C, X', Y')
            # one is then never made: one 4-D copy instead of two)
            src = self.channels_last()
            lab = torch.max(src, dim=3).indices.to(torch.uint8 if src.shape[3] < 256 else torch.int64)
            # the 8 corners (z|z+1, x|x+1, y|y+1), edges replicated like the clamped i1 of `axes`
            uniform = torch.ones_like(lab, dtype=torch.bool)
            shifted = [lab]
            for dim in range(3):
                more = []
                for t in shifted:
                    idx = torch.arange(1, t.shape[dim] + 1).clamp(max=t.shape[dim] - 1)
                    more.append(t.index_select(dim, idx))
                shifted = shifted + more
            for t in shifted[1:]:
                uniform &= t == lab
            self._cells = (lab, uniform)
        return self._cells

    def sample(self, k0: int, k1: int) -> tuple[Any, Any]:
        """Slab ``[:, :, k0:k1]`` as ``(ks, C, X, Y)`` and its inside mask ``(ks, X, Y)`` (None = all inside)."""
        import torch.nn.functional as F

        if self.identity:
            return self.probs[..., k0:k1].permute(3, 0, 1, 2), None
        if self.perm is None:
            grid, inside = _slab_grid(self.src_affine, self.src_shape, self.dst_affine, self.dst_shape, k0, k1)
            part = F.grid_sample(self.probs.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
            return part.permute(3, 0, 1, 2), inside.permute(2, 0, 1)
        (x0, x1, wx, ix), (y0, y1, wy, iy), (z0, z1, wz, iz) = self.axes
        part = _lerp_along(self.src, 0, z0[k0:k1], z1[k0:k1], wz[k0:k1])  # (ks, C, X', Y')
        part = _lerp_along(part, 2, x0, x1, wx)  # (ks, C, X, Y')
        part = _lerp_along(part, 3, y0, y1, wy)  # (ks, C, X, Y)
        izs = iz[k0:k1]
        if bool(ix.all() and iy.all() and izs.all()):
            return part, None
        return part, izs[:, None, None] & ix[None, :, None] & iy[None, None, :]


def _argmax_channels(part: Any) -> Any:
    """argmax over dim 1 of ``(ks, C, X, Y)`` (``torch.max`` there is much faster than ``argmax``, same indices)."""
    import torch

    return torch.max(part, dim=1).indices


def _labels_by_cells(sampler: _SlabSampler, k0: int, k1: int, xs: slice = slice(None), ys: slice = slice(None)) -> np.ndarray:
    """Argmax labels of slab ``[xs, ys, k0:k1]`` as ``(ks, Y, X)``, interpolating only where needed.

    A destination voxel lies in a source cell (its 8 surrounding source voxels). If the argmax
    is the same class c at all 8 corners, every convex combination of those probability vectors
    also has its maximum at c, so the trilinear result's argmax is c without computing it. Only
    voxels in cells that straddle a boundary between classes (a few % of a CT) are
    interpolated, which makes this step several times cheaper than resampling every channel.

    The slab comes out as a numpy array in ``(ks, Y, X)`` order, the memory order of a
    Fortran-ordered label map's z-slab, gathered with ``np.take`` (single uint8 gathers along
    contiguous rows; torch's advanced indexing on inner dimensions was slower here).

    Mixed cells are interpolated in-plane once per pair of source planes and then along z for
    each destination slice between them (two slices per pair when 1.5 mm slices meet a 3 mm
    plan, more for thinner slices), instead of gathering the 8 corners per destination voxel
    (docs/benchmarks.md). Trilinear either way; the order of the float operations is fixed,
    so the result does not depend on how the work is split.
    """
    import torch

    (x0, x1, wx, _), (y0, y1, wy, _), (z0, z1, wz, _) = sampler.axes
    x0, x1, wx, y0, y1, wy = x0[xs], x1[xs], wx[xs], y0[ys], y1[ys], wy[ys]
    zs0, zs1, wzs = z0[k0:k1], z1[k0:k1], wz[k0:k1]
    cell_label, uniform = sampler.cell_maps_zyx()
    zi, yi, xi = zs0.numpy(), y0.numpy(), x0.numpy()
    lab = np.take(np.take(cell_label[zi], yi, axis=1), xi, axis=2)  # (ks, Y, X) argmax at the cell's lower corner
    # Destination slices between the same two source planes share their mixed cells: the
    # corners are interpolated in-plane once per source plane pair, then along z per slice.
    uz, first, group = np.unique(zi, return_index=True, return_inverse=True)
    mixed = ~np.take(np.take(uniform[uz], yi, axis=1), xi, axis=2)  # (U, Y, X)
    flat = np.flatnonzero(mixed)  # one index array instead of np.nonzero's three
    if flat.size:
        ny, nx = mixed.shape[1], mixed.shape[2]
        g, rest = np.divmod(flat, ny * nx)
        starts = np.searchsorted(g, np.arange(len(uz)))
        counts = np.bincount(g, minlength=len(uz))
        src = sampler.channels_last()  # (Z', X', Y', C): each corner's C values in one cache line
        _, nxs, nys, n_ch = src.shape
        rows_of = src.view(-1, n_ch)  # corner (z, x, y) is row (z·X' + x)·Y' + y
        ky, kx = (torch.from_numpy(k) for k in np.divmod(rest, nx))
        xa, xb, wxa = x0[kx] * nys, x1[kx] * nys, wx[kx]
        ya, yb, wya = y0[ky], y1[ky], wy[ky]
        w00, w10 = ((1 - wxa) * (1 - wya))[:, None], (wxa * (1 - wya))[:, None]
        w01, w11 = ((1 - wxa) * wya)[:, None], (wxa * wya)[:, None]

        def in_plane(zp: Any) -> Any:  # (N, C) bilinear at source plane zp (per row)
            # row gathers with index_select: faster than advanced indexing with three index
            # tensors, same values (same operations in the same order)
            base = zp * (nxs * nys)
            ra, rb = base + xa, base + xb
            return (rows_of.index_select(0, ra + ya) * w00 + rows_of.index_select(0, rb + ya) * w10
                    + rows_of.index_select(0, ra + yb) * w01 + rows_of.index_select(0, rb + yb) * w11)

        lo = in_plane(torch.from_numpy(uz[g]))
        hi = in_plane(zs1[torch.from_numpy(first[g])])
        # rows of each destination slice: its group's range
        lens = counts[group]
        rows = np.repeat(starts[group] - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
        rows_t = torch.from_numpy(rows)
        w = torch.from_numpy(np.repeat(wzs.numpy(), lens))[:, None]
        best = torch.max(torch.lerp(lo.index_select(0, rows_t), hi.index_select(0, rows_t), w), dim=1).indices.numpy().astype(lab.dtype)
        pos = np.repeat(np.arange(len(zi)) * (ny * nx), lens) + rest[rows]
        np.put(lab, pos, best)
    return lab


def _foreground_ranges(sampler: _SlabSampler) -> tuple[slice, slice, slice] | None:
    """Destination index ranges ``(x, y, z)`` outside which every voxel is background (None: all).

    A destination voxel whose source cell has background as the argmax at all 8 corners is
    background (the convexity argument of `_labels_by_cells`), so only voxels whose cell lies
    in the box of the other cells can be labelled. The 1-D cell maps are monotonic, so each
    axis gives one index range.
    """
    cell_label, uniform = sampler.cell_maps()  # (Z', X', Y')
    box = foreground_box((~(uniform & (cell_label == 0))).numpy())
    if box is None:
        return None
    ranges = []
    for (i0, *_), cells in zip(sampler.axes, (box[1], box[2], box[0])):
        idx = np.flatnonzero((i0.numpy() >= cells.start) & (i0.numpy() < cells.stop))
        if idx.size == 0:
            return None
        ranges.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(ranges)  # type: ignore[return-value]


def resample_probabilities(
    probs: Any, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, int, int]
) -> Any:
    """Resample class probabilities ``(C, X, Y, Z)`` from one grid onto another (trilinear).

    Voxels of the destination outside the source grid get probability 1 for background.
    Returns a float32 CPU tensor ``(C, *dst_shape)``.
    """
    import torch

    sampler = _SlabSampler(probs, src_affine, dst_affine, dst_shape)
    if sampler.identity:
        return probs
    out = torch.empty((probs.shape[0], *dst_shape), dtype=torch.float32)
    for k0, k1 in _slabs(dst_shape):
        part, inside = sampler.sample(k0, k1)  # (ks, C, X, Y)
        if inside is not None:
            part = _background_outside(part, inside)
        out[..., k0:k1] = part.permute(1, 2, 3, 0)
    return out


def _background_outside(part: Any, inside: Any) -> Any:
    """Set probability 1 for background, 0 otherwise, where ``inside`` (ks, X, Y) is False."""
    part = part.clone()
    outside = ~inside
    for c in range(part.shape[1]):
        part[:, c][outside] = 1.0 if c == 0 else 0.0
    return part


def _slabs(shape: tuple[int, ...], voxels_per_slab: int = 4_000_000) -> list[tuple[int, int]]:
    step = max(1, voxels_per_slab // max(1, shape[0] * shape[1]))
    return [(k, min(k + step, shape[2])) for k in range(0, shape[2], step)]


def labels_on_grid(
    probs: Any,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: tuple[int, int, int],
    channel_values: list[int],
    keep_probabilities: bool = False,
    on_slab: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Argmax label map on the destination grid, resampling probabilities slab by slab.

    Args:
        probs: ``(C, X', Y', Z')`` probabilities on the source (preprocessed) grid.
        src_affine / dst_affine: voxel→RAS affines of the two grids.
        dst_shape: shape of the destination (original) grid.
        channel_values: label value of each channel (channel 0 = background = 0).
        keep_probabilities: also return ``(X, Y, Z, C)`` float32 probabilities.
        on_slab: progress callback ``(done, total)``.

    Returns:
        ``(labels, probabilities or None)``; labels are uint8 (uint16 above 255 labels).
    """
    import torch

    dtype = np.uint8 if max(channel_values) < 256 else np.uint16
    # Fortran order, like the DICOM volume and NIfTI on disk: NIfTI writing, DICOM SEG frames,
    # cc3d and the statistics then walk memory sequentially
    labels = np.zeros(dst_shape, dtype=dtype, order="F")
    lut_np = np.asarray(channel_values).astype(dtype)
    identity_lut = list(channel_values) == list(range(len(channel_values)))
    prob_out = np.zeros((*dst_shape, probs.shape[0]), dtype=np.float32) if keep_probabilities else None
    sampler = _SlabSampler(probs, src_affine, dst_affine, dst_shape)
    slabs = _slabs(dst_shape)
    # cell shortcut when most source cells lie inside one class (true of segmentations; a noisy
    # probability map with boundaries everywhere is faster with the full resampling)
    by_cells = sampler.perm is not None and not keep_probabilities and float(sampler.cell_maps()[1].float().mean()) > 0.8
    if by_cells:
        # only the box that can hold labels is computed; the rest stays background
        ranges = _foreground_ranges(sampler)
        xs, ys, zs = ranges if ranges is not None else (slice(0, 0),) * 3
        slabs = [(max(k0, zs.start), min(k1, zs.stop)) for k0, k1 in slabs if k1 > zs.start and k0 < zs.stop]
    with torch.no_grad():
        for n, (k0, k1) in enumerate(slabs):
            if by_cells:
                idx_yx = _labels_by_cells(sampler, k0, k1, xs, ys)  # (ks, Y, X): copied into the slab in memory order
                ix, iy, iz = (axis[3].numpy() for axis in sampler.axes)
                ix, iy = ix[xs], iy[ys]
                if not (ix.all() and iy.all() and iz[k0:k1].all()):
                    idx_yx[~(iz[k0:k1][:, None, None] & iy[None, :, None] & ix[None, None, :])] = 0
                labels[xs, ys, k0:k1] = (idx_yx if identity_lut else lut_np[idx_yx]).transpose(2, 1, 0)
                part = inside = None
            else:
                part, inside = sampler.sample(k0, k1)  # (ks, C, X, Y)
                idx = _argmax_channels(part)  # (ks, X, Y)
                if inside is not None:
                    idx[~inside] = 0
                idx_np = idx.numpy()
                labels[..., k0:k1] = (idx_np if identity_lut else lut_np[idx_np]).transpose(1, 2, 0)
            if prob_out is not None:
                p = _background_outside(part, inside) if inside is not None else part
                prob_out[:, :, k0:k1, :] = p.permute(2, 3, 0, 1).numpy()
            if on_slab is not None:
                on_slab(n + 1, len(slabs))
    return labels, prob_out

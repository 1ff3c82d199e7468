"""Segmenting one volume: preprocess → sliding window (+TTA, +ensemble) → original grid → post-process.

The pipeline for one `Volume` and one or more `LoadedModel`:

1. **Preprocess** with the checkpoint's own plan (``preprocessing_transforms(plan, label_key=None)``:
   orientation RAS, resampling to the plan's spacing, intensity normalisation). The result is a
   MONAI ``MetaTensor`` whose affine maps its voxels to the same RAS world as the input.
2. **Sliding-window inference** (MONAI ``sliding_window_inference``, Gaussian blending), softmax
   per window; optional flip test-time augmentation (identity + one flip per axis, averaged).
3. **Ensemble**: softmax probabilities of several checkpoints are averaged on the first model's
   preprocessed grid (a model with another plan is resampled onto it first).
4. **Back to the original grid**: probabilities are resampled trilinearly, slab by slab, from the
   preprocessed grid onto every voxel of the input grid through the two affines
   (``inv(A_pre) @ A_orig``), then ``argmax``. This inverts orientation + spacing exactly,
   whatever the chain did, and never holds full-resolution probabilities for all classes
   unless probability maps were asked for.
5. **Post-process**: largest connected component per label, hole filling (both optional).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.inference.model import LoadedModel
from medseg.io.volume import Volume, foreground_box

log = logging.getLogger(__name__)

#: ``progress(stage, done, total)``; stages: "preprocess", "infer", "resample", "postprocess".
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class InferenceOptions:
    """How to segment a volume. ``None`` means "the checkpoint's default".

    Attributes:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:N]"``; used when models
            are loaded by `segment_batch` (a `LoadedModel` already sits on its device).
        roi_size: sliding-window patch size in voxels (default: the checkpoint's).
        overlap: fraction of overlap between windows, 0 ≤ overlap < 1 (default: the checkpoint's).
        sw_batch_size: windows per forward pass (default: the checkpoint's).
        amp: mixed precision (float16 autocast) on CUDA; ignored on CPU (see `precision`).
        precision: ``"fp32"``, ``"bf16"`` (bfloat16 autocast; on CPUs with native bf16, e.g.
            AVX512-BF16/AMX, ~2–3× faster at a Dice change of ~0.1–1 %, see docs/benchmarks.md) or
            ``"auto"`` (= fp32 on CPU, `amp` on CUDA).
        tta: flip test-time augmentation (4 forward passes per model: identity + a flip per axis).
        largest_component: keep only the largest connected component of each label.
        largest_component_labels: restrict that to these label values (None = all labels); leave
            out labels made of several structures (e.g. "kidneys" = left + right).
        fill_holes: fill enclosed holes of each label.
        probabilities: also return per-class probabilities on the original grid
            (``result.meta["probabilities"]``, float32 ``(X, Y, Z, C)``).
        spacing_mm: override the plan's target spacing (coarser = less memory and faster, at some
            cost in accuracy; a model trained at another spacing sees different anatomy scale).
        max_memory_gb: refuse series whose estimated peak memory exceeds this (default: 90 % of
            the memory available when the series starts).
        check_modality: refuse a volume whose ``meta["modality"]`` differs from the model's.
    """

    device: str = "auto"
    roi_size: tuple[int, int, int] | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    amp: bool = True
    precision: str = "auto"
    tta: bool = False
    largest_component: bool = False
    largest_component_labels: tuple[int, ...] | None = None
    fill_holes: bool = False
    probabilities: bool = False
    spacing_mm: tuple[float, float, float] | None = None
    max_memory_gb: float | None = None
    check_modality: bool = True


# --------------------------------------------------------------------------------------------
# geometry helpers


def preprocessed_shape(volume: Volume, spacing_mm: Any) -> tuple[int, int, int]:
    """Spatial shape of `volume` after resampling to `spacing_mm` (None = unchanged), axes in RAS order.

    Used for memory estimates before any work is done.
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(volume.affine)
    perm = [int(a) for a in ornt[:, 0]]
    shape = np.empty(3, dtype=np.int64)
    spacing = np.empty(3)
    for src_axis, dst_axis in enumerate(perm):
        shape[dst_axis] = volume.shape[src_axis]
        spacing[dst_axis] = volume.spacing[src_axis]
    if spacing_mm is None:
        return tuple(int(s) for s in shape)  # type: ignore[return-value]
    target = np.asarray(spacing_mm, dtype=np.float64)
    new = np.maximum(1, np.round(shape * spacing / target)).astype(int)
    return tuple(int(s) for s in new)  # type: ignore[return-value]


def available_memory_bytes() -> int:
    """Memory the OS can give this process now (``MemAvailable``; a cgroup limit if lower)."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 40
    for cg in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = open(cg).read().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < (1 << 60):
            avail = min(avail, int(raw))
    return int(avail)


def estimate_memory_bytes(volume: Volume, models: list[LoadedModel], options: InferenceOptions) -> int:
    """Rough peak host memory (bytes) `segment_volume` needs for `volume`.

    Counts the preprocessed image, MONAI's blended output + weight map, the ensemble/TTA
    accumulator, one resampling slab, and the outputs on the original grid. Accurate to
    about ±30 %; meant to refuse a 2000-slice whole-body CT at 0.5 mm before it swaps, not to
    predict exactly.
    """
    n_orig = int(np.prod(volume.shape))
    n_classes = len(models[0].channel_values)
    peak = 0
    for m in models:
        spacing = options.spacing_mm if options.spacing_mm is not None else m.plan.get("spacing_mm")
        n_pre = int(np.prod(preprocessed_shape(volume, spacing)))
        # image (float32, ×2 during transforms) + blended output + count map + accumulator
        peak = max(peak, n_pre * 4 * (2 + 2 * n_classes + 1))
    orig = n_orig * (volume.array.dtype.itemsize + 4 + 2)  # source array, float copy, labels
    if options.probabilities:
        orig += n_orig * n_classes * 4
    return int(peak + orig)


# --------------------------------------------------------------------------------------------
# core steps


def preprocess_for_model(volume: Volume, plan: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """Apply a checkpoint's preprocessing plan to `volume`.

    The result equals MONAI's chain (`medseg.data.transforms.preprocessing_transforms`, the one
    training used; a test checks it): MONAI computes the output grid lazily (``lazy=True``: no
    voxel is touched), then, where that grid is axis-aligned with the input (always after
    Orientation + Spacing), the voxels are resampled by three separable linear interpolations in
    the array's memory order (`resample_image_linear`: 0.36 s instead of MONAI's 1.40 s for a
    512×512×300 CT, docs/benchmarks.md). Other grids run MONAI's chain.

    Returns:
        ``(image, affine)``: a float32 tensor ``(1, 1, X, Y, Z)`` and its voxel→RAS affine.
    """
    import torch

    from medseg.data.transforms import intensity_transform, preprocessing_transforms, volume_to_metatensor

    chain = preprocessing_transforms(plan, image_key="image", label_key=None)
    geometry = _planned_grid(volume, chain) if plan.get("spacing_mm") else None
    resampled = resample_image_linear(np.asarray(volume.array), volume.affine, *geometry) if geometry else None
    if resampled is not None:
        from monai.data import MetaTensor

        affine = np.asarray(geometry[0], dtype=np.float64)  # type: ignore[index]
        image = MetaTensor(resampled[None], affine=torch.as_tensor(affine))
        out = intensity_transform(plan, "image")({"image": image})["image"]
    else:
        out = chain({"image": volume_to_metatensor(volume)})["image"]
        affine = np.asarray(out.affine.detach().cpu().numpy() if hasattr(out, "affine") else volume.affine, dtype=np.float64)
    tensor = out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)
    return tensor.float().unsqueeze(0).contiguous(), affine


def _planned_grid(volume: Volume, chain: Any) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """Output ``(affine, shape)`` of the chain's spatial transforms, computed lazily by MONAI.

    Runs the chain's leading lazy-capable transforms (Orientation, Spacing) with ``lazy=True``
    on a zero-stride stand-in with the volume's shape and affine: MONAI only records the pending
    operations, whose combined affine and shape are read back. None when MONAI cannot say.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms.traits import LazyTrait

    # a zero-stride stand-in of the volume's shape: lazy transforms read only shape and affine
    data = {"image": MetaTensor(torch.zeros(1).expand(1, *volume.shape), affine=torch.as_tensor(volume.affine, dtype=torch.float64))}
    try:
        for t in chain.transforms:
            if not isinstance(t, LazyTrait):
                break
            data = t(data, lazy=True)
        img = data["image"]
        if not img.pending_operations:
            return None
        shape = tuple(int(n) for n in img.peek_pending_shape())
        affine = np.asarray(img.peek_pending_affine(), dtype=np.float64)
    except Exception:  # an older/newer MONAI without this API: use the chain as it is
        log.debug("lazy grid computation failed; using MONAI's resampling", exc_info=True)
        return None
    return affine, shape  # type: ignore[return-value]


def count_windows(shape: tuple[int, ...], roi_size: tuple[int, ...], overlap: float, sw_batch_size: int) -> int:
    """Number of forward passes MONAI's sliding window makes on `shape` (for progress bars)."""
    try:
        from monai.data.utils import dense_patch_slices
        from monai.inferers.utils import _get_scan_interval

        size = tuple(max(int(s), int(r)) for s, r in zip(shape, roi_size))
        scan = _get_scan_interval(size, roi_size, len(size), (overlap,) * len(size))
        n = len(dense_patch_slices(size, roi_size, scan))
    except Exception:  # private MONAI helpers may move; progress then just counts
        n = int(np.prod([max(1, math.ceil(s / (r * (1 - overlap)))) for s, r in zip(shape, roi_size)]))
    return math.ceil(n / max(1, sw_batch_size))


def _tta_flips(tta: bool) -> list[tuple[int, ...]]:
    return [(), (2,), (3,), (4,)] if tta else [()]


def predict_probabilities(
    model: LoadedModel,
    image: Any,
    options: InferenceOptions,
    on_window: Callable[[], None] | None = None,
    before_window: Callable[[], None] | None = None,
) -> Any:
    """Softmax probabilities of `model` on a preprocessed image by sliding-window inference.

    Args:
        model: a loaded model.
        image: float tensor ``(1, 1, X, Y, Z)`` on the CPU (from `preprocess_for_model`).
        options: window size/overlap/batch, AMP and TTA settings.
        on_window: called after every forward pass (progress).
        before_window: called before every forward pass (`segment_batch` adjusts torch's
            thread count there to the cores its worker processes leave free).

    Returns:
        float32 CPU tensor ``(C, X, Y, Z)`` (C = background + labels), averaged over TTA flips.
    """
    import torch
    from monai.inferers import sliding_window_inference

    dev = model.device
    roi = tuple(int(r) for r in (options.roi_size or model.inference["roi_size"]))
    overlap = float(options.overlap if options.overlap is not None else model.inference.get("overlap", 0.25))
    sw_bs = int(options.sw_batch_size or model.inference.get("sw_batch_size", 1))
    precision = (options.precision or "auto").lower()
    if precision not in ("auto", "fp32", "bf16"):
        raise InputError(f"unknown precision {options.precision!r}; expected auto, fp32 or bf16")
    if precision == "bf16":
        use_amp, amp_dtype = True, torch.bfloat16
    else:
        use_amp, amp_dtype = bool(precision == "auto" and options.amp and dev.type == "cuda"), torch.float16
    n_expected = len(model.channel_values)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        if before_window is not None:
            before_window()
        with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=use_amp):
            logits = model.network(x)
        if isinstance(logits, (list, tuple)):  # deep supervision heads: the first is full-res
            logits = logits[0]
        if logits.shape[1] != n_expected:
            raise InputError(
                f"{model.path}: network outputs {logits.shape[1]} channels but the checkpoint names "
                f"{n_expected - 1} labels + background"
            )
        if on_window is not None:
            on_window()
        return torch.softmax(logits.float(), dim=1)

    # Keep the blended full-volume buffers on the host when the device is a GPU with less free
    # memory than they need (MONAI then moves each window's output to the host).
    out_device = dev
    if dev.type == "cuda":
        need = image.numel() * 4 * (n_expected + 2)
        free, _ = torch.cuda.mem_get_info(dev)
        out_device = dev if need < 0.7 * free else torch.device("cpu")

    acc = None
    flips = _tta_flips(options.tta)
    with torch.no_grad():
        for dims in flips:
            x = image.flip(dims) if dims else image
            probs = sliding_window_inference(
                x.to(out_device),
                roi_size=roi,
                sw_batch_size=sw_bs,
                predictor=predictor,
                overlap=overlap,
                mode="gaussian",
                sw_device=dev,
                device=out_device,
            )
            probs = probs.as_tensor() if hasattr(probs, "as_tensor") else probs
            if dims:
                probs = probs.flip(dims)
            probs = probs[0].float().cpu()
            acc = probs if acc is None else acc.add_(probs)
    if len(flips) > 1:
        acc /= len(flips)
    return acc


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
    transposing copy, which is most of what MONAI's resampling of a 512×512×300 CT costs
    (``AffineTransform`` makes the input contiguous, 1.2 s, before a 0.1 s ``grid_sample``).

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
        import torch

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
            # one is then never made: one 4-D copy instead of two, −0.04 s on the benchmark map)
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
    """argmax over dim 1 of ``(ks, C, X, Y)`` (``torch.max`` there is ~5× faster than ``argmax``)."""
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
    contiguous rows; torch's advanced indexing on inner dimensions was ~3× slower here).

    Mixed cells are interpolated in-plane once per pair of source planes and then along z for
    each destination slice between them (two slices per pair when 1.5 mm slices meet a 3 mm
    plan, more for thinner slices): 0.56 → 0.36 s for the benchmark's 512×512×300 map (median
    of 6), where the 8 corners were gathered per destination voxel before. Trilinear either
    way; the order of the float operations differs (1 voxel of 78.6 M changed, a tie).
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
    flat = np.flatnonzero(mixed)  # one index array: ~2× faster than np.nonzero's three
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
            # row gathers with index_select: 2× faster than advanced indexing with three index
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
    # cc3d and the statistics then walk memory sequentially (NIfTI 0.12 s instead of 0.4 s)
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


# --------------------------------------------------------------------------------------------
# public entry point


def check_volume_for_models(volume: Volume, models: list[LoadedModel], options: InferenceOptions) -> None:
    """Raise `InputError` when `volume` cannot be segmented by `models` (dimensions, modality, memory)."""
    if volume.array.ndim != 3:
        raise InputError(
            f"{_name(volume)}: expected a 3-D image, found shape {volume.array.shape} "
            "(multi-channel/4-D series: pick one channel or time point first)"
        )
    vol_mod = str(volume.meta.get("modality") or "").upper()
    model_mod = models[0].modality
    if options.check_modality and vol_mod and model_mod and _mod_family(vol_mod) != _mod_family(model_mod):
        raise InputError(
            f"{_name(volume)}: modality {vol_mod} but the model was trained on {model_mod} "
            f"({models[0].path.name}); use a {vol_mod} model"
        )
    need = estimate_memory_bytes(volume, models, options)
    limit = options.max_memory_gb * 2**30 if options.max_memory_gb else 0.9 * available_memory_bytes()
    if need > limit:
        spacing = models[0].plan.get("spacing_mm")
        raise InputError(
            f"{_name(volume)}: shape {volume.shape} needs about {need / 2**30:.1f} GiB to segment at "
            f"spacing {spacing} mm, more than the {limit / 2**30:.1f} GiB available; use a coarser "
            "--spacing (e.g. --spacing 3 3 3), fewer ensemble models, no --probabilities, or a "
            "machine with more memory"
        )


def _mod_family(mod: str) -> str:
    return {"MRI": "MR", "PT": "PET", "CTA": "CT"}.get(mod, mod)


def _name(volume: Volume) -> str:
    return str(
        volume.meta.get("series_description")
        or volume.meta.get("source_path")
        or volume.meta.get("series_instance_uid")
        or "volume"
    )


@dataclass
class PreparedInput:
    """A volume preprocessed for a set of models (`prepare_input`'s result).

    Attributes:
        images: plan key → ``(image, affine)``: float32 tensor ``(1, 1, X, Y, Z)`` and its
            voxel→RAS affine, once per distinct preprocessing plan.
        plan_keys: the plan key of each model, in the models' order.
    """

    images: dict[str, tuple[Any, np.ndarray]]
    plan_keys: list[str]


def prepare_input(
    volume: Volume,
    models: list[LoadedModel],
    options: InferenceOptions | None = None,
    progress: ProgressFn | None = None,
) -> PreparedInput:
    """Step 1 of `segment_volume`: check `volume` against the models, preprocess it once per plan.

    Needs no network: `segment_batch` runs it in a worker process (``models`` may be copies
    without their network).

    Raises:
        InputError: not 3-D, modality mismatch, or more memory needed than available.
    """
    options = options or InferenceOptions()
    if not models:
        raise InputError("segment_volume needs at least one model")
    check_volume_for_models(volume, models, options)
    report = progress or (lambda stage, done, total: None)
    images: dict[str, tuple[Any, np.ndarray]] = {}
    keys = []
    for m in models:
        plan = dict(m.plan)
        if options.spacing_mm is not None:
            plan["spacing_mm"] = [float(s) for s in options.spacing_mm]
        key = repr(sorted(plan.items()))
        keys.append(key)
        if key not in images:
            report("preprocess", len(images), len(set(keys)))
            images[key] = preprocess_for_model(volume, plan)
    report("preprocess", 1, 1)
    return PreparedInput(images, keys)


def run_models(
    prepared: PreparedInput,
    models: list[LoadedModel],
    options: InferenceOptions | None = None,
    progress: ProgressFn | None = None,
    before_window: Callable[[], None] | None = None,
) -> tuple[Any, np.ndarray]:
    """Steps 2–3 of `segment_volume`: sliding window (+TTA) per model, ensemble average.

    `before_window` is called before every forward pass (see `predict_probabilities`).

    Returns:
        ``(probabilities, affine)``: float32 CPU tensor ``(C, X, Y, Z)`` on the first model's
        preprocessed grid, and that grid's voxel→RAS affine.
    """
    options = options or InferenceOptions()
    report = progress or (lambda stage, done, total: None)
    totals = []
    for m, key in zip(models, prepared.plan_keys):
        img = prepared.images[key][0]
        roi = tuple(int(r) for r in (options.roi_size or m.inference["roi_size"]))
        overlap = float(options.overlap if options.overlap is not None else m.inference.get("overlap", 0.25))
        sw_bs = int(options.sw_batch_size or m.inference.get("sw_batch_size", 1))
        totals.append(count_windows(tuple(img.shape[2:]), roi, overlap, sw_bs) * len(_tta_flips(options.tta)))
    total = sum(totals)
    done = [0]

    def on_window() -> None:
        done[0] += 1
        report("infer", min(done[0], total), total)

    ref_key = prepared.plan_keys[0]
    ref_affine = prepared.images[ref_key][1]
    ref_shape = tuple(prepared.images[ref_key][0].shape[2:])
    acc = None
    for m, key in zip(models, prepared.plan_keys):
        img, aff = prepared.images[key]
        probs = predict_probabilities(m, img, options, on_window, before_window)
        if key != ref_key:
            probs = resample_probabilities(probs, aff, ref_affine, ref_shape)
        acc = probs if acc is None else acc.add_(probs)
    if len(models) > 1:
        acc /= len(models)
    report("infer", total, total)
    return acc, ref_affine


def finish_segmentation(
    volume: Volume,
    probabilities: Any,
    affine: np.ndarray,
    models: list[LoadedModel],
    options: InferenceOptions | None = None,
    progress: ProgressFn | None = None,
) -> Volume:
    """Steps 4–5 of `segment_volume`: labels on `volume`'s grid, then post-processing.

    Needs no network (`segment_batch` runs it in a worker process). `probabilities` and
    `affine` come from `run_models`; `probabilities` is not modified.
    """
    options = options or InferenceOptions()
    report = progress or (lambda stage, done, total: None)
    labels, probs_orig = labels_on_grid(
        probabilities,
        affine,
        volume.affine,
        volume.shape,
        models[0].channel_values,
        keep_probabilities=options.probabilities,
        on_slab=lambda d, t: report("resample", d, t),
    )
    if options.largest_component or options.fill_holes:
        report("postprocess", 0, 1)
        from medseg.inference.postprocess import fill_holes, keep_largest_component

        if options.largest_component:
            only = list(options.largest_component_labels) if options.largest_component_labels is not None else None
            labels = keep_largest_component(labels, only, in_place=True)  # labels is ours
        if options.fill_holes:
            labels = fill_holes(labels, in_place=True)
        report("postprocess", 1, 1)

    meta = {
        "kind": "labels",
        "label_names": dict(models[0].labels),
        "models": [{"path": str(m.path), "fingerprint": m.fingerprint} for m in models],
        "inference_options": {k: v for k, v in options.__dict__.items()},
    }
    result = Volume(labels, volume.affine.copy(), {**_source_meta(volume), **meta})
    if probs_orig is not None:
        result.meta["probabilities"] = probs_orig
    return result


def segment_volume(
    volume: Volume,
    models: list[LoadedModel],
    options: InferenceOptions | None = None,
    progress: ProgressFn | None = None,
) -> Volume:
    """Segment one volume with one model or an ensemble; the label map lies on `volume`'s grid.

    `prepare_input` → `run_models` → `finish_segmentation` in this process.

    Args:
        volume: the image (3-D, any orientation/spacing), e.g. from `medseg.io.load_volume`.
        models: from `load_models` (one, or several with the same labels to ensemble).
        options: see `InferenceOptions` (defaults: checkpoint window settings, no TTA, no
            post-processing).
        progress: optional ``progress(stage, done, total)`` callback.

    Returns:
        A `Volume` with the same affine and shape as `volume`, integer labels (uint8, uint16 for
        values above 255), ``meta["label_names"]`` (value → name), ``meta["models"]``
        (checkpoint fingerprints) and, if asked, ``meta["probabilities"]`` (float32 ``(X, Y, Z, C)``).

    Raises:
        InputError: not 3-D, modality mismatch, or more memory needed than available.

    Example:
        >>> models = load_models(["run/checkpoints/best.pt"])          # doctest: +SKIP
        >>> seg = segment_volume(load_volume("ct.nii.gz"), models)      # doctest: +SKIP
    """
    options = options or InferenceOptions()
    prepared = prepare_input(volume, models, options, progress)
    probs, affine = run_models(prepared, models, options, progress)
    del prepared
    return finish_segmentation(volume, probs, affine, models, options, progress)


def _source_meta(volume: Volume) -> dict[str, Any]:
    keep = ("modality", "series_instance_uid", "series_description", "series_number", "source_path")
    return {k: volume.meta[k] for k in keep if k in volume.meta}


def with_defaults(options: InferenceOptions, **changes: Any) -> InferenceOptions:
    """A copy of `options` with some fields changed (options are immutable)."""
    return replace(options, **changes)

"""Applying an image-to-image checkpoint (denoising, low-dose CT enhancement) to one volume.

The steps mirror segmentation's, without resampling (image-to-image plans keep the native
grid, ``spacing_mm: None``), so every step is exactly invertible:

1. **Orient** the array to the plan's axis codes (``"RAS"``) by a permutation/flip of axes
   (`nibabel.orientations`): no interpolation, undone exactly at the end. Oblique volumes take
   their closest axis codes, as MONAI's ``Orientation`` does.
2. **Intensity** to network units with the plan's invertible map
   (`medseg.data.intensity`: ``x = (v − offset) / scale``).
3. **Network**:
   - 2-D (``spatial_dims: 2``): axial slices in batches of ``sw_batch_size`` (default 8); with ``context_slices: k`` the k
     neighbours on each side are stacked as channels (``in_channels = 2k + 1``), slices past
     either end replicate the edge slice, so a 1-slice volume works and each slice is
     restored from its own stack neighbours only. ``roi_size: None`` feeds whole slices;
     otherwise MONAI's sliding window (Gaussian blending) runs over each batch of slices.
   - 3-D (``spatial_dims: 3``): MONAI's `SlidingWindowInferer` with Gaussian blending over
     ``roi_size`` windows (the whole volume at once when ``roi_size`` is None).
   - ``tta=True``: the mean of the network over mirrored copies (`image_flips`: in-plane
     flips for 2-D models, a flip per axis for 3-D ones), each flipped back before the mean.
     A trained denoiser is not exactly mirror-symmetric, so its errors differ between the
     copies and part of them averages out (the "self-ensemble" of image restoration).
4. **Back**: ``v = x · scale + offset``, inverse orientation: float32 on the input's grid.

Non-finite input voxels (NaN/±inf) would spread through every convolution that sees them:
they enter the network as the plan's offset (network value 0: −1024 HU for ``hu_linear``,
0 for MR), and the output there is the network's answer, with a warning in
``meta["warnings"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from medseg.data.intensity import from_network_units, intensity_params, to_network_units
from medseg.errors import CheckpointError, InputError
from medseg.io.volume import Volume

log = logging.getLogger(__name__)

#: ``progress(stage, done, total)`` as in `medseg.inference.predict`; the stage here is "infer".
ProgressFn = Callable[[str, int, int], None]

#: Axial slices per forward pass of a 2-D model when the checkpoint does not say.
DEFAULT_SLICE_BATCH = 8


def image_flips(spatial_dims: int, tta: bool) -> list[tuple[int, ...]]:
    """The axes of the oriented ``(X, Y, Z)`` array flipped for each pass of `predict_image`.

    Without TTA one pass, unflipped. With TTA, 2-D models: identity, X, Y and both (the four
    in-plane mirrorings; the slice axis is not a 2-D model's to mirror). 3-D models: identity and
    a flip per axis, as segmentation's TTA (`medseg.inference.predict`).
    """
    if not tta:
        return [()]
    return [(), (0,), (1,), (0, 1)] if spatial_dims == 2 else [(), (0,), (1,), (2,)]


def _orientation_transforms(affine: np.ndarray, axcodes: str | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(to-plan, back-to-input) nibabel orientation transforms; (None, None) when already there."""
    import nibabel as nib

    if not axcodes:
        return None, None
    start = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(tuple(axcodes))
    forward = nib.orientations.ornt_transform(start, target)
    if np.array_equal(forward, [[0, 1], [1, 1], [2, 1]]):
        return None, None
    return forward, nib.orientations.ornt_transform(target, start)


def _forward(network: Any, x: Any, where: str) -> Any:
    """``network(x)`` → ``(B, 1, *x.shape[2:])`` float, with medseg's errors for a misfit."""
    try:
        y = network(x)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{where}: the image network failed on an input of shape {tuple(x.shape)} ({first}); "
            "check the checkpoint's inference.context_slices (in_channels = 2k + 1) and roi_size"
        ) from exc
    return _network_output(y, (x.shape[0], 1, *x.shape[2:]), where)


def _n_windows(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Windows MONAI's sliding window visits on `shape` (its scan interval rule)."""
    n = 1
    for s, r in zip(shape, roi):
        if r >= s:
            continue
        step = max(int(r * (1 - overlap)), 1)
        n *= -(-(s - r) // step) + 1
    return n


def _network_output(y: Any, expected_shape: tuple[int, ...], where: str) -> Any:
    if isinstance(y, (list, tuple)):  # deep-supervision style heads: the first is full resolution
        y = y[0]
    if tuple(y.shape) != expected_shape:
        raise CheckpointError(
            f"{where}: the image network returned shape {tuple(y.shape)}, expected {expected_shape} "
            "(one output channel, the input's spatial size)"
        )
    return y.float()


def predict_image(
    volume: Volume,
    model: Any,
    *,
    device: Any = None,
    progress: ProgressFn | None = None,
    tta: bool = False,
) -> Volume:
    """Apply an image-to-image network (denoiser, low-dose CT generator) to `volume`.

    Args:
        volume: a 3-D image in its own units (HU for CT), any orientation, e.g. from
            `medseg.io.load_volume` or `read_dicom_series`.
        model: a `LoadedModel` of an image-to-image checkpoint, or any object with
            ``.network`` (maps ``(B, C_in, H, W[, D])`` to ``(B, 1, H, W[, D])`` in network
            units), ``.plan`` (``orientation``, ``intensity``: an invertible plan of
            `medseg.data.intensity`), ``.inference`` (``spatial_dims``, ``context_slices``,
            ``roi_size``, ``overlap``, optional ``sw_batch_size``), ``.device`` and
            optionally ``.path`` (named in errors).
        device: where to run (a ``torch.device`` or a name); default ``model.device``. The
            network is moved there if it is elsewhere.
        progress: ``progress("infer", done, total)`` after every forward pass.
        tta: the mean over mirrored copies (`image_flips`; 4 passes instead of 1).

    Returns:
        float32 Volume on `volume`'s grid (same shape and affine), in `volume`'s units; its
        meta is `volume`'s (DICOM source references included, for the derived-series writer)
        with ``warnings`` extended.

    Raises:
        InputError: `volume` is not a single-channel 3-D image.
        CheckpointError: the checkpoint's inference settings do not fit its network (context
            slices vs input channels, output shape) or its intensity plan is not invertible.
    """
    import torch

    from medseg.errors import ConfigError

    where = str(getattr(model, "path", "image model"))
    array = np.asarray(volume.array)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(f"{where}: image models take a single-channel 3-D volume, got array shape {volume.array.shape}")
    inference = dict(model.inference or {})
    plan = dict(model.plan or {})
    spatial_dims = int(inference.get("spatial_dims", 3))
    context = int(inference.get("context_slices", 0) or 0)
    if spatial_dims not in (2, 3):
        raise CheckpointError(f"{where}: inference.spatial_dims must be 2 or 3, got {spatial_dims}")
    if spatial_dims == 3 and context:
        raise CheckpointError(f"{where}: context_slices ({context}) only applies to 2-D models (spatial_dims 2)")
    roi = inference.get("roi_size")
    overlap = float(inference.get("overlap", 0.25))
    dev = torch.device(device) if device is not None else (model.device or torch.device("cpu"))
    network = model.network
    params_of = list(network.parameters()) if hasattr(network, "parameters") else []
    if params_of and params_of[0].device != dev:
        network.to(dev)

    warnings = list(volume.meta.get("warnings") or [])
    if plan.get("spacing_mm"):
        # image-to-image plans run on the native grid (resampling there and back would blur
        # the very detail a denoiser restores); say so rather than resample quietly
        message = f"the checkpoint's spacing_mm {plan['spacing_mm']} is ignored: image models run on the input's own grid"
        warnings.append(message)
        log.warning("%s: %s", where, message)
    values = array.astype(np.float32, copy=True)
    finite = np.isfinite(values)
    n_bad = int(values.size - np.count_nonzero(finite))
    try:
        params = intensity_params(values[finite] if n_bad else values, plan.get("intensity") or {})
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    if n_bad:
        values[~finite] = params["offset"]
        message = (
            f"{n_bad} non-finite voxel(s) in the input entered the image network as {params['offset']:g} "
            "(network value 0); the output there is the network's answer"
        )
        warnings.append(message)
        log.warning("%s", message)

    forward, backward = _orientation_transforms(volume.affine, plan.get("orientation", "RAS"))
    if forward is not None:
        import nibabel as nib

        values = nib.orientations.apply_orientation(values, forward)
    x = torch.from_numpy(np.ascontiguousarray(to_network_units(values, params), dtype=np.float32))
    sw_batch = int(inference.get("sw_batch_size", 0) or 0)

    flips = image_flips(spatial_dims, tta)

    def pass_progress(i: int) -> ProgressFn | None:
        if progress is None or len(flips) == 1:
            return progress
        # one bar over all passes: pass i's (done, total) counts after the i passes before it
        return lambda stage, done, total: progress(stage, i * total + done, len(flips) * total)

    with torch.inference_mode():
        out = None
        for i, axes in enumerate(flips):
            xi = torch.flip(x, axes).contiguous() if axes else x
            yi = _predict_once(network, xi, spatial_dims, context, roi, overlap, sw_batch, dev, pass_progress(i), where)
            yi = torch.flip(yi, axes) if axes else yi
            out = yi if out is None else out.add_(yi)
        out = out / len(flips) if len(flips) > 1 else out

    result = from_network_units(out.numpy(), params).astype(np.float32, copy=False)
    if backward is not None:
        import nibabel as nib

        result = nib.orientations.apply_orientation(result, backward)
    result = np.ascontiguousarray(result, dtype=np.float32)
    return volume.with_array(result, warnings=warnings)


def _predict_once(
    network: Any,
    x: Any,
    spatial_dims: int,
    context: int,
    roi: Any,
    overlap: float,
    sw_batch: int,
    dev: Any,
    progress: ProgressFn | None,
    where: str,
) -> Any:
    """One pass of the network over ``x`` (X, Y, Z) in network units → float32 CPU tensor (X, Y, Z)."""
    import torch
    from monai.inferers import SlidingWindowInferer

    nx, ny, nz = x.shape
    if spatial_dims == 2:
        return _predict_slices(network, x, context, roi, overlap, sw_batch or DEFAULT_SLICE_BATCH, dev, progress, where)
    image = x[None, None]
    if roi is None:
        y = _forward(network, image.to(dev), where)
        if progress is not None:
            progress("infer", 1, 1)
    else:
        roi3 = tuple(int(r) for r in roi)
        if len(roi3) != 3:
            raise CheckpointError(f"{where}: a 3-D model needs a 3-value roi_size, got {list(roi)}")
        done = [0]
        total = -(-_n_windows((nx, ny, nz), roi3, overlap) // (sw_batch or 1))

        def run(window: torch.Tensor) -> torch.Tensor:
            result = _forward(network, window, where)
            done[0] += 1
            if progress is not None:
                progress("infer", min(done[0], total), total)
            return result

        inferer = SlidingWindowInferer(
            roi_size=roi3, sw_batch_size=sw_batch or 1, overlap=overlap, mode="gaussian",
            sw_device=dev, device=torch.device("cpu"),
        )
        y = inferer(image, run)
        y = y.as_tensor() if hasattr(y, "as_tensor") else y
    return y[0, 0].float().cpu()


def _predict_slices(
    network: Any,
    x: Any,
    context: int,
    roi: Any,
    overlap: float,
    batch: int,
    dev: Any,
    progress: ProgressFn | None,
    where: str,
) -> Any:
    """2-D / 2.5-D prediction over the axial slices of ``x`` (X, Y, Z) in network units."""
    import torch
    from monai.inferers import SlidingWindowInferer

    nx, ny, nz = x.shape
    offsets = torch.arange(-context, context + 1)
    inferer = None
    if roi is not None:
        roi2 = tuple(int(r) for r in roi)
        if len(roi2) != 2:
            raise CheckpointError(f"{where}: a 2-D model needs a 2-value roi_size (or None), got {list(roi)}")
        inferer = SlidingWindowInferer(roi_size=roi2, sw_batch_size=batch, overlap=overlap, mode="gaussian", sw_device=dev, device=dev)
    out = torch.empty((nx, ny, nz), dtype=torch.float32)
    starts = range(0, nz, batch)
    for n, z0 in enumerate(starts):
        zs = torch.arange(z0, min(z0 + batch, nz))
        # slice indices of each sample's context, clamped: the edge slice stands in for the
        # slices beyond either end of the stack
        idx = (zs[:, None] + offsets[None, :]).clamp_(0, nz - 1)  # (B, 2k+1)
        stack = x[:, :, idx.reshape(-1)].reshape(nx, ny, len(zs), 2 * context + 1).permute(2, 3, 0, 1)
        stack = stack.contiguous().to(dev)
        expected = (len(zs), 1, nx, ny)

        y = _forward(network, stack, where) if inferer is None else inferer(stack, lambda w: _forward(network, w, where))
        y = y.as_tensor() if hasattr(y, "as_tensor") else y
        if tuple(y.shape) != expected:
            raise CheckpointError(f"{where}: the image network returned shape {tuple(y.shape)}, expected {expected}")
        out[:, :, z0 : z0 + len(zs)] = y[:, 0].permute(1, 2, 0).float().cpu()
        if progress is not None:
            progress("infer", n + 1, len(starts))
    return out

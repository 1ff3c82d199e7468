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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.inference.memory import available_memory_bytes, estimate_memory_bytes
from medseg.inference.loaded_model import LoadedModel
from medseg.inference.options import InferenceOptions, autocast_dtype, window_settings
from medseg.io.volume import Volume
from medseg.resample import labels_on_grid, resample_image_linear, resample_probabilities

log = logging.getLogger(__name__)

#: ``progress(stage, done, total)``; stages: "preprocess", "infer", "resample", "postprocess".
ProgressFn = Callable[[str, int, int], None]



# --------------------------------------------------------------------------------------------
# core steps


def preprocess_for_model(volume: Volume, plan: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """Apply a checkpoint's preprocessing plan to `volume`.

    The result equals MONAI's chain (`medseg.data.transforms.preprocessing_transforms`, the one
    training used; a test checks it): MONAI computes the output grid lazily (``lazy=True``: no
    voxel is touched), then, where that grid is axis-aligned with the input (always after
    Orientation + Spacing), the voxels are resampled by three separable linear interpolations in
    the array's memory order (`resample_image_linear`: no full-volume transposing copy, several
    times faster than MONAI's resampling of a big CT, docs/benchmarks.md). Other grids run MONAI's chain.

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
    on_member: Callable[[Any], None] | None = None,
) -> Any:
    """Softmax probabilities of `model` on a preprocessed image by sliding-window inference.

    Args:
        model: a loaded model.
        image: float tensor ``(1, 1, X, Y, Z)`` on the CPU (from `preprocess_for_model`).
        options: window size/overlap/batch, AMP and TTA settings.
        on_window: called after every forward pass (progress).
        on_member: called with each TTA member's probabilities ``(C, X, Y, Z)`` before they
            are averaged (uncertainty: the members' own entropies); must not modify them.

    Returns:
        float32 CPU tensor ``(C, X, Y, Z)`` (C = background + labels), averaged over TTA flips.
    """
    import torch
    from monai.inferers import sliding_window_inference

    dev = model.device
    win = window_settings(model, options)
    amp_dtype = autocast_dtype(options.precision, dev.type)
    n_expected = len(model.channel_values)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
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
                roi_size=win.roi_size,
                sw_batch_size=win.sw_batch_size,
                predictor=predictor,
                overlap=win.overlap,
                mode="gaussian",
                sw_device=dev,
                device=out_device,
            )
            probs = probs.as_tensor() if hasattr(probs, "as_tensor") else probs
            if dims:
                probs = probs.flip(dims)
            probs = probs[0].float().cpu()
            if on_member is not None:
                on_member(probs)
            acc = probs if acc is None else acc.add_(probs)
    if len(flips) > 1:
        acc /= len(flips)
    return acc


# --------------------------------------------------------------------------------------------
# public entry point


def check_image_volume(volume: Volume) -> None:
    """Raise `InputError` unless `volume` is a single-channel 3-D image."""
    if volume.array.ndim != 3:
        raise InputError(
            f"{_name(volume)}: expected a 3-D image, found shape {volume.array.shape} "
            "(multi-channel/4-D series: pick one channel or time point first)"
        )


def check_volume_for_models(volume: Volume, models: list[LoadedModel], options: InferenceOptions) -> None:
    """Raise `InputError` when `volume` cannot be segmented by `models` (dimensions, modality, memory)."""
    check_image_volume(volume)
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
    if any(m.task != "segmentation" for m in models):
        from medseg.errors import CheckpointError

        bad = next(m for m in models if m.task != "segmentation")
        raise CheckpointError(
            f"{bad.path}: a {bad.task!r} checkpoint cannot segment; apply it with `medseg enhance` "
            "(medseg.inference.image.predict_image)"
        )
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


@dataclass
class NetworkResult:
    """What the network stage gives the export stage for one volume (`run_models`).

    Attributes:
        probabilities: float32 CPU tensor ``(C, X, Y, Z)``: the mean over TTA flips and ensemble
            members, on the first model's preprocessed grid.
        affine: that grid's voxel→RAS affine.
        expected_entropy: with several members (TTA flips, ensemble models), the mean of their
            own normalised entropies ``(X, Y, Z)`` (`medseg.inference.uncertainty`), from which
            their disagreement (mutual information) follows; None with one member.
    """

    probabilities: Any
    affine: np.ndarray
    expected_entropy: Any = None


def run_models(
    prepared: PreparedInput,
    models: list[LoadedModel],
    options: InferenceOptions | None = None,
    progress: ProgressFn | None = None,
) -> NetworkResult:
    """Steps 2–3 of `segment_volume`: sliding window (+TTA) per model, ensemble average.

    With several members (TTA flips, ensemble models) their own entropies are summed as they
    come (one map; the uncertainty scores need it), the only uncertainty work done here: the
    rest runs in the export stage.
    """
    from medseg.inference.uncertainty import normalised_entropy

    options = options or InferenceOptions()
    report = progress or (lambda stage, done, total: None)
    totals = []
    for m, key in zip(models, prepared.plan_keys):
        img = prepared.images[key][0]
        win = window_settings(m, options)
        totals.append(count_windows(tuple(img.shape[2:]), win.roi_size, win.overlap, win.sw_batch_size) * len(_tta_flips(options.tta)))
    total = sum(totals)
    done = [0]

    def on_window() -> None:
        done[0] += 1
        report("infer", min(done[0], total), total)

    ref_key = prepared.plan_keys[0]
    ref_affine = prepared.images[ref_key][1]
    ref_shape = tuple(prepared.images[ref_key][0].shape[2:])
    n_members = len(models) * len(_tta_flips(options.tta))
    entropy_sum: list[Any] = [None]
    acc = None
    for m, key in zip(models, prepared.plan_keys):
        img, aff = prepared.images[key]

        def on_member(p: Any, aff: np.ndarray = aff, key: str = key) -> None:
            if key != ref_key:
                p = resample_probabilities(p, aff, ref_affine, ref_shape)
            h = normalised_entropy(p)
            entropy_sum[0] = h if entropy_sum[0] is None else entropy_sum[0].add_(h)

        probs = predict_probabilities(m, img, options, on_window, on_member if n_members > 1 else None)
        if key != ref_key:
            probs = resample_probabilities(probs, aff, ref_affine, ref_shape)
        acc = probs if acc is None else acc.add_(probs)
    if len(models) > 1:
        acc /= len(models)
    report("infer", total, total)
    expected = entropy_sum[0] / n_members if entropy_sum[0] is not None else None
    return NetworkResult(acc, ref_affine, expected)


def finish_segmentation(
    volume: Volume,
    network: NetworkResult,
    models: list[LoadedModel],
    options: InferenceOptions | None = None,
    progress: ProgressFn | None = None,
) -> Volume:
    """Steps 4–5 of `segment_volume`: labels on `volume`'s grid, post-processing, uncertainty.

    Needs no network (`segment_batch` runs it in the export stage). `network` comes from
    `run_models`; its probabilities are not modified. The same as `labels_from_network`
    followed by `add_uncertainty` (the batch's export stage runs the two apart, so that the
    DICOM SEG, which needs the labels only, starts before the uncertainty work).

    The result's meta carries ``uncertainty_scores`` (label name → the label's boundary
    entropy, `medseg.inference.uncertainty.LabelUncertainty.score`), ``uncertainty_labels``
    (their full records), ``uncertainty_series`` (`series_score`) and, with
    ``options.uncertainty``, ``uncertainty``: the normalised entropy map on `volume`'s grid.
    """
    result = labels_from_network(volume, network, models, options, progress)
    add_uncertainty(result, network, models, options)
    return result


def labels_from_network(
    volume: Volume,
    network: NetworkResult,
    models: list[LoadedModel],
    options: InferenceOptions | None = None,
    progress: ProgressFn | None = None,
) -> Volume:
    """Step 4 of `segment_volume`: the label map on `volume`'s grid, post-processed.

    The result's meta names the labels, models and options (and holds the probabilities on
    the original grid with ``options.probabilities``); `add_uncertainty` adds the rest.
    """
    options = options or InferenceOptions()
    report = progress or (lambda stage, done, total: None)
    labels, probs_orig = labels_on_grid(
        network.probabilities,
        network.affine,
        volume.affine,
        volume.shape,
        models[0].channel_values,
        keep_probabilities=options.probabilities,
        on_slab=lambda d, t: report("resample", d, t),
    )
    if options.largest_component or options.fill_holes:
        report("postprocess", 0, 1)
        from medseg.postprocess import fill_holes, keep_largest_component

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


def add_uncertainty(
    result: Volume,
    network: NetworkResult,
    models: list[LoadedModel],
    options: InferenceOptions | None = None,
) -> Volume:
    """Step 5 of `segment_volume`: the uncertainty scores (and map) of `labels_from_network`'s
    result, added to its meta (in place; returned). Reads the network's probabilities only."""
    from medseg.inference.uncertainty import label_scores, normalised_entropy, series_score

    options = options or InferenceOptions()
    probabilities = network.probabilities
    entropy = normalised_entropy(probabilities)
    mutual_info = (entropy - network.expected_entropy).clamp_(min=0.0) if network.expected_entropy is not None else None
    scores = label_scores(probabilities, models[0].channel_values, entropy=entropy, mutual_info=mutual_info)
    names = result.meta["label_names"]
    result.meta |= {
        "uncertainty_scores": {names.get(v, f"label {v}"): round(s.score, 6) for v, s in sorted(scores.items())},
        "uncertainty_labels": {names.get(v, f"label {v}"): s.as_dict() for v, s in sorted(scores.items())},
        "uncertainty_series": round(series_score(scores), 6),
    }
    if options.uncertainty:
        result.meta["uncertainty"] = map_on_grid(entropy, network.affine, result.affine, result.shape)
    return result


def map_on_grid(values: Any, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, int, int]) -> np.ndarray:
    """A voxel map ``(X', Y', Z')`` in [0, 1] (an uncertainty map) resampled trilinearly onto
    another grid, 0 outside the source grid; float32 ``dst_shape``.

    The one resampler of probabilities (`resample_probabilities`) is used on ``1 - values``
    as a single "background" channel, which it sets to 1 outside the source grid: 0 there.
    """
    out = resample_probabilities((1.0 - values.float())[None], src_affine, dst_affine, dst_shape)
    return np.asfortranarray((1.0 - out[0]).numpy().astype(np.float32))


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
        (checkpoint fingerprints), uncertainty scores (`finish_segmentation`) and, if asked,
        ``meta["probabilities"]`` (float32 ``(X, Y, Z, C)``) and ``meta["uncertainty"]``.

    Raises:
        InputError: not 3-D, modality mismatch, or more memory needed than available.

    Example:
        >>> models = load_models(["run/checkpoints/best.pt"])          # doctest: +SKIP
        >>> seg = segment_volume(load_volume("ct.nii.gz"), models)      # doctest: +SKIP
    """
    options = options or InferenceOptions()
    prepared = prepare_input(volume, models, options, progress)
    network = run_models(prepared, models, options, progress)
    del prepared
    return finish_segmentation(volume, network, models, options, progress)


def _source_meta(volume: Volume) -> dict[str, Any]:
    keep = ("modality", "series_instance_uid", "series_description", "series_number", "source_path")
    return {k: volume.meta[k] for k in keep if k in volume.meta}

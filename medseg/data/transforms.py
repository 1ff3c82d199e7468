"""MONAI dictionary transforms of medseg's training and inference pipelines.

Three stages, each a function returning a `monai.transforms.Compose`:

1. `preprocessing_transforms` — deterministic and invertible, defined by the checkpoint's
   preprocessing plan: orientation to RAS, resampling to the plan's spacing (images linear,
   labels nearest), intensity normalisation per modality. Training and inference apply the same.
2. `training_transforms` — loading (`LoadCased`), preprocessing, foreground crop, padding and
   foreground/background index precomputation (all cached by `CacheDataset`), then random
   patch sampling and augmentation (`augmentation_transforms`).
3. `validation_transforms` — loading and preprocessing of whole volumes, keeping the label on
   its native grid for metrics there.

Arrays are MONAI ``MetaTensor``s, channel first ``(C, X, Y, Z)``, whose affine is medseg's RAS
affine (MONAI's convention too), so MONAI's spatial transforms and ``Invertd`` work unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    BorderPadd,
    Compose,
    CropForegroundd,
    EnsureTyped,
    FgBgToIndicesd,
    MapTransform,
    Orientationd,
    Rand3DElasticd,
    RandCropByPosNegLabeld,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandomizableTransform,
    RandZoomd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPad,
    SpatialPadd,
    Zoom,
)

from medseg.data.noise import in_plane_spacing
from medseg.errors import ConfigError
from medseg.io import Volume

__all__ = [
    "LoadCased",
    "PercentileZScored",
    "RandInPlaneZoomd",
    "augmentation_transforms",
    "intensity_transform",
    "preprocessing_transforms",
    "training_transforms",
    "validation_transforms",
    "volume_to_metatensor",
]


#: MONAI axis-label convention of RAS affines (explicit: MONAI is changing its default)
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def volume_to_metatensor(volume: Volume) -> MetaTensor:
    """A `Volume` as a channel-first MONAI ``MetaTensor`` ``(1, X, Y, Z)`` (``(C, X, Y, Z)`` for 4-D).

    The affine is the Volume's RAS affine (MONAI's ``space`` is RAS), so ``Orientationd`` /
    ``Spacingd`` / ``Invertd`` interpret it correctly. ``meta`` carries ``filename_or_obj``
    (the source path, if known), ``original_affine`` and ``spatial_shape``.
    """
    array = np.asarray(volume.array)
    chan_first = array[None] if array.ndim == 3 else np.moveaxis(array, -1, 0)
    if chan_first.dtype == np.bool_:
        chan_first = chan_first.astype(np.uint8)
    affine = torch.as_tensor(volume.affine, dtype=torch.float64)
    meta = {
        "filename_or_obj": str(volume.meta.get("source_path", "")),
        "original_affine": affine.clone(),
        "spatial_shape": np.asarray(volume.shape),
        "space": "RAS",
    }
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(chan_first)), affine=affine, meta=meta)


class PercentileZScored(MapTransform):
    """MR intensity normalisation: clip to the volume's [lower, upper] percentiles, then z-score.

    ``x ← clip(x, P_lower, P_upper)``; ``x ← (x − μ) / σ`` where μ, σ are over the voxels that
    were non-zero before clipping (MR background); zero voxels stay 0 (MONAI's
    ``NormalizeIntensity(nonzero=True)`` convention). A constant volume becomes all zeros.

    Args:
        keys: image keys.
        lower, upper: percentiles in [0, 100].
    """

    def __init__(self, keys: Any, lower: float = 0.5, upper: float = 99.5) -> None:
        super().__init__(keys)
        self.lower, self.upper = float(lower), float(upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = img.float() if isinstance(img, torch.Tensor) else torch.as_tensor(img, dtype=torch.float32)
            nonzero = arr != 0
            values = arr.detach().cpu().numpy().ravel()
            lo, hi = np.percentile(values, [self.lower, self.upper]) if values.size else (0.0, 0.0)
            clipped = arr.clamp(float(lo), float(hi))
            sel = clipped[nonzero] if bool(nonzero.any()) else clipped.reshape(-1)
            mean, std = sel.mean(), sel.std(unbiased=False)
            out = torch.where(nonzero, (clipped - mean) / std if float(std) > 0 else clipped * 0, clipped * 0)
            d[key] = out.to(torch.float32)
        return d


class RandInPlaneZoomd(RandomizableTransform, MapTransform):
    """Up-sample each item in plane (x, y) by one random factor in ``[low, high]``; z untouched.

    Built on MONAI's `Zoom` (bilinear, the output grows), which scales a MetaTensor's affine, so
    the pixel spacing that follows (e.g. CT dose noise, whose HU grow as pixels shrink) is the
    zoomed one. One factor for both in-plane axes: pixels stay square. MONAI's ``RandZoomd``
    draws each axis' factor on its own, which would make them rectangular.

    Args:
        keys: image keys (all zoomed by the same factor).
        zoom_range: ``(low, high)``, ≥ 1 (finer pixels than the scan's); ``(1, 1)`` = identity.
        prob: probability of zooming an item.
        per_pixel_size: keys among `keys` whose values scale as 1 / pixel size (CT noise maps,
            `medseg.data.noise.CTNoiseMapsd`: noise std grows as pixels shrink); they are
            multiplied by the factor after zooming.
        factor_key: if given, the factor drawn (1.0 when not zoomed) is stored under this key
            (for `medseg.data.noise.RandCTFineTextured`).
    """

    def __init__(
        self, keys: Any, zoom_range: tuple[float, float], prob: float = 1.0, per_pixel_size: Any = (), factor_key: str | None = None
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.low, self.high = float(zoom_range[0]), float(zoom_range[1])
        self.per_pixel_size = set(per_pixel_size)
        self.factor_key = factor_key
        self.factor = 1.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.factor = float(self.R.uniform(self.low, self.high))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if self.factor_key is not None:
            d[self.factor_key] = self.factor if self._do_transform else 1.0
        if not self._do_transform or self.factor == 1.0:
            return d
        zoom = Zoom(zoom=(self.factor, self.factor, 1.0), mode="bilinear", keep_size=False)
        for key in self.key_iterator(d):
            d[key] = zoom(d[key])
            if key in self.per_pixel_size:
                d[key] = d[key] * self.factor
        return d


class PadToFieldOfViewd(MapTransform):
    """Pad each scan in plane (x, y), symmetrically, to at least ``fov_mm`` across, with ``value``.

    For training scans cropped tight around the body: CT reconstructions usually show a 40-50 cm
    field of view, most of it air, and a denoiser that never saw large flat air regions leaves
    white noise there (docs/benchmarks.md). The pixel spacing is read from the MetaTensor's
    affine; MONAI's `SpatialPad` moves the affine's origin with the padding. A scan already
    that wide is left as it is; z is never padded.

    Args:
        keys: image keys.
        fov_mm: the smallest in-plane extent in mm.
        value: the padding value, in the image's units at this point (e.g. −1000 for air in HU).
    """

    def __init__(self, keys: Any, fov_mm: float, value: float) -> None:
        super().__init__(keys)
        self.fov_mm, self.value = float(fov_mm), float(value)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            spacing = in_plane_spacing(img)
            if spacing is None:
                raise ConfigError(f"padding {key!r} to a field of view needs its pixel spacing: a MetaTensor with an affine")
            size = [max(int(n), math.ceil(self.fov_mm / sp - 1e-6)) for n, sp in zip(img.shape[1:3], spacing)]
            d[key] = SpatialPad([*size, -1], method="symmetric", mode="constant", value=self.value)(img)
        return d


def intensity_transform(plan: dict[str, Any], image_key: str) -> MapTransform:
    """The plan's intensity normalisation (CT window or MR percentile z-score) as a dict transform."""
    intensity = plan.get("intensity") or {}
    kind = intensity.get("kind")
    if kind == "ct_window":
        return ScaleIntensityRanged(
            keys=image_key, a_min=float(intensity["hu_min"]), a_max=float(intensity["hu_max"]), b_min=0.0, b_max=1.0, clip=True
        )
    if kind == "percentile_zscore":
        return PercentileZScored(keys=image_key, lower=intensity.get("lower", 0.5), upper=intensity.get("upper", 99.5))
    raise ConfigError(f"preprocessing plan: unknown intensity kind {kind!r}; expected 'ct_window' or 'percentile_zscore'")


def preprocessing_transforms(plan: dict[str, Any], image_key: str = "image", label_key: str | None = "label") -> Compose:
    """The deterministic, invertible preprocessing of a plan (see `medseg.checkpoint.Checkpoint`).

    Orientation to RAS, resampling to ``plan["spacing_mm"]`` (bilinear for the image, nearest
    for the label; skipped when it is None), then intensity normalisation of the image per
    ``plan["intensity"]``. Input: a dict of channel-first MetaTensors (see
    `volume_to_metatensor`). The spatial steps are MONAI-invertible (``Invertd``).
    """
    keys = [image_key] + ([label_key] if label_key else [])
    steps: list[Any] = [Orientationd(keys=keys, axcodes=plan.get("orientation") or "RAS", labels=_RAS_LABELS)]
    if plan.get("spacing_mm"):
        modes = ["bilinear"] + (["nearest"] if label_key else [])
        steps.append(Spacingd(keys=keys, pixdim=[float(s) for s in plan["spacing_mm"]], mode=modes, dtype=np.float32))
    steps.append(intensity_transform(plan, image_key))
    return Compose(steps)


class LoadCased(MapTransform):
    """Load a case ``{"image": path, "label": path}`` into MetaTensors, remapping label values.

    Images are read with `medseg.io.load_volume` (NIfTI/NRRD/MHA files, DICOM series folders);
    labels with the same, or `medseg.io.seg.read_dicom_seg` for a DICOM SEG file (placed on the
    image's grid). Label values are mapped to contiguous classes via `value_to_class`.

    Args:
        value_to_class: label-file value → class (1..N); None keeps values as they are.
        unmapped: ``"error"`` or ``"background"`` for values not in `value_to_class`.
        keep_native_label: also store the remapped label on its native grid as a numpy array
            under ``"label_native"`` and the native grid under ``"native_affine"`` (validation).

    Raises:
        InputError: a file is missing or unreadable; GeometryError: the label's grid differs
        from the image's; InputError: unknown label values with ``unmapped="error"``.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        value_to_class: dict[int, int] | None = None,
        unmapped: str = "error",
        keep_native_label: bool = False,
    ) -> None:
        super().__init__([image_key] + ([label_key] if label_key else []), allow_missing_keys=True)
        self.image_key, self.label_key = image_key, label_key
        self.value_to_class = value_to_class
        self.unmapped = unmapped
        self.keep_native_label = keep_native_label

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medseg.data.datasets import load_case_volumes

        d = dict(data)
        image, label = load_case_volumes(
            d[self.image_key], d.get(self.label_key) if self.label_key else None, self.value_to_class, self.unmapped
        )
        d[self.image_key] = volume_to_metatensor(image.with_array(np.asarray(image.array, dtype=np.float32)))
        if label is not None and self.label_key:
            d[self.label_key] = volume_to_metatensor(label.with_array(label.array.astype(np.float32)))
            if self.keep_native_label:
                d["label_native"] = label.array
                d["native_affine"] = label.affine
        return d


def _foreground_selector(x: torch.Tensor) -> torch.Tensor:
    # after normalisation, CT air and MR background are 0 (CT: clipped at the window floor)
    return x > 0


def augmentation_transforms(aug: Any, keys: tuple[str, str] = ("image", "label")) -> list[Any]:
    """Random augmentation of patches from an `AugmentationConfig` (prob 0 leaves a step out).

    Spatial steps move image and label together (image bilinear, label nearest): rotation
    (RandRotated), zoom (RandZoomd), elastic deformation (Rand3DElasticd), flips (RandFlipd).
    Intensity steps touch the image only: shift, scale, gamma contrast, Gaussian blur, Gaussian noise.
    """
    image_key, label_key = keys
    both = [image_key, label_key]
    steps: list[Any] = []
    if aug.rotate.prob > 0:
        rx, ry, rz = (math.radians(a) for a in aug.rotate.range_deg)
        steps.append(
            RandRotated(keys=both, range_x=rx, range_y=ry, range_z=rz, prob=aug.rotate.prob, mode=["bilinear", "nearest"],
                        padding_mode="zeros", keep_size=True)
        )
    if aug.scale.prob > 0:
        # "nearest-exact", not torch's legacy "nearest": the latter samples half a voxel off the
        # linear modes' grid, so a zoomed label no longer matches the zoomed image
        steps.append(
            RandZoomd(keys=both, prob=aug.scale.prob, min_zoom=1 - aug.scale.range, max_zoom=1 + aug.scale.range,
                      mode=["trilinear", "nearest-exact"], padding_mode="constant", keep_size=True)
        )
    if aug.elastic.prob > 0:
        steps.append(
            Rand3DElasticd(keys=both, sigma_range=tuple(aug.elastic.sigma_range), magnitude_range=tuple(aug.elastic.magnitude_range),
                           prob=aug.elastic.prob, mode=["bilinear", "nearest"], padding_mode="zeros")
        )
    if aug.flip.prob > 0:
        steps.extend(RandFlipd(keys=both, prob=aug.flip.prob, spatial_axis=int(a)) for a in aug.flip.axes)
    if aug.intensity_shift.prob > 0:
        steps.append(RandShiftIntensityd(keys=image_key, offsets=aug.intensity_shift.offset, prob=aug.intensity_shift.prob))
    if aug.intensity_scale.prob > 0:
        steps.append(RandScaleIntensityd(keys=image_key, factors=aug.intensity_scale.factor, prob=aug.intensity_scale.prob))
    if aug.contrast.prob > 0:
        steps.append(RandAdjustContrastd(keys=image_key, prob=aug.contrast.prob, gamma=tuple(aug.contrast.gamma_range)))
    if aug.smooth.prob > 0:
        sigma = tuple(aug.smooth.sigma_range)
        steps.append(RandGaussianSmoothd(keys=image_key, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=aug.smooth.prob))
    if aug.noise.prob > 0:
        steps.append(RandGaussianNoised(keys=image_key, std=aug.noise.std, prob=aug.noise.prob))
    return steps


def training_transforms(cfg: Any) -> tuple[Compose, Compose]:
    """``(cached, random)`` transform chains of training for a `WorkflowConfig`.

    ``cached`` (deterministic: load, preprocess, crop to the body, pad by half a patch,
    precompute foreground/background indices) runs once per case inside ``CacheDataset``;
    ``random`` (patch sampling + augmentation) runs on every draw.
    """
    plan = cfg.preprocessing.plan()
    keys = ["image", "label"]
    patch = list(cfg.training.patch_size)
    cached: list[Any] = [
        LoadCased("image", "label", cfg.data.value_to_class(), cfg.data.unmapped_labels),
        *preprocessing_transforms(plan).transforms,
    ]
    if cfg.preprocessing.crop_foreground:
        cached.append(CropForegroundd(keys=keys, source_key="image", select_fn=_foreground_selector, margin=4, allow_smaller=True))
    cached += [
        # half a patch of zeros (air / MR background) around each case: patch centres can then reach
        # every voxel, so the body appears at varied positions and cut at varied borders in the
        # patches, as in the sliding windows of inference on larger fields of view
        BorderPadd(keys=keys, spatial_border=[p // 2 for p in patch], value=0),
        SpatialPadd(keys=keys, spatial_size=patch),
        FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg", image_key="image", image_threshold=0.0),
        EnsureTyped(keys=keys, track_meta=False),
    ]
    pos = cfg.training.pos_fraction
    random: list[Any] = [
        RandCropByPosNegLabeld(
            keys=keys, label_key="label", spatial_size=patch, pos=pos, neg=1.0 - pos, num_samples=cfg.training.patches_per_case,
            fg_indices_key="label_fg", bg_indices_key="label_bg",
        ),
        *augmentation_transforms(cfg.augmentation),
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
    ]
    return Compose(cached), Compose(random)


def validation_transforms(cfg: Any) -> Compose:
    """Whole-volume validation chain: load (keeping the native label), preprocess the image."""
    plan = cfg.preprocessing.plan()
    return Compose(
        [
            LoadCased("image", "label", cfg.data.value_to_class(), cfg.data.unmapped_labels, keep_native_label=True),
            *preprocessing_transforms(plan, label_key=None).transforms,
        ]
    )

"""Typed workflow configuration: the single source of truth for every training option.

A workflow YAML maps one-to-one onto one variant of `WorkflowConfig`, a discriminated union
selected by the workflow's ``task:`` key (``segmentation``, the default, ``denoising``, or
``gan``: low-dose CT enhancement, its sections in `medseg.config.gan_schema`). The variants share `TrainingConfig`,
`OptimConfig` and `OutputConfig`; what only one task uses lives in that task's sections
(segmentation: ``data.labels``, patch sampling by label, Dice/focal loss, ResUNet3D;
denoising: noise model, invertible intensity plan, image-to-image network).

Every model forbids unknown keys, so a misspelled option is an error (see
`medseg.config.loading`), and every field carries its documentation
(``Field(description=...)``), which `medseg train --help-config` prints.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------- data


class CaseConfig(_Strict):
    """One image/label pair written inline in the workflow."""

    image: str = Field(
        description="Image: NIfTI/NRRD/MHA file or DICOM series folder; a path relative to the workflow "
        "file, or 'sample:NAME' for a bundled sample (medseg.sample_data.FILES)."
    )
    label: str | None = Field(
        None, description="Label map: NIfTI/NRRD file on the image's grid, or a DICOM SEG file (.dcm); same path rules."
    )
    name: str | None = Field(None, description="Case name used in logs (default: the image file name).")


class _CaseSources(_Strict):
    """Where the cases are (shared by every task)."""

    datalist: str | None = Field(
        None,
        description="MSD/MONAI datalist JSON: {'training': [{'image':..,'label':..}], 'validation': [...]}; "
        "paths inside are relative to the JSON file.",
    )
    nnunet_dir: str | None = Field(
        None, description="nnU-Net style folder with imagesTr/ and labelsTr/ (and optionally imagesTs/ + labelsTs/ for validation)."
    )
    training: list[CaseConfig] = Field(default_factory=list, description="Training cases listed inline.")
    validation: list[CaseConfig] = Field(default_factory=list, description="Validation cases listed inline.")
    val_fraction: float = Field(
        0.2, ge=0.0, lt=1.0,
        description="When no validation cases are given: fraction of the training cases held out "
        "(at least one, if there are two or more cases).",
    )
    cache_rate: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of preprocessed cases kept in memory (MONAI CacheDataset).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes for augmentation (0 = in the training process).")

    @model_validator(mode="after")
    def _one_source(self) -> _CaseSources:
        sources = [bool(self.datalist), bool(self.nnunet_dir), bool(self.training)]
        if sum(sources) == 0 and not getattr(self, "review_file", None):  # review_file: segmentation only
            raise ValueError("give the training cases: one of 'datalist', 'nnunet_dir', 'training' or 'review_file'")
        if sum(sources) > 1:
            raise ValueError("give only one of 'datalist', 'nnunet_dir' or 'training'")
        return self


class UnlabelledDataConfig(_CaseSources):
    """Image-only cases (denoising): labels, if a case has one, are not read."""


class DataConfig(_CaseSources):
    """Segmentation cases and how label values map to classes."""

    labels: dict[str, int | list[int]] = Field(
        description="Output classes in order (1, 2, ...) → the label value(s) in the label files, e.g. "
        "{liver: 5, spleen: 1, kidneys: [2, 3]}. Background is 0.",
    )
    unmapped_labels: Literal["error", "background"] = Field(
        "error",
        description="Label values found in a label file but not listed in 'labels': 'error' stops with the "
        "list of values; 'background' maps them to 0 (e.g. to train 4 of TotalSegmentator's 117 classes).",
    )
    review_file: str | None = Field(
        None,
        description="Review file of the napari review queue (review.json): its accepted cases, with their corrected "
        "labels, are added to the training cases (medseg.data.review).",
    )

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, v: dict[str, int | list[int]]) -> dict[str, int | list[int]]:
        if not v:
            raise ValueError("at least one class is needed, e.g. {liver: 5}")
        seen: dict[int, str] = {}
        for name, values in v.items():
            for value in values if isinstance(values, list) else [values]:
                if value <= 0:
                    raise ValueError(f"class {name!r}: label value {value} must be > 0 (0 is background)")
                if value in seen:
                    raise ValueError(f"label value {value} is given to both {seen[value]!r} and {name!r}")
                seen[value] = name
        return v

    def class_names(self) -> dict[int, str]:
        """Output class index → name (1..N)."""
        return {i + 1: name for i, name in enumerate(self.labels)}

    def value_to_class(self) -> dict[int, int]:
        """Label-file value → output class index."""
        out: dict[int, int] = {}
        for i, values in enumerate(self.labels.values()):
            for value in values if isinstance(values, list) else [values]:
                out[int(value)] = i + 1
        return out


class PreprocessingConfig(_Strict):
    """The deterministic preprocessing, stored in the checkpoint and repeated at inference."""

    modality: Literal["CT", "MR"] = Field(description="CT: HU window; MR: percentile clip + z-score.")
    spacing_mm: list[float] | None = Field(
        None, description="Resample to this voxel spacing [x, y, z] in mm (RAS axes); null keeps the native spacing."
    )
    hu_window: tuple[float, float] = Field((-200.0, 300.0), description="CT only: HU range clipped and scaled to [0, 1].")
    percentiles: tuple[float, float] = Field(
        (0.5, 99.5), description="MR only: intensity percentiles clipped before the z-score over non-zero voxels."
    )
    crop_foreground: bool = Field(
        True, description="Training only: crop each case to its body (voxels above the window/percentile floor) before sampling patches."
    )

    @field_validator("spacing_mm")
    @classmethod
    def _three(cls, v: list[float] | None) -> list[float] | None:
        # `not s > 0` also refuses NaN (NaN <= 0 is False), which would reach the checkpoint's plan
        if v is not None and (len(v) != 3 or any(not (s > 0 and math.isfinite(s)) for s in v)):
            raise ValueError(f"spacing_mm needs three finite positive values in mm, got {v}")
        return v

    @field_validator("hu_window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] < v[1]):
            raise ValueError(f"hu_window needs [lower, upper] HU with lower < upper, both finite, e.g. [-200, 300]; got {list(v)}")
        return v

    @field_validator("percentiles")
    @classmethod
    def _percentiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0.0 <= v[0] < v[1] <= 100.0):
            raise ValueError(f"percentiles needs [lower, upper] with 0 <= lower < upper <= 100, e.g. [0.5, 99.5]; got {list(v)}")
        return v

    def plan(self) -> dict[str, Any]:
        """The preprocessing plan (format: `medseg.checkpoint.Checkpoint`)."""
        if self.modality == "CT":
            intensity: dict[str, Any] = {"kind": "ct_window", "hu_min": self.hu_window[0], "hu_max": self.hu_window[1]}
        else:
            intensity = {"kind": "percentile_zscore", "lower": self.percentiles[0], "upper": self.percentiles[1]}
        return {
            "modality": self.modality,
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "orientation": "RAS",
            "intensity": intensity,
        }


# ------------------------------------------------------------------------------ augmentation


class ElasticAug(_Strict):
    """Rand3DElasticd: smooth random displacement field (image bilinear, label nearest)."""

    prob: float = Field(0.2, ge=0, le=1, description="Probability per patch.")
    sigma_range: tuple[float, float] = Field((5.0, 8.0), description="Gaussian smoothing of the displacement field, voxels.")
    magnitude_range: tuple[float, float] = Field((50.0, 150.0), description="Displacement magnitude (MONAI units, before smoothing).")


class RotateAug(_Strict):
    """RandRotated: rotation about each axis by a uniform random angle in ±range."""

    prob: float = Field(0.3, ge=0, le=1, description="Probability per patch.")
    range_deg: tuple[float, float, float] = Field((10.0, 10.0, 10.0), description="Max rotation about x, y, z in degrees.")


class ScaleAug(_Strict):
    """RandZoomd: isotropic zoom by a factor in [1 - range, 1 + range] (patch size kept)."""

    prob: float = Field(0.2, ge=0, le=1, description="Probability per patch.")
    range: float = Field(0.15, ge=0, lt=1, description="Max relative zoom.")


class FlipAug(_Strict):
    """RandFlipd along each listed axis independently."""

    prob: float = Field(0.0, ge=0, le=1, description="Probability per axis and patch.")
    axes: list[int] = Field(
        default_factory=lambda: [1, 2],
        description="RAS axes to flip (0 = left-right; keep it out when classes are lateral, e.g. liver vs spleen).",
    )


class IntensityShiftAug(_Strict):
    """RandShiftIntensityd: add a uniform random offset in ±offset (normalised units)."""

    prob: float = Field(0.3, ge=0, le=1, description="Probability per patch.")
    offset: float = Field(0.1, ge=0, description="Max offset.")


class IntensityScaleAug(_Strict):
    """RandScaleIntensityd: multiply by (1 + f), f uniform in ±factor."""

    prob: float = Field(0.3, ge=0, le=1, description="Probability per patch.")
    factor: float = Field(0.1, ge=0, description="Max relative change.")


class NoiseAug(_Strict):
    """RandGaussianNoised: additive zero-mean Gaussian noise."""

    prob: float = Field(0.1, ge=0, le=1, description="Probability per patch.")
    std: float = Field(0.02, ge=0, description="Noise standard deviation (normalised units).")


class ContrastAug(_Strict):
    """RandAdjustContrastd: gamma curve ``x ← ((x − min)/(max − min))^γ · (max − min) + min`` per patch.

    γ < 1 brightens mid-range intensities (soft tissue) while air and bone keep their values:
    the change that intravenous contrast makes to liver and spleen between scans.
    """

    prob: float = Field(0.0, ge=0, le=1, description="Probability per patch.")
    gamma_range: tuple[float, float] = Field((0.7, 1.5), description="Range of γ (uniform).")


class SmoothAug(_Strict):
    """RandGaussianSmoothd: Gaussian blur with a random sigma per axis (voxels).

    Mimics scans reconstructed with a softer kernel or thicker slices than the training scans.
    """

    prob: float = Field(0.0, ge=0, le=1, description="Probability per patch.")
    sigma_range: tuple[float, float] = Field((0.25, 1.0), description="Range of the blur sigma in voxels (per axis, uniform).")


class AugmentationConfig(_Strict):
    """Random augmentation of training patches (each with its own probability; prob 0 disables)."""

    elastic: ElasticAug = Field(default_factory=ElasticAug, description="Elastic deformation (Rand3DElasticd).")
    rotate: RotateAug = Field(default_factory=RotateAug, description="Rotation (RandRotated).")
    scale: ScaleAug = Field(default_factory=ScaleAug, description="Zoom (RandZoomd).")
    flip: FlipAug = Field(default_factory=FlipAug, description="Flips (RandFlipd).")
    intensity_shift: IntensityShiftAug = Field(default_factory=IntensityShiftAug, description="Intensity offset.")
    intensity_scale: IntensityScaleAug = Field(default_factory=IntensityScaleAug, description="Intensity scaling.")
    noise: NoiseAug = Field(default_factory=NoiseAug, description="Gaussian noise.")
    contrast: ContrastAug = Field(default_factory=ContrastAug, description="Gamma contrast (RandAdjustContrastd).")
    smooth: SmoothAug = Field(default_factory=SmoothAug, description="Gaussian blur (RandGaussianSmoothd).")


# ------------------------------------------------------------------------------------- model


class ModelConfig(_Strict):
    """The network (`medseg.models.ResUNet3D`); dumped into checkpoints for `build_model`."""

    name: Literal["resunet3d"] = Field("resunet3d", description="Architecture (only ResUNet3D for now).")
    in_channels: int = Field(1, ge=1, description="Image channels.")
    out_channels: int | None = Field(
        None, ge=2, description="Classes including background; set automatically from data.labels."
    )
    encoder: Literal["resnet10", "resnet18", "resnet34", "resnet50"] = Field("resnet18", description="MONAI ResNet encoder depth.")
    encoder_channels: list[int] = Field(
        default_factory=lambda: [64, 128, 256, 512],
        description="Widths of the 4 ResNet stages ([64,128,256,512] = MedicalNet; smaller trains faster on CPU).",
    )
    stem_stride: int | list[int] = Field(2, description="Stride of the stem convolution (1 or 2, or one per axis).")
    shortcut_type: Literal["A", "B"] | None = Field(None, description="ResNet shortcut; null = MedicalNet's choice for the depth.")
    aspp_dilations: list[int] = Field(default_factory=lambda: [2, 4, 8], description="Dilations of the 3×3×3 ASPP branches (plus a 1×1×1 branch).")
    aspp_channels: int = Field(64, ge=1, description="Channels of each ASPP branch.")
    decoder_channels: list[int] = Field(
        default_factory=lambda: [256, 128, 64, 32, 16], description="Channels of the 5 decoder stages, deepest first."
    )
    norm: Literal["instance", "batch", "group"] = Field("instance", description="Normalisation of the decoder/context layers.")
    encoder_norm: Literal["batch", "instance"] = Field(
        "batch",
        description="Normalisation in the ResNet encoder: 'batch' (MedicalNet's) or 'instance' (per-image statistics, "
        "robust to contrast shifts; MedicalNet running statistics are then skipped).",
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in the decoder.")
    deep_supervision: bool = Field(False, description="Auxiliary losses at the /2 and /4 decoder stages.")
    pretrained: str | None = Field(
        None, description="Local encoder weights: MedicalNet .pth or a medseg checkpoint (path relative to the workflow file)."
    )

    def network_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `ResUNet3D`."""
        return self.model_dump(exclude={"name", "pretrained"})


# ---------------------------------------------------------------------- loss / optimisation


class LossConfig(_Strict):
    """MONAI DiceFocalLoss on softmax outputs and one-hot labels."""

    lambda_dice: float = Field(1.0, ge=0, description="Weight of the Dice term.")
    lambda_focal: float = Field(1.0, ge=0, description="Weight of the focal term.")
    gamma: float = Field(2.0, ge=0, description="Focal loss gamma.")
    include_background: bool = Field(False, description="Include the background class in the Dice term.")
    deep_supervision_weights: list[float] = Field(
        default_factory=lambda: [0.5, 0.25], description="Weights of the /2 and /4 auxiliary losses (model.deep_supervision)."
    )


class OptimConfig(_Strict):
    """AdamW, warm-up + cosine schedule, gradient clipping (every task)."""

    lr: float = Field(1e-3, gt=0, description="Learning rate (segmentation: of the new layers: context module, decoder, heads).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    warmup_epochs: int = Field(1, ge=0, description="Linear warm-up from 1% of the LR over this many epochs.")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="Cosine decay ends at lr × this.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this (null = off).")


class SegmentationOptimConfig(OptimConfig):
    """AdamW with discriminative learning rates (encoder vs new layers), encoder freezing."""

    encoder_lr: float | None = Field(None, gt=0, description="Learning rate of the encoder (null = lr; e.g. 1e-4 when fine-tuning).")
    freeze_encoder_epochs: int = Field(0, ge=0, description="Keep the encoder frozen (no gradient, BN statistics fixed) for this many epochs.")


#: arithmetic of training: autocast dtype (fp16 with a gradient scaler, bf16 without one)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class TrainingConfig(_Strict):
    """Epochs, steps, validation and run-time options (every task)."""

    epochs: int = Field(100, ge=1, description="Epochs (the schedule spans them all).")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Optimizer steps per epoch (cases are repeated as needed); null = one pass over the training cases."
    )
    batch_size: int = Field(2, ge=1, description="Cases per batch (each contributes patches_per_case patches).")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="Arithmetic of the forward passes: auto = fp16 mixed precision (with a gradient scaler) on CUDA, fp32 on a "
        "CPU; fp16 (CUDA only); bf16 (autocast, no scaler; CPU or CUDA); fp32.",
    )
    val_every: int = Field(1, ge=1, description="Validate every N epochs (and after the last).")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many validations without a better validation score (null = off)."
    )
    stop_after_epoch: int | None = Field(
        None, ge=1,
        description="End this invocation after this epoch although the schedule spans 'epochs' (time-boxed jobs); "
        "continue with --resume.",
    )
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads for CPU training (null = torch's default).")

    @model_validator(mode="before")
    @classmethod
    def _legacy_amp(cls, data: Any) -> Any:
        # workflows before 'precision' said 'amp: true|false'; true meant fp16 on CUDA only = auto
        if isinstance(data, dict) and "amp" in data:
            data = dict(data)
            amp = data.pop("amp")
            if "precision" in data:
                raise ValueError("give 'precision' only ('amp' is its old spelling: amp true = precision auto, false = fp32)")
            data["precision"] = "auto" if amp in (True, None, "true") else "fp32"
        return data


class SegmentationTrainingConfig(TrainingConfig):
    """Patch sampling by label and sliding-window validation (segmentation)."""

    patch_size: list[int] = Field(default_factory=lambda: [96, 96, 64], description="Training patch / sliding-window size in voxels.")
    patches_per_case: int = Field(2, ge=1, description="Patches sampled from a case each time it is drawn (RandCropByPosNegLabeld).")
    pos_fraction: float = Field(0.67, ge=0, le=1, description="Fraction of patches centred on a foreground voxel.")
    val_overlap: float = Field(0.25, ge=0, lt=1, description="Sliding-window overlap at validation and inference.")
    sw_batch_size: int = Field(2, ge=1, description="Windows per forward pass in sliding-window inference.")
    val_largest_component: list[str] = Field(
        default_factory=list,
        description="Classes (names from data.labels) reduced to their largest connected component before the "
        "validation metrics, as `medseg segment --largest-component` would; leave out classes made of several "
        "structures (e.g. kidneys).",
    )

    @field_validator("patch_size")
    @classmethod
    def _three(cls, v: list[int]) -> list[int]:
        if len(v) != 3 or any(s < 8 for s in v):
            raise ValueError(f"patch_size needs three sizes ≥ 8 voxels, got {v}")
        return v


class OutputConfig(_Strict):
    """Where the run is written."""

    dir: str = Field("runs", description="Parent folder of run folders (relative to the current directory).")
    run_name: str | None = Field(None, description="Run folder name (default: the workflow's name).")
    overwrite: bool = Field(False, description="Replace an existing run of the same name instead of refusing to start.")
    tensorboard: bool = Field(True, description="Write TensorBoard event files under <run>/tensorboard.")


# ------------------------------------------------------------------------- denoising sections


class ImagePreprocessingConfig(_Strict):
    """The invertible preprocessing of image-to-image tasks (`medseg.data.intensity`), stored in the checkpoint.

    CT: ``x = (HU − hu_min) / (hu_max − hu_min)`` with no clipping, so the output comes back in HU;
    MR: ``x = v / P_upper(v ≠ 0)`` per volume (arbitrary units, zero stays zero).
    """

    modality: Literal["CT", "MR"] = Field(description="CT: fixed linear HU map (hu_linear); MR: per-volume percentile scale.")
    spacing_mm: list[float] | None = Field(
        None, description="Resample to this voxel spacing [x, y, z] in mm (RAS axes); null keeps the native grid (the usual choice)."
    )
    hu_range: tuple[float, float] = Field(
        (-1024.0, 3071.0), description="CT only: HU mapped to network units 0 and 1 (linear, not clipped); its width is the PSNR data range."
    )
    upper_percentile: float = Field(
        99.5, gt=0, le=100, description="MR only: the percentile of the non-zero voxels mapped to 1 (the PSNR data range)."
    )

    @field_validator("spacing_mm")
    @classmethod
    def _three(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) != 3 or any(s <= 0 for s in v)):
            raise ValueError(f"spacing_mm needs three positive values in mm, got {v}")
        return v

    @model_validator(mode="after")
    def _range(self) -> ImagePreprocessingConfig:
        if not self.hu_range[1] > self.hu_range[0]:
            raise ValueError(f"hu_range {list(self.hu_range)}: the upper HU must be greater than the lower")
        return self

    def plan(self) -> dict[str, Any]:
        """The preprocessing plan (CONTRACTS.md image-to-image checkpoint format)."""
        if self.modality == "CT":
            intensity: dict[str, Any] = {"kind": "hu_linear", "hu_min": float(self.hu_range[0]), "hu_max": float(self.hu_range[1])}
        else:
            intensity = {"kind": "percentile_scale", "upper": float(self.upper_percentile)}
        return {
            "modality": self.modality,
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "orientation": "RAS",
            "intensity": intensity,
        }


class NoiseConfig(_Strict):
    """The noise added on the fly to clean training patches (`medseg.data.noise`), a random level per patch.

    Training is blind over the level range by default: a user's scans have unknown noise.
    """

    model: Literal["gaussian", "rician", "ct_dose"] = Field(
        "gaussian",
        description="gaussian: additive white noise (sigma_range); rician: MR magnitude noise (fraction_range); ct_dose: "
        "Poisson-Gaussian lower-dose CT noise on attenuation (dose_range, photons_per_ray; CT only).",
    )
    sigma_range: tuple[float, float] = Field(
        (10.0, 60.0), description="gaussian: noise standard deviation range, in HU for CT, × P_upper for MR."
    )
    fraction_range: tuple[float, float] = Field(
        (0.01, 0.10), description="rician: sigma as a fraction of the clean image's 99.5th percentile (non-zero voxels)."
    )
    dose_range: tuple[float, float] = Field(
        (0.05, 0.5), description="ct_dose: simulated dose as a fraction of the full dose, drawn log-uniformly, within (0, 1]."
    )
    photons_per_ray: float = Field(
        1e7, gt=0, description="ct_dose: full-dose unattenuated photons per detector reading (effective count; 1e7 = "
        "medseg.data.noise's calibration: ~15 HU of full-dose noise in soft tissue at 0.98 mm pixels).",
    )
    electronic_sigma: float = Field(10.0, ge=0, description="ct_dose: electronic noise per reading, in counts.")
    mix_with: list[Literal["gaussian", "rician", "ct_dose"]] = Field(
        default_factory=list,
        description="Further noise models for training, each with its own range above: every patch draws one of "
        "[model, *mix_with] with equal probability (blind over noise kinds too: a user's scan may carry either). "
        "Validation uses `model` only.",
    )
    acquisition_noise: float | None = Field(
        None, gt=0, lt=1,
        description="rician: sigma (fraction of the scan's P99.5) of Rician noise given once, before training, to training "
        "scans with a masked background (at least 20 % of voxels exactly 0: templates, skull-stripped or masked scans), "
        "which lack the Rayleigh floor of an acquired magnitude image; trained on them as they are, the network outputs 0 "
        "where a real scan's background is its floor (medseg.data.noise.AcquisitionNoised). null: scans as they are.",
    )
    val_levels: list[float] | None = Field(
        None,
        description="Levels of validation, in the model's level units (sigma / fraction / dose fraction); each validation "
        "case at each; null = the ends and middle of the training range.",
    )

    @model_validator(mode="after")
    def _distinct_models(self) -> NoiseConfig:
        models = [self.model, *self.mix_with]
        if len(set(models)) != len(models):
            raise ValueError(f"noise.mix_with must name other models than noise.model, each once; got {models}")
        if self.acquisition_noise is not None and "rician" not in models:
            raise ValueError(f"noise.acquisition_noise is for MR magnitude scans (the rician model); the models here are {models}")
        return self

    def level_range(self, model: str | None = None) -> tuple[float, float]:
        """The training level range of ``model`` (default: the chosen model), in its units."""
        ranges = {"gaussian": self.sigma_range, "rician": self.fraction_range, "ct_dose": self.dose_range}
        return ranges[model or self.model]

    def validation_levels(self) -> list[float]:
        """The noise levels validation uses (the model's units)."""
        lo, hi = self.level_range()
        return list(self.val_levels) if self.val_levels else sorted({lo, (lo + hi) / 2, hi})


class DenoisingModelConfig(_Strict):
    """The denoising network (`medseg.models.denoise`); dumped into checkpoints for `medseg.models.build_model`."""

    name: Literal["unet_denoiser", "redcnn", "vae_denoiser", "resnet_denoiser"] = Field(
        "unet_denoiser",
        description="unet_denoiser: residual MONAI BasicUNet; redcnn: RED-CNN residual encoder-decoder; vae_denoiser: "
        "convolutional VAE (adds loss.kl_weight · KL); resnet_denoiser: the segmentation model's 3-D ResNet encoder + a "
        "light decoder (encoder pretraining: its checkpoint loads as a segmentation workflow's model.pretrained; "
        "options: encoder, encoder_channels, stem_stride, encoder_norm, decoder_channels).",
    )
    spatial_dims: Literal[2, 3] = Field(2, description="2: axial slices (2.5-D with context_slices); 3: patches of the volume.")
    context_slices: int = Field(0, ge=0, le=4, description="2-D only: neighbour slices each side given as extra input channels (2k+1 in).")
    features: int | list[int] | None = Field(
        None, description="Widths: unet_denoiser 6 values (5 encoder levels + last decoder); redcnn/vae_denoiser one number; null = the network's default."
    )
    min_value: float | None = Field(
        None,
        description="Lowest value the image can take, in network units (MR magnitude with percentile_scale: 0.0); "
        "the trained network's outputs below it are raised to it when it is applied (never during training); null: none.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Further keyword arguments of the network (medseg.models.denoise: e.g. unet_denoiser {norm: none, dropout: 0.1, "
        "noise_map: true (2-D: the locally estimated noise σ as one more input channel), noise_map_block: 16 (its median's block, in Haar coefficients)}, redcnn {kernel_size: 3}, vae_denoiser {levels: 3, latent_channels: 8}); unknown ones are named when the network is built.",
    )

    @model_validator(mode="after")
    def _context(self) -> DenoisingModelConfig:
        if self.spatial_dims == 3 and self.context_slices:
            raise ValueError("context_slices is for 2-D models (a 3-D model sees its neighbours already)")
        return self

    def build_dict(self) -> dict[str, Any]:
        """The checkpoint's ``model`` dict (what `medseg.models.build_model` takes)."""
        out: dict[str, Any] = {"name": self.name, "spatial_dims": self.spatial_dims, "in_channels": 2 * self.context_slices + 1, "out_channels": 1}
        if self.features is not None:
            out["features"] = self.features
        if self.min_value is not None:
            out["min_value"] = self.min_value
        return {**self.options, **out}


class DenoisingLossConfig(_Strict):
    """Pixel loss between the network's output and the clean target (`medseg.losses.image`, network units)."""

    weights: dict[str, float] = Field(
        default_factory=lambda: {"mse": 1.0}, description="{term: weight} of mse, l1, ssim (1 − SSIM), e.g. {mse: 1.0, ssim: 0.1}."
    )
    kl_weight: float = Field(1e-3, ge=0, description="vae_denoiser only: weight of the KL term.")
    normalise: Literal["none", "noise"] = Field(
        "none",
        description="noise: weigh each patch's MSE/L1 by 1 / its added noise power (normalised over the batch), so every "
        "noise level counts the same instead of the noisiest patches making the loss; none: plain means.",
    )


class DenoisingTrainingConfig(TrainingConfig):
    """Patch sampling and validation of denoising."""

    patch_size: list[int] = Field(
        default_factory=lambda: [64, 64], description="Training patch in voxels: [x, y] for 2-D models, [x, y, z] for 3-D models."
    )
    patches_per_case: int = Field(8, ge=1, description="Patches sampled from a case each time it is drawn.")
    zoom_range: tuple[float, float] = Field(
        (1.0, 1.0),
        description="In-plane up-sampling of each training slab by a random factor in this range (≥ 1) before the noise: "
        "the network then sees anatomy at finer pixels than the training scans have, e.g. 3 mm scans at 1-3 mm for a "
        "denoiser that will meet 0.7-1 mm scans. (1, 1) = off.",
    )
    zoom_texture: bool = Field(
        False,
        description="CT dose noise (noise.model or mix_with ct_dose) with zoom_range: a zoomed patch first gets, in its clean "
        "target and so in its input, the full-dose CT noise of its finer pixels that the coarser scan's own texture "
        "lacks (std × sqrt(1 − 1/factor²), noise.photons_per_ray): up-sampling smooths a scan's grain away, and a network "
        "trained on such targets learns to remove the fine grain that every real full-dose scan keeps.",
    )
    field_of_view_mm: float | None = Field(
        None, gt=0,
        description="Pad each training scan in plane with air (network unit 0: CT the plan's lowest HU, the value "
        "outside a reconstruction's circle; MR 0) to at least this width in mm before patches are drawn: scans cropped to the body "
        "never show the large flat air regions of a 40-50 cm reconstruction, where the denoiser then leaves noise. null = off.",
    )
    val_roi_size: list[int] | None = Field(
        None, description="3-D models: sliding-window ROI at validation and inference (null = patch_size); 2-D: whole slices."
    )
    val_max_slices: int | None = Field(
        None, ge=1, description="2-D models: validate on at most this many evenly spaced slices per case (null = all)."
    )

    @field_validator("zoom_range")
    @classmethod
    def _zoom(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 1.0 <= v[0] <= v[1]:
            raise ValueError(f"zoom_range must be (low, high) with 1 <= low <= high, got {list(v)}")
        return v

    @field_validator("patch_size")
    @classmethod
    def _size(cls, v: list[int]) -> list[int]:
        if len(v) not in (2, 3) or any(s < 8 for s in v):
            raise ValueError(f"patch_size needs 2 (2-D) or 3 (3-D) sizes ≥ 8 voxels, got {v}")
        return v


# ---------------------------------------------------------------------------------- workflows


class _WorkflowBase(_Strict):
    """What every workflow has, whatever its task."""

    name: str = Field(description="Workflow name (default run folder name).")
    task: str = Field(description="What is trained: segmentation (default), denoising or gan.")
    seed: int = Field(0, description="Seed of every random number generator (sampling, augmentation, initialisation).")


class SegmentationWorkflow(_WorkflowBase):
    """A segmentation workflow (``task: segmentation``, the default)."""

    task: Literal["segmentation"] = Field("segmentation", description="What is trained: segmentation (default) or denoising.")
    data: DataConfig = Field(description="Cases and labels.")
    preprocessing: PreprocessingConfig = Field(description="Orientation, spacing and intensity normalisation.")
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig, description="Random augmentation.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Network.")
    loss: LossConfig = Field(default_factory=LossConfig, description="Loss.")
    optim: SegmentationOptimConfig = Field(default_factory=SegmentationOptimConfig, description="Optimiser and schedule.")
    training: SegmentationTrainingConfig = Field(default_factory=SegmentationTrainingConfig, description="Training loop.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Outputs.")

    @model_validator(mode="after")
    def _known_classes(self) -> SegmentationWorkflow:
        unknown = [n for n in self.training.val_largest_component if n not in self.data.labels]
        if unknown:
            raise ValueError(
                f"training.val_largest_component names {unknown}, which are not classes of data.labels "
                f"(classes: {list(self.data.labels)})"
            )
        return self


class DenoisingWorkflow(_WorkflowBase):
    """A denoising workflow (``task: denoising``): clean volumes, noise added on the fly."""

    task: Literal["denoising"] = Field(description="What is trained: segmentation (default) or denoising.")
    data: UnlabelledDataConfig = Field(description="Cases (images only; validation cases must be other scans).")
    preprocessing: ImagePreprocessingConfig = Field(description="Orientation, spacing and the invertible intensity plan.")
    noise: NoiseConfig = Field(default_factory=NoiseConfig, description="Noise model and levels.")
    model: DenoisingModelConfig = Field(default_factory=DenoisingModelConfig, description="Network.")
    loss: DenoisingLossConfig = Field(default_factory=DenoisingLossConfig, description="Loss.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser and schedule.")
    training: DenoisingTrainingConfig = Field(default_factory=DenoisingTrainingConfig, description="Training loop.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Outputs.")

    @model_validator(mode="after")
    def _patch_dims(self) -> DenoisingWorkflow:
        if "ct_dose" in (self.noise.model, *self.noise.mix_with) and self.preprocessing.modality != "CT":
            raise ValueError("noise model ct_dose simulates CT dose: it needs preprocessing.modality CT")
        if self.training.zoom_texture and ("ct_dose" not in (self.noise.model, *self.noise.mix_with) or self.training.zoom_range == (1.0, 1.0)):
            raise ValueError("training.zoom_texture needs CT dose noise (noise.model or noise.mix_with ct_dose) and a training.zoom_range above (1, 1)")
        if len(self.training.patch_size) != self.model.spatial_dims:
            raise ValueError(
                f"training.patch_size {self.training.patch_size} has {len(self.training.patch_size)} sizes but "
                f"model.spatial_dims is {self.model.spatial_dims}"
            )
        return self


# The variants are collected into `WorkflowConfig` (the discriminated union) in
# `medseg.config.variants`, next to the GAN's sections (`medseg.config.gan_schema`), which build
# on the shared sections here.

#: the common base of every variant (for ``isinstance`` checks)
WorkflowBase = _WorkflowBase

"""Typed workflow configuration: the single source of truth for every training option.

A workflow YAML maps one-to-one onto `WorkflowConfig`. Every model forbids unknown keys, so a
misspelled option is an error (see `medseg.config.loading`), and every field carries its
documentation (``Field(description=...)``), which `medseg train --help-config` prints.
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


class DataConfig(_Strict):
    """Where the cases are and how label values map to classes."""

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
    labels: dict[str, int | list[int]] = Field(
        description="Output classes in order (1, 2, ...) → the label value(s) in the label files, e.g. "
        "{liver: 5, spleen: 1, kidneys: [2, 3]}. Background is 0.",
    )
    unmapped_labels: Literal["error", "background"] = Field(
        "error",
        description="Label values found in a label file but not listed in 'labels': 'error' stops with the "
        "list of values; 'background' maps them to 0 (e.g. to train 4 of TotalSegmentator's 117 classes).",
    )
    cache_rate: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of preprocessed cases kept in memory (MONAI CacheDataset).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes for augmentation (0 = in the training process).")

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

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        sources = [bool(self.datalist), bool(self.nnunet_dir), bool(self.training)]
        if sum(sources) == 0:
            raise ValueError("give the training cases: one of 'datalist', 'nnunet_dir' or 'training'")
        if sum(sources) > 1:
            raise ValueError("give only one of 'datalist', 'nnunet_dir' or 'training'")
        return self

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
    """AdamW with discriminative learning rates, warm-up + cosine schedule, clipping."""

    lr: float = Field(1e-3, gt=0, description="Learning rate of the new layers (context module, decoder, heads).")
    encoder_lr: float | None = Field(None, gt=0, description="Learning rate of the encoder (null = lr; e.g. 1e-4 when fine-tuning).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    warmup_epochs: int = Field(1, ge=0, description="Linear warm-up from 1% of the LR over this many epochs.")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="Cosine decay ends at lr × this.")
    freeze_encoder_epochs: int = Field(0, ge=0, description="Keep the encoder frozen (no gradient, BN statistics fixed) for this many epochs.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this (null = off).")


class TrainingConfig(_Strict):
    """Patches, epochs, validation and run-time options."""

    epochs: int = Field(100, ge=1, description="Epochs (the schedule spans them all).")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Optimizer steps per epoch (cases are repeated as needed); null = one pass over the training cases."
    )
    batch_size: int = Field(2, ge=1, description="Cases per batch (each contributes patches_per_case patches).")
    patch_size: list[int] = Field(default_factory=lambda: [96, 96, 64], description="Training patch / sliding-window size in voxels.")
    patches_per_case: int = Field(2, ge=1, description="Patches sampled from a case each time it is drawn (RandCropByPosNegLabeld).")
    pos_fraction: float = Field(0.67, ge=0, le=1, description="Fraction of patches centred on a foreground voxel.")
    amp: bool = Field(True, description="Mixed precision (CUDA only; ignored on CPU).")
    val_every: int = Field(1, ge=1, description="Validate every N epochs (and after the last).")
    val_overlap: float = Field(0.25, ge=0, lt=1, description="Sliding-window overlap at validation and inference.")
    sw_batch_size: int = Field(2, ge=1, description="Windows per forward pass in sliding-window inference.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many validations without a better mean Dice (null = off)."
    )
    stop_after_epoch: int | None = Field(
        None, ge=1,
        description="End this invocation after this epoch although the schedule spans 'epochs' (time-boxed jobs); "
        "continue with --resume.",
    )
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads for CPU training (null = torch's default).")
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


class WorkflowConfig(_Strict):
    """A complete training workflow (one YAML file)."""

    name: str = Field(description="Workflow name (default run folder name).")
    task: Literal["segmentation"] = Field("segmentation", description="What is trained.")
    seed: int = Field(0, description="Seed of every random number generator (sampling, augmentation, initialisation).")
    data: DataConfig = Field(description="Cases and labels.")
    preprocessing: PreprocessingConfig = Field(description="Orientation, spacing and intensity normalisation.")
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig, description="Random augmentation.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Network.")
    loss: LossConfig = Field(default_factory=LossConfig, description="Loss.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser and schedule.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Training loop.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Outputs.")

    @model_validator(mode="after")
    def _known_classes(self) -> WorkflowConfig:
        unknown = [n for n in self.training.val_largest_component if n not in self.data.labels]
        if unknown:
            raise ValueError(
                f"training.val_largest_component names {unknown}, which are not classes of data.labels "
                f"(classes: {list(self.data.labels)})"
            )
        return self

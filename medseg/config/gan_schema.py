"""Sections of the low-dose CT enhancement workflow (``task: gan``, `GanWorkflow`).

Training pairs (low dose → full dose) come from one of two sources:

- **simulated** (``data.training``): normal-dose CT volumes; lower-dose copies are made once per
  run by `medseg.ct.low_dose.simulate_low_dose` (projection-domain noise insertion) at
  ``simulation.doses_per_case`` dose fractions spread log-evenly over ``simulation.dose_range``,
  and kept in memory; each training patch takes one of them at random (blind over the range);
- **paired real scans** (``data.paired``): one folder per patient holding a full-dose and a
  low-dose DICOM series (the Mayo/AAPM layout ``<patient>/full_dose``, ``<patient>/quarter_dose``),
  matched slice by slice by position (`medseg.data.ldct_pairs`).

The generator (``model.generator``) is the network the checkpoint deploys (`medseg enhance`);
the critic (``model.critic``) and both optimizers live in the training state only. With
``loss.adversarial_weight: 0`` no critic is built and the generator trains on the content loss
alone: the RED-CNN (MSE) baseline on exactly the same pairs (``workflows/ldct_redcnn.yaml``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medseg.config.schema import (
    CaseConfig,
    ImagePreprocessingConfig,
    OutputConfig,
    TrainingConfig,
    _Strict,
    _WorkflowBase,
)

__all__ = [
    "GanCaseConfig", "GanCriticConfig", "GanDataConfig", "GanGeneratorConfig", "GanLossConfig", "GanModelConfig",
    "GanOptimConfig", "GanTrainingConfig", "GanWorkflow", "LowDoseSimulationConfig", "PairedDataConfig",
]


class GanCaseConfig(CaseConfig):
    """One normal-dose CT whose lower-dose copies are simulated (a label, if given, is not read)."""

    slices: tuple[int, int] | None = Field(
        None,
        description="Only the axial slices [start, stop) (RAS slice index, after reorientation) are used; e.g. to keep "
        "the slices of a validation scan cut from the same volume out of training. null = all.",
    )

    @field_validator("slices")
    @classmethod
    def _range(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not (0 <= v[0] < v[1]):
            raise ValueError(f"slices needs [start, stop) with 0 <= start < stop, got {list(v)}")
        return v


class PairedDataConfig(_Strict):
    """Real full-/low-dose pairs: ``<root>/<patient>/<full_dose_dir>/`` and ``<root>/<patient>/<low_dose_dir>/``."""

    root: str = Field(description="Folder with one sub-folder per patient (path relative to the workflow file).")
    full_dose_dir: str = Field("full_dose", description="Name of each patient's full-dose series folder (DICOM files, any depth).")
    low_dose_dir: str = Field("quarter_dose", description="Name of each patient's low-dose series folder.")
    validation_patients: list[str] = Field(
        default_factory=list,
        description="Patient folder names used for validation only (never trained on); empty = data.val_fraction of the "
        "patients, chosen with the seed.",
    )
    position_tolerance_mm: float = Field(
        0.05, gt=0, description="Two slices are the same slice when their positions along the slice normal differ by at most this (mm)."
    )


class GanDataConfig(_Strict):
    """Where the training pairs come from: simulated from normal-dose CT, or paired real scans."""

    training: list[GanCaseConfig] = Field(default_factory=list, description="Normal-dose CT volumes to simulate lower doses from.")
    validation: list[GanCaseConfig] = Field(
        default_factory=list, description="Normal-dose CT volumes for validation (simulated at simulation.val_doses, fixed seeds)."
    )
    paired: PairedDataConfig | None = Field(None, description="Real full-/low-dose pairs instead of simulation.")
    val_fraction: float = Field(
        0.2, ge=0.0, lt=1.0,
        description="When no validation cases/patients are given: fraction of the cases/patients held out (at least one of two or more).",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes for patch sampling (0 = in the training process).")

    @model_validator(mode="after")
    def _one_source(self) -> GanDataConfig:
        if bool(self.training) == bool(self.paired):
            raise ValueError("give the training pairs: either 'training' (normal-dose CT, lower doses simulated) or 'paired' (real pairs)")
        if self.paired and self.validation:
            raise ValueError("with 'paired' data, validation patients are paired.validation_patients, not 'validation'")
        return self

    # the case-source keys of the other tasks' data sections (read by medseg.data.datasets.resolve_cases)
    @property
    def datalist(self) -> None:
        return None

    @property
    def nnunet_dir(self) -> None:
        return None


class LowDoseSimulationConfig(_Strict):
    """How lower-dose copies of the normal-dose cases are simulated (`medseg.ct.low_dose.simulate_low_dose`)."""

    dose_range: tuple[float, float] = Field((0.1, 0.5), description="Dose fractions of the full dose, within (0, 1]: the training range.")
    doses_per_case: int = Field(3, ge=1, le=16, description="Simulated copies per training case, at dose fractions log-evenly spaced over dose_range.")
    val_doses: list[float] = Field(default_factory=lambda: [0.1, 0.25], description="Dose fractions of validation (each validation case at each).")
    photons_per_ray: float | None = Field(
        None, gt=0, description="Unattenuated photons per ray at full dose (I0); null = the simulator's default (see medseg.ct.low_dose)."
    )
    electronic_noise_std: float | None = Field(None, ge=0, description="Electronic noise std in photons; null = the simulator's default.")
    views: int | None = Field(None, ge=16, description="Projection angles; null = the simulator's default (720 parallel views).")
    geometry: Literal["parallel", "fan"] = Field("parallel", description="Beam geometry of the simulation.")
    texture_targets: bool = Field(
        False,
        description="First give each normal-dose case the noise of a full-dose scan at photons_per_ray (a dose-0.5 insertion, "
        "whose added variance is that of a full-dose scan), use that as the target and simulate the lower doses from it. "
        "For training CT whose own noise is far below that of the scans to enhance (thick or smoothly reconstructed slices): "
        "the targets, and so the critic's idea of a real image, then carry a normal-dose noise texture.",
    )

    @model_validator(mode="after")
    def _doses(self) -> LowDoseSimulationConfig:
        for d in (*self.dose_range, *self.val_doses):
            if not (0.0 < d <= 1.0 and math.isfinite(d)):
                raise ValueError(f"dose fractions must be in (0, 1], got {d}")
        if self.dose_range[0] > self.dose_range[1]:
            raise ValueError(f"dose_range [low, high] needs low <= high, got {list(self.dose_range)}")
        return self

    def training_doses(self) -> list[float]:
        """The dose fractions of the simulated training copies (log-evenly spaced, ends included)."""
        lo, hi = self.dose_range
        n = self.doses_per_case
        if n == 1 or lo == hi:
            return [math.sqrt(lo * hi)] * n if n == 1 else [lo] * n
        return [float(math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / (n - 1))) for i in range(n)]

    def simulator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `simulate_low_dose` besides dose and seed (None = its default)."""
        out: dict[str, Any] = {"geometry": self.geometry}
        for key in ("photons_per_ray", "electronic_noise_std", "views"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


class GanGeneratorConfig(_Strict):
    """The generator: the deployed network (2-D, or 2.5-D with context slices)."""

    name: Literal["rdb_generator", "redcnn", "unet_denoiser"] = Field(
        "rdb_generator",
        description="rdb_generator: residual-dense encoder-decoder predicting the residual (medseg.models.gan); redcnn: "
        "RED-CNN (Chen et al. 2017); unet_denoiser: residual BasicUNet (medseg.models.denoise).",
    )
    context_slices: int = Field(0, ge=0, le=4, description="Neighbour slices each side given as input channels (2k+1 in, the centre slice out).")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Further keyword arguments of the network, e.g. rdb_generator {channels: 32, n_blocks: 3, growth: 16, "
        "layers_per_block: 3}, redcnn {features: 48, kernel_size: 5}; unknown ones are named when it is built.",
    )

    def build_dict(self) -> dict[str, Any]:
        """The checkpoint's ``model`` dict (what `medseg.models.build_model` takes)."""
        if self.name == "rdb_generator":
            return {**self.options, "name": self.name, "context_slices": self.context_slices}
        return {**self.options, "name": self.name, "spatial_dims": 2, "in_channels": 2 * self.context_slices + 1, "out_channels": 1}


class GanCriticConfig(_Strict):
    """The critic (`medseg.models.gan.PatchCritic`, spectral norm); training only."""

    channels: int = Field(32, ge=1, description="Channels of the first convolution (doubling per stride-2 layer, capped at 8×).")
    n_layers: int = Field(3, ge=1, le=6, description="Stride-2 convolutions (receptive field grows with each).")
    conditional: bool = Field(False, description="Also show the critic the low-dose centre slice (2 input channels).")


class GanModelConfig(_Strict):
    """Generator and critic."""

    generator: GanGeneratorConfig = Field(default_factory=GanGeneratorConfig, description="Generator (deployed).")
    critic: GanCriticConfig = Field(default_factory=GanCriticConfig, description="Critic (training only).")


class GanLossConfig(_Strict):
    """Generator loss ``content + w_adv · (−E[D(G(x))]) + w_perc · perceptual``; critic loss WGAN-GP.

    All in network units (the ``hu_linear`` plan: 1 = the width of ``preprocessing.hu_range``).
    """

    content: dict[str, float] = Field(
        default_factory=lambda: {"l1": 1.0},
        description="{term: weight} of mse, l1, ssim (1 − SSIM; the optional SSIM term) against the full-dose slice (medseg.losses.image).",
    )
    adversarial_weight: float = Field(
        1e-3, ge=0, description="Weight of the Wasserstein generator loss; 0 = no critic (content-only baseline, e.g. RED-CNN MSE)."
    )
    gp_lambda: float = Field(10.0, ge=0, description="Gradient-penalty weight λ (Gulrajani et al. 2017: 10).")
    perceptual_weight: float = Field(0.0, ge=0, description="Weight of the perceptual term (needs perceptual_checkpoint).")
    perceptual_checkpoint: str | None = Field(
        None,
        description="A medseg checkpoint (.pt, trained by medseg: segmentation ResUNet3D, or an image model with a ResNet/RED-CNN "
        "encoder) whose encoder features the perceptual term compares (mean squared feature difference); a local file, "
        "nothing is downloaded. null = no perceptual term.",
    )
    perceptual_stages: int = Field(2, ge=1, le=4, description="Encoder stages whose features are compared (1 = the stem only).")

    @model_validator(mode="after")
    def _perceptual(self) -> GanLossConfig:
        if self.perceptual_weight > 0 and not self.perceptual_checkpoint:
            raise ValueError("perceptual_weight > 0 needs perceptual_checkpoint (a medseg checkpoint file)")
        return self


class GanOptimConfig(_Strict):
    """Adam with GAN betas for both networks, warm-up + cosine schedules, gradient clipping, n_critic."""

    lr_generator: float = Field(2e-4, gt=0, description="Generator learning rate.")
    lr_critic: float = Field(2e-4, gt=0, description="Critic learning rate.")
    betas: tuple[float, float] = Field((0.5, 0.9), description="Adam betas of both optimizers (WGAN-GP: 0.5, 0.9).")
    n_critic: int = Field(5, ge=1, description="Critic steps per generator step (each on its own batch).")
    warmup_epochs: int = Field(0, ge=0, description="Linear warm-up from 1% of the LR over this many epochs.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decay ends at lr × this.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the generator's gradient norm to this (null = off).")
    critic_grad_clip: float | None = Field(
        None, gt=0, description="Clip the critic's gradient norm (null = off: the gradient penalty is its constraint)."
    )


class GanTrainingConfig(TrainingConfig):
    """Patch sampling and validation of the GAN."""

    patch_size: list[int] = Field(default_factory=lambda: [64, 64], description="Training patch [x, y] in voxels.")
    patches_per_case: int = Field(4, ge=1, description="Patches sampled from a case each time it is drawn.")
    val_max_slices: int | None = Field(8, ge=1, description="Validate on at most this many evenly spaced slices per case and dose (null = all).")

    @field_validator("patch_size")
    @classmethod
    def _size(cls, v: list[int]) -> list[int]:
        if len(v) != 2 or any(s < 16 for s in v):
            raise ValueError(f"patch_size needs 2 sizes ≥ 16 voxels (axial patches), got {v}")
        return v


class GanWorkflow(_WorkflowBase):
    """A low-dose CT enhancement workflow (``task: gan``): WGAN-GP generator/critic on low-/full-dose pairs."""

    task: Literal["gan"] = Field(description="What is trained: segmentation (default), denoising or gan.")
    data: GanDataConfig = Field(description="Training pairs: simulated from normal-dose CT, or paired real scans.")
    preprocessing: ImagePreprocessingConfig = Field(
        default_factory=lambda: ImagePreprocessingConfig(modality="CT"), description="The invertible HU plan (CT only)."
    )
    simulation: LowDoseSimulationConfig = Field(default_factory=LowDoseSimulationConfig, description="Low-dose simulation (simulated data).")
    model: GanModelConfig = Field(default_factory=GanModelConfig, description="Generator and critic.")
    loss: GanLossConfig = Field(default_factory=GanLossConfig, description="Losses.")
    optim: GanOptimConfig = Field(default_factory=GanOptimConfig, description="Optimisers and schedules.")
    training: GanTrainingConfig = Field(default_factory=GanTrainingConfig, description="Training loop.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Outputs.")

    @model_validator(mode="after")
    def _ct(self) -> GanWorkflow:
        if self.preprocessing.modality != "CT":
            raise ValueError("task gan enhances low-dose CT: preprocessing.modality must be CT")
        if self.preprocessing.spacing_mm is not None:
            raise ValueError("task gan trains on the native grid (the noise texture is the scanner's): preprocessing.spacing_mm must be null")
        return self

"""The denoising task: clean volumes in, noise added on the fly, an image-to-image network out.

Data: image-only cases → cached deterministic preprocessing (RAS, optional spacing, the
invertible intensity plan of `medseg.data.intensity`: CT ``hu_linear``, MR
``percentile_scale``) → random patches (2-D: ``2k+1`` neighbouring axial slices as channels,
the centre slice as target; 3-D: sub-volumes) → the noise model at a random level per patch
(blind training: a user's scans have unknown noise), from `medseg.data.noise` (Gaussian,
Rician, Poisson-Gaussian CT dose noise, or one of several per patch with ``noise.mix_with``;
CT dose noise depends on the path lengths through the whole body, so its per-pixel maps are
computed once per scan on whole slices and cropped with the patch), optionally after an
in-plane zoom (``training.zoom_range``: finer pixels than the training scans'). Loss per patch
optionally relative to its noise power (``loss.normalise: noise``). Network: the
denoisers of `medseg.models.denoise` (residual U-Net, RED-CNN, VAE) via `build_model`; loss:
`medseg.losses.image` weighted MSE/L1/SSIM (+ β·KL for the VAE).

Validation: each validation case at each of ``noise.validation_levels()`` with noise seeded
from ``(seed, case, level)`` (the same noisy inputs every epoch), whole slices (2-D) or a
sliding window (3-D); PSNR over the volume and SSIM per axial slice (`medseg.metrics.image`),
both with data range 1 in network units = ``hu_max − hu_min`` HU (CT) or the volume's
``upper_percentile`` intensity (MR). The score is the mean PSNR (dB).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset
from monai.inferers import sliding_window_inference
from monai.transforms import Compose, DeleteItemsd, EnsureTyped, MapTransform, OneOf, Orientationd, RandSpatialCropd, RandSpatialCropSamplesd, Spacingd, SpatialPadd
from torch import nn

from medseg.checkpoint import Checkpoint, current_versions
from medseg.config import DenoisingWorkflow
from medseg.data.datasets import resolve_cases
from medseg.data.intensity import intensity_params, to_network_units
from medseg.data.noise import AcquisitionNoised, CTNoiseMapsd, RandCTFineTextured, RobustMaxd, build_noise_transform
from medseg.data.transforms import LoadCased, PadToFieldOfViewd, RandInPlaneZoomd
from medseg.engine.distributed import DistContext
from medseg.engine.optimization import Precision, backward_step, warmup_cosine
from medseg.engine.tasks.segmentation import RandomStage
from medseg.losses.image import build_image_loss, noise_weights
from medseg.metrics.image import psnr, ssim
from medseg.models import build_model

#: where the training items keep the CT noise maps of their slices
MAPS_KEY = "ct_noise_maps"
#: where a zoomed training item keeps its zoom factor (for the fine CT texture)
FACTOR_KEY = "zoom_factor"
#: where the training items keep their scan's robust max (the scale of Rician noise)
REFERENCE_KEY = "noise_reference"

__all__ = ["DenoisingTask", "SliceStackd", "ToNetworkUnitsd", "noise_transform", "training_noise"]

log = logging.getLogger("medseg.engine")

#: MONAI axis-label convention of RAS affines (as in medseg.data.transforms)
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class ToNetworkUnitsd(MapTransform):
    """Apply the plan's invertible intensity map; keep its parameters under ``"intensity_params"``."""

    def __init__(self, keys: Any, intensity: dict[str, Any]) -> None:
        super().__init__(keys)
        self.intensity = intensity

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            params = intensity_params(d[key], self.intensity)
            d[key] = to_network_units(d[key].float(), params)
            d["intensity_params"] = params
        return d


class SliceStackd(MapTransform):
    """2-D patches: noisy ``(1, X, Y, 2k+1)`` → input ``(2k+1, X, Y)``; clean → target ``(1, X, Y)`` (centre slice)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        noisy, clean = torch.as_tensor(d["image"]), torch.as_tensor(d["target"])
        k = noisy.shape[-1] // 2
        d["image"] = noisy[0].permute(2, 0, 1).contiguous()
        d["target"] = clean[0, :, :, k][None].contiguous()
        return d


class _Targetd(MapTransform):
    """The clean (network-unit) image becomes the target; the noise transform writes the input."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d["target"] = d.pop("image")
        return d


class _DropParamsd(MapTransform):
    """Drop the per-volume intensity parameters from training items (not needed in a batch)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d.pop("intensity_params", None)
        return d


def noise_transform(
    cfg: DenoisingWorkflow,
    levels: tuple[float, float] | None,
    plan: dict[str, Any],
    *,
    model: str | None = None,
    maps_key: str | None = None,
    reference_key: str | None = None,
) -> Any:
    """A noise model (`medseg.data.noise`) from ``"target"`` (clean, network units) to ``"image"``.

    Args:
        levels: ``(low, high)`` of the level in the model's units (σ in HU/×P_upper, fraction,
            dose fraction); equal ends = a fixed level (validation); None = the model's training
            range.
        plan: the preprocessing plan (Gaussian σ in HU becomes network units; CT dose noise
            converts to HU and back around the noise).
        model: the noise model; None = ``cfg.noise.model``.
        maps_key: CT dose noise reads the whole slices' noise maps (`CTNoiseMapsd`) from this key
            instead of computing them from the array (which must then hold whole slices).
        reference_key: Rician noise reads the whole scan's robust max (`RobustMaxd`) from this
            key instead of taking the array's own (a patch's would not be its scan's).
    """
    n = cfg.noise
    model = model or n.model
    levels = levels if levels is not None else n.level_range(model)
    intensity = plan["intensity"]
    if model == "gaussian":
        scale = float(intensity["hu_max"] - intensity["hu_min"]) if intensity["kind"] == "hu_linear" else 1.0
        spec: dict[str, Any] = {"model": "gaussian", "sigma_range": [levels[0] / scale, levels[1] / scale]}
    elif model == "rician":
        spec = {"model": "rician", "fraction_range": list(levels)}
        if reference_key:
            spec["reference_key"] = reference_key
    else:
        spec = {"model": "ct_dose", "dose_range": list(levels), "photons_per_ray": n.photons_per_ray,
                "electronic_sigma": n.electronic_sigma, "intensity": intensity}
        if maps_key:
            spec["maps_key"] = maps_key
    return build_noise_transform("target", spec, output_keys="image")


def training_noise(cfg: DenoisingWorkflow, plan: dict[str, Any], maps_key: str | None = None, reference_key: str | None = None) -> Any:
    """The training noise: the workflow's model over its range, or one of ``[model, *mix_with]`` per patch."""
    if not cfg.noise.mix_with:
        return noise_transform(cfg, None, plan, maps_key=maps_key, reference_key=reference_key)
    models = [cfg.noise.model, *cfg.noise.mix_with]
    # MONAI's OneOf draws the model per patch from its own random state, which the loop re-seeds
    # from (seed, epoch, rank) with the rest of the random stage
    return OneOf([noise_transform(cfg, None, plan, model=m, maps_key=maps_key, reference_key=reference_key) for m in models])


class DenoisingTask:
    """Denoising behind the `medseg.engine.tasks.Task` protocol."""

    name = "denoising"
    deployable = "model"
    batches_per_step = 1
    case_columns = ["case", "noise", "level", "psnr_noisy_db", "psnr_db", "ssim_noisy", "ssim"]

    def __init__(self, cfg: DenoisingWorkflow, ctx: DistContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.plan = cfg.preprocessing.plan()
        train_cases, val_cases = resolve_cases(cfg, labels=False)
        mcfg, tcfg = cfg.model, cfg.training
        k = mcfg.context_slices
        # the image keeps its affine (MetaTensor) until the noise: CT dose noise reads the pixel spacing
        cached = [
            LoadCased("image", None),
            Orientationd(keys="image", axcodes="RAS", labels=_RAS_LABELS),
            *([Spacingd(keys="image", pixdim=list(self.plan["spacing_mm"]), mode="bilinear", dtype=np.float32)] if self.plan["spacing_mm"] else []),
            ToNetworkUnitsd("image", self.plan["intensity"]),
        ]
        # training scans only (validation scores the scans as they are); network unit 0 is air
        # for both plans: the lowest HU of hu_linear (what a reconstruction holds outside its
        # circle), and 0 of an MR magnitude image
        train_cached = [*cached, PadToFieldOfViewd("image", tcfg.field_of_view_mm, 0.0)] if tcfg.field_of_view_mm else list(cached)
        # templates and masked MR scans get the Rayleigh floor of an acquisition, on their own grid
        # (right after loading); validation scores the scans as they are
        if cfg.noise.acquisition_noise is not None:
            train_cached.insert(1, AcquisitionNoised("image", cfg.noise.acquisition_noise, seed=cfg.seed))
        # CT dose noise on patches: the per-pixel noise maps of the whole slices (the rays cross
        # the whole body, not the patch) are computed once per scan with the cache and cropped
        # with the image, so a training draw only costs the texture of its patch; computing them
        # for every drawn slab instead made sampling take longer than the network's step
        maps = MAPS_KEY if "ct_dose" in (cfg.noise.model, *cfg.noise.mix_with) else None
        keys = ["image", maps] if maps else ["image"]
        # (after the padding: the rays of the dose noise cross the padded air too)
        train_cached += [CTNoiseMapsd("image", maps_key=maps, intensity=self.plan["intensity"])] if maps else []
        # Rician σ is a fraction of the scan's robust max, taken on the whole scan: a patch of
        # background or dim tissue has a far smaller one of its own, and patches drawn with it
        # got almost no noise where the scan has the most visible (the Rayleigh floor of the
        # background, which the network then never learnt to remove)
        reference = REFERENCE_KEY if "rician" in (cfg.noise.model, *cfg.noise.mix_with) else None
        train_cached += [RobustMaxd("image", reference_key=reference)] if reference else []
        # finer pixels than the training scans': a patch is zoomed, then a patch of the same size
        # is cut from it (so each shows 1/factor of the field of view, at 1/factor of the pixel size)
        zoomed = tcfg.zoom_range != (1.0, 1.0)
        texture = bool(tcfg.zoom_texture and zoomed and maps)  # the schema requires both with it
        factor = FACTOR_KEY if texture else None
        zoom = [RandInPlaneZoomd(keys, tcfg.zoom_range, per_pixel_size=[maps] if maps else [], factor_key=factor)] if zoomed else []
        size = [*tcfg.patch_size, 2 * k + 1] if mcfg.spatial_dims == 2 else list(tcfg.patch_size)
        random = [
            SpatialPadd(keys=keys, spatial_size=size, mode="edge"),
            RandSpatialCropSamplesd(keys=keys, roi_size=size, num_samples=tcfg.patches_per_case, random_size=False),
            *zoom,
            *([RandSpatialCropd(keys=keys, roi_size=size, random_size=False)] if zoom else []),
            # the zoomed patch's missing fine grain goes into the clean image, so the target keeps it
            *([RandCTFineTextured("image", maps_key=maps, factor_key=factor, photons_per_ray=cfg.noise.photons_per_ray,
                                  electronic_sigma=cfg.noise.electronic_sigma, intensity=self.plan["intensity"])] if texture else []),
            _Targetd(keys="image"),
            training_noise(cfg, self.plan, maps_key=maps, reference_key=reference),
            *([SliceStackd(keys="image")] if mcfg.spatial_dims == 2 else []),
        ]
        per_scan = [k for k in (maps, reference, factor) if k]  # read by the noise only, not batched
        random += [DeleteItemsd(keys=per_scan)] if per_scan else []
        random += [_DropParamsd(keys="image"), EnsureTyped(keys=["image", "target"], dtype=torch.float32, track_meta=False)]
        ds = CacheDataset(train_cases, transform=Compose(train_cached), cache_rate=cfg.data.cache_rate, num_workers=1, progress=False)
        self.train_dataset = RandomStage(ds, Compose(random))
        self.n_train_cases, self.n_val_cases = len(train_cases), len(val_cases)
        self.val_dataset = None
        if val_cases and ctx.is_main:
            self.val_dataset = CacheDataset(val_cases, transform=Compose(cached), cache_rate=cfg.data.cache_rate, num_workers=1, progress=False)
        self.loss_fn = build_image_loss(cfg.loss.weights, spatial_dims=mcfg.spatial_dims, data_range=1.0)
        self.terms = list(self.loss_fn.weights) + (["kl"] if mcfg.name == "vae_denoiser" else [])
        self.columns = ["train_loss", *(f"train_{t}" for t in self.terms if len(self.terms) > 1), "lr", "epoch_seconds",
                        "val_psnr_db", "val_ssim", "val_psnr_noisy_db", "val_ssim_noisy"]
        self.networks: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}

    # ---- networks and optimisation

    def build_networks(self, resume: bool) -> None:
        """The denoiser of ``model`` (`build_model`)."""
        self.model_cfg = self.cfg.model.build_dict()
        self.model = build_model(self.model_cfg).to(self.ctx.device)
        self.networks = {"model": self.model}

    def configure_optimizers(self, steps_per_epoch: int) -> None:
        """AdamW, warm-up + cosine."""
        ocfg = self.cfg.optim
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=ocfg.lr, weight_decay=ocfg.weight_decay)
        total = self.cfg.training.epochs * steps_per_epoch
        self.optimizers = {"model": optimizer}
        self.schedulers = {"model": warmup_cosine(optimizer, total, ocfg.warmup_epochs * steps_per_epoch, ocfg.min_lr_ratio)}

    # ---- one epoch

    def epoch_start(self, epoch: int) -> bool:
        self.model.train()
        return False

    def train_step(self, nets: dict[str, nn.Module], batches: Iterator[dict[str, Any]], precision: Precision) -> dict[str, torch.Tensor]:
        """Noisy patch → network → weighted pixel loss against the clean patch; one AdamW step."""
        batch = next(batches)
        noisy, clean = batch["image"].to(self.ctx.device), batch["target"].to(self.ctx.device)
        with precision.autocast():
            out, kl = nets["model"](noisy, return_kl=True)
        # the loss in fp32: SSIM's variances and the small MSEs of network units lose digits in fp16
        weights = None
        if self.cfg.loss.normalise == "noise":
            weights = noise_weights(noisy, clean, channel=noisy.shape[1] // 2 if self.cfg.model.spatial_dims == 2 else 0)
        terms = self.loss_fn.terms(out.float(), clean, weights)
        if "kl" in self.terms:
            terms["kl"] = self.cfg.loss.kl_weight * kl.float()
        loss = torch.stack(list(terms.values())).sum()
        backward_step(loss, self.optimizers["model"], precision.scalers["model"], self.model.parameters(), self.cfg.optim.grad_clip)
        self.schedulers["model"].step()
        return {"loss": loss.detach(), **({k: v.detach() for k, v in terms.items()} if len(self.terms) > 1 else {})}

    def epoch_values(self) -> dict[str, Any]:
        return {"lr": self.optimizers["model"].param_groups[0]["lr"]}

    # ---- validation and checkpoint

    def _predict(self, noisy: torch.Tensor, precision: Precision) -> torch.Tensor:
        """The network on a whole noisy volume ``(X, Y, Z)`` → ``(X, Y, Z)`` (network units)."""
        device = self.ctx.device
        with torch.no_grad(), precision.autocast():
            if self.cfg.model.spatial_dims == 3:
                roi = self.cfg.training.val_roi_size or self.cfg.training.patch_size
                out = sliding_window_inference(noisy[None, None].to(device), roi_size=roi, sw_batch_size=1, predictor=self.model,
                                               overlap=0.25, mode="gaussian", padding_mode="replicate")
                return torch.as_tensor(out).float()[0, 0].cpu()
            k = self.cfg.model.context_slices
            vol = noisy.permute(2, 0, 1)  # (Z, X, Y)
            padded = torch.cat([vol[:1].expand(k, -1, -1), vol, vol[-1:].expand(k, -1, -1)]) if k else vol
            slices = [torch.as_tensor(self.model(padded[z : z + 2 * k + 1][None].to(device))).float()[0, 0].cpu()
                      for z in range(vol.shape[0])]
            return torch.stack(slices, dim=-1)

    def validate(self, precision: Precision) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """PSNR (the score) and SSIM of the denoised and of the noisy validation volumes."""
        was_training = self.model.training
        self.model.eval()
        rows: list[dict[str, Any]] = []
        max_slices = self.cfg.training.val_max_slices
        k = self.cfg.model.context_slices
        try:
            assert self.val_dataset is not None
            for i in range(len(self.val_dataset)):
                item = self.val_dataset[i]
                clean_mt = item["image"]
                clean = torch.as_tensor(clean_mt)[0].float()
                if self.cfg.model.spatial_dims == 2 and max_slices and clean.shape[2] > max_slices:
                    keep = np.unique(np.linspace(0, clean.shape[2] - 1, max_slices).round().astype(int))
                else:
                    keep = np.arange(clean.shape[2])
                for j, level in enumerate(self.cfg.noise.validation_levels()):
                    noise = noise_transform(self.cfg, (level, level), self.plan)
                    noise.set_random_state(int(np.random.SeedSequence([self.cfg.seed & 0xFFFFFFFF, i, j]).generate_state(1)[0]))
                    noisy = torch.as_tensor(noise({"target": clean_mt})["image"])[0].float()
                    if len(keep) < clean.shape[2]:
                        # only the kept slices (with their context) are predicted
                        denoised = torch.zeros_like(clean)
                        for z in keep:
                            lo, hi = max(0, z - k), min(clean.shape[2], z + k + 1)
                            denoised[:, :, z] = self._predict(noisy[:, :, lo:hi], precision)[:, :, z - lo]
                    else:
                        denoised = self._predict(noisy, precision)
                    c, n, d = (t[:, :, keep].numpy() for t in (clean, noisy, denoised))
                    rows.append({
                        "case": item.get("name", str(i)), "noise": self.cfg.noise.model, "level": level,
                        "psnr_noisy_db": psnr(n, c, data_range=1.0), "psnr_db": psnr(d, c, data_range=1.0),
                        "ssim_noisy": ssim(n, c, data_range=1.0), "ssim": ssim(d, c, data_range=1.0),
                    })
        finally:
            self.model.train(was_training)
        mean = {key: float(np.mean([r[key] for r in rows])) for key in ("psnr_db", "ssim", "psnr_noisy_db", "ssim_noisy")}
        return {"score": mean["psnr_db"], "val_psnr_db": mean["psnr_db"], "val_ssim": mean["ssim"],
                "val_psnr_noisy_db": mean["psnr_noisy_db"], "val_ssim_noisy": mean["ssim_noisy"]}, rows

    def describe(self, row: dict[str, Any]) -> str:
        if math.isnan(row.get("val_psnr_db", math.nan)):
            return ""
        return (f"  | val PSNR {row['val_psnr_db']:.2f} dB (noisy {row['val_psnr_noisy_db']:.2f})  "
                f"SSIM {row['val_ssim']:.4f} (noisy {row['val_ssim_noisy']:.4f})")

    def checkpoint(self, metrics: dict[str, Any]) -> Checkpoint:
        """CONTRACTS.md's image-to-image checkpoint: the network, the invertible plan, how to apply it."""
        mcfg, tcfg = self.cfg.model, self.cfg.training
        roi = list(tcfg.val_roi_size or tcfg.patch_size) if mcfg.spatial_dims == 3 else None
        return Checkpoint(
            task="denoising", model=self.model_cfg, state_dict=self.model.state_dict(), labels={},
            preprocessing=self.plan,
            inference={"spatial_dims": mcfg.spatial_dims, "context_slices": mcfg.context_slices, "roi_size": roi, "overlap": 0.25},
            config=self.cfg.model_dump(mode="json"), versions=current_versions(), metrics=metrics,
        )

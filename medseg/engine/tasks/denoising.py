"""The denoising task: clean volumes in, noise added on the fly, an image-to-image network out.

Data: image-only cases → cached deterministic preprocessing (RAS, optional spacing, the
invertible intensity plan of `medseg.data.intensity`: CT ``hu_linear``, MR
``percentile_scale``) → random patches (2-D: ``2k+1`` neighbouring axial slices as channels,
the centre slice as target; 3-D: sub-volumes) → the noise model at a random level per patch
(blind training: a user's scans have unknown noise). Network: `medseg.models.build_model`'s
image-to-image networks (MONAI BasicUNet with a residual shortcut by default); MSE or L1.

Validation: each validation case at each of ``noise.validation_sigmas()`` with noise seeded
from ``(seed, case, level)`` (the same noisy inputs every epoch), whole slices (2-D) or a
sliding window (3-D); PSNR over the volume and SSIM per axial slice, both with data range 1
in network units = ``hu_max − hu_min`` HU (CT) or the volume's ``upper_percentile``
intensity (MR). The score is the mean PSNR (dB).
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
from monai.metrics import SSIMMetric
from monai.transforms import Compose, EnsureTyped, MapTransform, Orientationd, RandomizableTransform, RandSpatialCropSamplesd, Spacingd, SpatialPadd
from torch import nn

from medseg.checkpoint import Checkpoint, current_versions
from medseg.config import DenoisingWorkflow
from medseg.data.datasets import resolve_cases
from medseg.data.intensity import intensity_params, to_network_units
from medseg.data.transforms import LoadCased
from medseg.engine.distributed import DistContext
from medseg.engine.optimization import Precision, backward_step, warmup_cosine
from medseg.engine.tasks.segmentation import RandomStage
from medseg.errors import ConfigError
from medseg.models import build_model

__all__ = ["AddNoised", "DenoisingTask", "SliceStackd", "ToNetworkUnitsd", "psnr_db"]

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
    """2-D patches: ``(1, X, Y, 2k+1)`` → input ``(2k+1, X, Y)`` and clean target ``(1, X, Y)`` (centre slice)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        img = torch.as_tensor(d["image"])
        stack = img[0].permute(2, 0, 1).contiguous()
        d["image"] = stack
        d["target"] = stack[stack.shape[0] // 2 : stack.shape[0] // 2 + 1].clone()
        return d


def _noisy(x: torch.Tensor, sigma: float, kind: str, rng: np.random.RandomState) -> torch.Tensor:
    """`x` with zero-mean noise of standard deviation `sigma` (network units)."""
    n1 = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32)) * sigma
    if kind == "gaussian":
        return x + n1
    n2 = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32)) * sigma
    return torch.sqrt((x + n1) ** 2 + n2**2)  # rician: the magnitude of a complex signal


class AddNoised(RandomizableTransform, MapTransform):
    """Noise at a level drawn uniformly from ``sigma_range`` (network units) per item.

    Temporary: the physical noise models (Poisson-Gaussian CT in photons per ray) come from
    `medseg.data.noise` (branch denoise); this one is Gaussian/Rician in intensity units.
    """

    def __init__(self, keys: Any, kind: str, sigma_range: tuple[float, float]) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.kind, self.sigma_range = kind, (float(sigma_range[0]), float(sigma_range[1]))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        sigma = float(self.R.uniform(*self.sigma_range))
        for key in self.key_iterator(d):
            d[key] = _noisy(torch.as_tensor(d[key]).float(), sigma, self.kind, self.R)
        return d


def psnr_db(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10·log10(range² / MSE)`` in dB over all voxels."""
    mse = float(torch.mean((pred.double() - target.double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


class DenoisingTask:
    """Denoising behind the `medseg.engine.tasks.Task` protocol."""

    name = "denoising"
    deployable = "model"
    batches_per_step = 1
    columns = ["train_loss", "lr", "epoch_seconds", "val_psnr_db", "val_ssim", "val_psnr_noisy_db", "val_ssim_noisy"]
    case_columns = ["case", "sigma", "psnr_noisy_db", "psnr_db", "ssim_noisy", "ssim"]

    def __init__(self, cfg: DenoisingWorkflow, ctx: DistContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.plan = cfg.preprocessing.plan()
        intensity = self.plan["intensity"]
        # noise levels are given in image units (HU for CT, × P_upper for MR = network units)
        self.sigma_scale = float(intensity["hu_max"] - intensity["hu_min"]) if intensity["kind"] == "hu_linear" else 1.0
        train_cases, val_cases = resolve_cases(cfg, labels=False)
        mcfg, tcfg = cfg.model, cfg.training
        k = mcfg.context_slices
        roi = [*tcfg.patch_size, 2 * k + 1] if mcfg.spatial_dims == 2 else list(tcfg.patch_size)
        cached = [
            LoadCased("image", None),
            Orientationd(keys="image", axcodes="RAS", labels=_RAS_LABELS),
            *([Spacingd(keys="image", pixdim=list(self.plan["spacing_mm"]), mode="bilinear", dtype=np.float32)] if self.plan["spacing_mm"] else []),
            ToNetworkUnitsd("image", intensity),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
        ]
        sigmas = tuple(s / self.sigma_scale for s in cfg.noise.sigma_range)
        random = [
            SpatialPadd(keys="image", spatial_size=roi, mode="edge"),
            RandSpatialCropSamplesd(keys="image", roi_size=roi, num_samples=tcfg.patches_per_case, random_size=False),
            *([SliceStackd(keys="image")] if mcfg.spatial_dims == 2 else []),
            *([] if mcfg.spatial_dims == 2 else [_CopyTargetd(keys="image")]),
            AddNoised("image", cfg.noise.kind, sigmas),
            _DropParamsd(keys="image"),
        ]
        ds = CacheDataset(train_cases, transform=Compose(cached), cache_rate=cfg.data.cache_rate, num_workers=1, progress=False)
        self.train_dataset = RandomStage(ds, Compose(random))
        self.n_train_cases, self.n_val_cases = len(train_cases), len(val_cases)
        self.val_dataset = None
        if val_cases and ctx.is_main:
            self.val_dataset = CacheDataset(val_cases, transform=Compose(cached), cache_rate=cfg.data.cache_rate, num_workers=1, progress=False)
        self.loss_fn = nn.MSELoss() if cfg.loss.kind == "mse" else nn.L1Loss()
        self.networks: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}

    # ---- networks and optimisation

    def build_networks(self, resume: bool) -> None:
        """The image-to-image network of ``model`` (`build_model`)."""
        self.model_cfg = self.cfg.model.build_dict()
        model = build_model(self.model_cfg)
        div = int(getattr(model, "size_divisor", 1))
        bad = [s for s in self.cfg.training.patch_size if s % div]
        if bad:
            raise ConfigError(f"training.patch_size {self.cfg.training.patch_size} must be divisible by {div} for this model; "
                              f"e.g. {[max(div, round(s / div) * div) for s in self.cfg.training.patch_size]}")
        self.model = model.to(self.ctx.device)
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
        """Noisy patch → network → pixel loss against the clean patch; one AdamW step."""
        batch = next(batches)
        noisy, clean = batch["image"].to(self.ctx.device), batch["target"].to(self.ctx.device)
        with precision.autocast():
            out = nets["model"](noisy)
        loss = self.loss_fn(out.float(), clean)
        backward_step(loss, self.optimizers["model"], precision.scalers["model"], self.model.parameters(), self.cfg.optim.grad_clip)
        self.schedulers["model"].step()
        return {"loss": loss.detach()}

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
            slices = []
            for z in range(vol.shape[0]):
                slices.append(torch.as_tensor(self.model(padded[z : z + 2 * k + 1][None].to(device))).float()[0, 0].cpu())
            return torch.stack(slices, dim=-1)

    def validate(self, precision: Precision) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """PSNR (the score) and SSIM of the denoised and of the noisy validation volumes."""
        was_training = self.model.training
        self.model.eval()
        ssim = SSIMMetric(spatial_dims=2, data_range=1.0)
        rows: list[dict[str, Any]] = []
        max_slices = self.cfg.training.val_max_slices
        try:
            assert self.val_dataset is not None
            for i in range(len(self.val_dataset)):
                item = self.val_dataset[i]
                clean = torch.as_tensor(item["image"])[0].float()
                if self.cfg.model.spatial_dims == 2 and max_slices and clean.shape[2] > max_slices:
                    keep = np.unique(np.linspace(0, clean.shape[2] - 1, max_slices).round().astype(int))
                else:
                    keep = np.arange(clean.shape[2])
                for j, sigma in enumerate(self.cfg.noise.validation_sigmas()):
                    rng = np.random.RandomState(np.random.SeedSequence([self.cfg.seed & 0xFFFFFFFF, i, j]).generate_state(1)[0])
                    noisy = _noisy(clean, sigma / self.sigma_scale, self.cfg.noise.kind, rng)
                    if self.cfg.model.spatial_dims == 2 and len(keep) < clean.shape[2]:
                        # only the kept slices (and their context) are predicted
                        k = self.cfg.model.context_slices
                        denoised = torch.zeros_like(clean)
                        for z in keep:
                            lo, hi = max(0, z - k), min(clean.shape[2], z + k + 1)
                            part = self._predict(noisy[:, :, lo:hi], precision)
                            denoised[:, :, z] = part[:, :, z - lo]
                    else:
                        denoised = self._predict(noisy, precision)
                    c, n, d = (t[:, :, keep].permute(2, 0, 1)[:, None] for t in (clean, noisy, denoised))
                    rows.append({
                        "case": item.get("name", str(i)), "sigma": sigma,
                        "psnr_noisy_db": psnr_db(n, c), "psnr_db": psnr_db(d, c),
                        "ssim_noisy": float(ssim(n, c).mean()), "ssim": float(ssim(d, c).mean()),
                    })
        finally:
            self.model.train(was_training)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr_db", "ssim", "psnr_noisy_db", "ssim_noisy")}
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
        roi = (list(tcfg.val_roi_size or tcfg.patch_size)) if mcfg.spatial_dims == 3 else None
        return Checkpoint(
            task="denoising", model=self.model_cfg, state_dict=self.model.state_dict(), labels={},
            preprocessing=self.plan,
            inference={"spatial_dims": mcfg.spatial_dims, "context_slices": mcfg.context_slices, "roi_size": roi, "overlap": 0.25},
            config=self.cfg.model_dump(mode="json"), versions=current_versions(), metrics=metrics,
        )


class _CopyTargetd(MapTransform):
    """3-D patches: the clean patch is the target."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d["target"] = torch.as_tensor(d["image"]).clone()
        return d


class _DropParamsd(MapTransform):
    """Drop the per-volume intensity parameters from training items (not needed in a batch)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d.pop("intensity_params", None)
        return d

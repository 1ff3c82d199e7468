"""The segmentation task: ResUNet3D on labelled patches, Dice/focal loss, sliding-window Dice.

Data: labelled cases → cached deterministic preprocessing (`training_transforms`) → random
patches by label (RandCropByPosNegLabeld) + augmentation. Network: `ResUNet3D` (optionally a
pretrained encoder, frozen for ``optim.freeze_encoder_epochs``), AdamW with discriminative
learning rates (encoder / new layers). Validation: whole volumes, Dice/HD95 on each case's
native grid (`medseg.engine.validation`); the score is the mean Dice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from monai.data import CacheDataset
from monai.losses import DiceFocalLoss
from torch import nn

from medseg.checkpoint import Checkpoint, current_versions
from medseg.config import SegmentationWorkflow
from medseg.data.datasets import resolve_cases
from medseg.data.transforms import training_transforms, validation_transforms
from medseg.engine.distributed import DistContext
from medseg.engine.optimization import Precision, backward_step, warmup_cosine
from medseg.engine.validation import per_label_summary, validate
from medseg.errors import ConfigError
from medseg.models import ResUNet3D, build_model, load_pretrained_encoder

__all__ = ["RandomStage", "SegmentationTask", "build_loss", "segmentation_loss"]

log = logging.getLogger("medseg.engine")


def build_loss(cfg: SegmentationWorkflow) -> nn.Module:
    """MONAI DiceFocalLoss on softmax outputs against integer labels (one-hot inside)."""
    return DiceFocalLoss(
        include_background=cfg.loss.include_background, to_onehot_y=True, softmax=True, gamma=cfg.loss.gamma,
        lambda_dice=cfg.loss.lambda_dice, lambda_focal=cfg.loss.lambda_focal,
    )


def segmentation_loss(loss_fn: nn.Module, output: torch.Tensor | list[torch.Tensor], label: torch.Tensor, aux_weights: list[float]) -> torch.Tensor:
    """Loss of the main output plus weighted auxiliary (deep-supervision) outputs."""
    if isinstance(output, (list, tuple)):
        total = loss_fn(output[0], label)
        for weight, aux in zip(aux_weights, output[1:]):
            total = total + weight * loss_fn(aux, label)
        return total
    return loss_fn(output, label)


class RandomStage(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """The random transform stage on top of a CacheDataset (patches: a list per case)."""

    def __init__(self, cached: CacheDataset, transform: Any) -> None:
        self.cached, self.transform = cached, transform

    def __len__(self) -> int:
        return len(self.cached)

    def __getitem__(self, index: int) -> Any:
        return self.transform(self.cached[index])


class SegmentationTask:
    """Segmentation behind the `medseg.engine.tasks.Task` protocol."""

    name = "segmentation"
    deployable = "model"
    batches_per_step = 1
    case_columns = ["case", "label", "name", "present", "dice", "iou", "hd95", "hd", "assd", "nsd", "volume_gt_ml", "volume_pred_ml"]

    def __init__(self, cfg: SegmentationWorkflow, ctx: DistContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        tcfg = cfg.training
        self.class_names = cfg.data.class_names()
        self.lcc_classes = [c for c, n in self.class_names.items() if n in tcfg.val_largest_component]
        train_cases, val_cases = resolve_cases(cfg)
        cached_tf, random_tf = training_transforms(cfg)
        cached = CacheDataset(train_cases, transform=cached_tf, cache_rate=cfg.data.cache_rate, num_workers=1, progress=False)
        self.train_dataset = RandomStage(cached, random_tf)
        self.n_train_cases, self.n_val_cases = len(train_cases), len(val_cases)
        self.val_dataset = None
        if val_cases and ctx.is_main:
            self.val_dataset = CacheDataset(
                val_cases, transform=validation_transforms(cfg), cache_rate=cfg.data.cache_rate, num_workers=1, progress=False
            )
        metric_cols = [f"{m}_{n}" for n in self.class_names.values() for m in ("dice", "hd95")]
        self.columns = ["train_loss", "lr", "encoder_lr", "encoder_frozen", "epoch_seconds", "val_mean_dice", *metric_cols]
        self.loss_fn = build_loss(cfg)
        self.networks: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self._frozen: bool | None = None

    # ---- networks and optimisation

    def build_networks(self, resume: bool) -> None:
        """ResUNet3D (+ the pretrained encoder when starting, not when resuming)."""
        cfg, tcfg = self.cfg, self.cfg.training
        self.model_cfg = cfg.model.model_dump(mode="json") | {"out_channels": len(self.class_names) + 1, "pretrained": None}
        model = build_model(self.model_cfg)
        assert isinstance(model, ResUNet3D)
        bad = [s for s, d in zip(tcfg.patch_size, model.size_divisor) if s % d]
        if bad:
            fixed = [max(d, round(s / d) * d) for s, d in zip(tcfg.patch_size, model.size_divisor)]
            raise ConfigError(f"training.patch_size {tcfg.patch_size} must be divisible by {list(model.size_divisor)} per axis "
                              f"for this model (stem_stride {list(model.stem_stride)}); e.g. {fixed}")
        if cfg.model.pretrained and not resume:
            report = load_pretrained_encoder(model, cfg.model.pretrained)
            log.info("pretrained encoder: %s", report)
        self.model = model.to(self.ctx.device)
        self.networks = {"model": self.model}

    def configure_optimizers(self, steps_per_epoch: int) -> None:
        """AdamW with two parameter groups (encoder, new layers), warm-up + cosine."""
        ocfg = self.cfg.optim
        param_groups = [
            {"params": self.model.encoder_parameters(), "lr": ocfg.encoder_lr or ocfg.lr, "name": "encoder"},
            {"params": self.model.new_parameters(), "lr": ocfg.lr, "name": "new"},
        ]
        optimizer = torch.optim.AdamW(param_groups, weight_decay=ocfg.weight_decay)
        total = self.cfg.training.epochs * steps_per_epoch
        self.optimizers = {"model": optimizer}
        self.schedulers = {"model": warmup_cosine(optimizer, total, ocfg.warmup_epochs * steps_per_epoch, ocfg.min_lr_ratio)}

    # ---- one epoch

    def epoch_start(self, epoch: int) -> bool:
        """Freeze the encoder for the first ``optim.freeze_encoder_epochs``; train modes."""
        frozen = epoch < self.cfg.optim.freeze_encoder_epochs
        changed = frozen != self._frozen
        if changed:
            for p in self.model.encoder.parameters():
                p.requires_grad_(not frozen)
            if epoch > 0 and not frozen and epoch == self.cfg.optim.freeze_encoder_epochs:
                log.info("epoch %d: encoder unfrozen", epoch + 1)
            self._frozen = frozen
        self.model.train()
        if frozen:
            self.model.encoder.eval()  # keep batch-norm statistics of the pretrained encoder
        return changed

    def train_step(self, nets: dict[str, nn.Module], batches: Iterator[dict[str, Any]], precision: Precision) -> dict[str, torch.Tensor]:
        """Forward, Dice/focal loss (+ deep supervision), one AdamW step."""
        batch = next(batches)
        device = self.ctx.device
        image, label = batch["image"].to(device), batch["label"].to(device)
        with precision.autocast():
            output = nets["model"](image)
            loss = segmentation_loss(self.loss_fn, output, label, self.cfg.loss.deep_supervision_weights)
        backward_step(loss, self.optimizers["model"], precision.scalers["model"], self.model.parameters(), self.cfg.optim.grad_clip)
        self.schedulers["model"].step()
        return {"loss": loss.detach()}

    def epoch_values(self) -> dict[str, Any]:
        lrs = {g["name"]: g["lr"] for g in self.optimizers["model"].param_groups}
        return {"lr": lrs["new"], "encoder_lr": lrs["encoder"], "encoder_frozen": int(bool(self._frozen))}

    # ---- validation and checkpoint

    def validate(self, precision: Precision) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Mean Dice over present (case, label) pairs = the score; per-label Dice/HD95."""
        tcfg = self.cfg.training
        mean_dice, rows = validate(
            self.model, self.val_dataset, self.class_names, tcfg.patch_size, tcfg.val_overlap, tcfg.sw_batch_size,
            self.ctx.device, precision.dtype, self.lcc_classes,
        )
        return {"score": mean_dice, "val_mean_dice": mean_dice, **per_label_summary(rows, self.class_names)}, rows

    def describe(self, row: dict[str, Any]) -> str:
        if math.isnan(row.get("val_mean_dice", math.nan)):
            return ""
        per = "  ".join(
            f"{n} {row[f'dice_{n}']:.3f}" for n in self.class_names.values() if not math.isnan(row.get(f"dice_{n}", math.nan))
        )
        return f"  | val Dice {row['val_mean_dice']:.4f} ({per})"

    def checkpoint(self, metrics: dict[str, Any]) -> Checkpoint:
        tcfg = self.cfg.training
        return Checkpoint(
            task="segmentation", model=self.model_cfg, state_dict=self.model.state_dict(), labels=self.class_names,
            preprocessing=self.cfg.preprocessing.plan(),
            inference={"roi_size": list(tcfg.patch_size), "overlap": tcfg.val_overlap, "sw_batch_size": tcfg.sw_batch_size, "mode": "gaussian"},
            config=self.cfg.model_dump(mode="json"), versions=current_versions(), metrics=metrics,
        )

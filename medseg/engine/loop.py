"""The training loop, top to bottom (nanoGPT style).

`run_training` does, in order: seeding, data (cases → cached + random MONAI transforms →
DataLoader with a `DistributedSampler`), model (+ pretrained encoder, DDP), optimiser with
discriminative learning rates, warm-up + cosine schedule, AMP scaler, optional resume, then
per epoch: (un)freeze the encoder, re-seed sampling/augmentation from ``(seed, epoch, rank)``,
forward → loss → backward → clip → step → schedule, validate (rank 0), keep the best
checkpoint, write ``last.pt``, logs, early stopping.

Everything segmentation-specific is in the small functions `build_loss` and `segmentation_loss`.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader
from monai.data.utils import set_rnd
from monai.losses import DiceFocalLoss
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Subset

from medseg.checkpoint import Checkpoint, current_versions, load_checkpoint, save_checkpoint
from medseg.config import WorkflowConfig
from medseg.data.datasets import resolve_cases
from medseg.data.transforms import training_transforms, validation_transforms
from medseg.engine.distributed import DistContext, all_reduce_mean, barrier, broadcast_float
from medseg.engine.logs import EpochLog, TensorBoardLog
from medseg.engine.state import capture_rng_state, epoch_seed, restore_rng_state, seed_everything
from medseg.engine.validation import per_label_summary, validate
from medseg.errors import CheckpointError, ConfigError
from medseg.models import ResUNet3D, build_model, load_pretrained_encoder

log = logging.getLogger("medseg.engine")


# ------------------------------------------------------------------ segmentation-specific parts


def build_loss(cfg: WorkflowConfig) -> nn.Module:
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


# ------------------------------------------------------------------------------- schedule


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up from 1 % to 100 %, then cosine decay to `min_ratio` (a LambdaLR factor)."""
    if warmup_steps > 0 and step < warmup_steps:
        return 0.01 + 0.99 * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _set_encoder_frozen(model: ResUNet3D, frozen: bool) -> None:
    for p in model.encoder.parameters():
        p.requires_grad_(not frozen)


def _wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    # DDP registers the parameters that require grad when it is built, so it is rebuilt when
    # the encoder is unfrozen
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


# ----------------------------------------------------------------------------------- the loop


def run_training(cfg: WorkflowConfig, run_dir: Path, resume: bool, ctx: DistContext) -> dict[str, Any]:
    """Train `cfg` into `run_dir` (see the module docstring); returns the final summary."""
    tcfg, ocfg = cfg.training, cfg.optim
    device = ctx.device
    if tcfg.torch_threads and device.type == "cpu":
        torch.set_num_threads(max(1, tcfg.torch_threads // ctx.world_size))
    seed_everything(cfg.seed)

    # ---- data
    class_names = cfg.data.class_names()
    lcc_classes = [c for c, n in class_names.items() if n in tcfg.val_largest_component]
    train_cases, val_cases = resolve_cases(cfg)
    cached_tf, random_tf = training_transforms(cfg)
    train_ds = CacheDataset(train_cases, transform=cached_tf, cache_rate=cfg.data.cache_rate, num_workers=1, progress=False)
    train_ds = _RandomStage(train_ds, random_tf)
    per_step = tcfg.batch_size * ctx.world_size
    n_items = (tcfg.steps_per_epoch * per_step) if tcfg.steps_per_epoch else max(len(train_cases), per_step)
    epoch_items = Subset(train_ds, [i % len(train_cases) for i in range(n_items)])
    sampler = DistributedSampler(epoch_items, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed)
    generator = torch.Generator()
    loader = DataLoader(
        epoch_items, batch_size=tcfg.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
        generator=generator, persistent_workers=False, drop_last=False,
    )
    val_ds = None
    if val_cases and ctx.is_main:
        val_ds = CacheDataset(val_cases, transform=validation_transforms(cfg), cache_rate=cfg.data.cache_rate, num_workers=1, progress=False)
    log.info("%d training case(s), %d validation case(s); %d steps per epoch", len(train_cases), len(val_cases), len(loader))

    # ---- model
    model_cfg = cfg.model.model_dump(mode="json") | {"out_channels": len(class_names) + 1, "pretrained": None}
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(model_cfg)
    assert isinstance(model, ResUNet3D)
    bad = [s for s, d in zip(tcfg.patch_size, model.size_divisor) if s % d]
    if bad:
        fixed = [max(d, round(s / d) * d) for s, d in zip(tcfg.patch_size, model.size_divisor)]
        raise ConfigError(f"training.patch_size {tcfg.patch_size} must be divisible by {list(model.size_divisor)} per axis "
                          f"for this model (stem_stride {list(model.stem_stride)}); e.g. {fixed}")
    if cfg.model.pretrained and not resume:
        report = load_pretrained_encoder(model, cfg.model.pretrained)
        log.info("pretrained encoder: %s", report)
    model.to(device)

    # ---- optimiser, schedule, AMP
    param_groups = [
        {"params": model.encoder_parameters(), "lr": ocfg.encoder_lr or ocfg.lr, "name": "encoder"},
        {"params": model.new_parameters(), "lr": ocfg.lr, "name": "new"},
    ]
    optimizer = torch.optim.AdamW(param_groups, weight_decay=ocfg.weight_decay)
    steps_per_epoch = len(loader)
    total_steps = tcfg.epochs * steps_per_epoch
    warmup_steps = ocfg.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, ocfg.min_lr_ratio)
    )
    use_amp = tcfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if use_amp else nullcontext
    loss_fn = build_loss(cfg)

    # ---- resume
    start_epoch, best_dice, best_epoch, stale = 0, -math.inf, -1, 0
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    if resume:
        ckpt = load_checkpoint(last_path, expected_task="segmentation")
        if ckpt.training_state is None:
            raise CheckpointError(f"{last_path}: holds no training state; cannot resume")
        model.load_state_dict(ckpt.state_dict)
        ts = ckpt.training_state
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        scaler.load_state_dict(ts["scaler"])
        start_epoch, best_dice, best_epoch, stale = ts["epoch"] + 1, ts["best_dice"], ts["best_epoch"], ts["stale_validations"]
        restore_rng_state(ts["rng"][ctx.rank] if ctx.rank < len(ts["rng"]) else ts["rng"][0])
        log.info("resuming after epoch %d (best mean Dice %.4f at epoch %d)", start_epoch, best_dice, best_epoch + 1)

    # ---- logs (rank 0 writes)
    metric_cols = [f"{m}_{n}" for n in class_names.values() for m in ("dice", "hd95")]
    columns = ["epoch", "train_loss", "lr", "encoder_lr", "encoder_frozen", "epoch_seconds", "val_mean_dice", *metric_cols]
    csv_log = EpochLog(run_dir / "metrics.csv", columns, resume_epoch=start_epoch if resume else None) if ctx.is_main else None
    tb = TensorBoardLog(run_dir / "tensorboard", cfg.output.tensorboard and ctx.is_main, purge_step=start_epoch + 1 if resume else None)

    def checkpoint(metrics: dict[str, Any], training_state: dict[str, Any] | None) -> Checkpoint:
        return Checkpoint(
            task="segmentation", model=model_cfg, state_dict=model.state_dict(), labels=class_names,
            preprocessing=cfg.preprocessing.plan(),
            inference={"roi_size": list(tcfg.patch_size), "overlap": tcfg.val_overlap, "sw_batch_size": tcfg.sw_batch_size, "mode": "gaussian"},
            config=cfg.model_dump(mode="json"), versions=current_versions(), metrics=metrics, training_state=training_state,
        )

    progress = _Progress(enabled=ctx.is_main)
    summary: dict[str, Any] = {}
    frozen_now: bool | None = None
    net: nn.Module = model
    try:
        for epoch in range(start_epoch, tcfg.epochs):
            t0 = time.perf_counter()
            # ---- freeze / unfreeze the encoder (re-wrapping DDP so it tracks the right parameters)
            frozen = epoch < ocfg.freeze_encoder_epochs
            if frozen != frozen_now:
                _set_encoder_frozen(model, frozen)
                net, frozen_now = _wrap(model, ctx), frozen
                if epoch > 0 and not frozen and epoch == ocfg.freeze_encoder_epochs:
                    log.info("epoch %d: encoder unfrozen", epoch + 1)

            # ---- sampling and augmentation depend only on (seed, epoch, rank): exact resume
            sampler.set_epoch(epoch)
            generator.manual_seed(epoch_seed(cfg.seed, epoch, ctx.rank))
            if cfg.data.num_workers == 0:
                set_rnd(train_ds, epoch_seed(cfg.seed, epoch, ctx.rank))

            net.train()
            if frozen:
                model.encoder.eval()  # keep batch-norm statistics of the pretrained encoder
            loss_sum, n_batches = 0.0, 0
            progress.start_epoch(epoch, tcfg.epochs, len(loader))
            for batch in loader:
                image, label = batch["image"].to(device), batch["label"].to(device)
                with autocast():
                    output = net(image)
                    loss = segmentation_loss(loss_fn, output, label, cfg.loss.deep_supervision_weights)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if ocfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), ocfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                loss_sum += float(loss.detach())
                n_batches += 1
                progress.advance(loss_sum / n_batches)
            train_loss = all_reduce_mean(loss_sum / max(1, n_batches), ctx)
            lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}

            # ---- validation on rank 0, its mean Dice shared for early stopping
            final = epoch + 1 == tcfg.epochs or epoch + 1 == tcfg.stop_after_epoch
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lrs["new"], "encoder_lr": lrs["encoder"],
                                   "encoder_frozen": int(frozen)}
            val_now = bool(val_cases) and ((epoch + 1) % tcfg.val_every == 0 or final)
            improved, rows = False, []
            if val_now:
                mean_dice = math.nan
                if ctx.is_main:
                    progress.status("validating")
                    mean_dice, rows = validate(
                        model, val_ds, class_names, tcfg.patch_size, tcfg.val_overlap, tcfg.sw_batch_size, device, use_amp, lcc_classes
                    )
                    row |= {"val_mean_dice": mean_dice, **per_label_summary(rows, class_names)}
                mean_dice = broadcast_float(mean_dice, ctx)
                improved = not math.isnan(mean_dice) and mean_dice > best_dice
                if improved:
                    best_dice, best_epoch, stale = mean_dice, epoch, 0
                else:
                    stale += 1
            row["epoch_seconds"] = time.perf_counter() - t0

            # ---- checkpoints and logs (rank 0), then everyone continues
            rng_states = _gather_rng(ctx)
            if ctx.is_main:
                metrics = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
                if improved or not val_cases:
                    save_checkpoint(checkpoint(metrics, None), best_path)
                state = {
                    "epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "best_dice": best_dice, "best_epoch": best_epoch, "stale_validations": stale, "rng": rng_states,
                }
                save_checkpoint(checkpoint(metrics, state), last_path)
                assert csv_log is not None
                csv_log.append(row)
                tb.scalars(row, epoch + 1)
                if rows:
                    _write_val_cases(run_dir / "validation_cases.csv", rows, epoch + 1)
                log.info(_epoch_line(row, class_names, tcfg.epochs))
            barrier(ctx)
            summary = {"epoch": epoch + 1, "train_loss": train_loss, "best_mean_dice": best_dice, "best_epoch": best_epoch + 1, **row}

            if tcfg.early_stopping_patience and stale >= tcfg.early_stopping_patience:
                log.info("early stopping: no better validation Dice for %d validations", stale)
                break
            if tcfg.stop_after_epoch is not None and epoch + 1 >= tcfg.stop_after_epoch and epoch + 1 < tcfg.epochs:
                log.info("stopping after epoch %d as asked (training.stop_after_epoch); continue with --resume", epoch + 1)
                break
    finally:
        progress.close()
        tb.close()
    return summary


# ------------------------------------------------------------------------------- helpers


class _RandomStage(torch.utils.data.Dataset):
    """The random transform stage on top of a CacheDataset (patches: a list per case)."""

    def __init__(self, cached: CacheDataset, transform: Any) -> None:
        self.cached, self.transform = cached, transform

    def __len__(self) -> int:
        return len(self.cached)

    def __getitem__(self, index: int) -> Any:
        return self.transform(self.cached[index])


def _gather_rng(ctx: DistContext) -> list[dict[str, Any]]:
    """Every rank's RNG state (rank order), collected on rank 0 (others get their own only)."""
    own = capture_rng_state()
    if not ctx.distributed:
        return [own]
    import torch.distributed as dist

    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, own)
    return states


def _write_val_cases(path: Path, rows: list[dict[str, Any]], epoch: int) -> None:
    from medseg.io.atomic import write_text_atomic

    keys = ["epoch", "case", "label", "name", "present", "dice", "iou", "hd95", "hd", "assd", "nsd", "volume_gt_ml", "volume_pred_ml"]
    lines = [",".join(keys)] + [",".join(str(epoch if k == "epoch" else r.get(k, "")) for k in keys) for r in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def _epoch_line(row: dict[str, Any], class_names: dict[int, str], epochs: int) -> str:
    text = f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  lr {row['lr']:.2e}  {row.get('epoch_seconds', 0):.1f}s"
    if not math.isnan(row.get("val_mean_dice", math.nan)):
        per = "  ".join(
            f"{n} {row[f'dice_{n}']:.3f}" for n in class_names.values() if not math.isnan(row.get(f"dice_{n}", math.nan))
        )
        text += f"  | val Dice {row['val_mean_dice']:.4f} ({per})"
    return text


class _Progress:
    """A rich progress bar for the steps of an epoch (only on an interactive terminal, rank 0)."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.bar = None
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True,
            )
            self.bar.start()
        self.task = None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self.bar is not None:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(f"epoch {epoch + 1}/{epochs}", total=steps, info="")

    def advance(self, loss: float) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=1, info=f"loss {loss:.4f}")

    def status(self, text: str) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, info=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

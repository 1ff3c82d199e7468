"""The training loop, top to bottom (nanoGPT style), for every task.

`run_training` does, in order: seeding, the task's datasets (`medseg.engine.tasks`), the
loader (repeated cases, a `DistributedSampler`, per-epoch seeds), the task's networks (same
initial weights on every rank) and optimizers, the precision (autocast + one gradient scaler
per optimizer), optional resume, then per epoch: the task's epoch start (freezing; DDP
re-wrapped when the trainable parameters change), re-seeding of sampling/augmentation from
``(seed, epoch, rank)``, the task's training steps (a non-finite loss stops the run with the
step, epoch and cases named), validation on rank 0 (the task's ``score``: higher is better),
the best checkpoint, ``last.pt`` with the full training state, logs, early stopping.

What differs between tasks (data, networks, losses, metrics, checkpoint contents) is in the
task modules; nothing here asks which task runs.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader
from monai.data.utils import set_rnd
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Subset

from medseg.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medseg.config import WorkflowConfig
from medseg.engine.distributed import DistContext, all_reduce_mean, barrier, broadcast_float
from medseg.engine.logs import EpochLog, TensorBoardLog
from medseg.engine.optimization import NonFiniteLoss, Precision, check_finite, lr_factor
from medseg.engine.state import capture_rng_state, epoch_seed, restore_rng_state, seed_everything
from medseg.engine.tasks import task_class
from medseg.errors import CheckpointError, TrainingError
from medseg.progress import ProgressBars

__all__ = ["lr_factor", "run_training"]

log = logging.getLogger("medseg.engine")


def _wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    # DDP registers the parameters that require grad when it is built, so it is rebuilt when
    # a task changes which parameters train (e.g. unfreezing an encoder)
    if not ctx.distributed or not any(p.requires_grad for p in model.parameters()):
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


# ----------------------------------------------------------------------------------- the loop


def run_training(cfg: WorkflowConfig, run_dir: Path, resume: bool, ctx: DistContext) -> dict[str, Any]:
    """Train `cfg` into `run_dir` (see the module docstring); returns the final summary.

    Raises:
        TrainingError: a non-finite loss (step, epoch and cases named) or weight (no checkpoint
            with it is written). CheckpointError: ``last.pt`` cannot be resumed from.
    """
    tcfg = cfg.training
    device = ctx.device
    if tcfg.torch_threads and device.type == "cpu":
        torch.set_num_threads(max(1, tcfg.torch_threads // ctx.world_size))
    seed_everything(cfg.seed)
    # (every case was checked before this: medseg.engine.train runs check_training_cases)

    # ---- data: the task's dataset, repeated to the epoch's length, split over the ranks
    task = task_class(cfg.task)(cfg, ctx)
    per_step = tcfg.batch_size * ctx.world_size * task.batches_per_step
    n_items = (tcfg.steps_per_epoch * per_step) if tcfg.steps_per_epoch else max(task.n_train_cases, per_step)
    epoch_items = Subset(task.train_dataset, [i % task.n_train_cases for i in range(n_items)])
    sampler = DistributedSampler(epoch_items, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed)
    generator = torch.Generator()
    loader = DataLoader(
        epoch_items, batch_size=tcfg.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
        generator=generator, persistent_workers=False, drop_last=False,
    )
    steps_per_epoch = max(1, len(loader) // task.batches_per_step)
    log.info("%d training case(s), %d validation case(s); %d steps per epoch", task.n_train_cases, task.n_val_cases, steps_per_epoch)

    # ---- networks (the same initial weights on every rank), optimizers, schedules, precision
    torch.manual_seed(cfg.seed)
    task.build_networks(resume)
    task.configure_optimizers(steps_per_epoch)
    precision = Precision.for_run(tcfg.precision, device, task.optimizers)

    # ---- resume: every network, optimizer, scheduler and scaler, the RNGs and the early-stop state
    start_epoch, best_score, best_epoch, stale = 0, -math.inf, -1, 0
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    if resume:
        ckpt = load_checkpoint(last_path, expected_task=task.name)
        if ckpt.training_state is None:
            raise CheckpointError(f"{last_path}: holds no training state; cannot resume")
        ts = _upgrade_training_state(ckpt.training_state, task.deployable)
        task.networks[task.deployable].load_state_dict(ckpt.state_dict)
        for name, net in task.networks.items():
            if name != task.deployable:
                net.load_state_dict(ts["networks"][name])
        for kind, objects in (("optimizers", task.optimizers), ("schedulers", task.schedulers), ("scalers", precision.scalers)):
            missing = sorted(set(objects) - set(ts[kind]))
            if missing:
                raise CheckpointError(f"{last_path}: the training state has no {kind} {missing}; cannot resume this run")
            for name, obj in objects.items():
                obj.load_state_dict(ts[kind][name])
        start_epoch, best_score, best_epoch, stale = ts["epoch"] + 1, ts["best_score"], ts["best_epoch"], ts["stale_validations"]
        restore_rng_state(ts["rng"][ctx.rank] if ctx.rank < len(ts["rng"]) else ts["rng"][0])
        log.info("resuming after epoch %d (best validation score %.4f at epoch %d)", start_epoch, best_score, best_epoch + 1)

    # ---- logs (rank 0 writes)
    columns = ["epoch", *task.columns]
    csv_log = EpochLog(run_dir / "metrics.csv", columns, resume_epoch=start_epoch if resume else None) if ctx.is_main else None
    tb = TensorBoardLog(run_dir / "tensorboard", cfg.output.tensorboard and ctx.is_main, purge_step=start_epoch + 1 if resume else None)

    # one outer bar over the epochs, one inner over the steps (rank 0, interactive terminals only)
    progress = ProgressBars(ctx.is_main and sys.stderr.isatty(), tcfg.epochs - start_epoch, label="epochs", transient=True).start()
    summary: dict[str, Any] = {}
    nets: dict[str, nn.Module] = {}
    try:
        for epoch in range(start_epoch, tcfg.epochs):
            t0 = time.perf_counter()
            # ---- the task's epoch start (train modes, freezing); DDP tracks the trainable parameters
            if task.epoch_start(epoch) or not nets:
                nets = {name: _wrap(net, ctx) for name, net in task.networks.items()}

            # ---- sampling and augmentation depend only on (seed, epoch, rank): exact resume
            sampler.set_epoch(epoch)
            generator.manual_seed(epoch_seed(cfg.seed, epoch, ctx.rank))
            if cfg.data.num_workers == 0:
                set_rnd(task.train_dataset, epoch_seed(cfg.seed, epoch, ctx.rank))

            # ---- training steps; a NaN/inf loss term stops the run before it touches the weights
            sums: dict[str, float] = {}
            progress.start_item(f"epoch {epoch + 1}/{tcfg.epochs}", stage="training")
            drawn = _Drawn(loader)
            for step in range(steps_per_epoch):
                drawn.cases = []
                try:
                    terms = task.train_step(nets, drawn, precision)
                    check_finite(terms)
                except NonFiniteLoss as exc:
                    raise TrainingError(
                        f"the training loss is not finite ({exc}) at step {step + 1}/{steps_per_epoch} of epoch {epoch + 1} "
                        f"(global step {epoch * steps_per_epoch + step + 1}); batch case(s): {', '.join(drawn.cases) or 'unknown'}. "
                        "Check those cases for NaN/inf or extreme voxel values, or lower optim.lr; no checkpoint of this "
                        "state was written (last.pt holds the last completed epoch)"
                    ) from None
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                progress.step(f"training, loss {sums['loss'] / (step + 1):.4f}", step + 1, steps_per_epoch)
            row: dict[str, Any] = {"epoch": epoch + 1}
            row |= {f"train_{k}": all_reduce_mean(v / steps_per_epoch, ctx) for k, v in sums.items()}
            row |= task.epoch_values()

            # ---- validation on rank 0, its score shared for best checkpoint and early stopping
            final = epoch + 1 == tcfg.epochs or epoch + 1 == tcfg.stop_after_epoch
            val_now = task.n_val_cases > 0 and ((epoch + 1) % tcfg.val_every == 0 or final)
            improved, rows = False, []
            if val_now:
                score = math.nan
                if ctx.is_main:
                    progress.step("validating", 0, 1)
                    metrics, rows = task.validate(precision)
                    score = metrics.pop("score")
                    row |= metrics
                score = broadcast_float(score, ctx)
                improved = not math.isnan(score) and score > best_score
                if improved:
                    best_score, best_epoch, stale = score, epoch, 0
                else:
                    stale += 1
            row["epoch_seconds"] = time.perf_counter() - t0

            # ---- checkpoints (never a non-finite one) and logs (rank 0), then everyone continues
            rng_states = _gather_rng(ctx)
            if ctx.is_main:
                metrics = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
                if val_now:
                    metrics["score"] = score
                if improved or task.n_val_cases == 0:
                    _save(task.checkpoint(metrics), best_path, task.networks, epoch)
                last = task.checkpoint(metrics)
                last.training_state = {
                    "epoch": epoch,
                    "networks": {n: net.state_dict() for n, net in task.networks.items() if n != task.deployable},
                    "optimizers": {n: o.state_dict() for n, o in task.optimizers.items()},
                    "schedulers": {n: s.state_dict() for n, s in task.schedulers.items()},
                    "scalers": {n: s.state_dict() for n, s in precision.scalers.items()},
                    "best_score": best_score, "best_epoch": best_epoch, "stale_validations": stale, "rng": rng_states,
                }
                _save(last, last_path, task.networks, epoch)
                assert csv_log is not None
                csv_log.append(row)
                tb.scalars(row, epoch + 1)
                if rows:
                    _write_val_cases(run_dir / "validation_cases.csv", task.case_columns, rows, epoch + 1)
                log.info(
                    f"epoch {row['epoch']}/{tcfg.epochs}  loss {row['train_loss']:.4g}  lr {row['lr']:.2e}  "
                    f"{row['epoch_seconds']:.1f}s{task.describe(row)}"
                )
            progress.item_finished()
            barrier(ctx)
            summary = {"epoch": epoch + 1, "train_loss": row["train_loss"], "best_score": best_score, "best_epoch": best_epoch + 1, **row}

            if tcfg.early_stopping_patience and stale >= tcfg.early_stopping_patience:
                log.info("early stopping: no better validation score for %d validations", stale)
                break
            if tcfg.stop_after_epoch is not None and epoch + 1 >= tcfg.stop_after_epoch and epoch + 1 < tcfg.epochs:
                log.info("stopping after epoch %d as asked (training.stop_after_epoch); continue with --resume", epoch + 1)
                break
    finally:
        progress.close()
        tb.close()
    return summary


def _upgrade_training_state(ts: dict[str, Any], deployable: str) -> dict[str, Any]:
    """A training state in the current layout (``last.pt`` of medseg before tasks held one optimizer)."""
    if "optimizers" in ts:
        return ts
    return {
        **ts, "networks": {}, "optimizers": {deployable: ts["optimizer"]}, "schedulers": {deployable: ts["scheduler"]},
        "scalers": {deployable: ts["scaler"]}, "best_score": ts["best_dice"],
    }


# ------------------------------------------------------------------------------- helpers


def _gather_rng(ctx: DistContext) -> list[dict[str, Any]]:
    """Every rank's RNG state (rank order), collected on rank 0 (others get their own only)."""
    own = capture_rng_state()
    if not ctx.distributed:
        return [own]
    import torch.distributed as dist

    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, own)
    return states


def _write_val_cases(path: Path, keys: list[str], rows: list[dict[str, Any]], epoch: int) -> None:
    from medseg.io.atomic import write_text_atomic

    keys = ["epoch", *keys]
    lines = [",".join(keys)] + [",".join(str(epoch if k == "epoch" else r.get(k, "")) for k in keys) for r in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def _case_names(batch: dict[str, Any]) -> list[str]:
    """The case names of a collated batch (one per patch; a case drawn twice counts once)."""
    names = batch.get("name", [])
    names = [names] if isinstance(names, str) else list(names)
    return list(dict.fromkeys(str(n) for n in names))


class _Drawn:
    """The loader's iterator for one epoch, remembering the cases of the batches of the current step."""

    def __init__(self, loader: Any) -> None:
        self.it = iter(loader)
        self.cases: list[str] = []

    def __iter__(self) -> _Drawn:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self.it)
        self.cases += _case_names(batch)
        return batch


def _non_finite_parameters(networks: dict[str, nn.Module]) -> str | None:
    """``"network.parameter"`` of the first NaN/inf weight or buffer, or None."""
    for net_name, net in networks.items():
        for key, value in net.state_dict().items():
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                return f"{net_name}.{key}"
    return None


def _save(ckpt: Checkpoint, path: Path, networks: dict[str, nn.Module], epoch: int) -> None:
    """Save `ckpt` unless a weight is not finite (a NaN checkpoint would poison inference and resume)."""
    bad = _non_finite_parameters(networks)
    if bad is not None:
        raise TrainingError(
            f"epoch {epoch + 1}: parameter {bad} is not finite (NaN/inf); {path.name} was not written "
            f"(the previous one, if any, is the last good state); lower optim.lr or check the data"
        )
    save_checkpoint(ckpt, path)

"""What every task's optimisation shares: the LR schedule, mixed precision and one guarded step.

A task builds its optimizers with `warmup_cosine` schedules and calls `backward_step` for each
of them inside its ``train_step``; the loop owns the `Precision` (autocast dtype and one
gradient scaler per optimizer, all saved for ``--resume``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from medseg.errors import ConfigError

__all__ = ["NonFiniteLoss", "Precision", "backward_step", "lr_factor", "resolve_precision", "warmup_cosine"]


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up from 1 % to 100 %, then cosine decay to `min_ratio` (a LambdaLR factor)."""
    if warmup_steps > 0 and step < warmup_steps:
        return 0.01 + 0.99 * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` stepping `lr_factor` once per optimizer step.

    Args:
        total_steps: optimizer steps of the whole run (epochs × steps per epoch).
        warmup_steps: steps of linear warm-up.
        min_ratio: the factor the cosine ends at.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, min_ratio))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``training.precision`` on `device` (None: plain fp32).

    ``auto`` is fp16 on CUDA (with a gradient scaler), fp32 on a CPU.

    Raises:
        ConfigError: fp16 asked for on a CPU.
    """
    p = precision
    if p == "auto":
        p = "fp16" if device.type == "cuda" else "fp32"
    if p == "fp16" and device.type != "cuda":
        raise ConfigError("training.precision fp16 needs a CUDA device; use bf16 or fp32 on a CPU (or auto)")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[p]


@dataclass
class Precision:
    """The arithmetic of a run: the autocast dtype and a gradient scaler per optimizer.

    Only fp16 needs scaling (its range is narrow); the scalers of bf16/fp32 runs are disabled
    no-ops, kept so that every run's training state has the same keys.
    """

    device_type: str
    dtype: torch.dtype | None
    scalers: dict[str, torch.amp.GradScaler] = field(default_factory=dict)

    @classmethod
    def for_run(cls, precision: str, device: torch.device, optimizer_names: Iterable[str]) -> Precision:
        """The precision of ``training.precision`` on `device`, with a scaler per optimizer name."""
        dtype = resolve_precision(precision, device)
        enabled = dtype == torch.float16
        scaler_device = "cuda" if device.type == "cuda" else "cpu"
        return cls(device.type, dtype, {n: torch.amp.GradScaler(scaler_device, enabled=enabled) for n in optimizer_names})

    def autocast(self) -> AbstractContextManager[object]:
        """The forward passes' autocast context (a no-op in fp32)."""
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype is not None else nullcontext()


class NonFiniteLoss(Exception):
    """A loss term was NaN/inf; the loop turns it into a `TrainingError` naming step and cases."""

    def __init__(self, term: str, value: float) -> None:
        super().__init__(f"{term} = {value}")
        self.term, self.value = term, value


def check_finite(terms: dict[str, torch.Tensor | float]) -> None:
    """Raise `NonFiniteLoss` for the first NaN/inf value of `terms`."""
    for name, value in terms.items():
        v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        if not math.isfinite(v):
            raise NonFiniteLoss(name, v)


def backward_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    parameters: Iterable[torch.nn.Parameter] | None, grad_clip: float | None, term: str = "loss",
) -> None:
    """Zero the gradients, back-propagate `loss` (scaled), clip, step and update the scaler.

    The loss is checked first: a non-finite loss raises `NonFiniteLoss` before any weight
    changes, so the last checkpoint stays the last good state.

    Args:
        parameters: what `grad_clip` clips (the optimizer's parameters); None with no clipping.
        grad_clip: maximum gradient norm, None = off.
        term: the loss's name in the error.
    """
    check_finite({term: loss})
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(list(parameters or []), grad_clip)
    scaler.step(optimizer)
    scaler.update()

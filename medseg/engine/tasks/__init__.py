"""Training tasks: what differs between segmentation, denoising (and the GAN) behind one protocol.

The loop (`medseg.engine.loop.run_training`) owns everything tasks share; a task module owns
its data, networks, optimizers, one training step, validation and checkpoint contents. A task
is a plain class in ``medseg/engine/tasks/<name>.py`` with the `Task` methods below, registered
in `TASKS` under the workflow's ``task:`` name. The loop calls, top to bottom:

1. ``Task(cfg, ctx)`` — datasets (``train_dataset``: items with a ``"name"`` key, a list of
   patches per draw; validation data on rank 0 only);
2. ``build_networks(resume)`` — ``networks`` (``{"model": ...}``; the GAN:
   ``{"generator": ..., "critic": ...}``), right after the loop seeded torch so every rank
   starts from the same weights;
3. ``configure_optimizers(steps_per_epoch)`` — ``optimizers`` and ``schedulers`` (dicts with
   the same keys; each scheduler steps once per optimizer step);
4. per epoch ``epoch_start(epoch)`` (train modes, freezing; True when the set of trainable
   parameters changed, so the loop re-wraps DDP), ``train_step(nets, batches, precision)``
   per step (draws ``batches_per_step`` batches from the iterator: the GAN's n_critic),
   ``epoch_values()`` (e.g. learning rates), ``validate()`` on rank 0;
5. ``checkpoint(metrics)`` — the deployable `Checkpoint` (`CONTRACTS.md`); the loop adds the
   training state (every network, optimizer, scheduler and scaler) to ``last.pt``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn

from medseg.checkpoint import Checkpoint
from medseg.engine.optimization import Precision

__all__ = ["TASKS", "Task", "task_class"]


class Task(Protocol):
    """What a training task provides to the loop (see the module docstring for the order)."""

    #: the checkpoint's ``task`` ("segmentation", "denoising", "gan")
    name: str
    #: the network `medseg.models.build_model` rebuilds from the checkpoint: its key in `networks`
    deployable: str
    #: batches one `train_step` draws (the GAN: n_critic + 1)
    batches_per_step: int
    train_dataset: torch.utils.data.Dataset[Any]
    n_train_cases: int
    n_val_cases: int
    networks: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    #: metrics.csv columns after "epoch" (the loop fills "train_<term>" and "epoch_seconds")
    columns: list[str]
    #: columns of validation_cases.csv (besides "epoch")
    case_columns: list[str]

    def build_networks(self, resume: bool) -> None: ...

    def configure_optimizers(self, steps_per_epoch: int) -> None: ...

    def epoch_start(self, epoch: int) -> bool: ...

    def train_step(self, nets: dict[str, nn.Module], batches: Iterator[dict[str, Any]], precision: Precision) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the loss terms (``"loss"``: what the progress shows)."""
        ...

    def epoch_values(self) -> dict[str, Any]: ...

    def validate(self, precision: Precision) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """``(metrics, rows)``: metrics with ``"score"`` (higher is better), one row per case."""
        ...

    def describe(self, row: dict[str, Any]) -> str:
        """The validation part of the epoch's log line ("" when the row has none)."""
        ...

    def checkpoint(self, metrics: dict[str, Any]) -> Checkpoint: ...


def _segmentation() -> type[Task]:
    from medseg.engine.tasks.segmentation import SegmentationTask

    return SegmentationTask


def _denoising() -> type[Task]:
    from medseg.engine.tasks.denoising import DenoisingTask

    return DenoisingTask


def _gan() -> type[Task]:
    from medseg.engine.tasks.gan import GanTask

    return GanTask


#: workflow ``task:`` → the task class (imported on use)
TASKS = {"segmentation": _segmentation, "denoising": _denoising, "gan": _gan}


def task_class(name: str) -> type[Task]:
    """The task class of a workflow's ``task`` name."""
    return TASKS[name]()

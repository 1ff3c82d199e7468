"""The training engine: ``train(workflow) -> run directory``, for every task.

A run directory ``<output.dir>/<output.run_name or name>/`` holds ``config.yaml`` (the resolved
workflow), ``checkpoints/best.pt`` (best validation score: mean Dice for segmentation, PSNR
for denoising) and ``checkpoints/last.pt`` (with the full training state for ``--resume``),
``metrics.csv`` (one row per epoch), ``validation_cases.csv`` (per case, latest validation),
``tensorboard/`` and ``train.log``. The loop itself is `medseg.engine.loop.run_training`; what
differs per task is in `medseg.engine.tasks`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from medseg.config import WorkflowConfig, dump_config, load_workflow
from medseg.errors import ConfigError

__all__ = ["run_dir_of", "train"]

log = logging.getLogger("medseg.engine")


def run_dir_of(cfg: WorkflowConfig) -> Path:
    """The run directory a workflow writes to (absolute)."""
    return (Path(cfg.output.dir) / (cfg.output.run_name or cfg.name)).resolve()


def _check_run_dir(cfg: WorkflowConfig, run_dir: Path, resume: bool) -> None:
    last = run_dir / "checkpoints" / "last.pt"
    if resume and not last.is_file():
        raise ConfigError(f"--resume: {last} does not exist (nothing to resume in {run_dir}); start without --resume")
    if not resume and last.is_file() and not cfg.output.overwrite:
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume, or start over with "
            "--set output.overwrite=true, or pick another folder with --set output.run_name=NAME"
        )


def _prepare_run_dir(cfg: WorkflowConfig, run_dir: Path, resume: bool) -> None:
    from medseg.io.atomic import remove_partial_files, write_text_atomic

    if not resume and cfg.output.overwrite:
        for sub in ("checkpoints", "tensorboard"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
        for name in ("metrics.csv", "validation_cases.csv", "train.log"):
            (run_dir / name).unlink(missing_ok=True)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for stale in remove_partial_files(run_dir / "checkpoints"):  # a save killed mid-write
        log.info("removed %s, left by an interrupted checkpoint save", stale.name)
    if resume and (run_dir / "config.yaml").is_file():
        import yaml

        old = yaml.safe_load((run_dir / "config.yaml").read_text())
        changed = sorted(_diff(old, cfg.model_dump(mode="json")))
        if changed:
            log.warning("resuming with a changed configuration: %s", ", ".join(changed))
    write_text_atomic(run_dir / "config.yaml", dump_config(cfg))


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _spawned_worker(config: dict[str, Any], resume: bool, device: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(config, resume=resume, device=device)


def train(
    config: str | os.PathLike[str] | dict[str, Any] | WorkflowConfig,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    device: str = "auto",
    nproc: int = 1,
) -> Path:
    """Train a workflow of any task (segmentation, denoising) and return its run directory.

    Args:
        config: workflow YAML path, nested dict or `WorkflowConfig`.
        overrides: ``"a.b=value"`` strings applied on top (``--set``).
        resume: continue the run in the run directory exactly where ``last.pt`` left it
            (epoch, every network/optimizer/scheduler/gradient scaler, RNG states, data sampling).
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        nproc: processes for DistributedDataParallel; > 1 spawns them here (``--nproc``).
            Under ``torchrun`` leave it at 1: the environment says the world size.

    Raises:
        ConfigError: invalid workflow, run directory already used (without ``--resume`` or
            ``output.overwrite``), nothing to resume. InputError/GeometryError: bad data.
        DataError: cases that cannot be trained on (`medseg.data.preflight.check_training_cases`
            lists them all before the first epoch).
        TrainingError: a non-finite loss or weight (the step, epoch and cases are named).
    """
    from medseg.engine.distributed import barrier, close_distributed, init_distributed, launch

    cfg = load_workflow(config, overrides)
    run_dir = run_dir_of(cfg)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _check_run_dir(cfg, run_dir, resume)
        launch(nproc, _spawned_worker, (cfg.model_dump(mode="json"), resume, device))
        return run_dir

    ctx = init_distributed(device)
    handler: logging.Handler | None = None
    old_level = log.level
    try:
        _check_run_dir(cfg, run_dir, resume)
        barrier(ctx)
        if ctx.is_main:
            _prepare_run_dir(cfg, run_dir, resume)
            handler = logging.FileHandler(run_dir / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            handler.setLevel(logging.INFO)
            logging.getLogger("medseg").addHandler(handler)
            # epoch summaries are the point of a training run: show them without -v
            if log.getEffectiveLevel() > logging.INFO:
                log.setLevel(logging.INFO)
            log.info("run %s on %s (%d process%s)", run_dir, ctx.device, ctx.world_size, "es" if ctx.distributed else "")
        barrier(ctx)
        from medseg.data.preflight import check_training_cases
        from medseg.data.transform_errors import medseg_errors_unwrapped
        from medseg.engine.loop import run_training

        check_training_cases(cfg)  # every case, before the first epoch: one DataError listing all
        with medseg_errors_unwrapped():
            run_training(cfg, run_dir, resume, ctx)
    finally:
        log.setLevel(old_level)
        if handler is not None:
            logging.getLogger("medseg").removeHandler(handler)
            handler.close()
        close_distributed(ctx)
    return run_dir

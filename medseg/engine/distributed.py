"""Multi-process (DistributedDataParallel) set-up: torchrun's environment or ``--nproc N``.

``torchrun --nproc_per_node=N -m medseg train W.yaml`` sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; ``medseg train W.yaml --nproc N`` makes the same
environment itself with `launch` (one spawned process per rank). The backend is NCCL on CUDA
and gloo on CPU. Only rank 0 writes files.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from medseg.device import resolve_device
from medseg.errors import MedsegError


@dataclass
class DistContext:
    """Where this process stands: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def init_distributed(device: str) -> DistContext:
    """Join the process group when launched by torchrun / `launch`, else a 1-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistContext(rank, world, local, dev)


def close_distributed(ctx: DistContext) -> None:
    """Leave the process group (if this process joined one)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: float, ctx: DistContext) -> float:
    """Mean of a number over all processes."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def broadcast_float(value: float, ctx: DistContext) -> float:
    """Rank 0's number on every process."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.broadcast(t, src=0)
    return float(t.item())


def barrier(ctx: DistContext) -> None:
    """Wait for every process."""
    if ctx.distributed:
        dist.barrier()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned(rank: int, nproc: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    fn(*args)


def launch(nproc: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Run ``fn(*args)`` in `nproc` spawned processes with a torchrun-like environment.

    Raises:
        MedsegError: a process failed (its last error line is quoted).
    """
    import torch.multiprocessing as mp

    port = _free_port()
    try:
        mp.spawn(_spawned, args=(nproc, port, fn, args), nprocs=nproc, join=True)
    except mp.ProcessRaisedException as exc:
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise MedsegError(f"a training process failed: {lines[-1] if lines else exc}") from None
    except mp.ProcessExitedException as exc:
        raise MedsegError(f"a training process died: {exc}") from None

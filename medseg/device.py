"""Choosing the torch device: one rule for training and inference."""

from __future__ import annotations

from typing import Any

from medseg.errors import InputError


def resolve_device(device: str = "auto", local_rank: int = 0) -> Any:
    """A ``torch.device`` from a name.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` (this
            process's GPU: `local_rank` under torchrun) or ``"cuda:N"``.
        local_rank: the GPU of ``"cuda"`` (and of ``"auto"`` on a CUDA machine).

    Raises:
        InputError: CUDA asked for but not available, or an unknown device name.
    """
    import torch

    name = (str(device) if device is not None else "auto").strip().lower() or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but CUDA is not available here; use --device cpu or auto")
        if name == "cuda":
            return torch.device("cuda", local_rank)
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device {device!r} (expected auto, cpu, cuda or cuda:N)") from exc
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"unknown device {device!r} (expected auto, cpu, cuda or cuda:N)")
    return dev

"""Random-number-generator state in a form ``torch.load(weights_only=True)`` accepts.

``--resume`` must continue exactly, so the global RNGs of torch (CPU and CUDA), NumPy and
Python's `random` are saved with every ``last.pt``. Their native states contain NumPy arrays
and tuples; here they become tensors, lists and numbers only. (Data sampling and augmentation
need nothing saved: they are re-seeded from ``(seed, epoch, rank)`` at every epoch, see
`epoch_seed`.)
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for one epoch of one process, derived from the workflow seed."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU + CUDA), NumPy and Python's `random`."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states as tensors / lists / numbers (weights-only safe)."""
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in state["cuda"]])

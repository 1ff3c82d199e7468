"""Shared fixtures. Real data comes from `medseg.sample_data` (bundled, see its NOTICE.md) and
from packages (pydicom's test files, nilearn's MNI152 template)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep CPU tests deterministic and polite on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def sample():
    """`medseg.sample_data.path` as a fixture: ``sample("ct_small")`` → Path."""
    from medseg import sample_data

    return sample_data.path


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory) -> Path:
    """A checkpoint from `medseg.engine.train` on the bundled real CT (smoke workflow, ~10 s).

    Two short epochs at 6 mm: the network is far from good, but it is a real trained
    ResUNet3D with the real preprocessing plan, and it labels part of the body as liver.
    """
    from medseg.engine import train

    root = Path(__file__).resolve().parents[1]
    run = train(
        root / "workflows" / "smoke.yaml",
        [
            f"output.dir={tmp_path_factory.mktemp('runs')}",
            "training.epochs=2",
            "training.steps_per_epoch=3",
            "training.val_every=2",
            "optim.warmup_epochs=0",
            "optim.lr=0.01",
        ],
        device="cpu",
    )
    best = run / "checkpoints" / "best.pt"
    return best if best.is_file() else run / "checkpoints" / "last.pt"

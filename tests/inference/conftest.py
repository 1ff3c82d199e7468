"""Fixtures for the inference tests.

- `threshold_model`: a `LoadedModel` whose "network" labels voxels brighter than 50 HU. Its
  answer is known exactly on any image, so tests can check geometry (original grid, LPS
  series, resampling) without a trained network.
- `random_ckpt`: a real medseg checkpoint of C's ResUNet3D (untrained weights), for loading
  guards and export.
- `trained_ckpt` (session): a checkpoint written by `medseg.engine.train` after a few seconds of
  training on the bundled real CT — what the batch / DICOM SEG tests segment with.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from inference_factory import make_threshold_model, save_random_ckpt

from medseg.inference.model import LoadedModel


@pytest.fixture
def threshold_model() -> LoadedModel:
    return make_threshold_model()


@pytest.fixture(scope="session")
def random_ckpt(tmp_path_factory) -> Path:
    return save_random_ckpt(tmp_path_factory.mktemp("ckpt") / "random.pt", {1: "liver", 2: "spleen"})


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory) -> Path:
    """A checkpoint from `medseg.engine.train` on the bundled real CT (smoke workflow, ~10 s).

    Two short epochs at 6 mm: the network is far from good, but it is a real trained
    ResUNet3D with the real preprocessing plan, and it labels part of the body as liver.
    """
    from medseg.engine import train

    root = Path(__file__).resolve().parents[2]
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

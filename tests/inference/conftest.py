"""Fixtures for the inference tests.

- `threshold_model`: a `LoadedModel` whose "network" labels voxels brighter than 50 HU. Its
  answer is known exactly on any image, so tests can check geometry (original grid, LPS
  series, resampling) without a trained network.
- `random_ckpt`: a real medseg checkpoint of C's ResUNet3D (untrained weights), for loading
  guards and export.
- `trained_ckpt` (session, from tests/conftest.py): what the batch / DICOM SEG tests segment with.
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

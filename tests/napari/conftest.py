"""Fixtures of the napari plugin tests (marker `gui`; `make test` runs them under Xvfb).

- `seg_ckpt` (session): the suite's `trained_ckpt` (tests/conftest.py: the smoke workflow on the
  bundled CT for two short epochs, label 1 = liver), what the widgets run.
- `denoise_ckpt` (session): a small 2.5-D denoiser trained by `medseg.engine.train` (task
  denoising) on the bundled example_ct with Gaussian noise, what the Enhance widget runs.
- `viewer`: napari's `make_napari_viewer` (a real Qt viewer on the virtual display).
- `screenshot`: saves the viewer window with its dock widgets to docs/images/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    # Qt aborts the whole process without a display; `make test` starts Xvfb (xvfb-run)
    pytest.skip("the napari tests need a display: run them with `make test` (Xvfb)", allow_module_level=True)

pytest.importorskip("napari")

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "docs" / "images"


@pytest.fixture(scope="session")
def seg_ckpt(trained_ckpt) -> Path:
    """The suite's small trained checkpoint (tests/conftest.py: trained once per session)."""
    return trained_ckpt


#: a small denoising run (3 epochs of 8 steps on 32² patches): trained on example_ct, the widget
#: tests apply it to example_ct_sm (another acquisition of the field of view)
DENOISE = {
    "name": "denoise_napari", "task": "denoising", "seed": 0,
    "data": {"training": [{"image": "sample:ct", "name": "example_ct"}],
             "validation": [{"image": "sample:ct", "name": "example_ct"}]},
    "preprocessing": {"modality": "CT"},
    "noise": {"model": "gaussian", "sigma_range": [100, 150], "val_levels": [120]},
    "model": {"name": "unet_denoiser", "spatial_dims": 2, "context_slices": 1, "features": [8, 8, 16, 16, 32, 8]},
    "optim": {"lr": 0.01, "warmup_epochs": 0},
    "training": {"epochs": 3, "steps_per_epoch": 8, "batch_size": 1, "patches_per_case": 8, "patch_size": [32, 32],
                 "val_every": 3, "val_max_slices": 3, "torch_threads": 2},
    "output": {"tensorboard": False},
}


@pytest.fixture(scope="session")
def denoise_ckpt(tmp_path_factory) -> Path:
    """A real denoising checkpoint from `medseg.engine.train` on the bundled CT (DENOISE)."""
    from medseg.engine import train

    run = train(DENOISE, overrides=[f"output.dir={tmp_path_factory.mktemp('denoise')}"], device="cpu")
    return run / "checkpoints" / "best.pt"


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer(show=True)


@pytest.fixture
def screenshot(qtbot):
    def save(viewer, name: str) -> Path:
        IMAGES.mkdir(parents=True, exist_ok=True)
        viewer.window._qt_window.resize(1400, 860)
        qtbot.wait(300)
        path = IMAGES / f"napari_{name}.png"
        viewer.window._qt_window.grab().save(str(path))
        assert path.stat().st_size > 10_000
        return path

    return save

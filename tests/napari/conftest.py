"""Fixtures of the napari plugin tests (marker `gui`; `make test` runs them under Xvfb).

- `seg_ckpt` (session): a real checkpoint trained by `medseg.engine.train` on the bundled CT
  for two short epochs (the smoke workflow at 6 mm, label 1 = liver), what the widgets run.
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
def seg_ckpt(tmp_path_factory) -> Path:
    from medseg.engine import train

    run = train(
        ROOT / "workflows" / "smoke.yaml",
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

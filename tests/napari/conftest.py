"""Fixtures of the napari plugin tests (marker `gui`; `make test` runs them under Xvfb).

- `seg_ckpt` (session): the suite's `trained_ckpt` (tests/conftest.py: the smoke workflow on the
  bundled CT for two short epochs, label 1 = liver), what the widgets run.
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

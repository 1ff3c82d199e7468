"""Fixtures of the CT tests."""

from __future__ import annotations

import numpy as np
import pytest

from .phantoms import water_cylinder


@pytest.fixture
def cylinder() -> np.ndarray:
    return water_cylinder()


@pytest.fixture(scope="module")
def ct_slices():
    """Two real 512×512 axial slices of the bundled CT series (HU, int16) and their spacing."""
    from medseg import sample_data
    from medseg.io import load_volume

    vol = load_volume(sample_data.path("ct_dicom"))
    return vol.array[:, :, 9:11], vol.spacing[:2]

"""Fixtures for the I/O tests; the DICOM writers live in `dicom_factory`."""

from __future__ import annotations

import pytest
from dicom_factory import mni_ct_volume

from medseg.io import Volume


@pytest.fixture(scope="session")
def mni_ct() -> Volume:
    """Real 40×48×20 int16 HU-like volume at 2 mm (MNI152 T1 crop), see `mni_ct_volume`."""
    return mni_ct_volume()

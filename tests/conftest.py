"""Shared fixtures. Real data comes from `medseg.sample_data` (bundled, see its NOTICE.md) and
from packages (pydicom's test files, nilearn's MNI152 template)."""

from __future__ import annotations

import os

import pytest

# Keep CPU tests deterministic and polite on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def sample():
    """`medseg.sample_data.path` as a fixture: ``sample("ct_small")`` → Path."""
    from medseg import sample_data

    return sample_data.path

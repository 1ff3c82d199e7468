"""medseg's one policy for NaN/±Inf voxels (`replace_non_finite`) in every reader."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.io import Volume, read_volume, write_nifti
from medseg.io.nifti import write_itk
from medseg.io.volume import MAX_NON_FINITE_FRACTION, replace_non_finite


def test_policy_on_arrays():
    a = np.arange(1000, dtype=np.float32) - 500  # finite minimum -500
    a[[3, 10, 999]] = [np.nan, np.inf, -np.inf]
    out, msg = replace_non_finite(a, "x.nii.gz")
    assert msg == "3 non-finite voxel(s) (0.3 %) replaced by the finite minimum -500"
    assert np.isfinite(out).all() and out[3] == out[10] == out[999] == -500 and out[4] == -496
    ints = np.zeros(10, np.int16)
    assert replace_non_finite(ints, "y")[0] is ints and replace_non_finite(ints, "y")[1] is None
    clean = np.ones(5, np.float64)
    assert replace_non_finite(clean, "z") == (clean, None)
    with pytest.raises(InputError, match=r"^x\.nii\.gz: no voxel is finite \(all 4 are NaN or ±Inf\)"):
        replace_non_finite(np.full(4, np.nan), "x.nii.gz")
    over = np.zeros(100)
    over[: int(100 * MAX_NON_FINITE_FRACTION) + 1] = np.nan
    with pytest.raises(InputError, match=r"11 of 100 voxels \(11\.0 %\) are NaN or ±Inf, more than the 10 %"):
        replace_non_finite(over, "x.nii.gz")
    at_limit = np.zeros(100)
    at_limit[:10] = np.nan
    assert replace_non_finite(at_limit, "x")[1].startswith("10 non-finite voxel(s) (10 %)")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_readers_repair_and_report(tmp_path, sample, suffix, caplog):
    src = read_volume(sample("ct_small"))
    arr = src.array.astype(np.float32)
    arr[10, 20, 5] = np.nan
    arr[11, 20, 5] = -np.inf
    path = tmp_path / f"holes{suffix}"
    (write_nifti if suffix == ".nii.gz" else write_itk)(Volume(arr, src.affine), path)
    with caplog.at_level(logging.WARNING, logger="medseg.io"):
        vol = read_volume(path)
    expected = f"2 non-finite voxel(s) ({100 * 2 / arr.size:.3g} %) replaced by the finite minimum {float(src.array.min()):g}"
    assert vol.meta["warnings"] == [expected]
    assert np.isfinite(vol.array).all() and vol.array[10, 20, 5] == src.array.min()
    assert any(str(path) in r.getMessage() and expected in r.getMessage() for r in caplog.records)
    finite = np.isfinite(arr)
    np.testing.assert_array_equal(vol.array[finite], arr[finite])  # every other voxel untouched
    assert "warnings" not in read_volume(sample("ct_small")).meta  # a clean file: nothing to say


def test_all_nan_nifti_names_the_file(tmp_path):
    path = tmp_path / "blank.nii.gz"
    write_nifti(Volume(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match=rf"^{path}: no voxel is finite"):
        read_volume(path)

"""Non-finite voxels through `segment_batch` with a real trained checkpoint (issue 15, item 1).

The policy itself (`medseg.io.volume.replace_non_finite`) is tested in tests/io/test_nonfinite.py;
here: a CT with 1 % NaN still gets its liver, the repair is reported, and an image with no
finite voxel is a failed series with a clear reason while the batch goes on.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from medseg.inference import BatchOptions, InferenceOptions, segment_batch
from medseg.io import Volume, read_nifti, read_volume, write_nifti

FAST = BatchOptions(inference=InferenceOptions(device="cpu", overlap=0.0), progress=False, qa_png=False)


@pytest.fixture(scope="module")
def nan_inputs(tmp_path_factory, sample):
    src = read_volume(sample("ct_small"))
    root = tmp_path_factory.mktemp("nan_inputs")
    clean = src.array.astype(np.float32)
    write_nifti(Volume(clean, src.affine), root / "clean.nii.gz")
    rng = np.random.default_rng(15)
    holes = clean.copy()
    idx = rng.choice(holes.size, size=holes.size // 100, replace=False)  # 1 % of the voxels
    holes.ravel()[idx[: len(idx) // 2]] = np.nan
    holes.ravel()[idx[len(idx) // 2 :]] = np.inf
    write_nifti(Volume(holes, src.affine), root / "one_percent_nan.nii.gz")
    write_nifti(Volume(np.full_like(clean, np.nan), src.affine), root / "all_nan.nii.gz")
    many = clean.copy()
    many.ravel()[rng.choice(many.size, size=many.size // 5, replace=False)] = -np.inf  # 20 %
    write_nifti(Volume(many, src.affine), root / "twenty_percent_inf.nii.gz")
    return root, len(idx)


def test_nan_voxels_are_repaired_and_segmented_bad_images_fail_clearly(nan_inputs, trained_ckpt, tmp_path, caplog):
    root, n_bad = nan_inputs
    with caplog.at_level(logging.WARNING, logger="medseg"):
        result = segment_batch(root, tmp_path / "out", [trained_ckpt], FAST)
    by_stem = {r.stem: r for r in result.records}
    assert set(by_stem) == {"clean", "one_percent_nan", "all_nan", "twenty_percent_inf"}
    assert by_stem["clean"].status == by_stem["one_percent_nan"].status == "done"
    liver = {s: int((read_nifti(tmp_path / "out" / s / "labels.nii.gz").array == 1).sum()) for s in ("clean", "one_percent_nan")}
    assert liver["clean"] > 0 and liver["one_percent_nan"] > 0.5 * liver["clean"]
    # the repair is reported: in the log and in the series' manifest row
    warning = f"{n_bad} non-finite voxel(s) (1 %) replaced by the finite minimum -1100"
    assert any(warning in r.getMessage() and "one_percent_nan.nii.gz" in r.getMessage() for r in caplog.records)
    rows = {row["stem"]: row for row in json.loads(result.manifest_path.read_text())["series"]}
    assert any(warning in w for w in rows["one_percent_nan"]["warnings"])
    assert not any("non-finite" in w for w in rows["clean"]["warnings"])
    assert by_stem["all_nan"].status == "failed"
    assert "all_nan.nii.gz: no voxel is finite" in by_stem["all_nan"].reason
    assert by_stem["twenty_percent_inf"].status == "failed"
    assert "(20.0 %) are NaN or ±Inf, more than the 10 % medseg repairs" in by_stem["twenty_percent_inf"].reason
    assert result.n_done == 2 and result.n_failed == 2 and not result.ok

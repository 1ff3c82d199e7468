"""`convert_to_nifti` / `describe_input`: one NIfTI per series, series.json, bad series isolated."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from dicom_factory import PYDICOM_TEST_FILES, assert_same_world, rotation, write_series

from medseg.errors import InputError
from medseg.io import Volume, read_volume, write_nifti
from medseg.io.convert import convert_to_nifti, describe_input
from medseg.io.naming import series_stem

ENTRY_KEYS = {"series_instance_uid", "output", "modality", "shape", "spacing", "orientation", "n_files", "warnings", "error"}


@pytest.fixture
def messy_tree(tmp_path, mni_ct):
    """Two good series (one nested, one with a hostile description), one broken, junk, an SR."""
    root = tmp_path / "export"
    other = Volume((mni_ct.array // 2).astype(np.int16), rotation("z", 30) @ mni_ct.affine)
    write_series(root / "a", mni_ct, series_uid="1.2.826.0.1.1", series_number=2, description="AX CT")
    write_series(root / "b" / "deep", other, series_uid="1.2.826.0.1.2", series_number=5, description="../../etc/passwd", transfer_syntax="rle")
    # broken: two stacks side by side under one SeriesInstanceUID (positions not on one line)
    shifted = mni_ct.affine.copy()
    shifted[0, 3] += 50
    write_series(root / "c", mni_ct, series_uid="1.2.826.0.1.3", series_number=9, description="broken", seed=3)
    write_series(root / "c", Volume(mni_ct.array, shifted), series_uid="1.2.826.0.1.3", series_number=9, description="broken", seed=4)
    (root / "README.txt").write_text("exported by a PACS")
    shutil.copy(PYDICOM_TEST_FILES / "test-SR.dcm", root / "report")
    return root, other


def test_convert_messy_tree(messy_tree, tmp_path, mni_ct):
    root, other = messy_tree
    out = tmp_path / "out"
    result = convert_to_nifti(root, out)
    assert (result.n_converted, result.n_failed) == (2, 1) and not result.ok
    index = json.loads((out / "series.json").read_text())
    assert index == result.index
    assert set(index) == {"series", "skipped"}
    assert all(set(e) == ENTRY_KEYS for e in index["series"])
    by_uid = {e["series_instance_uid"]: e for e in index["series"]}

    good = by_uid["1.2.826.0.1.1"]
    assert good["output"] == f"{series_stem(2, 'AX CT', '1.2.826.0.1.1')}.nii.gz"
    assert good["modality"] == "CT" and good["shape"] == [40, 48, 20] and good["spacing"] == [2.0, 2.0, 2.0]
    assert good["orientation"] == "RAS" and good["n_files"] == 20 and good["warnings"] == [] and good["error"] is None
    assert_same_world(read_volume(out / good["output"]), mni_ct)

    hostile = by_uid["1.2.826.0.1.2"]
    assert hostile["output"].startswith("S005_etc_passwd_") and "/" not in hostile["output"]
    assert_same_world(read_volume(out / hostile["output"]), other)

    broken = by_uid["1.2.826.0.1.3"]
    assert broken["output"] is None and "one line" in broken["error"]

    sr = [e for e in index["series"] if e["modality"] == "SR"]
    assert len(sr) == 1 and sr[0]["output"] is None and sr[0]["error"] is None
    assert {"path": "README.txt", "reason": "not a DICOM file (no 'DICM' marker)", "damaged": False} in index["skipped"]
    assert sorted(p.name for p in out.iterdir()) == sorted([good["output"], hostile["output"], "series.json"])


def test_one_failing_decode_does_not_stop_the_others(messy_tree, tmp_path, monkeypatch):
    import medseg.io.dicom_pixels as px

    real = px.decode_frames

    def flaky(path, layout, frames):
        if "deep" in str(path):
            raise RuntimeError("decoder crashed")
        return real(path, layout, frames)

    monkeypatch.setattr(px, "decode_frames", flaky)
    result = convert_to_nifti(messy_tree[0], tmp_path / "out")
    assert (result.n_converted, result.n_failed) == (1, 2)
    errors = [e["error"] for e in result.index["series"] if e["error"]]
    assert any("decoder crashed" in e for e in errors)


def test_convert_nifti_input_and_describe(tmp_path, sample):
    src = sample("ct_small")
    result = convert_to_nifti(src, tmp_path / "o")
    (entry,) = result.index["series"]
    assert entry["output"] == "example_ct_sm.nii.gz" and entry["shape"] == [122, 101, 30] and entry["error"] is None
    back = read_volume(tmp_path / "o" / entry["output"])
    np.testing.assert_array_equal(back.array, read_volume(src).array)
    desc = describe_input(src)
    assert desc.kind == "volume" and desc.series[0].shape == [122, 101, 30]


def test_convert_nrrd_and_missing_input(tmp_path, sample):
    result = convert_to_nifti(sample("brain_mri"), tmp_path / "o")
    assert result.ok and result.index["series"][0]["output"] == "brain1_image.nii.gz"
    with pytest.raises(InputError, match="no such file"):
        convert_to_nifti(tmp_path / "nope", tmp_path / "o2")


def test_describe_dicom_reads_headers_only(messy_tree):
    desc = describe_input(messy_tree[0])
    assert desc.kind == "dicom"
    images = [s for s in desc.series if s.is_image]
    assert [s.series_number for s in images] == [2, 5, 9]
    assert images[2].error and images[2].shape is None
    assert any(k["path"] == "README.txt" for k in desc.skipped)


def test_written_nifti_is_atomic_and_overwrites(tmp_path, mni_ct):
    write_series(tmp_path / "d", mni_ct)
    out = tmp_path / "o"
    convert_to_nifti(tmp_path / "d", out)
    convert_to_nifti(tmp_path / "d", out)  # re-run replaces files in place
    assert not list(out.glob(".*part*"))
    assert len(list(out.glob("*.nii.gz"))) == 1
    write_nifti(mni_ct, out / "x.nii.gz")

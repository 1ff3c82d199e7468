"""Training-data pre-flight (`medseg.data.preflight`) on the bundled real CT and broken copies of
its label, and MONAI-wrapped medseg errors unwrapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from medseg.config import load_workflow
from medseg.data.preflight import check_training_cases
from medseg.errors import ConfigError, DataError, InputError
from medseg.io import Volume, read_volume, write_nifti

SMOKE = Path(__file__).resolve().parents[2] / "workflows" / "smoke.yaml"


@pytest.fixture(scope="module")
def real_case(sample):
    return read_volume(sample("ct_small")), read_volume(sample("ct_small_seg"))


def _cfg(tmp_path: Path, training: list[dict], labels=None, unmapped="background", validation=()):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"] = {"training": training, "validation": list(validation), "labels": labels or {"liver": 5},
                   "unmapped_labels": unmapped, "val_fraction": 0.0}
    raw["output"]["dir"] = str(tmp_path / "runs")
    return load_workflow(raw)


def test_clean_real_cases_pass(tmp_path, sample):
    cfg = _cfg(tmp_path, [{"image": str(sample("ct_small")), "label": str(sample("ct_small_seg")), "name": "ok"}])
    check_training_cases(cfg)  # no exception


def test_every_bad_case_is_listed_in_one_error(tmp_path, sample, real_case):
    image, label = real_case
    img = str(sample("ct_small"))
    # other shape (a slab), other spacing, other origin
    write_nifti(Volume(label.array[:, :, :20].copy(), label.affine), tmp_path / "shape.nii.gz")
    aff = label.affine.copy()
    aff[:3, :3] *= 1.5
    write_nifti(Volume(label.array, aff), tmp_path / "spacing.nii.gz")
    aff = label.affine.copy()
    aff[:3, 3] += [0, 0, 9.0]
    write_nifti(Volume(label.array, aff), tmp_path / "origin.nii.gz")
    # fractional float label, 4-D label, not an image, all-NaN image
    write_nifti(Volume(label.array.astype(np.float32) + 0.5, label.affine), tmp_path / "float.nii.gz")
    write_nifti(Volume(np.stack([label.array] * 2, axis=-1), label.affine), tmp_path / "four_d.nii.gz")
    (tmp_path / "text.nii.gz").write_text("not an image")
    write_nifti(Volume(np.full(image.shape, np.nan, np.float32), image.affine), tmp_path / "nan_image.nii.gz")
    cases = [
        {"image": img, "label": str(tmp_path / f"{n}.nii.gz"), "name": n}
        for n in ("shape", "spacing", "origin", "float", "four_d", "text")
    ] + [{"image": str(tmp_path / "nan_image.nii.gz"), "label": str(sample("ct_small_seg")), "name": "nan_image"},
         {"image": img, "label": str(sample("ct_small_seg")), "name": "good"}]
    with pytest.raises(DataError) as info:
        check_training_cases(_cfg(tmp_path, cases))
    msg = str(info.value)
    assert msg.startswith("training data check failed: 7 of 8 case(s) cannot be used")
    for n in ("shape", "spacing", "origin", "float", "four_d", "text", "nan_image"):
        assert f"training case '{n}'" in msg
    assert "'good'" not in msg
    assert "shape [122, 101, 20] vs the image's [122, 101, 30]" in msg
    assert "spacing [4.5, 4.5, 4.5] mm vs [3.0, 3.0, 3.0] mm" in msg
    assert "9 mm apart" in msg  # the shifted origin
    assert "non-integer values" in msg and "must be 3-D" in msg and "text.nii.gz: unreadable" in msg
    assert "no voxel is finite" in msg
    assert msg.count("resample the label onto the image") == 3
    assert "applying transform" not in msg


def test_unmapped_error_and_absent_classes(tmp_path, sample):
    case = [{"image": str(sample("ct_small")), "label": str(sample("ct_small_seg")), "name": "c"}]
    with pytest.raises(DataError, match=r"values \[1, 2, 3, .*\] … are not in data.labels \(mapped: 5→1\).*set data.unmapped_labels: background"):
        check_training_cases(_cfg(tmp_path, case, unmapped="error"))
    # 250 appears nowhere in the TotalSegmentator labels: training on it could never learn it
    with pytest.raises(DataError, match=r"class\(es\) 'ghost' \(label value 250\) appear in none of the 1 training case"):
        check_training_cases(_cfg(tmp_path, case, labels={"liver": 5, "ghost": 250}))


def test_medseg_error_inside_a_monai_transform_is_unwrapped():
    from monai.transforms import Compose, MapTransform

    from medseg.data.transform_errors import medseg_errors_unwrapped, wrapped_medseg_error

    class Boom(MapTransform):
        def __call__(self, data):
            raise InputError("case7.nii.gz: label values [9] are not in data.labels")

    chain = Compose([Compose([Boom(keys=["image"])])])
    with pytest.raises(RuntimeError, match="applying transform") as raw:
        chain({"image": 1})
    assert isinstance(wrapped_medseg_error(raw.value), InputError)
    with pytest.raises(InputError, match=r"^case7.nii.gz: label values \[9\]"):
        with medseg_errors_unwrapped():
            chain({"image": 1})
    with pytest.raises(RuntimeError, match="plain bug"):  # anything else passes through untouched
        with medseg_errors_unwrapped():
            raise RuntimeError("plain bug")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("preprocessing.hu_window=[300, -200]", "preprocessing.hu_window"),
        ("preprocessing.hu_window=[.nan, 300]", "preprocessing.hu_window"),
        ("preprocessing.spacing_mm=[.nan, 6, 6]", "preprocessing.spacing_mm"),
        ("preprocessing.spacing_mm=[0, 6, 6]", "preprocessing.spacing_mm"),
        ("preprocessing.spacing_mm=[-1, 6, 6]", "preprocessing.spacing_mm"),
        ("preprocessing.spacing_mm=[.inf, 6, 6]", "preprocessing.spacing_mm"),
        ("preprocessing.percentiles=[99, 1]", "preprocessing.percentiles"),
    ],
)
def test_implausible_preprocessing_values_are_refused(override, key):
    import re

    with pytest.raises(ConfigError, match=re.escape(key) + ": "):
        load_workflow(SMOKE, [override])

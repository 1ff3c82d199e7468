"""medseg.io.viewer (volume ↔ viewer layer geometry) and medseg.io.label_names, without a GUI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg import sample_data
from medseg.errors import GeometryError, InputError
from medseg.io import Volume, load_volume
from medseg.io.label_names import find_label_names, read_label_names
from medseg.io.viewer import display_contrast_limits, layer_geometry, looks_like_label_map, volume_from_layer


def _reoriented(volume: Volume, perm, flips) -> Volume:
    arr = np.transpose(volume.array, perm)
    aff = volume.affine.copy()
    aff[:3, :3] = volume.affine[:3, :3][:, list(perm)]
    for ax in flips:
        arr = np.flip(arr, axis=ax)
        aff[:3, 3] = aff[:3, 3] + aff[:3, ax] * (arr.shape[ax] - 1)
        aff[:3, ax] = -aff[:3, ax]
    return Volume(np.ascontiguousarray(arr), aff)


@pytest.mark.parametrize("perm,flips", [((0, 1, 2), ()), ((2, 0, 1), (1,)), ((1, 0, 2), (0, 2))])
def test_any_orientation_gives_the_same_layer_and_goes_back_exactly(perm, flips):
    ct = load_volume(sample_data.path("ct_small"))
    ref = layer_geometry(ct)
    vol = _reoriented(ct, perm, flips)
    geo = layer_geometry(vol)
    np.testing.assert_array_equal(geo.data, ref.data)  # radiological (S, P, L) order whatever the file's
    np.testing.assert_allclose(geo.scale, ref.scale)
    np.testing.assert_allclose(geo.translate, ref.translate, atol=1e-6)
    assert geo.rotate is None and geo.warnings == []
    back = volume_from_layer(geo.data, geo.metadata)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine)


def test_volume_from_layer_refuses_a_wrong_shape_or_missing_geometry():
    ct = load_volume(sample_data.path("ct_small"))
    geo = layer_geometry(ct)
    with pytest.raises(GeometryError, match="does not match"):
        volume_from_layer(geo.data[:-1], geo.metadata)
    with pytest.raises(GeometryError, match="no medseg geometry"):
        volume_from_layer(geo.data, {})


def test_contrast_limits_and_label_map_detection_on_real_files():
    ct = load_volume(sample_data.path("ct_small"))
    mr = load_volume(sample_data.path("brain_mri"))
    seg = load_volume(sample_data.path("ct_small_seg"))
    assert display_contrast_limits(ct) == (-160.0, 240.0)
    lo, hi = display_contrast_limits(mr)
    assert 0 <= lo < hi <= float(mr.array.max())
    assert looks_like_label_map(seg) and looks_like_label_map(load_volume(sample_data.path("brain_mri_seg")))
    assert not looks_like_label_map(ct) and not looks_like_label_map(mr)


def test_label_names_from_totalsegmentator_and_nnunet_files(tmp_path):
    names, path = find_label_names(sample_data.path("ct_small_seg"))
    assert path.name == "labels_total.json" and names[5] == "liver" and 0 not in names
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps({"labels": {"background": 0, "spleen": 1, "kidneys": [2, 3]}}))
    assert read_label_names(ds) == {1: "spleen", 2: "kidneys", 3: "kidneys"}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="bad.json"):
        read_label_names(tmp_path / "bad.json")
    assert find_label_names(tmp_path / "x.nii.gz")[0] == read_label_names(ds)

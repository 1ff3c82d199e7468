"""MONAI pipelines: metatensor conversion, preprocessing, augmentation alignment, case loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.config import load_workflow
from medseg.data import load_case_volumes, preprocessing_transforms, read_datalist, read_nnunet_folder, volume_to_metatensor
from medseg.data.transforms import PercentileZScored, augmentation_transforms, training_transforms
from medseg.errors import GeometryError, InputError
from medseg.io import Volume, read_volume, write_volume

CT_PLAN = {"modality": "CT", "spacing_mm": [3.0, 3.0, 3.0], "orientation": "RAS",
           "intensity": {"kind": "ct_window", "hu_min": -200, "hu_max": 300}}
TS_MAP = {5: 1, 1: 2, 2: 3, 3: 3, 6: 4}  # liver, spleen, kidneys, stomach


def test_volume_to_metatensor_is_channel_first_with_ras_affine(sample):
    vol = read_volume(sample("ct_small"))
    mt = volume_to_metatensor(vol)
    assert tuple(mt.shape) == (1, *vol.shape)
    np.testing.assert_allclose(mt.affine.numpy(), vol.affine)
    assert np.array_equal(mt[0].numpy(), vol.array)


def test_dicom_series_and_its_nifti_labels_align_after_preprocessing(sample):
    # the label NIfTI is stored LAS, the DICOM series reads LPS: same voxels in another order
    image, label = load_case_volumes(sample("ct_dicom"), sample("ct_dicom_seg"), TS_MAP, "background")
    raw = read_volume(sample("ct_dicom_seg"))
    assert label.same_grid(image)
    liver_world_raw = raw.world_coordinates(np.argwhere(raw.array == 5)).mean(0)
    liver_world = image.world_coordinates(np.argwhere(label.array == 1)).mean(0)
    np.testing.assert_allclose(liver_world, liver_world_raw, atol=1e-6)
    # liver is soft tissue (~ +90 HU here), not air: image and label really overlap
    assert 40 < np.median(image.array[label.array == 1]) < 150

    out = preprocessing_transforms(CT_PLAN)({"image": volume_to_metatensor(image), "label": volume_to_metatensor(label)})
    img, lab = out["image"], out["label"]
    assert img.shape == lab.shape and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3].numpy(), axis=0), [3, 3, 3], atol=1e-6)
    assert set(torch.unique(lab).tolist()) == {0.0, 1.0, 2.0, 4.0}  # no kidneys in this slab
    # the liver's centre stays where it was in world coordinates
    ijk = np.argwhere(lab[0].numpy() == 1).mean(0)
    world = img.affine.numpy()[:3, :3] @ ijk + img.affine.numpy()[:3, 3]
    np.testing.assert_allclose(world, liver_world_raw, atol=3.0)
    # inverse of the invertible chain returns the original grid
    pre = preprocessing_transforms(CT_PLAN, label_key=None)
    back = pre.inverse(pre({"image": volume_to_metatensor(image)}))["image"]
    assert tuple(back.shape[1:]) == image.shape


def test_mr_percentile_zscore():
    rng = np.random.default_rng(0)
    arr = np.zeros((20, 20, 20), np.float32)
    arr[5:15, 5:15, 5:15] = rng.normal(300, 50, (10, 10, 10))
    arr[10, 10, 10] = 1e6  # outlier clipped by the 99.5th percentile
    out = PercentileZScored("image", 0.5, 99.5)({"image": torch.from_numpy(arr[None])})["image"][0].numpy()
    inside = out[arr != 0]
    assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-3
    assert np.all(out[arr == 0] == 0) and out.max() < 10


def _blob_case(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in (64, 64, 24)], indexing="ij")
    label = np.zeros((64, 64, 24), np.float32)
    for _ in range(4):
        c = rng.uniform([12, 12, 6], [52, 52, 18])
        r = rng.uniform(5, 10)
        label[((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + ((xx - c[2]) * 2) ** 2) < r**2] = 1
    image = label * 0.8 + 0.1  # the image's bright region *is* the label
    return {"image": torch.from_numpy(image[None]), "label": torch.from_numpy(label[None])}


@pytest.mark.parametrize("which", ["elastic", "rotate", "scale"])
def test_deformed_label_still_matches_deformed_image(which):
    from medseg.config.schema import AugmentationConfig

    aug = AugmentationConfig.model_validate({
        "elastic": {"prob": float(which == "elastic"), "sigma_range": [4, 6], "magnitude_range": [100, 200]},
        "rotate": {"prob": float(which == "rotate"), "range_deg": [10, 10, 25]},
        "scale": {"prob": float(which == "scale"), "range": 0.3}, "flip": {"prob": 0.0}, "intensity_shift": {"prob": 0.0},
        "intensity_scale": {"prob": 0.0}, "noise": {"prob": 0.0},
    })
    from monai.transforms import Compose

    chain = Compose(augmentation_transforms(aug))
    moved = []
    for seed in range(4):
        chain.set_random_state(seed=seed)
        case = _blob_case(seed)
        out = chain(case)
        img, lab = np.asarray(out["image"][0]), np.asarray(out["label"][0])
        assert set(np.unique(lab)) <= {0.0, 1.0}, "labels must stay integer (nearest interpolation)"
        before = case["label"][0].numpy() > 0.5
        moved.append(np.logical_xor(lab > 0.5, before).sum() / before.sum())
        from_image = img > 0.5
        dice = 2 * np.logical_and(from_image, lab > 0.5).sum() / (from_image.sum() + (lab > 0.5).sum())
        assert dice > 0.95, f"seed {seed}: deformed label and deformed image disagree (Dice {dice:.3f})"
    assert max(moved) > 0.1, "the augmentation should actually move the structures"


def test_training_patches_have_patch_size_and_classes(sample):
    cfg = load_workflow({
        "name": "t", "data": {"training": [{"image": "sample:ct_small", "label": "sample:ct_small_seg"}],
                              "labels": {"liver": 5, "spleen": 1}, "unmapped_labels": "background"},
        "preprocessing": {"modality": "CT", "spacing_mm": [6, 6, 6]},
        "training": {"patch_size": [32, 32, 16], "patches_per_case": 3, "pos_fraction": 1.0},
    })
    cached, random = training_transforms(cfg)
    item = cached({"image": cfg.data.training[0].image, "label": cfg.data.training[0].label})
    random.set_random_state(seed=0)
    patches = random(item)
    assert len(patches) == 3
    for p in patches:
        assert tuple(p["image"].shape) == (1, 32, 32, 16) and tuple(p["label"].shape) == (1, 32, 32, 16)
        assert set(torch.unique(p["label"]).tolist()) <= {0.0, 1.0, 2.0}
        assert float(p["label"].max()) > 0  # pos_fraction 1: centred on foreground


def test_unknown_label_values_are_an_error_naming_the_file(sample):
    with pytest.raises(InputError) as exc:
        load_case_volumes(sample("ct_small"), sample("ct_small_seg"), {5: 1}, "error")
    assert "example_seg.nii.gz" in str(exc.value) and "unmapped_labels: background" in str(exc.value)
    _, label = load_case_volumes(sample("ct_small"), sample("ct_small_seg"), {5: 1}, "background")
    assert set(np.unique(label.array)) == {0, 1}


def test_grid_mismatch_and_missing_file_errors(tmp_path, sample):
    vol = read_volume(sample("ct_small_seg"))
    shifted = Volume(vol.array, vol.affine.copy(), {})
    shifted.affine[0, 3] += 7.5  # 2.5 voxels off
    write_volume(shifted, tmp_path / "shifted.nii.gz")
    with pytest.raises(GeometryError, match="not on the grid"):
        load_case_volumes(sample("ct_small"), tmp_path / "shifted.nii.gz", {5: 1}, "background")
    with pytest.raises(InputError, match="nope.nii.gz"):
        load_case_volumes(tmp_path / "nope.nii.gz", None)


def test_datalist_paths_are_relative_to_the_json(tmp_path, sample):
    import shutil

    (tmp_path / "imgs").mkdir()
    shutil.copy(sample("ct_small"), tmp_path / "imgs" / "a.nii.gz")
    shutil.copy(sample("ct_small_seg"), tmp_path / "imgs" / "a_seg.nii.gz")
    (tmp_path / "list.json").write_text(json.dumps({
        "training": [{"image": "imgs/a.nii.gz", "label": "imgs/a_seg.nii.gz"}],
        "validation": [{"image": "imgs/a.nii.gz", "label": "imgs/a_seg.nii.gz"}],
    }))
    train, val = read_datalist(tmp_path / "list.json")
    assert train[0]["image"] == str(tmp_path / "imgs" / "a.nii.gz") and len(val) == 1
    (tmp_path / "bad.json").write_text(json.dumps({"training": [{"image": "imgs/missing.nii.gz", "label": "x"}]}))
    with pytest.raises(InputError, match="missing.nii.gz: image not found"):
        read_datalist(tmp_path / "bad.json")


def test_nnunet_folder(tmp_path, sample):
    import shutil

    for d in ("imagesTr", "labelsTr"):
        (tmp_path / d).mkdir()
    shutil.copy(sample("ct_small"), tmp_path / "imagesTr" / "case1_0000.nii.gz")
    shutil.copy(sample("ct_small_seg"), tmp_path / "labelsTr" / "case1.nii.gz")
    train, val = read_nnunet_folder(tmp_path)
    assert [c["name"] for c in train] == ["case1"] and val == []
    shutil.copy(sample("ct_small"), tmp_path / "imagesTr" / "case2_0000.nii.gz")
    with pytest.raises(InputError, match="no label"):
        read_nnunet_folder(tmp_path)


@pytest.mark.slow
def test_dicom_seg_labels_load_like_their_nifti(sample, tmp_path):
    from medseg.io.dicom import read_dicom_series
    from medseg.io.seg import write_dicom_seg

    image, from_nifti = load_case_volumes(sample("ct_dicom"), sample("ct_dicom_seg"), TS_MAP, "background")
    series = read_dicom_series(sample("ct_dicom"))
    raw = np.zeros(image.shape, np.uint8)  # back to TotalSegmentator values, only the mapped ones
    for value, cls in {5: 1, 1: 2, 6: 4}.items():
        raw[from_nifti.array == cls] = value
    seg_path = write_dicom_seg(raw, series, {5: "liver", 1: "spleen", 6: "stomach"}, tmp_path / "seg.dcm")
    _, from_seg = load_case_volumes(sample("ct_dicom"), seg_path, TS_MAP, "error")
    assert np.array_equal(from_seg.array, from_nifti.array)


@pytest.mark.parametrize("which", ["contrast", "smooth"])
def test_intensity_only_augmentations_leave_the_label_alone(which):
    from monai.transforms import Compose

    from medseg.config.schema import AugmentationConfig

    off = {k: {"prob": 0.0} for k in ("elastic", "rotate", "scale", "flip", "intensity_shift", "intensity_scale", "noise")}
    aug = AugmentationConfig.model_validate({**off, which: {"prob": 1.0}})
    chain = Compose(augmentation_transforms(aug))
    chain.set_random_state(seed=3)
    case = _blob_case(1)
    case["image"] = case["image"] * 0.7 + torch.linspace(0, 0.3, 24)  # mid-range values for the gamma curve
    out = chain({k: v.clone() for k, v in case.items()})
    np.testing.assert_array_equal(np.asarray(out["label"]), case["label"].numpy())
    changed = np.abs(np.asarray(out["image"]) - case["image"].numpy())
    assert changed.max() > 0.01, f"{which} should change the image"
    if which == "contrast":  # a gamma curve keeps the darkest and brightest values
        img = np.asarray(out["image"])
        assert np.isclose(img.min(), case["image"].numpy().min()) and np.isclose(img.max(), case["image"].numpy().max())


def test_in_plane_zoom_keeps_pixels_square_and_scales_the_spacing_the_noise_reads():
    """`RandInPlaneZoomd` on the real 3 mm CT: one factor for x and y, z untouched, the affine's
    pixel spacing divided by it, and CT dose noise added afterwards grows as the pixels shrink
    (σ ∝ 1/d: ~3× for a 3× zoom)."""
    from medseg.data.noise import RandCTDoseNoised
    from medseg.data.transforms import RandInPlaneZoomd

    from medseg.io import load_volume
    from medseg.sample_data import path as sample_path

    vol = load_volume(sample_path("ct_small"))
    img = volume_to_metatensor(vol)[:, :, :, 10:13]
    zoom = RandInPlaneZoomd("image", (1.5, 3.0))
    zoom.set_random_state(0)
    out = zoom({"image": img})["image"]
    f = zoom.factor
    assert 1.5 <= f <= 3.0
    assert abs(out.shape[1] - img.shape[1] * f) <= 1 and abs(out.shape[2] - img.shape[2] * f) <= 1 and out.shape[3] == 3
    sp_in = np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0)
    sp_out = np.linalg.norm(np.asarray(out.affine)[:3, :3], axis=0)
    np.testing.assert_allclose(sp_out[:2], sp_in[:2] / np.array(out.shape[1:3]) * np.array(img.shape[1:3]), rtol=1e-6)
    assert sp_out[2] == pytest.approx(sp_in[2])
    # the physical extent is kept and the same HU range comes out (bilinear)
    assert float(out.min()) >= float(img.min()) - 1e-3 and float(out.max()) <= float(img.max()) + 1e-3

    def added_std(x):
        noise = RandCTDoseNoised("image", dose_range=(0.25, 0.25), output_keys="noisy")
        noise.set_random_state(1)
        d = noise({"image": x})
        body = np.asarray(x) > -500
        return float((np.asarray(d["noisy"]) - np.asarray(x))[body].std())

    three = RandInPlaneZoomd("image", (3.0, 3.0))({"image": img})["image"]
    ratio = added_std(three) / added_std(img)
    assert 2.5 < ratio < 3.5, ratio
    # off: the same object back
    same = {"image": img}
    assert RandInPlaneZoomd("image", (1.0, 1.0))(same)["image"] is img


def test_pad_to_field_of_view_adds_air_around_the_scan_and_keeps_its_geometry():
    """`PadToFieldOfViewd` on the real 3 mm CT (122×101 pixels, 37×30 cm): padded symmetrically
    to ≥ 50 cm in x and y with the given value, z untouched, the scan's voxels unchanged and at
    the same world positions (the affine's origin moves with the padding); a scan already that
    wide comes back as it was."""
    from medseg.data.transforms import PadToFieldOfViewd
    from medseg.io import load_volume
    from medseg.sample_data import path as sample_path

    vol = load_volume(sample_path("ct_small"))
    img = volume_to_metatensor(vol)[:, :, :, 10:13]
    spacing = np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0)
    out = PadToFieldOfViewd("image", 500.0, -1024.0)({"image": img})["image"]
    want = [int(np.ceil(500.0 / spacing[0])), int(np.ceil(500.0 / spacing[1]))]
    assert list(out.shape[1:3]) == want and out.shape[3] == 3
    assert out.shape[1] * spacing[0] >= 500.0 and (out.shape[1] - 1) * spacing[0] < 500.0
    x0, y0 = (want[0] - img.shape[1]) // 2, (want[1] - img.shape[2]) // 2
    assert x0 > 0 and y0 > 0
    np.testing.assert_array_equal(np.asarray(out)[:, x0:x0 + img.shape[1], y0:y0 + img.shape[2]], np.asarray(img))
    ring = np.ones(out.shape[1:3], bool)
    ring[x0:x0 + img.shape[1], y0:y0 + img.shape[2]] = False
    assert np.all(np.asarray(out)[0][ring] == -1024.0)
    # the first voxel of the scan sits where it did
    world_in = np.asarray(img.affine) @ np.array([0, 0, 0, 1.0])
    world_out = np.asarray(out.affine) @ np.array([x0, y0, 0, 1.0])
    np.testing.assert_allclose(world_out, world_in, atol=1e-4)
    wide = PadToFieldOfViewd("image", 100.0, -1024.0)({"image": img})["image"]
    assert wide.shape == img.shape and torch.equal(torch.as_tensor(wide), torch.as_tensor(img))

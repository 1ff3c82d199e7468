"""segment_volume: original-grid geometry, TTA, ensembling, guards, post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from inference_factory import (
    CT_PLAN,
    THRESHOLD_HU,
    dice,
    make_threshold_model,
    reoriented,
    save_random_ckpt,
    undo_reoriented,
)

from medseg.errors import CheckpointError, InputError
from medseg.inference import InferenceOptions, load_models, segment_volume
from medseg.inference.postprocess import fill_holes, keep_largest_component
from medseg.inference.memory import estimate_memory_bytes, preprocessed_shape
from medseg.resample import labels_on_grid
from medseg.io import Volume, read_volume


@pytest.fixture(scope="module")
def ct_small(sample) -> Volume:
    """The bundled 3 mm CT, smoothed (σ = 1 voxel) so that resampling it to the plan's
    2×2.5×4 mm grid and back keeps its thin bright structures (ribs, contrast vessels)."""
    v = read_volume(sample("ct_small"))
    return Volume(ndimage.gaussian_filter(v.array.astype(np.float32), 1.0), v.affine, {"modality": "CT"})


def test_resampling_round_trip_is_exact_for_a_linear_image(ct_small, threshold_model):
    """Intensity = a world coordinate: any half-voxel or axis error would move the 50 HU plane."""
    shape = (61, 50, 30)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ct_small.world_coordinates(ijk).reshape(*shape, 3)
    for axis in range(3):
        ramp = (world[..., axis] - np.median(world[..., axis])) * 10.0 + THRESHOLD_HU + 0.5
        vol = Volume(ramp.astype(np.float32), ct_small.affine, {"modality": "CT"})
        for moved, back in ((vol, lambda a: a), (reoriented(vol), undo_reoriented)):
            seg = segment_volume(moved, [threshold_model])
            np.testing.assert_array_equal(back(seg.array), ramp > THRESHOLD_HU)


def test_labels_lie_on_the_original_grid(ct_small, threshold_model):
    seg = segment_volume(ct_small, [threshold_model])
    assert seg.shape == ct_small.shape
    np.testing.assert_array_equal(seg.affine, ct_small.affine)
    assert seg.array.dtype == np.uint8 and seg.meta["label_names"] == {1: "bright"}
    assert dice(seg.array == 1, ct_small.array > THRESHOLD_HU) > 0.95


def test_any_voxel_order_gives_the_same_world_labels(ct_small, threshold_model):
    """A permuted + flipped copy (same world geometry) must give the same labels, voxel for voxel."""
    ref = segment_volume(ct_small, [threshold_model]).array
    moved = reoriented(ct_small)
    seg = segment_volume(moved, [threshold_model])
    np.testing.assert_array_equal(seg.affine, moved.affine)
    np.testing.assert_array_equal(undo_reoriented(seg.array), ref)


def test_real_lps_dicom_series(sample, threshold_model):
    from medseg.io.dicom import read_dicom_series

    vol = read_dicom_series(sample("ct_dicom"))  # 512×512×20, LPS voxel order, 0.98×0.98×2 mm
    assert vol.orientation != "RAS"
    vol = vol.with_array(ndimage.gaussian_filter(vol.array.astype(np.float32), (2, 2, 0.7)))
    seg = segment_volume(vol, [threshold_model])
    assert seg.shape == vol.shape and np.allclose(seg.affine, vol.affine)
    assert dice(seg.array == 1, vol.array > THRESHOLD_HU) > 0.97


def test_tta_and_ensemble_of_equivariant_models(ct_small, threshold_model):
    ref = segment_volume(ct_small, [threshold_model]).array
    assert ref.any()
    tta = segment_volume(ct_small, [threshold_model], InferenceOptions(tta=True)).array
    np.testing.assert_array_equal(tta, ref)
    twice = segment_volume(ct_small, [threshold_model, make_threshold_model(name="b")]).array
    np.testing.assert_array_equal(twice, ref)
    # a second model with another plan (spacing) is resampled onto the first one's grid
    other = make_threshold_model({**CT_PLAN, "spacing_mm": [3.5, 3.5, 3.5]}, name="c")
    mixed = segment_volume(ct_small, [threshold_model, other]).array
    assert dice(mixed == 1, ref == 1) > 0.97


def test_bf16_precision(ct_small, threshold_model):
    ref = segment_volume(ct_small, [threshold_model]).array
    bf16 = segment_volume(ct_small, [threshold_model], InferenceOptions(precision="bf16")).array
    assert dice(bf16 == 1, ref == 1) > 0.99
    with pytest.raises(InputError, match="unknown precision"):
        segment_volume(ct_small, [threshold_model], InferenceOptions(precision="fp8"))


def test_probabilities_match_labels(ct_small, threshold_model):
    seg = segment_volume(ct_small, [threshold_model], InferenceOptions(probabilities=True))
    p = seg.meta["probabilities"]
    assert p.shape == (*ct_small.shape, 2) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(p.argmax(-1), seg.array)


def test_resampling_outside_the_source_is_background():
    probs = torch.zeros((2, 4, 4, 4))
    probs[1] = 1.0  # everything foreground on the source grid
    src = np.eye(4)
    dst = np.eye(4)
    dst[:3, 3] = [-10.0, 0.0, 0.0]  # destination extends 10 mm beyond the source along x
    labels, p = labels_on_grid(probs, src, dst, (14, 4, 4), [0, 1], keep_probabilities=True)
    assert (labels[:9] == 0).all() and (labels[10:] == 1).all()
    np.testing.assert_allclose(p[:9, ..., 0], 1.0)


def test_modality_and_memory_guards(ct_small, threshold_model):
    mr = ct_small.with_array(ct_small.array, modality="MR")
    with pytest.raises(InputError, match="modality MR but the model was trained on CT"):
        segment_volume(mr, [threshold_model])
    with pytest.raises(InputError, match="--spacing"):
        segment_volume(ct_small, [threshold_model], InferenceOptions(max_memory_gb=1e-4))
    with pytest.raises(InputError, match="3-D"):
        segment_volume(Volume(np.zeros((4, 4, 4, 2)), np.eye(4)), [threshold_model])
    # estimate scales with the preprocessed grid
    assert preprocessed_shape(ct_small, [1.5, 1.5, 1.5]) == (244, 202, 60)
    small = estimate_memory_bytes(ct_small, [threshold_model], InferenceOptions(spacing_mm=(6.0, 6.0, 6.0)))
    assert small < estimate_memory_bytes(ct_small, [threshold_model], InferenceOptions())


def test_checkpoint_guards(tmp_path, random_ckpt):
    other = save_random_ckpt(tmp_path / "other.pt", {1: "liver", 2: "kidney"})
    with pytest.raises(CheckpointError, match="label sets differ"):
        load_models([random_ckpt, other], "cpu")
    den = save_random_ckpt(tmp_path / "den.pt", {1: "x"}, task="denoising")
    (loaded,) = load_models([den], "cpu")  # any task loads; it carries its task
    assert loaded.task == "denoising" and load_models([random_ckpt], "cpu")[0].task == "segmentation"
    with pytest.raises(CheckpointError, match="'denoising' checkpoint cannot segment"):
        segment_volume(Volume(np.zeros((8, 8, 8), np.float32), np.eye(4), {}), [loaded])
    with pytest.raises(CheckpointError, match="only segmentation checkpoints are ensembled"):
        load_models([random_ckpt, den], "cpu")
    mr = save_random_ckpt(tmp_path / "mr.pt", {1: "liver", 2: "spleen"}, modality="MR")
    with pytest.raises(CheckpointError, match="different modalities"):
        load_models([random_ckpt, mr], "cpu")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_models([], "cpu")
    (models,) = [load_models([random_ckpt, random_ckpt], "cpu")]
    assert len(models) == 2 and models[0].channel_values == [0, 1, 2]


def test_largest_component_and_hole_filling():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:10, 2:10, 2:10] = 1  # big organ with a hole
    lab[5, 5, 5] = 0
    lab[15:17, 15:17, 15:17] = 1  # island
    lab[12:14, 2:4, 2:4] = 2
    lab[4:6, 4:6, 4:6][lab[4:6, 4:6, 4:6] == 1] = 1
    kept = keep_largest_component(lab)
    assert kept[15, 15, 15] == 0 and kept[3, 3, 3] == 1 and kept[12, 2, 2] == 2
    filled = fill_holes(kept)
    assert filled[5, 5, 5] == 1 and (filled == 2).sum() == 8
    # a hole holding another label is not overwritten
    lab2 = np.zeros((9, 9, 9), np.uint8)
    lab2[1:8, 1:8, 1:8] = 1
    lab2[4, 4, 4] = 2
    assert fill_holes(lab2)[4, 4, 4] == 2


def test_resampling_shortcuts_agree_with_full_trilinear():
    """Cell shortcut (argmax copied inside one-class cells) == separable trilinear == grid_sample."""
    from medseg import resample as R

    g = np.stack(np.meshgrid(*[np.arange(n) for n in (30, 34, 20)], indexing="ij")).astype(np.float32)
    logits = np.zeros((3, 30, 34, 20), np.float32)
    logits[1] = 6 * (1 - ((g[0] - 12) / 8) ** 2 - ((g[1] - 15) / 9) ** 2 - ((g[2] - 9) / 6) ** 2)
    logits[2] = 6 * (1 - ((g[0] - 21) / 5) ** 2 - ((g[1] - 22) / 6) ** 2 - ((g[2] - 12) / 5) ** 2)
    probs = torch.softmax(torch.from_numpy(logits), 0)
    src = np.diag([3.0, 2.5, 3.0, 1.0])
    dst = np.array([[-1.1, 0, 0, 90.0], [0, 0, 0.9, -3.0], [0, 1.3, 0, 2.0], [0, 0, 0, 1]])  # flip + swap
    shape = (80, 50, 70)
    fast, _ = R.labels_on_grid(probs, src, dst, shape, [0, 4, 7])
    full, p = R.labels_on_grid(probs, src, dst, shape, [0, 4, 7], keep_probabilities=True)
    np.testing.assert_array_equal(fast, full)
    assert set(np.unique(fast)) == {0, 4, 7}
    # slices in reverse source order, ~3 destination slices between two source planes
    dst_rev = np.array([[1.2, 0, 0, 1.0], [0, 1.1, 0, 2.0], [0, 0, -0.9, 58.0], [0, 0, 0, 1]])
    shape_rev = (70, 75, 64)
    fast_rev, _ = R.labels_on_grid(probs, src, dst_rev, shape_rev, [0, 4, 7])
    full_rev, _ = R.labels_on_grid(probs, src, dst_rev, shape_rev, [0, 4, 7], keep_probabilities=True)
    np.testing.assert_array_equal(fast_rev, full_rev)
    assert set(np.unique(fast_rev)) == {0, 4, 7}
    # the fast path only computed the box that can hold labels: a strict part of the grid here
    ranges = R._foreground_ranges(R._SlabSampler(probs, src, dst, shape))
    assert all(r.stop - r.start <= n for r, n in zip(ranges, shape))
    assert np.prod([r.stop - r.start for r in ranges]) < 0.6 * np.prod(shape)
    outside = np.ones(shape, bool)
    outside[ranges] = False
    assert not fast[outside].any()
    # nothing but background: an empty map without any slab computed
    bg = torch.zeros_like(probs)
    bg[0] = 1
    slabs = []
    empty, _ = R.labels_on_grid(bg, src, dst, shape, [0, 4, 7], on_slab=lambda d, t: slabs.append(d))
    assert not empty.any() and empty.shape == shape and slabs == []
    sampler = R._SlabSampler(probs, src, dst, shape)
    assert sampler.perm == [0, 2, 1]
    sep, inside_sep = sampler.sample(0, shape[2])
    sampler.perm = None  # force the grid_sample fallback
    gs, inside_gs = sampler.sample(0, shape[2])
    torch.testing.assert_close(sep, gs, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(inside_sep.numpy(), inside_gs.numpy())
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)


def test_largest_component_restricted_to_some_labels():
    lab = np.zeros((20, 10, 10), np.uint8)
    lab[1:4, 2:5, 2:5] = 1
    lab[10:12, 2:4, 2:4] = 1  # second liver piece: removed
    lab[1:4, 6:9, 6:9] = 2
    lab[14:17, 6:9, 6:9] = 2  # other kidney: kept when label 2 is excluded
    out = keep_largest_component(lab, [1])
    assert out[10, 2, 2] == 0 and out[15, 7, 7] == 2 and out[2, 7, 7] == 2


@pytest.mark.parametrize("spacing", [[3.0, 3.0, 3.0], [1.1, 0.7, 2.0], [5.0, 2.4, 1.6]])
def test_fast_preprocessing_equals_monai_chain(spacing):
    """preprocess_for_model (lazy MONAI geometry + separable resampling) == MONAI's chain;
    [5.0, 2.4, 1.6] is twice the noise volumes' spacing: every axis samples source voxel
    centres (a gather, no interpolation)."""
    from medseg import sample_data
    from medseg.data.transforms import preprocessing_transforms, volume_to_metatensor
    from medseg import resample as R
    from medseg.inference import predict as P
    from medseg.inference.predict import preprocess_for_model
    from medseg.io import Volume
    from medseg.io.dicom import read_dicom_series

    plan = {"modality": "CT", "spacing_mm": spacing, "orientation": "RAS", "intensity": {"kind": "ct_window", "hu_min": -200, "hu_max": 300}}
    rng = np.random.default_rng(0)
    swapped = np.array([[0, 0, -2.5, 10], [1.2, 0, 0, -5], [0, -0.8, 0, 3], [0, 0, 0, 1.0]])  # permuted + flipped axes
    noise = (rng.normal(size=(37, 41, 23)) * 300).astype(np.float32)
    volumes = [
        read_dicom_series(sample_data.path("ct_dicom")),  # real LPS CT, Fortran-ordered array
        Volume(noise, swapped, {}),
        Volume(np.asfortranarray(noise), swapped, {}),
    ]
    for vol in volumes:
        chain = preprocessing_transforms(plan, label_key=None)
        grid = P._planned_grid(vol, chain)
        assert grid is not None and R.resample_image_linear(np.asarray(vol.array), vol.affine, *grid) is not None  # fast path taken
        if spacing == [5.0, 2.4, 1.6] and vol.array is not volumes[0].array:
            m = np.linalg.inv(vol.affine) @ grid[0]
            assert all(not w.any() for _, _, w, _ in R._linear_maps(m, R._axis_aligned(m), vol.shape, grid[1]))
        ref = chain({"image": volume_to_metatensor(vol)})["image"]
        got, affine = preprocess_for_model(vol, plan)
        assert tuple(got.shape[2:]) == tuple(ref.shape[1:])
        np.testing.assert_allclose(affine, np.asarray(ref.affine), atol=1e-9)
        torch.testing.assert_close(got[0], ref.as_tensor().float(), atol=2e-4, rtol=0)

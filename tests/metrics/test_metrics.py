"""Exact values of medseg.metrics on analytic shapes, brute force and MONAI 1.x."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from medseg.errors import GeometryError, InputError
from medseg.metrics import (
    assd,
    boundary,
    dice,
    evaluate_case,
    hausdorff,
    hd95,
    iou,
    nsd,
    surface_distances,
    volume_ml,
)


def box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def ball(shape, centre, radius_vox):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius_vox**2


def brute_force(gt, pred, spacing, tau=1.0):
    """Reference straight from the definitions: scipy erosion + all pairwise distances."""
    bg = gt & ~ndimage.binary_erosion(gt)
    bp = pred & ~ndimage.binary_erosion(pred)
    cg = np.argwhere(bg) * np.asarray(spacing)
    cp = np.argwhere(bp) * np.asarray(spacing)
    d = cdist(cp, cg)
    d_pg, d_gp = d.min(axis=1), d.min(axis=0)
    both = np.concatenate([d_pg, d_gp])
    return {
        "hd": max(d_pg.max(), d_gp.max()),
        "hd95": max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)),
        "assd": both.mean(),
        "nsd": np.count_nonzero(both <= tau) / both.size,
    }


def random_blobs(rng, shape, n_labels, sigma=2.0):
    """A label map of smooth random blobs (labels 1..n_labels)."""
    lab = np.zeros(shape, np.uint8)
    for k in range(1, n_labels + 1):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        lab[field > np.quantile(field, 0.9)] = k
    return lab


# ---------------------------------------------------------------- analytic values


def test_boundary_matches_scipy_erosion():
    rng = np.random.default_rng(0)
    m = ndimage.gaussian_filter(rng.standard_normal((30, 25, 20)), 1.5) > 0
    m[0, :, :] = True  # touches the array border: border voxels are boundary
    assert np.array_equal(boundary(m), m & ~ndimage.binary_erosion(m))
    assert boundary(np.ones((3, 3, 3), bool)).sum() == 26  # all but the centre


def test_one_voxel_shift_dice_iou():
    gt = box((20, 20, 20), (5, 5, 5), (15, 9, 9))  # 10 voxels long along axis 0
    pred = np.roll(gt, 1, axis=0)
    assert dice(gt, pred) == pytest.approx(0.9, abs=1e-15)
    assert iou(gt, pred) == pytest.approx(9 / 11, abs=1e-15)


@pytest.mark.parametrize("axis,spacing", [(0, (1.0, 1.0, 1.0)), (2, (0.7, 0.8, 2.5)), (1, (0.7, 0.8, 2.5))])
@pytest.mark.parametrize("offset", [1, 3])
def test_parallel_plates_known_distances(axis, spacing, offset):
    # one-voxel-thick plates: every voxel is boundary and its partner is straight across
    lo, hi = [4, 4, 4], [16, 14, 12]
    hi[axis] = lo[axis] + 1
    gt = box((24, 24, 24), lo, hi)
    pred = np.roll(gt, offset, axis=axis)
    expected = offset * spacing[axis]
    assert hausdorff(gt, pred, spacing) == pytest.approx(expected, rel=1e-12)
    assert hd95(gt, pred, spacing) == pytest.approx(expected, rel=1e-12)
    assert assd(gt, pred, spacing) == pytest.approx(expected, rel=1e-12)
    assert nsd(gt, pred, spacing, tolerance_mm=expected) == 1.0
    assert nsd(gt, pred, spacing, tolerance_mm=expected * 0.999) == 0.0
    assert dice(gt, pred) == 0.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.6, 0.9, 3.0)])
def test_sphere_offset_hausdorff_is_the_offset(spacing):
    gt = ball((40, 40, 40), (18, 20, 20), 9)
    pred = ball((40, 40, 40), (22, 20, 20), 9)  # 4 voxels further along axis 0
    assert hausdorff(gt, pred, spacing) == pytest.approx(4 * spacing[0], rel=1e-12)
    ref = brute_force(gt, pred, spacing, tau=1.6)
    sd = surface_distances(gt, pred, spacing)
    assert sd.hd95() == pytest.approx(ref["hd95"], rel=1e-12)
    assert sd.assd() == pytest.approx(ref["assd"], rel=1e-12)
    assert sd.nsd(1.6) == pytest.approx(ref["nsd"], rel=1e-12)


def test_nsd_counts_a_distance_equal_to_the_tolerance():
    # a 3-4-5 triangle: offset (2, 1) voxels at spacing (0.6, 0.9) is 1.5 mm, but in floating
    # point sqrt(1.2**2 + 0.9**2) = 1.5000000000000002; it must count as within τ = 1.5 mm
    gt = np.zeros((12, 12, 3), bool)
    gt[4, 4, 1] = True
    pred = np.zeros_like(gt)
    pred[6, 5, 1] = True
    assert hausdorff(gt, pred, (0.6, 0.9, 3.0)) == pytest.approx(1.5, rel=1e-15)
    assert nsd(gt, pred, (0.6, 0.9, 3.0), tolerance_mm=1.5) == 1.0
    assert nsd(gt, pred, (0.6, 0.9, 3.0), tolerance_mm=1.4999) == 0.0


def test_box_shift_brute_force_anisotropic():
    spacing = (0.5, 1.25, 3.0)
    gt = box((30, 30, 16), (5, 6, 3), (20, 18, 10))
    pred = box((30, 30, 16), (7, 5, 4), (24, 17, 12))
    ref = brute_force(gt, pred, spacing, tau=2.0)
    sd = surface_distances(gt, pred, spacing)
    assert sd.hausdorff() == pytest.approx(ref["hd"], rel=1e-12)
    assert sd.hd95() == pytest.approx(ref["hd95"], rel=1e-12)
    assert sd.assd() == pytest.approx(ref["assd"], rel=1e-12)
    assert sd.nsd(2.0) == pytest.approx(ref["nsd"], rel=1e-12)
    # the distance sets themselves: |∂P| and |∂G| entries
    assert sd.pred_to_gt.size == boundary(pred).sum() and sd.gt_to_pred.size == boundary(gt).sum()


def test_identical_masks():
    gt = ball((20, 20, 20), (10, 10, 10), 6)
    row = evaluate_case(gt, gt, (1, 1, 1))[0]
    assert (row["dice"], row["iou"], row["hd"], row["hd95"], row["assd"], row["nsd"]) == (1, 1, 0, 0, 0, 1)


def test_volumes_ml():
    gt = box((10, 10, 10), (0, 0, 0), (10, 10, 10))
    assert volume_ml(gt, (2.0, 2.0, 2.5)) == pytest.approx(10.0)
    row = evaluate_case(gt, gt, (2.0, 2.0, 2.5))[0]
    assert row["volume_gt_ml"] == pytest.approx(10.0) and row["volume_pred_ml"] == pytest.approx(10.0)


# ---------------------------------------------------------------- empty masks


def test_both_empty():
    z = np.zeros((8, 8, 8), np.uint8)
    row = evaluate_case(z, z, (1, 1, 1), labels={1: "liver"})[0]
    assert row == {"label": 1, "name": "liver", "dice": 1.0, "iou": 1.0, "hd": 0.0, "hd95": 0.0, "assd": 0.0, "nsd": 1.0, "volume_gt_ml": 0.0, "volume_pred_ml": 0.0}
    assert hausdorff(z, z, 1.0) == 0.0 and nsd(z, z, 1.0) == 1.0 and dice(z, z) == 1.0
    assert evaluate_case(z, z, (1, 1, 1)) == []  # no labels named, none present


@pytest.mark.parametrize("which", ["gt", "pred"])
def test_one_empty(which):
    m = box((8, 8, 8), (2, 2, 2), (5, 5, 5)).astype(np.uint8)
    z = np.zeros_like(m)
    gt, pred = (z, m) if which == "gt" else (m, z)
    row = evaluate_case(gt, pred, (1, 1, 1))[0]
    assert row["dice"] == 0.0 and row["iou"] == 0.0 and row["nsd"] == 0.0
    assert math.isinf(row["hd"]) and math.isinf(row["hd95"]) and math.isinf(row["assd"])
    assert row["volume_gt_ml" if which == "pred" else "volume_pred_ml"] == pytest.approx(0.027)


# ---------------------------------------------------------------- multi-label


def test_multilabel_rows_equal_single_label_calls():
    rng = np.random.default_rng(1)
    gt = random_blobs(rng, (40, 36, 24), 3)
    pred = random_blobs(rng, (40, 36, 24), 3)
    pred[gt == 2] = 2  # label 2 overlaps strongly
    spacing = (0.8, 0.8, 2.0)
    rows = evaluate_case(gt, pred, spacing, labels={1: "a", 2: "b", 3: "c", 7: "absent"}, nsd_tolerance_mm=2.0)
    assert [r["label"] for r in rows] == [1, 2, 3, 7] and [r["name"] for r in rows] == ["a", "b", "c", "absent"]
    for r in rows[:3]:
        g, p = gt == r["label"], pred == r["label"]
        assert r["dice"] == pytest.approx(dice(g, p), rel=1e-15)
        assert r["iou"] == pytest.approx(iou(g, p), rel=1e-15)
        ref = brute_force(g, p, spacing, tau=2.0)
        for key in ("hd", "hd95", "assd", "nsd"):
            assert r[key] == pytest.approx(ref[key], rel=1e-12), key
    assert rows[3]["dice"] == 1.0 and rows[3]["hd"] == 0.0
    # a background entry (as in a checkpoint's label table) is skipped
    assert [r["label"] for r in evaluate_case(gt, pred, spacing, labels={0: "background", 2: "b"})] == [2]
    # default labels: all present in either, named label_<k>
    assert [r["name"] for r in evaluate_case(gt, pred, spacing)] == ["label_1", "label_2", "label_3"]


def test_input_checks():
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(GeometryError):
        evaluate_case(a, np.zeros((4, 4, 5), np.uint8), (1, 1, 1))
    with pytest.raises(ValueError):
        evaluate_case(a, a, (1, 1))
    with pytest.raises(ValueError):
        evaluate_case(a, a, (1, 0, 1))
    with pytest.raises(InputError):
        evaluate_case(a + 0.5, a, (1, 1, 1))
    # float label maps with whole numbers are fine (label maps saved as float NIfTI)
    f = a.astype(np.float32)
    f[1, 1, 1] = 2
    assert evaluate_case(f, f, (1, 1, 1))[0]["label"] == 2


def test_two_dimensional_masks():
    gt = box((20, 20), (5, 5), (10, 12))
    pred = np.roll(gt, 2, axis=1)
    ref = brute_force(gt, pred, (0.5, 2.0))
    assert hausdorff(gt, pred, (0.5, 2.0)) == pytest.approx(ref["hd"], rel=1e-12)
    assert assd(gt, pred, (0.5, 2.0)) == pytest.approx(ref["assd"], rel=1e-12)


# ---------------------------------------------------------------- agreement with MONAI


def _monai_values(g: np.ndarray, p: np.ndarray, spacing, tau: float) -> dict[str, float]:
    import torch
    from monai.metrics import (
        DiceMetric,
        MeanIoU,
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    yp = torch.from_numpy(p[None, None].astype(np.float32))
    yt = torch.from_numpy(g[None, None].astype(np.float32))
    kw = dict(include_background=True, spacing=list(spacing))
    dm, mi = DiceMetric(include_background=True), MeanIoU(include_background=True)
    return {
        "hd": float(compute_hausdorff_distance(yp, yt, **kw)),
        "hd95": float(compute_hausdorff_distance(yp, yt, percentile=95, **kw)),
        "assd": float(compute_average_surface_distance(yp, yt, symmetric=True, **kw)),
        "nsd": float(compute_surface_dice(yp, yt, class_thresholds=[tau], **kw)),
        "dice": float(dm(yp, yt)),
        "iou": float(mi(yp, yt)),
    }


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_monai_on_random_shapes(seed):
    rng = np.random.default_rng(seed)
    shape = (48, 40, 28)
    spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, size=3))
    tau = float(rng.uniform(0.5, 3.0))
    gt = random_blobs(rng, shape, 3)
    pred = gt.copy()
    # perturb: shift one label, erode another, add random blobs to the third
    pred[pred == 1] = 0
    pred[np.roll(gt == 1, 2, axis=seed % 3)] = 1
    pred[(gt == 2) & ~ndimage.binary_erosion(gt == 2)] = 0
    pred[random_blobs(rng, shape, 1, sigma=1.0) == 1] = 3
    rows = evaluate_case(gt, pred, spacing, nsd_tolerance_mm=tau)
    assert [r["label"] for r in rows] == [1, 2, 3]
    for r in rows:
        ref = _monai_values(gt == r["label"], pred == r["label"], spacing, tau)
        for key, want in ref.items():
            assert r[key] == pytest.approx(want, rel=1e-6, abs=1e-9), (r["label"], key)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_documented_differences_from_monai_on_empty_masks():
    """MONAI gives nan when both masks are empty; the issue's definition (and medseg) gives a
    perfect score. With one empty mask both give inf distances and 0 NSD."""
    z = np.zeros((10, 10, 10), bool)
    m = box((10, 10, 10), (2, 2, 2), (6, 6, 6))
    both = _monai_values(z, z, (1, 1, 1), 1.0)
    assert math.isnan(both["hd"]) and math.isnan(both["assd"]) and math.isnan(both["nsd"])
    row = evaluate_case(z, z, (1, 1, 1), labels={1: "x"})[0]
    assert (row["hd"], row["assd"], row["nsd"], row["dice"]) == (0.0, 0.0, 1.0, 1.0)
    one = _monai_values(m, z, (1, 1, 1), 1.0)
    row = evaluate_case(m, z, (1, 1, 1))[0]
    assert math.isinf(one["hd"]) and math.isinf(row["hd"]) and one["nsd"] == row["nsd"] == 0.0

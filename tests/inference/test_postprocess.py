"""Post-processing (cc3d / fill_voids) against scipy.ndimage reference definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.inference.postprocess import fill_holes, keep_largest_component
from medseg.io.volume import count_label_values


def _reference_lcc(labels: np.ndarray, values: list[int] | None) -> np.ndarray:
    out = labels.copy()
    for v in np.unique(labels):
        if v == 0 or (values is not None and v not in values):
            continue
        comp, n = ndimage.label(labels == v, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(comp.ravel())[1:]
        out[(comp > 0) & (comp != int(np.argmax(sizes)) + 1)] = 0
    return out


def _reference_holes(labels: np.ndarray) -> np.ndarray:
    out = labels.copy()
    for v in np.unique(labels):
        if v == 0:
            continue
        filled = ndimage.binary_fill_holes(out == v)
        out[filled & (out == 0)] = v
    return out


def _blobby_labels(seed: int, shape=(40, 36, 30), n_labels=4) -> np.ndarray:
    """Smoothed random fields thresholded into several labels: many components and holes."""
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.uint8)
    for v in range(1, n_labels + 1):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
        out[(field > 0.12) & (out == 0)] = v
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_largest_component_equals_scipy_reference(seed):
    lab = _blobby_labels(seed)
    assert ndimage.label(lab == 1, structure=np.ones((3, 3, 3), bool))[1] > 1  # the test has islands to remove
    np.testing.assert_array_equal(keep_largest_component(lab), _reference_lcc(lab, None))
    np.testing.assert_array_equal(keep_largest_component(lab, [2, 4]), _reference_lcc(lab, [2, 4]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fill_holes_equals_scipy_reference(seed):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((40, 36, 30)), 1.5)
    lab = np.zeros(field.shape, np.uint8)
    lab[5:-5, 5:-5, 5:-5] = 1
    lab[field < -0.08] = 0  # background pockets: inside the box they are holes, at its faces not
    lab[(field < -0.14) & (rng.random(field.shape) < 0.3)] = 2  # some pockets hold another label
    lab[:, :, 0:3][field[:, :, 0:3] > 0.1] = 3  # a second label with its own holes near a face
    expected = _reference_holes(lab)
    assert ((expected == 1) & (lab == 0)).sum() > 20  # the case has holes to fill
    got = fill_holes(lab)
    np.testing.assert_array_equal(got, expected)
    assert (got[lab == 2] == 2).all()  # another label inside a hole is kept


def test_int_dtypes_and_empty_maps():
    lab = np.zeros((8, 8, 8), np.int32)
    assert not keep_largest_component(lab).any() and not fill_holes(lab).any()
    lab[1:3, 1:3, 1:3] = 300  # a value above uint8
    lab[6, 6, 6] = 300
    out = keep_largest_component(lab)
    assert out.dtype == np.int32 and out[6, 6, 6] == 0 and (out == 300).sum() == 8


def test_count_label_values():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 7, size=(50, 40, 30)).astype(np.uint16)
    np.testing.assert_array_equal(count_label_values(lab, chunk_voxels=1000), np.bincount(lab.ravel()))
    assert count_label_values(np.zeros((3, 3), bool)).tolist() == [9]
    with pytest.raises(TypeError):
        count_label_values(lab.astype(np.int16))


@pytest.mark.parametrize("order", ["C", "F"])
def test_labels_in_a_corner_of_a_large_map_in_place(order):
    """Post-processing works on the box around the labels: same result, any memory order, in place."""
    small = _blobby_labels(3, shape=(30, 26, 20))
    lab = np.zeros((70, 60, 50), np.uint8, order=order)
    lab[31:61, 5:31, 22:42] = small
    lab[0, 0, 0] = 1  # a one-voxel island far away: the box spans the whole map for label 1
    expected = _reference_holes(_reference_lcc(lab, None))
    assert expected[0, 0, 0] == 0
    out = fill_holes(keep_largest_component(lab, in_place=True), in_place=True)
    assert out is lab and (lab.flags.f_contiguous if order == "F" else lab.flags.c_contiguous)
    np.testing.assert_array_equal(lab, expected)
    # only label 2 processed: the island of label 1 stays; nothing else changes outside the labels' box
    lab2 = np.zeros((70, 60, 50), np.uint8, order=order)
    lab2[31:61, 5:31, 22:42] = small
    lab2[0, 0, 0] = 1
    got = keep_largest_component(lab2, [2])
    assert got[0, 0, 0] == 1 and got is not lab2
    np.testing.assert_array_equal(got, _reference_lcc(lab2, [2]))


@pytest.mark.parametrize("order", ["C", "F"])
def test_foreground_box(order):
    from medseg.io.volume import foreground_box

    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = tuple(int(n) for n in rng.integers(1, 9, size=rng.integers(1, 4)))
        dtype = rng.choice([np.uint8, np.int16, np.uint32, np.bool_])
        a = np.asarray((rng.random(shape) < rng.choice([0.0, 0.02, 0.2])) * rng.integers(-2, 3, size=shape)).astype(dtype)
        a = np.asfortranarray(a) if order == "F" else np.ascontiguousarray(a)
        nz = np.nonzero(a)
        expected = None if nz[0].size == 0 else tuple(slice(int(i.min()), int(i.max()) + 1) for i in nz)
        assert foreground_box(a) == expected
        assert foreground_box(a[::-1]) == (None if expected is None else foreground_box(np.ascontiguousarray(a[::-1])))
    with pytest.raises(TypeError):
        foreground_box(np.zeros((2, 2), np.float32))

"""QA picture slice choice and volume statistics on a real CT series in several voxel orders."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medseg.inference.outputs import _palette, label_statistics, qa_panels, qa_slices, write_qa_png
from medseg.io.orientation import to_ras_view as _to_ras
from medseg.io import Volume
from medseg.io.dicom import read_dicom_series


def _reoriented(vol: Volume, labels: np.ndarray, codes: str) -> tuple[Volume, np.ndarray]:
    """The same image and labels stored in another voxel order (e.g. 'LPS', 'SRA')."""
    start = nib.orientations.io_orientation(vol.affine)
    target = nib.orientations.axcodes2ornt(tuple(codes))
    t = nib.orientations.ornt_transform(start, target)
    affine = vol.affine @ nib.orientations.inv_ornt_aff(t, vol.shape)
    arr = np.asfortranarray(nib.orientations.apply_orientation(np.asarray(vol.array), t))
    lab = np.asfortranarray(nib.orientations.apply_orientation(labels, t))
    return Volume(arr, affine, dict(vol.meta)), lab


def _brute_force(labels: np.ndarray, affine: np.ndarray, n_axial: int = 3):
    lab, _ = _to_ras(labels, affine)
    zs = np.flatnonzero(lab.any(axis=(0, 1)))
    jy = np.flatnonzero(lab.any(axis=(0, 2)))
    ks = sorted({int(zs[int(round(q * (len(zs) - 1)))]) for q in np.linspace(0.2, 0.8, n_axial)})
    return ks, int(np.median(jy)), sorted(int(v) for v in np.unique(lab) if v)


@pytest.fixture(scope="module")
def ct_with_labels(sample):
    vol = read_dicom_series(sample("ct_dicom"))  # real CT, 512×512×20, LPS-like DICOM order
    labels = np.zeros(vol.shape, dtype=np.uint8, order="F")
    labels[100:220, 150:260, 3:9] = 1  # an off-centre block...
    labels[300:330, 200:240, 12:19] = 3  # ...and a second label higher up, further right
    return vol, labels


@pytest.mark.parametrize("codes", [None, "RAS", "LPI", "SRA", "AIL"])
def test_qa_slices_hold_labels_in_any_voxel_order(ct_with_labels, codes, tmp_path):
    vol, labels = ct_with_labels
    if codes:
        vol, labels = _reoriented(vol, labels, codes)
    ks, j, present = qa_slices(labels, vol.affine)
    assert (ks, j, present) == _brute_force(labels, vol.affine)
    assert qa_slices(labels, vol.affine, values=[3, 1, 0]) == (ks, j, [1, 3])
    lab_ras, _ = _to_ras(labels, vol.affine)
    assert all(lab_ras[:, :, k].any() for k in ks) and lab_ras[:, j, :].any()
    out = write_qa_png(vol, labels, {1: "liver", 3: "kidney"}, tmp_path / "qa.png", title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("codes", [None, "SRA"])
def test_qa_panels_colour_exactly_the_labelled_pixels(ct_with_labels, codes, tmp_path):
    """Each QA panel is its RAS slice in radiological view: grey where unlabelled, the label's
    colour blended in where labelled; the picture lays the panels out at their aspect."""
    from PIL import Image

    vol, labels = ct_with_labels
    if codes:
        vol, labels = _reoriented(vol, labels, codes)
    panels, present, palette = qa_panels(vol, labels, {1: "liver", 3: "kidney"})
    assert present == [1, 3] and len(panels) == 4
    ks, j, _ = qa_slices(labels, vol.affine)
    lab_ras, spacing = _to_ras(labels, vol.affine)
    expected = [lab_ras[:, :, k] for k in ks] + [lab_ras[:, j, :]]
    for (title, rgb, aspect), ls in zip(panels, expected):
        shown = np.flipud(np.fliplr(ls.T))  # rows: anterior/superior up; columns: patient's right on the left
        assert rgb.shape == (*shown.shape, 3) and rgb.dtype == np.uint8
        grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
        np.testing.assert_array_equal(~grey, shown > 0)
        for v in (1, 3):  # the label's own hue: its strongest channel is the palette colour's
            if (shown == v).any():
                assert np.all(np.argmax(rgb[shown == v], axis=1) == np.argmax(palette[v]))
    assert panels[-1][0] == f"coronal j={j}" and panels[-1][2] == pytest.approx(spacing[2] / spacing[0])
    out = write_qa_png(vol, labels, {1: "liver", 3: "kidney"}, tmp_path / "qa.png", title="série — test", height=200)
    with Image.open(out) as png:  # four 200-pixel squares side by side, title and legend
        assert png.mode == "RGB" and png.height > 200 and png.width == 2 * 10 + 4 * 200 + 3 * 12
        # the coronal panel (20 slices of 2 mm under 512 × 0.98 mm: wider than tall) fills its
        # square's width, centred, with white above and below
        pixels = np.asarray(png)
        right = pixels[:, 10 + 3 * (200 + 12) : 10 + 4 * 200 + 3 * 12]
        dark = np.flatnonzero((right < 250).any(axis=(1, 2)))  # rows holding the image (or text)
        assert (right[:, 0] < 250).any() and (right[:, -1] < 250).any()
        assert dark.size < png.height - 40


def test_palette_colours_are_distinct_and_not_grey():
    cols = _palette(120)[1:].astype(int)
    assert len({tuple(c) for c in cols[:30]}) == 30  # neighbouring label values differ
    assert np.all(cols.max(axis=1) - cols.min(axis=1) > 40)  # no grey: visible on CT


def test_qa_slices_without_labels(ct_with_labels):
    vol, labels = ct_with_labels
    ks, j, present = qa_slices(np.zeros_like(labels), vol.affine)
    assert present == [] and len(ks) == 3 and 0 <= min(ks) and max(ks) < 20 and j == 256


@pytest.mark.parametrize("intensities", ["int16 HU", "float32", "int32 offset"])
def test_label_statistics_match_numpy(ct_with_labels, intensities):
    """Exact integer sums (int16 CT), and the float path (float images; integers beyond
    ±2¹⁶) give numpy's counts, means and standard deviations."""
    vol, labels = ct_with_labels
    if intensities == "float32":
        vol = Volume(np.asarray(vol.array).astype(np.float32) * 0.5, vol.affine, dict(vol.meta))
    elif intensities == "int32 offset":
        vol = Volume(np.asarray(vol.array).astype(np.int32) + 100_000, vol.affine, dict(vol.meta))
    rows = {r["label"]: r for r in label_statistics(vol, labels, {1: "a", 2: "absent", 3: "b"})}
    voxel_ml = abs(np.linalg.det(vol.affine[:3, :3])) / 1000
    for v in (1, 3):
        hu = np.asarray(vol.array)[labels == v].astype(np.float64)
        assert rows[v]["voxels"] == hu.size
        assert rows[v]["volume_ml"] == pytest.approx(hu.size * voxel_ml, abs=1e-4)  # rounded to 0.1 µL
        assert rows[v]["mean_intensity"] == pytest.approx(hu.mean(), abs=1e-3)
        assert rows[v]["std_intensity"] == pytest.approx(hu.std(), abs=1e-3)
    assert rows[2]["voxels"] == 0 and np.isnan(rows[2]["mean_intensity"])

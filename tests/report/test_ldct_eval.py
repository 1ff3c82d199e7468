"""The low-dose CT evaluation (`medseg.report.ldct`) on a crop of the real held-out CT series."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medseg.ct.nps import nps_relative_error, uniform_roi_centres
from medseg.io.volume import Volume

WINDOWS = ((-1024.0, 3071.0), (-160.0, 240.0))


@pytest.fixture(scope="module")
def liver_crop():
    """A 128×128×4 crop of the bundled CT series around the liver (RAS), with the eroded liver mask."""
    from medseg import sample_data
    from medseg.data.ldct_pairs import orient_ras
    from medseg.demo import reference_on_grid
    from medseg.io import read_volume
    from medseg.io.dicom import read_dicom_series

    ct = orient_ras(read_dicom_series(sample_data.path("ct_dicom")))
    liver = np.asarray(reference_on_grid(read_volume(sample_data.path("ct_dicom_seg")), ct, {5: 1}).array) == 1
    hu = np.asarray(ct.array, dtype=np.float32)
    k0 = 8
    ci, cj = (int(round(c)) for c in ndimage.center_of_mass(liver[:, :, k0 + 2]))
    # the first 128² window holding the liver's centre, air outside the body (the simulator
    # checks for it) and room for ROIs in the eroded liver
    for di in range(-112, 1, 16):
        for dj in range(-112, 1, 16):
            i0, j0 = max(0, min(ci + di, hu.shape[0] - 128)), max(0, min(cj + dj, hu.shape[1] - 128))
            sl = (slice(i0, i0 + 128), slice(j0, j0 + 128), slice(k0, k0 + 4))
            mask = np.stack([ndimage.binary_erosion(liver[sl][:, :, k], iterations=2) for k in range(4)], -1)
            if hu[sl].min() < -900 and len(uniform_roi_centres(mask[:, :, 0], 16)) >= 3:
                affine = ct.affine.copy()
                affine[:3, 3] = (ct.affine @ np.array([i0, j0, k0, 1.0]))[:3]
                return Volume(np.ascontiguousarray(hu[sl]), affine, {"modality": "CT"}), mask
    raise AssertionError("no crop with air and liver found")


def test_uniform_roi_centres_tile_the_mask_without_overlap():
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:37, 3:35] = True  # 32 × 32: four 16-px squares fit, no more
    centres = uniform_roi_centres(mask, 16)
    assert len(centres) == 4
    for i, j in centres:
        assert mask[i - 8 : i + 8, j - 8 : j + 8].all()
    boxes = [(i - 8, j - 8) for i, j in centres]
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            assert abs(boxes[a][0] - boxes[b][0]) >= 16 or abs(boxes[a][1] - boxes[b][1]) >= 16
    assert uniform_roi_centres(mask, 16, max_rois=2) == centres[:2]
    assert uniform_roi_centres(mask, 33) == []


def test_nps_relative_error_reads_as_documented():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    assert nps_relative_error(ref, ref) == 0.0
    assert nps_relative_error(np.zeros(4), ref) == pytest.approx(1.0)
    assert nps_relative_error(0.5 * ref, ref) == pytest.approx(0.5)


def test_evaluate_low_dose_tables_match_scikit_image(liver_crop, tmp_path):
    from medseg.report.ldct import LOW_DOSE_INPUT, NORMAL_DOSE, LowDoseProtocol, baseline_method, evaluate_low_dose
    from medseg.report.ldct_report import write_low_dose_report

    image, mask = liver_crop
    seen: dict[float, np.ndarray] = {}

    def identity(low, slices):  # a trivial "enhancer": hands the low-dose input back
        seen[low.meta["low_dose_simulation"]["dose_fraction"]] = np.asarray(low.array)[:, :, list(slices)].copy()
        return np.asarray(low.array)[:, :, list(slices)]

    # a 128² crop attenuates far less than the whole body (few photons are lost), so the
    # default I0 would insert ~1 HU; 1e5 photons per ray makes the inserted noise 10-20 HU
    protocol = LowDoseProtocol(doses=(0.25, 0.1), slices=(0, 1, 2, 3), roi_size_px=16, max_rois_per_slice=4,
                               simulation={"views": 180, "photons_per_ray": 1e5})
    ev = evaluate_low_dose(image, {"identity": identity, "gaussian": baseline_method("gaussian")}, mask,
                           protocol=protocol, case="crop")
    assert len(ev.rows) == 2 * 3 * 2  # doses × (low-dose, identity, gaussian) × windows
    ref = np.asarray(image.array, dtype=np.float64)
    for dose in (0.25, 0.1):
        low = seen[dose].astype(np.float64)
        assert np.abs(low - ref).max() > 5  # the simulation inserted noise
        for lo, hi in WINDOWS:
            a, b = np.clip(low, lo, hi), np.clip(ref, lo, hi)
            want_psnr = peak_signal_noise_ratio(b, a, data_range=hi - lo)
            want_ssim = np.mean([structural_similarity(a[:, :, z], b[:, :, z], data_range=hi - lo, gaussian_weights=True,
                                                       sigma=1.5, use_sample_covariance=False) for z in range(4)])
            for method in (LOW_DOSE_INPUT, "identity"):
                (row,) = [r for r in ev.rows if r.level == dose and r.method == method and r.data_range == hi - lo]
                assert row.psnr_db == pytest.approx(want_psnr, abs=1e-9)
                assert row.ssim == pytest.approx(want_ssim, abs=1e-9)
                assert row.rmse == pytest.approx(np.sqrt(np.mean((a - b) ** 2)), rel=1e-9)
                assert f"{lo:g}..{hi:g} HU" in row.window
    psnr = {(r.level, r.method): r.psnr_db for r in ev.rows if r.data_range == 4095}
    assert psnr[(0.1, LOW_DOSE_INPUT)] < psnr[(0.25, LOW_DOSE_INPUT)] - 2  # less dose, more noise

    nps = {(r.dose_fraction, r.method): r for r in ev.nps}
    assert nps[(0.25, NORMAL_DOSE)].nps_error == 0.0 and nps[(0.25, NORMAL_DOSE)].std_ratio_vs_normal == 1.0
    for dose in (0.25, 0.1):
        low, same, smooth = nps[(dose, LOW_DOSE_INPUT)], nps[(dose, "identity")], nps[(dose, "gaussian")]
        assert low.n_rois == same.n_rois >= 8
        assert same.nps_error == low.nps_error > 0.3 and low.std_ratio_vs_normal > 1.2
        assert smooth.mean_frequency_per_mm < low.mean_frequency_per_mm  # the filter removes the fine grain
        assert smooth.noise_std_hu < low.noise_std_hu
    assert nps[(0.1, LOW_DOSE_INPUT)].nps_error > nps[(0.25, LOW_DOSE_INPUT)].nps_error

    paths = write_low_dose_report(ev, tmp_path)
    with open(paths["metrics_csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and {r["window"] for r in rows} == {"-1024..3071 HU", "-160..240 HU"}
    assert float(rows[0]["psnr_db"]) == pytest.approx(ev.rows[0].psnr_db)
    page = paths["html"].read_text()
    assert "data range 4095 HU" in page and "Who wins where" in page and "panel_dose10.png" in page
    assert paths["panel_10"].stat().st_size > 10_000 and paths["nps_25"].is_file()


def test_evaluate_low_dose_rejects_a_mask_off_grid(liver_crop):
    from medseg.errors import GeometryError
    from medseg.report.ldct import evaluate_low_dose

    image, mask = liver_crop
    with pytest.raises(GeometryError, match="mask"):
        evaluate_low_dose(image, {}, Volume(mask[:64].astype(np.uint8), image.affine, {}))


def test_volume_method_on_slabs_equals_the_whole_volume(liver_crop):
    from scipy.ndimage import uniform_filter1d

    from medseg.report.ldct import volume_method

    image, _ = liver_crop
    calls = []

    def enhance(v):  # a "2.5-D" enhancer: the mean of each slice and its neighbours (edge replicated)
        calls.append(v.shape[2])
        return v.with_array(uniform_filter1d(np.asarray(v.array, dtype=np.float32), 3, axis=2, mode="nearest"))

    whole = volume_method(enhance)(image, [0, 2, 3])
    slabs = volume_method(enhance, context_slices=1)(image, [0, 2, 3])
    assert calls == [4, 2, 3, 2]  # the whole volume, then a slab per scored slice (clipped at the ends)
    np.testing.assert_array_equal(whole, slabs)
    assert whole.shape == (128, 128, 3)

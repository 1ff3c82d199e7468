"""PSNR / SSIM / RMSE on a real CT slice against scikit-image and MONAI."""

import math

import numpy as np
import pytest
import torch
from monai.metrics import SSIMMetric
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from medseg.errors import GeometryError
from medseg.io import load_volume
from medseg.metrics.image import psnr, rmse, ssim
from medseg.sample_data import path as sample_path

HU_RANGE = 4095.0  # 12-bit CT: −1024 … 3071 HU


@pytest.fixture(scope="module")
def pair():
    hu = load_volume(sample_path("ct_dicom")).array[:, :, 8:11].astype(np.float64)
    noisy = hu + np.random.default_rng(0).normal(0.0, 40.0, hu.shape)
    return noisy, hu


def test_psnr_and_rmse_match_scikit_image(pair):
    noisy, hu = pair
    assert psnr(noisy, hu, HU_RANGE) == pytest.approx(peak_signal_noise_ratio(hu, noisy, data_range=HU_RANGE), abs=1e-9)
    assert rmse(noisy, hu) == pytest.approx(math.sqrt(mean_squared_error(hu, noisy)))
    assert rmse(noisy, hu) == pytest.approx(40.0, rel=0.01)
    # 40 HU white noise over a 4095 HU range: 20·log10(4095/40) dB
    assert psnr(noisy, hu, HU_RANGE) == pytest.approx(20 * math.log10(HU_RANGE / 40.0), abs=0.05)
    assert psnr(hu, hu, HU_RANGE) == math.inf


def test_ssim_matches_scikit_image_and_monai_on_a_real_slice(pair):
    noisy, hu = pair
    x, y = noisy[:, :, 1], hu[:, :, 1]
    ours = ssim(x, y, HU_RANGE)
    sk = structural_similarity(x, y, data_range=HU_RANGE, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    monai = SSIMMetric(spatial_dims=2, data_range=HU_RANGE, kernel_type="gaussian", win_size=11, kernel_sigma=1.5)
    mo = float(monai(torch.as_tensor(x, dtype=torch.float64)[None, None], torch.as_tensor(y, dtype=torch.float64)[None, None]))
    assert ours == pytest.approx(sk, abs=1e-12)
    assert ours == pytest.approx(mo, abs=1e-4)  # an independent implementation of the same definition
    assert 0.5 < ours < 0.99
    assert ssim(y, y, HU_RANGE) == pytest.approx(1.0)


def test_ssim_per_slice_is_the_mean_over_slices_and_3d_differs(pair):
    noisy, hu = pair
    per_slice = [ssim(noisy[:, :, z], hu[:, :, z], HU_RANGE) for z in range(3)]
    assert ssim(noisy, hu, HU_RANGE) == pytest.approx(np.mean(per_slice))
    vol_noisy = np.repeat(noisy, 4, axis=2)[:128, :128]
    vol_hu = np.repeat(hu, 4, axis=2)[:128, :128]
    three = ssim(vol_noisy, vol_hu, HU_RANGE, spatial_dims=3)
    sk3 = structural_similarity(vol_noisy, vol_hu, data_range=HU_RANGE, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert three == pytest.approx(sk3)


def test_window_clips_both_images_and_sets_the_data_range(pair):
    noisy, hu = pair
    lo, hi = -160.0, 240.0
    clipped = psnr(np.clip(noisy, lo, hi), np.clip(hu, lo, hi), hi - lo)
    assert psnr(noisy, hu, window=(lo, hi)) == pytest.approx(clipped)
    assert ssim(noisy, hu, window=(lo, hi)) == pytest.approx(ssim(np.clip(noisy, lo, hi), np.clip(hu, lo, hi), hi - lo))
    # a narrower window makes the same noise count more: lower PSNR
    assert psnr(noisy, hu, window=(lo, hi)) < psnr(noisy, hu, HU_RANGE)
    assert rmse(noisy, hu, window=(lo, hi)) < rmse(noisy, hu)


def test_torch_inputs_and_errors(pair):
    noisy, hu = pair
    assert psnr(torch.as_tensor(noisy), torch.as_tensor(hu), HU_RANGE) == pytest.approx(psnr(noisy, hu, HU_RANGE))
    with pytest.raises(ValueError, match="exactly one of data_range"):
        psnr(noisy, hu)
    with pytest.raises(ValueError, match="exactly one of data_range"):
        ssim(noisy, hu, HU_RANGE, window=(0, 1))
    with pytest.raises(GeometryError, match="differ in shape"):
        psnr(noisy[:, :, :2], hu, HU_RANGE)
    with pytest.raises(GeometryError, match="at least 11"):
        ssim(noisy[:5, :5, 0], hu[:5, :5, 0], HU_RANGE)

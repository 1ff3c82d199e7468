"""Classical denoising baselines on a real CT slice: they must improve PSNR; BM3D is optional."""

import sys

import numpy as np
import pytest

from medseg.enhance_baselines import bm3d_denoise, denoise_baseline, estimate_noise_sigma, gaussian_denoise, nlm_denoise
from medseg.errors import ConfigError, MedsegError
from medseg.io import load_volume
from medseg.metrics.image import psnr
from medseg.sample_data import path as sample_path

WINDOW = (-1024.0, 3071.0)


@pytest.fixture(scope="module")
def pair():
    hu = load_volume(sample_path("ct_dicom")).array[160:288, 180:308, 9:11].astype(np.float64)  # 128² abdomen
    noisy = hu + np.random.default_rng(0).normal(0.0, 60.0, hu.shape)
    return noisy, hu


def test_sigma_estimate_on_white_noise(pair):
    noisy, _ = pair
    assert estimate_noise_sigma(noisy) == pytest.approx(60.0, rel=0.15)


def test_gaussian_and_nlm_improve_psnr_slice_by_slice(pair):
    noisy, hu = pair
    base = psnr(noisy, hu, window=WINDOW)
    g = gaussian_denoise(noisy)
    assert g.shape == noisy.shape and g.dtype == np.float32
    assert psnr(g, hu, window=WINDOW) > base + 2
    n = nlm_denoise(noisy)  # σ estimated
    assert psnr(n, hu, window=WINDOW) > base + 3
    # slice-wise: slice 0 alone gives the same result as inside the stack
    np.testing.assert_allclose(nlm_denoise(noisy[:, :, 0]), n[:, :, 0], atol=1e-4)
    np.testing.assert_allclose(denoise_baseline("nlm", noisy, 60.0), nlm_denoise(noisy, 60.0))


def test_bm3d_with_true_sigma_beats_the_noisy_input(pair):
    pytest.importorskip("bm3d")
    noisy, hu = pair
    out = bm3d_denoise(noisy[:64, :64, 0], sigma=60.0)
    assert psnr(out, hu[:64, :64, 0], window=WINDOW) > psnr(noisy[:64, :64, 0], hu[:64, :64, 0], window=WINDOW) + 3


def test_missing_bm3d_and_bad_names_are_explained(monkeypatch, pair):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # import bm3d → ImportError
    with pytest.raises(MedsegError, match=r"pip install 'medseg\[bm3d\]'"):
        bm3d_denoise(pair[0][:, :, 0], sigma=1.0)
    with pytest.raises(ConfigError, match="expected one of gaussian, nlm, bm3d"):
        denoise_baseline("tv", pair[0])

"""Noise power spectrum: white noise is flat at σ²·sx·sy, the NPS integrates to the variance,
and the FBP noise of the simulator has the ramp's shape (rising from ~0 at DC)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.ct.low_dose import simulate_low_dose
from medseg.ct.nps import extract_rois, noise_power_spectrum, radial_average
from medseg.errors import InputError


def test_white_noise_nps_is_flat_and_integrates_to_the_variance():
    rng = np.random.default_rng(0)
    sigma, sx, sy = 12.0, 0.8, 0.6
    rois = rng.normal(0.0, sigma, size=(200, 32, 32))
    nps, fx, fy = noise_power_spectrum(rois, (sx, sy))
    assert nps.shape == (32, 32) and fx.shape == (32,) and fy.shape == (32,)
    expected = sigma**2 * sx * sy
    f, radial = radial_average(nps, fx, fy)
    assert np.all(np.abs(radial[1:] / expected - 1) < 0.1)  # flat (DC removed by the mean)
    integral = nps.sum() * (fx[1] - fx[0]) * (fy[1] - fy[0])
    assert abs(integral / (sigma**2 * (1 - 1 / 1024)) - 1) < 0.02
    assert f[0] > 0 and f[-1] <= min(np.abs(fx).max(), np.abs(fy).max())


def test_simulated_fbp_noise_has_a_ramp_shaped_nps(cylinder):
    noise = np.stack([simulate_low_dose(cylinder, 2.0, views=180, electronic_noise_std=0.0, seed=s) - cylinder
                      for s in range(3)], axis=-1)
    rois = extract_rois(noise, [(40, 40), (40, 56), (56, 40), (56, 56)], 16)
    assert rois.shape == (12, 16, 16)
    nps, fx, fy = noise_power_spectrum(rois, 2.0)
    f, radial = radial_average(nps, fx, fy)
    assert radial[0] < 0.5 * radial[len(radial) // 2]  # little power at low frequency (ramp)


def test_plane_detrend_removes_a_gradient_and_bad_input_is_refused():
    ii, jj = np.meshgrid(np.arange(16.0), np.arange(16.0), indexing="ij")
    nps, *_ = noise_power_spectrum((3 * ii - 2 * jj)[None], 1.0, detrend="plane")
    assert nps.max() < 1e-15
    with pytest.raises(InputError, match="at least 4×4"):
        noise_power_spectrum(np.zeros((2, 3)), 1.0)
    with pytest.raises(InputError, match="leaves"):
        extract_rois(np.zeros((10, 10)), [(1, 1)], 6)

"""simulate_low_dose: identity at full dose, noise variance ∝ (1/d − 1), reproducibility,
the full-sinogram mode, errors; on a water cylinder and on the bundled real CT (liver)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.ct.low_dose import extra_variance, hu_to_mu, mu_to_hu, simulate_low_dose
from medseg.errors import ConfigError, InputError

from .phantoms import smooth_phantom

DOSES = [0.1, 0.2, 0.35, 0.5, 0.75]


def _slope(doses, variances):
    x = np.log(1.0 / np.asarray(doses) - 1.0)
    return float(np.polyfit(x, np.log(variances), 1)[0])


def test_full_dose_is_exactly_the_input(cylinder, ct_slices):
    out = simulate_low_dose(cylinder, 2.0, dose_fraction=1.0, views=60)
    assert out.dtype == np.float32 and np.array_equal(out, cylinder)
    hu, spacing = ct_slices
    out = simulate_low_dose(hu, spacing, dose_fraction=1.0)
    assert out.shape == hu.shape and np.array_equal(out, hu.astype(np.float32))


def test_noise_variance_scales_with_dose_in_a_water_cylinder(cylinder):
    roi = (slice(36, 60), slice(36, 60))  # centre of the 140 mm cylinder
    variances = []
    for k, d in enumerate(DOSES):
        out = simulate_low_dose(cylinder, 2.0, dose_fraction=d, views=180, electronic_noise_std=0.0, seed=100 + k)
        noise = out - cylinder
        assert abs(float(noise[roi].mean())) < 0.2 * float(noise[roi].std())  # zero-mean noise
        variances.append(float(noise[roi].var()))
    assert abs(_slope(DOSES, variances) - 1.0) < 0.05, variances
    assert variances[0] > variances[-1] * 10


def test_noise_variance_scales_with_dose_in_the_liver_of_the_real_ct(ct_slices, sample):
    from scipy import ndimage

    from medseg.io import load_volume

    hu, spacing = ct_slices
    seg = load_volume(sample("ct_dicom_seg"))
    ct = load_volume(sample("ct_dicom"))
    # the label map's j axis runs the other way (its affine says so): put it on the CT's grid
    flip = np.sign(np.diag(seg.affine)[:3]) != np.sign(np.diag(ct.affine)[:3])
    labels = seg.array[:, ::-1] if flip[1] else seg.array
    liver = ndimage.binary_erosion((labels[:, :, 9:11] == 5).all(-1), iterations=8)
    assert liver.sum() > 5000 and abs(float(hu[..., 0][liver].mean()) - 92) < 20  # enhanced liver, HU
    variances = []
    for k, d in enumerate([0.1, 0.25, 0.5, 0.75]):
        out = simulate_low_dose(hu[..., :1], spacing, dose_fraction=d, views=120, electronic_noise_std=0.0, seed=k)
        variances.append(float((out[..., 0] - hu[..., 0])[liver].var()))
    assert abs(_slope([0.1, 0.25, 0.5, 0.75], variances) - 1.0) < 0.05, variances


def test_electronic_noise_adds_the_second_order_term():
    p = torch.tensor([0.0, 4.0, 8.0])
    quantum = extra_variance(p, 0.25, 1e5, 0.0)
    both = extra_variance(p, 0.25, 1e5, 10.0)
    assert torch.allclose(quantum, 3.0 * torch.exp(p) / 1e5)
    assert torch.allclose(both - quantum, 15.0 * 100.0 * torch.exp(2 * p) / 1e10)
    assert float(extra_variance(p, 1.0, 1e5, 10.0).abs().max()) == 0.0


def test_seeded_reproducibility_and_batch_independence(cylinder):
    vol = np.stack([cylinder, cylinder[::-1], cylinder.T], axis=-1)
    a = simulate_low_dose(vol, 2.0, views=60, seed=7, slices_per_batch=3)
    b = simulate_low_dose(vol, 2.0, views=60, seed=7, slices_per_batch=1)
    c = simulate_low_dose(vol, 2.0, views=60, seed=8)
    # other batch sizes run other NUFFT/FFT plans: equal to their tolerance (noise std ~10² HU)
    np.testing.assert_allclose(a, b, atol=1e-2)
    assert not np.allclose(a, c)
    # each slice gets its own noise
    assert not np.allclose(a[..., 0] - vol[..., 0], (a[..., 1] - vol[..., 1])[::-1])


def test_torch_input_gives_torch_output_on_its_device(cylinder):
    t = torch.from_numpy(cylinder)
    out = simulate_low_dose(t, (2.0, 2.0), views=40, seed=1)
    assert isinstance(out, torch.Tensor) and out.device == t.device and out.shape == t.shape
    np.testing.assert_allclose(out.numpy(), simulate_low_dose(cylinder, 2.0, views=40, seed=1), atol=1e-4)


def test_full_mode_round_trip_is_the_image_within_fbp_error():
    mu = smooth_phantom((80, 72), (1.5, 1.7))
    hu = mu_to_hu(torch.from_numpy(mu)).numpy()
    out = simulate_low_dose(hu, (1.5, 1.7), dose_fraction=1.0, photons_per_ray=1e12, electronic_noise_std=0.0,
                            mode="full", seed=0)
    err = hu_to_mu(torch.from_numpy(out)).numpy() - mu
    assert np.linalg.norm(err) / np.linalg.norm(mu) < 0.01


def test_full_mode_noise_matches_the_insertion_formula(cylinder):
    """Poisson counts + log have (to first order) variance e^p/I0. A full simulation with
    I0' = I0/(1/d − 1) therefore has the variance that insertion adds at dose d with I0."""
    roi = (slice(36, 60), slice(36, 60))
    ins = simulate_low_dose(cylinder, 2.0, dose_fraction=0.25, views=180, electronic_noise_std=0.0, seed=3) - cylinder
    full = simulate_low_dose(cylinder, 2.0, dose_fraction=1.0, photons_per_ray=1.5e5 / 3.0, views=180,
                             electronic_noise_std=0.0, mode="full", seed=4)
    full_noise = full - simulate_low_dose(cylinder, 2.0, dose_fraction=1.0, photons_per_ray=1e12, views=180,
                                          electronic_noise_std=0.0, mode="full", seed=4)
    assert abs(full_noise[roi].var() / ins[roi].var() - 1.0) < 0.15


def test_bad_arguments():
    img = np.zeros((16, 16), np.float32) - 1000
    with pytest.raises(ConfigError, match="dose_fraction"):
        simulate_low_dose(img, 1.0, dose_fraction=0.0)
    with pytest.raises(ConfigError, match="photons_per_ray"):
        simulate_low_dose(img, 1.0, photons_per_ray=-1)
    with pytest.raises(ConfigError, match="mode"):
        simulate_low_dose(img, 1.0, mode="other")
    bad = img.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        simulate_low_dose(bad, 1.0)
    with pytest.raises(InputError, match="2-D slice or 3-D"):
        simulate_low_dose(np.zeros(5), 1.0)

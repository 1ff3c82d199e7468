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
    ins = simulate_low_dose(cylinder, 2.0, dose_fraction=0.25, photons_per_ray=1.5e5, views=180, electronic_noise_std=0.0,
                            seed=3) - cylinder
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


def _window_constant(name: str) -> float:
    """∫ f² W(f)² (2 + cos 2πf)/3 df over a bin's band: the ramp-filtered, linearly
    interpolated FBP's noise gain (the (2 + cos)/3 is linear interpolation at a uniformly
    distributed sub-bin position)."""
    f = np.linspace(-0.5, 0.5, 20001)
    w = np.ones_like(f) if name == "ram-lak" else 0.5 * (1 + np.cos(2 * np.pi * f))
    return float(np.trapezoid(f**2 * w**2 * (2 + np.cos(2 * np.pi * f)) / 3, f))


@pytest.mark.parametrize("window", ["hann", "ram-lak"])
@pytest.mark.parametrize("projector", ["fourier", "direct"])
def test_noise_variance_in_a_water_cylinder_matches_the_analytical_fbp_value(window, projector):
    """var(μ̂) = π²·C_W/(V·Δ²) · var(p) with var(p) = (1/a − 1)·e^p/I0 along the rays through
    the ROI: checks the absolute constants (views, bin width, filter scale, μ → HU)."""
    from medseg.ct.low_dose import MU_WATER_PER_MM

    n, s, radius, views, i0, a = 128, 1.5, 80.0, 360, 1e5, 0.25
    u = (np.arange(n) - (n - 1) / 2) * s
    uu, vv = np.meshgrid(u, u, indexing="ij")
    r = np.hypot(uu, vv)
    hu = np.where(r <= radius, 0.0, -1000.0).astype(np.float32)
    roi = r < 15
    th = np.arange(views) * np.pi / views
    t = r[roi][:, None] * np.cos(th[None] - np.arctan2(vv[roi], uu[roi])[:, None])
    var_p = (1 / a - 1) * np.exp(2 * MU_WATER_PER_MM * np.sqrt(radius**2 - t**2)).mean(1) / i0
    expected = float(np.mean(var_p)) * np.pi**2 * _window_constant(window) / (views * s**2) * (1000 / MU_WATER_PER_MM) ** 2
    measured = np.mean([np.var((simulate_low_dose(hu, s, dose_fraction=a, photons_per_ray=i0, views=views, filter=window,
                                                  projector=projector, seed=k) - hu)[roi]) for k in range(4)])
    assert abs(measured / expected - 1) < 0.1, (measured, expected)


def test_default_photons_follow_the_fluence_bin_thickness_and_views(cylinder):
    from medseg.ct.low_dose import DEFAULT_PHOTONS_PER_MM2, photons_per_ray_for
    from medseg.ct.projector import CTGeometry

    geo = CTGeometry((96, 96), (2.0, 2.0), n_views=180)
    assert photons_per_ray_for(geo, 3.0) == pytest.approx(DEFAULT_PHOTONS_PER_MM2 * 2.0 * 3.0 / 180)
    roi = (slice(36, 60), slice(36, 60))

    def var(**kw):
        return np.mean([np.var((simulate_low_dose(cylinder, 2.0, seed=k, **kw) - cylinder)[roi]) for k in range(3)])

    base = var(views=180, slice_thickness_mm=1.0)
    # the same dose spread over twice the views: the same noise (not half the variance)
    assert abs(var(views=360, slice_thickness_mm=1.0) / base - 1) < 0.15
    # a slice twice as thick collects twice the photons; (sx, sy, sz) passes the thickness
    assert abs(var(views=180, slice_thickness_mm=2.0) / base - 0.5) < 0.08
    assert abs(var(views=180, slice_thickness_mm=2.0) / np.mean(
        [np.var((simulate_low_dose(cylinder, (2.0, 2.0, 2.0), views=180, seed=k) - cylinder)[roi]) for k in range(3)]) - 1) < 1e-6


def test_default_quarter_dose_noise_in_the_liver_is_realistic(ct_slices, sample):
    """√3 × the bundled scan's own liver noise (8–12 HU, docs/benchmarks.md) is what a real
    quarter-dose scan adds: 14–21 HU. The defaults must land there (2 mm slices)."""
    from scipy import ndimage

    from medseg.io import load_volume

    hu, spacing = ct_slices
    seg = load_volume(sample("ct_dicom_seg"))
    ct = load_volume(sample("ct_dicom"))
    flip = np.sign(np.diag(seg.affine)[:3]) != np.sign(np.diag(ct.affine)[:3])
    labels = seg.array[:, ::-1] if flip[1] else seg.array
    liver = ndimage.binary_erosion(labels[:, :, 10] == 5, iterations=8)
    out = simulate_low_dose(hu[..., 1], (*spacing, ct.spacing[2]), dose_fraction=0.25, seed=0)
    extra = float(np.std((out - hu[..., 1])[liver]))
    assert 14.0 < extra < 21.0, extra

"""Noise models: their statistics on real scans, units, seeding and the dict-transform contract."""

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from medseg.data.noise import (
    RandCTDoseNoised,
    RandGaussianNoiseRanged,
    RandRicianNoiseRanged,
    add_ct_dose_noise,
    add_rician_noise,
    build_noise_transform,
    ct_noise_std_hu,
    ramp_texture_noise,
    robust_max,
    sample_counts,
)
from medseg.errors import ConfigError
from medseg.io import load_volume
from medseg.sample_data import path as sample_path


@pytest.fixture(scope="module")
def ct_slice():
    vol = load_volume(sample_path("ct_dicom"))
    return vol.array[:, :, 10].astype(np.float64), vol.spacing


@pytest.fixture(scope="module")
def mr():
    return load_volume(sample_path("brain_mri")).array.astype(np.float32)


def test_gaussian_std_matches_sigma_on_real_ct(ct_slice):
    hu, _ = ct_slice
    t = RandGaussianNoiseRanged("image", sigma_range=(25.0, 25.0), output_keys="noisy", level_key="sigma")
    t.set_random_state(seed=3)
    out = t({"image": hu})
    diff = out["noisy"] - hu
    assert out["sigma"] == 25.0
    assert abs(diff.mean()) < 0.5
    assert diff.std() == pytest.approx(25.0, rel=0.01)
    np.testing.assert_array_equal(out["image"], hu)  # the clean image stays as the target


def test_rician_background_bias_is_sigma_sqrt_pi_over_2(mr):
    background = mr == 0
    assert background.sum() > 10_000
    fraction = 0.05
    t = RandRicianNoiseRanged("image", fraction_range=(fraction, fraction))
    t.set_random_state(seed=0)
    noisy = t({"image": mr})["image"]
    sigma = fraction * robust_max(mr)
    assert noisy.min() >= 0
    assert noisy[background].mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.02)
    # bright tissue (x ≫ σ): nearly Gaussian, unbiased, std σ
    bright = mr > 20 * sigma
    assert bright.sum() > 1000
    d = noisy[bright] - mr[bright]
    assert abs(d.mean()) < 0.05 * sigma
    assert d.std() == pytest.approx(sigma, rel=0.05)


def test_rician_on_patches_takes_the_scans_robust_max(mr):
    """A patch cropped from the scan gets the scan's σ with `RobustMaxd` + ``reference_key``;
    on its own robust max a patch of background and dim tissue gets far less (the training bug
    this guards against: the network never saw the background's Rayleigh floor at full σ)."""
    from medseg.data.noise import RobustMaxd
    from medseg.errors import ConfigError

    item = RobustMaxd("image")({"image": mr[None]})
    assert item["noise_reference"] == pytest.approx(robust_max(mr))
    # the corner of the scan: background with a little dim tissue
    corner = mr[:40, :40]
    assert robust_max(corner) < 0.5 * robust_max(mr)
    fraction = 0.05
    sigma = fraction * robust_max(mr)
    t = RandRicianNoiseRanged("image", fraction_range=(fraction, fraction), reference_key="noise_reference")
    t.set_random_state(seed=0)
    noisy = t({"image": corner, "noise_reference": item["noise_reference"]})["image"]
    assert noisy[corner == 0].mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.05)
    own = RandRicianNoiseRanged("image", fraction_range=(fraction, fraction))
    own.set_random_state(seed=0)
    assert own({"image": corner})["image"][corner == 0].mean() < 0.5 * sigma
    with pytest.raises(ConfigError, match="noise_reference"):
        t({"image": corner})


def test_robust_max_is_the_percentile_of_nonzero_voxels(mr):
    assert robust_max(mr) == pytest.approx(np.percentile(mr[mr != 0], 99.5))
    assert robust_max(np.zeros(5)) == 1.0


def test_poisson_gaussian_counts_variance_is_mean_plus_electronic():
    rng = np.random.default_rng(1)
    means = np.array([20.0, 200.0, 2000.0, 20000.0])
    counts = sample_counts(np.repeat(means[:, None], 50_000, axis=1), electronic_sigma=5.0, rng=rng)
    np.testing.assert_allclose(counts.mean(axis=1), means, rtol=0.01)
    # quantum variance ∝ mean (equal to it), plus σ_e²
    np.testing.assert_allclose(counts.var(axis=1), means + 25.0, rtol=0.03)
    pure = sample_counts(np.repeat(means[:, None], 50_000, axis=1), electronic_sigma=0.0, rng=rng)
    np.testing.assert_allclose(pure.var(axis=1) / pure.mean(axis=1), 1.0, atol=0.03)


def test_ct_noise_std_follows_dose_and_attenuation(ct_slice):
    hu, spacing = ct_slice
    kw = dict(photons_per_ray=1e6, electronic_sigma=0.0)
    half = ct_noise_std_hu(hu, spacing[:2], dose_fraction=0.5, **kw)
    quarter = ct_noise_std_hu(hu, spacing[:2], dose_fraction=0.25, **kw)
    # quantum only: added variance ∝ (1/a − 1): quarter/half = 3/1
    np.testing.assert_allclose(quarter**2 / half**2, 3.0, rtol=1e-9)
    assert np.all(ct_noise_std_hu(hu, spacing[:2], dose_fraction=1.0, **kw) == 0)
    # more photons, less noise: variance ∝ 1/I₀
    np.testing.assert_allclose(ct_noise_std_hu(hu, spacing[:2], dose_fraction=0.5, photons_per_ray=4e6) * 2, half, rtol=1e-9)
    body = hu > -500
    # the noise is larger inside the patient (long paths) than in the air around it
    assert np.median(half[body]) > 2 * np.median(half[~body])
    assert 10 < np.median(half[body]) < 200  # tens of HU: a plausible clinical level


def test_ct_dose_noise_in_hu_has_the_predicted_std_and_ramp_texture(ct_slice):
    hu, spacing = ct_slice
    rng = np.random.default_rng(0)
    noisy = add_ct_dose_noise(hu, spacing, rng, photons_per_ray=1e6, dose_fraction=0.25, electronic_sigma=10.0)
    std = ct_noise_std_hu(hu, spacing[:2], photons_per_ray=1e6, dose_fraction=0.25, electronic_sigma=10.0)
    z = (noisy - hu) / std
    body = hu > -500
    assert z[body].std() == pytest.approx(1.0, rel=0.1)
    t = ramp_texture_noise((256, 256), np.random.default_rng(2))
    assert t.std() == pytest.approx(1.0)
    # FBP texture: power ∝ |f| (ramp) apodised to 0 at Nyquist, so little power at low and
    # at the highest frequencies, most in between; neighbours correlate positively
    power = np.abs(np.fft.fft2(t)) ** 2
    f = np.hypot(np.fft.fftfreq(256)[:, None], np.fft.fftfreq(256)[None, :])
    low, mid, high = power[(f > 0) & (f < 0.04)].mean(), power[(f > 0.15) & (f < 0.25)].mean(), power[f > 0.48].mean()
    assert low < 0.3 * mid and high < 0.1 * mid
    assert np.corrcoef(t[:-1].ravel(), t[1:].ravel())[0, 1] > 0.2


def test_ct_transform_in_network_units_reads_spacing_from_the_affine(ct_slice):
    hu, spacing = ct_slice
    plan = {"kind": "hu_linear", "hu_min": -1024.0, "hu_max": 3071.0}
    x = (hu - plan["hu_min"]) / (plan["hu_max"] - plan["hu_min"])
    affine = torch.diag(torch.tensor([spacing[0], spacing[1], spacing[2], 1.0], dtype=torch.float64))
    img = MetaTensor(torch.as_tensor(x[None, :, :, None], dtype=torch.float32), affine=affine)
    t = RandCTDoseNoised("image", dose_range=(0.25, 0.25), intensity=plan, output_keys="noisy", level_key="dose")
    t.set_random_state(seed=5)
    out = t({"image": img})
    assert isinstance(out["noisy"], MetaTensor) and out["noisy"].shape == img.shape
    torch.testing.assert_close(out["noisy"].affine, img.affine)
    assert out["dose"] == pytest.approx(0.25)
    noisy_hu = out["noisy"][0, :, :, 0].numpy() * 4095.0 - 1024.0
    ref = add_ct_dose_noise(hu, spacing, np.random.default_rng(0), dose_fraction=0.25)
    body = hu > -500
    assert (noisy_hu - hu)[body].std() == pytest.approx((ref - hu)[body].std(), rel=0.1)


def test_seeded_transforms_reproduce_and_draw_levels_within_range(mr):
    image = mr[:, :, 10:12]
    def run(seed):
        c = Compose([RandRicianNoiseRanged("image", fraction_range=(0.02, 0.08), output_keys="noisy", level_key="f")])
        c.set_random_state(seed=seed)
        return [c({"image": image}) for _ in range(3)]
    a, b, other = run(7), run(7), run(8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["noisy"], y["noisy"])
        assert x["f"] == y["f"]
    assert not np.array_equal(a[0]["noisy"], other[0]["noisy"])
    levels = [d["f"] for d in a]
    assert all(0.02 <= f <= 0.08 for f in levels) and len(set(levels)) == 3  # blind: a new level per call


def test_ct_dose_levels_are_log_uniform_within_range():
    t = RandCTDoseNoised("image", dose_range=(0.05, 0.5), spacing_mm=(1.0, 1.0))
    t.set_random_state(seed=0)
    levels = []
    for _ in range(400):
        t.randomize()
        levels.append(t.level)
    logs = np.log(levels)
    assert min(levels) >= 0.05 and max(levels) <= 0.5
    assert np.mean(logs) == pytest.approx(np.log(np.sqrt(0.05 * 0.5)), abs=0.1)


def test_prob_zero_copies_the_clean_image():
    t = RandGaussianNoiseRanged("image", sigma_range=(1.0, 2.0), prob=0.0, output_keys="noisy", level_key="s")
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    out = t({"image": x})
    np.testing.assert_array_equal(out["noisy"], x)
    assert out["s"] == 0.0


def test_builder_and_bad_levels_give_clear_errors():
    t = build_noise_transform("image", {"model": "rician", "fraction_range": [0.01, 0.05]}, output_keys="noisy")
    assert isinstance(t, RandRicianNoiseRanged) and t.fraction_range == (0.01, 0.05)
    with pytest.raises(ConfigError, match="noise.model must be one of gaussian, rician, ct_dose"):
        build_noise_transform("image", {"model": "poisson"})
    with pytest.raises(ConfigError, match="unknown option.*sigma"):
        build_noise_transform("image", {"model": "rician", "sigma": 0.1})
    with pytest.raises(ConfigError, match="dose_range"):
        RandCTDoseNoised("image", dose_range=(0.0, 0.5))
    with pytest.raises(ConfigError, match="dose_range"):
        RandCTDoseNoised("image", dose_range=(0.1, 2.0))
    with pytest.raises(ConfigError, match="sigma"):
        add_rician_noise(np.zeros(3), -1.0, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="spacing"):
        RandCTDoseNoised("image")({"image": np.zeros((1, 8, 8), dtype=np.float32)})


def test_default_photons_give_a_clinical_full_dose_noise_in_soft_tissue(ct_slice):
    hu, spacing = ct_slice
    # at a = 0.5 the added quantum variance (1/a − 1)/N̄ equals the full-dose one 1/N̄
    full = ct_noise_std_hu(hu, spacing[:2], photons_per_ray=RandCTDoseNoised("image").photons_per_ray, dose_fraction=0.5)
    soft = (hu > -100) & (hu < 200)
    assert 8 < np.median(full[soft]) < 25  # HU: the order of a clinical abdominal CT


def test_patch_noise_from_cached_maps_keeps_the_whole_slice_variance(ct_slice):
    from medseg.data.noise import CTNoiseMapsd

    hu, spacing = ct_slice
    affine = torch.diag(torch.tensor([spacing[0], spacing[1], spacing[2], 1.0], dtype=torch.float64))
    img = MetaTensor(torch.as_tensor(hu[None, :, :, None], dtype=torch.float32), affine=affine)
    d = CTNoiseMapsd("image", maps_key="maps")({"image": img})
    assert d["maps"].shape == (2, *hu.shape, 1) and isinstance(d["maps"], MetaTensor)
    box = (slice(0, 1), slice(200, 264), slice(150, 214), slice(0, 1))  # a 64² patch inside the body
    patch = {"image": d["image"][box], "maps": d["maps"][(slice(None), *box[1:])]}
    t = RandCTDoseNoised("image", dose_range=0.25, maps_key="maps", output_keys="noisy")
    t.set_random_state(seed=1)
    out = t(patch)
    added = (out["noisy"] - patch["image"])[0, :, :, 0].numpy()
    full = ct_noise_std_hu(hu, spacing[:2], photons_per_ray=1e7, dose_fraction=0.25, electronic_sigma=10.0)[200:264, 150:214]
    assert (added / full).std() == pytest.approx(1.0, rel=0.05)
    # the patch alone would be an object 64 px wide: far less attenuation, far less noise
    alone = ct_noise_std_hu(hu[200:264, 150:214], spacing[:2], photons_per_ray=1e7, dose_fraction=0.25, electronic_sigma=10.0)
    assert np.median(alone) < 0.5 * np.median(full)
    with pytest.raises(ConfigError, match="crop them with the image"):
        t({"image": patch["image"], "maps": d["maps"]})


def test_ct_dose_noise_defaults_give_clinical_noise_levels(ct_slice):
    """Calibration on the real 512² series (0.98 mm, 2 mm slices) at the workflows' default
    I₀ = 1e7: the added noise in soft tissue at quarter dose is in the range a real quarter-dose
    abdominal CT adds (~15-35 HU), and the full-dose noise the model implies (the added noise at
    half dose, (1/a − 1) = 1) is a clinical full-dose level (~8-20 HU)."""
    from medseg.config.schema import NoiseConfig

    hu, spacing = ct_slice
    i0 = NoiseConfig().photons_per_ray
    assert i0 == 1e7
    soft = (hu > -100) & (hu < 200)
    quarter = ct_noise_std_hu(hu, spacing[:2], photons_per_ray=i0, dose_fraction=0.25, electronic_sigma=10.0)
    full = ct_noise_std_hu(hu, spacing[:2], photons_per_ray=i0, dose_fraction=0.5, electronic_sigma=10.0)
    assert 15 < np.median(quarter[soft]) < 35
    assert 8 < np.median(full[soft]) < 20


def test_acquisition_noise_gives_a_masked_template_the_floor_of_a_real_scan(mr):
    """`AcquisitionNoised` on nilearn's MNI152 T1 (exactly 0 outside the head): afterwards its
    background is a Rayleigh floor of σ₀ = fraction × its robust max, the same every call; a real
    scan, which has a floor of its own, is left as it is."""
    from medseg.data.noise import AcquisitionNoised, has_masked_background

    template = load_volume(sample_path("mni152_t1")).array.astype(np.float32)
    assert has_masked_background(template) and not has_masked_background(mr)
    t = AcquisitionNoised("image", 0.01, seed=0)
    out = t({"image": template[None]})["image"][0]
    sigma = 0.01 * robust_max(template)
    background = template == 0
    assert np.count_nonzero(out == 0) == 0
    assert out[background].mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.02)
    assert np.sqrt(np.mean(out[background] ** 2) / 2) == pytest.approx(sigma, rel=0.02)
    np.testing.assert_array_equal(out, t({"image": template[None]})["image"][0])
    assert not np.array_equal(out, AcquisitionNoised("image", 0.01, seed=1)({"image": template[None]})["image"][0])
    np.testing.assert_array_equal(t({"image": mr[None]})["image"][0], mr)
    with pytest.raises(ConfigError, match="fraction"):
        AcquisitionNoised("image", 1.5)


def test_fine_texture_adds_the_missing_full_dose_grain_of_a_zoom(ct_slice):
    """`RandCTFineTextured`: a 2× zoom adds the full-dose noise of the finer pixels times
    sqrt(1 − 1/4) (measured as its ratio to that std map, on the real slice); no zoom adds
    nothing; pixels at the plan's lowest HU (outside the circle) get none; missing keys are named."""
    from medseg.data.intensity import intensity_params, to_network_units
    from medseg.data.noise import CTNoiseMapsd, RandCTFineTextured

    hu, spacing = ct_slice
    plan = {"kind": "hu_linear", "hu_min": -1024.0, "hu_max": 3071.0}
    units = to_network_units(hu, intensity_params(hu, plan))
    img = torch.as_tensor(units[None, :, :, None], dtype=torch.float32)
    maps = CTNoiseMapsd("image", maps_key="maps", intensity=plan, spacing_mm=spacing[:2])({"image": img})["maps"]
    t = RandCTFineTextured("image", maps_key="maps", factor_key="f", intensity=plan)
    t.set_random_state(seed=0)
    same = t({"image": img, "maps": maps, "f": 1.0})
    assert torch.equal(same["image"], img)
    out = t({"image": img, "maps": maps * 2.0, "f": 2.0})  # maps of a 2× zoom scale with it
    added = ((out["image"] - img)[0, :, :, 0].numpy() * 4095.0).astype(np.float64)
    # the same slice's full-dose std (dose 0.5 adds a full dose's variance), twice: pixels half as wide
    full = 2.0 * ct_noise_std_hu(hu, spacing[:2], photons_per_ray=1e7, dose_fraction=0.5, electronic_sigma=10.0)
    inside = hu > -1023.5
    assert (added[inside] / full[inside]).std() == pytest.approx(math.sqrt(0.75), rel=0.05)
    assert (~inside).any() and np.all(added[~inside] == 0)
    with pytest.raises(ConfigError, match="RandInPlaneZoomd"):
        t({"image": img, "maps": maps})

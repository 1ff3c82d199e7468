"""Noise models for denoising: Gaussian, Rician (MR magnitude) and Poisson-Gaussian CT noise.

Each model is a pure function (``add_*``, numpy in, numpy out, a `numpy.random.Generator` passed
in) and a MONAI dictionary transform (``Rand*d``, a `RandomizableTransform` seeded by
``set_random_state`` like every MONAI transform, so ``Compose(..).set_random_state(seed)`` and
MONAI's datasets make runs reproducible). The transforms draw a *level* uniformly from a range for
every call: training is blind over a range of levels by default, because a user's scan has an
unknown noise level.

A transform can keep the clean image: with ``output_keys`` the noisy copy goes to a new key
(``image`` → ``noisy``) and the clean one stays as the target. With ``level_key`` the level drawn
is stored (a float, in the units stated by the transform) so a report can group by it.

Levels and their units:

- `RandGaussianNoiseRanged`: σ in the image's own units (HU, or network units when the
  transform runs after the intensity plan).
- `RandRicianNoiseRanged`: σ as a fraction of the clean image's robust maximum (the 99.5th
  percentile of its non-zero voxels, the same statistic as the ``percentile_scale`` intensity
  plan, so on percentile-scaled MR the fraction is σ in network units). On patches the robust
  maximum must be the whole scan's (`RobustMaxd` before the crop, ``reference_key``).
- `RandCTDoseNoised`: the dose fraction of a simulated lower-dose scan of a full-dose CT
  acquired with ``photons_per_ray`` unattenuated photons per detector reading (see
  `add_ct_dose_noise` for the model and what it approximates).

CT levels: ``photons_per_ray`` is an *effective* count of the model: it stands for the photons
behind one pixel's ray after averaging over the detector rows of a slice, with no bowtie filter
or tube-current modulation. The default 1e7 is calibrated so that the full-dose noise the model
predicts in the soft tissue of the bundled abdominal CT (512², 0.98 mm, 2 mm slices) is about
14 HU (median), the order of a clinical abdominal scan; a dose fraction of 0.25 then adds √3
times that, and long lateral paths (shoulders, arms, hips) get much more, as on a real low-dose
scan without modulation.

Differs from MONAI's ``RandGaussianNoised`` / ``RandRicianNoised``: levels are drawn from a
range per call (MONAI's std is a maximum with a uniform draw below it, in relative units for
Rician), the clean image can be kept, and the CT model is physical (photons, dose).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from medseg.data.intensity import from_network_units, intensity_params, to_network_units
from medseg.errors import ConfigError

__all__ = [
    "MU_WATER_PER_MM",
    "AcquisitionNoised",
    "RandCTDoseNoised",
    "RandGaussianNoiseRanged",
    "RandRicianNoiseRanged",
    "RobustMaxd",
    "CTNoiseMapsd",
    "RandCTFineTextured",
    "add_ct_dose_noise",
    "add_gaussian_noise",
    "add_rician_noise",
    "build_noise_transform",
    "has_masked_background",
    "ct_noise_maps",
    "ct_noise_std_hu",
    "ramp_texture_noise",
    "robust_max",
    "sample_counts",
]

#: Linear attenuation coefficient of water at an effective energy of about 70 keV, in 1/mm
#: (NIST XCOM: 0.193 cm²/g × 1 g/cm³ at 70 keV); HU = 1000 · (μ − μ_water) / μ_water.
MU_WATER_PER_MM = 0.0192


# ------------------------------------------------------------------------------- functions


def robust_max(image: np.ndarray, percentile: float = 99.5) -> float:
    """The ``percentile``-th percentile of the image's finite non-zero voxels (1.0 if none).

    The scale of Rician σ: robust to a few bright voxels (vessels, fat, artefacts).
    """
    values = np.asarray(image, dtype=np.float64)
    values = values[np.isfinite(values) & (values != 0)]
    if values.size == 0:
        return 1.0
    top = float(np.percentile(np.abs(values), percentile))
    return top if top > 0 else 1.0


def add_gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``image + n``, ``n ~ N(0, σ²)`` independent per voxel.

    Args:
        image: any array (its units are σ's units).
        sigma: standard deviation, in the image's units (≥ 0).
        rng: the random generator (seed it for reproducibility).

    Returns:
        A new float32 array of the image's shape.
    """
    if sigma < 0:
        raise ConfigError(f"Gaussian noise sigma must be ≥ 0, got {sigma}")
    x = np.asarray(image, dtype=np.float32)
    return (x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32)).astype(np.float32)


def add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """MR magnitude noise: ``|x + n₁ + i·n₂|``, ``n₁, n₂ ~ N(0, σ²)`` independent.

    The magnitude of a complex signal with Gaussian noise on both channels is Rician distributed:
    where the true signal is 0 (background air) the noisy value is Rayleigh with mean
    ``σ·√(π/2)`` (a positive bias); where ``x ≫ σ`` it is nearly Gaussian with std σ.

    Args:
        image: the clean magnitude image (≥ 0, any units; σ is in the same units).
        sigma: per-channel noise standard deviation in the image's units (≥ 0).
        rng: the random generator.

    Returns:
        A new float32 array (≥ 0) of the image's shape.
    """
    if sigma < 0:
        raise ConfigError(f"Rician noise sigma must be ≥ 0, got {sigma}")
    x = np.asarray(image, dtype=np.float64)
    real = x + rng.normal(0.0, sigma, size=x.shape)
    imag = rng.normal(0.0, sigma, size=x.shape)
    return np.hypot(real, imag).astype(np.float32)


def sample_counts(mean_counts: np.ndarray, electronic_sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson-Gaussian detector counts: ``N ~ Poisson(N̄) + N(0, σ_e²)``.

    Quantum noise (Poisson: variance equal to the mean) plus electronic noise (Gaussian, std
    ``σ_e`` counts), the standard model of an energy-integrating CT detector reading. Its
    variance is ``N̄ + σ_e²``.

    Args:
        mean_counts: expected photon counts per reading (≥ 0).
        electronic_sigma: std of the electronic noise, in counts (≥ 0).
        rng: the random generator.

    Returns:
        float64 counts (may be ≤ 0 where N̄ is small: callers clip before taking a log).
    """
    lam = np.asarray(mean_counts, dtype=np.float64)
    counts = rng.poisson(lam).astype(np.float64)
    if electronic_sigma > 0:
        counts += rng.normal(0.0, electronic_sigma, size=lam.shape)
    return counts


def ct_noise_std_hu(
    hu_slice: np.ndarray,
    spacing_mm: tuple[float, float],
    *,
    photons_per_ray: float,
    dose_fraction: float,
    electronic_sigma: float = 0.0,
    n_views: int = 1000,
    n_angles: int = 16,
    mu_water_per_mm: float = MU_WATER_PER_MM,
) -> np.ndarray:
    """Per-pixel std (HU) of the noise *added* when a full-dose slice is re-simulated at a lower dose.

    Model (an image-domain approximation of parallel-beam FBP, no projector):

    1. ``μ = μ_water · (1 + HU/1000)`` (1/mm), clipped at 0.
    2. Line integrals ``p_θ`` of μ along the rays through each pixel at ``n_angles`` directions
       over 180° (the slice rotated, summed along rows, rotated back; computed on a grid of at
       most 128 px a side — the variance map is smooth — and interpolated back).
    3. A reading behind ``p`` has ``N̄ = I₀·exp(−p)`` photons at full dose and the projection
       ``−log(N/I₀)`` has variance ``(N̄ + σ_e²)/N̄²`` (delta method on `sample_counts`). At dose
       fraction ``a`` the counts scale by ``a``; the full-dose scan already holds the noise of
       ``I₀``, so the *added* projection variance is
       ``σ_p² = (1/a − 1)/N̄ + σ_e²·(1/a² − 1)/N̄²`` (the practical low-dose simulation idea of
       Yu et al., Med. Phys. 2012, transferred to the image).
    4. FBP with a Ram-Lak ramp filter on detector spacing ``d`` and ``n_views`` views over 180°
       turns independent projection noise into pixel noise of variance
       ``π²/(12·n_views·d²) · mean_θ σ_p²(θ)`` (1/mm²). The detector spacing at the isocentre
       is taken equal to the (mean in-plane) pixel spacing.
    5. ``σ_HU = 1000 · σ_μ / μ_water``.

    What it is not: a projection-domain simulation (no beam hardening, bowtie, fan geometry or
    tube-current modulation, no streak *structure*: only their variance). For a simulator that
    forward-projects and reconstructs, see ``medseg.ct.low_dose`` (branch ldct).

    Args:
        hu_slice: a 2-D axial slice in HU, axes (x, y).
        spacing_mm: pixel spacing (x, y) in mm.
        photons_per_ray: ``I₀``, unattenuated photons per detector reading at full dose.
        dose_fraction: ``a`` in (0, 1]; 1 adds no noise.
        electronic_sigma: electronic noise std per reading, in counts.
        n_views: projections over 180° (sets the FBP noise scale).
        n_angles: ray directions averaged per pixel in step 2.
        mu_water_per_mm: μ of water (1/mm).

    Returns:
        float64 array of the slice's shape: the std (HU) of the noise to add at each pixel.

    Raises:
        ConfigError: a level outside its range.
    """
    if not 0 < dose_fraction <= 1:
        raise ConfigError(f"dose_fraction must be in (0, 1], got {dose_fraction}")
    if photons_per_ray <= 0:
        raise ConfigError(f"photons_per_ray must be > 0, got {photons_per_ray}")
    maps = ct_noise_maps(hu_slice, spacing_mm, n_angles=n_angles, mu_water_per_mm=mu_water_per_mm)
    return _std_from_maps(maps[0], maps[1], photons_per_ray, dose_fraction, electronic_sigma, n_views)


def _std_from_maps(
    root_g1: np.ndarray, root_g2: np.ndarray, photons_per_ray: float, dose_fraction: float, electronic_sigma: float, n_views: int
) -> np.ndarray:
    """σ_HU from `ct_noise_maps`: ``sqrt(((1/a − 1)·G₁/I₀ + σ_e²·(1/a² − 1)·G₂/I₀²) / n_views)``."""
    a = float(dose_fraction)
    g1 = np.asarray(root_g1, dtype=np.float64) ** 2
    g2 = np.asarray(root_g2, dtype=np.float64) ** 2
    var = ((1.0 / a - 1.0) * g1 / photons_per_ray + electronic_sigma**2 * (1.0 / a**2 - 1.0) * g2 / photons_per_ray**2) / n_views
    return np.sqrt(np.clip(var, 0.0, None))


def ct_noise_maps(
    hu_slice: np.ndarray, spacing_mm: Sequence[float], *, n_angles: int = 16, mu_water_per_mm: float = MU_WATER_PER_MM
) -> np.ndarray:
    """The dose-independent part of `ct_noise_std_hu`, per pixel: ``(√G₁, √G₂)``.

    ``G₁ = π²/(12·d²) · (1000/μ_water)² · mean_θ exp(p_θ)`` and ``G₂`` the same with
    ``exp(2·p_θ)`` (steps 1, 2 and 4 of `ct_noise_std_hu`), so that for any level
    ``σ_HU² = ((1/a − 1)·G₁/I₀ + σ_e²·(1/a² − 1)·G₂/I₀²) / n_views``. They depend on the clean
    slice only: compute them once per scan (`CTNoiseMapsd`, cached by MONAI's CacheDataset and
    cropped with the image) and draw noise on patches cheaply. Square roots keep them in float32
    range.

    Returns:
        float32 array ``(2, X, Y)``.
    """
    from scipy.ndimage import rotate, zoom

    hu = np.asarray(hu_slice, dtype=np.float64)
    if hu.ndim != 2:
        raise ConfigError(f"CT noise maps expect a 2-D slice, got shape {hu.shape}")
    d = math.sqrt(float(spacing_mm[0]) * float(spacing_mm[1]))
    mu = np.clip(mu_water_per_mm * (1.0 + hu / 1000.0), 0.0, None)
    # coarse grid: a ray sum is an integral, so μ is averaged into coarse pixels of side step·d
    step = max(1, int(math.ceil(max(mu.shape) / 128)))
    ny, nx = max(1, mu.shape[0] // step) * step, max(1, mu.shape[1] // step) * step
    src = np.pad(mu, ((0, max(0, ny - mu.shape[0])), (0, max(0, nx - mu.shape[1]))))[:ny, :nx]
    coarse = src.reshape(ny // step, step, nx // step, step).mean(axis=(1, 3))
    # pad to the diagonal (air) so rotations keep every ray's full length
    side = int(math.ceil(math.hypot(*coarse.shape))) + 2
    pad0, pad1 = (side - coarse.shape[0]) // 2, (side - coarse.shape[1]) // 2
    padded = np.zeros((side, side))
    padded[pad0 : pad0 + coarse.shape[0], pad1 : pad1 + coarse.shape[1]] = coarse
    sums = np.zeros((2, side, side))
    for theta in np.arange(n_angles) * (180.0 / n_angles):
        rotated = rotate(padded, theta, reshape=False, order=1, mode="constant", cval=0.0)
        # exp(p) overflows behind metal on wide slices; cap the line integral (N̄ ≥ ~1e-13 I₀)
        p = np.minimum(rotated.sum(axis=0, keepdims=True) * d * step, 30.0)
        for i, e in enumerate((np.exp(p), np.exp(2.0 * p))):
            sums[i] += rotate(np.broadcast_to(e, padded.shape), -theta, reshape=False, order=1, mode="nearest")
    sums = sums[:, pad0 : pad0 + coarse.shape[0], pad1 : pad1 + coarse.shape[1]] / n_angles
    if step > 1:
        sums = np.stack([zoom(m, (ny / m.shape[0], nx / m.shape[1]), order=1, mode="nearest") for m in sums])
        sums = np.pad(sums, ((0, 0), (0, max(0, mu.shape[0] - ny)), (0, max(0, mu.shape[1] - nx))), mode="edge")
        sums = sums[:, : mu.shape[0], : mu.shape[1]]
    scale = math.pi**2 / (12.0 * d * d) * (1000.0 / mu_water_per_mm) ** 2
    return np.sqrt(np.clip(sums, 0.0, None) * scale).astype(np.float32)


def ramp_texture_noise(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Unit-variance 2-D Gaussian noise with the FBP noise texture (power spectrum ∝ |f|).

    Filtered back-projection's noise power spectrum rises linearly with radial frequency (the
    ramp filter), apodised here by a Hann window so it falls to 0 at Nyquist like a smooth
    reconstruction kernel. The result is rescaled to unit variance, so a per-pixel std map
    multiplies it directly.
    """
    nx, ny = shape
    white = rng.standard_normal(shape)
    fx = np.fft.fftfreq(nx)[:, None]
    fy = np.fft.rfftfreq(ny)[None, :]
    f = np.sqrt(fx**2 + fy**2) / 0.5  # 1 at Nyquist along an axis
    nps = f * np.where(f < 1.0, 0.5 * (1.0 + np.cos(np.pi * f)), 0.0)
    shaped = np.fft.irfft2(np.fft.rfft2(white) * np.sqrt(nps), s=shape)
    std = shaped.std()
    return shaped / std if std > 0 else shaped


def _textured(std: np.ndarray, rng: np.random.Generator | np.random.RandomState) -> np.ndarray:
    """Noise with a per-pixel std map ``(X, Y[, Z])`` and FBP's texture, one `ramp_texture_noise` draw per axial slice."""
    slices = std[..., None] if std.ndim == 2 else std
    texture = np.stack([ramp_texture_noise(slices.shape[:2], rng) for _ in range(slices.shape[2])], axis=-1)
    return (slices * texture).reshape(std.shape)


def add_ct_dose_noise(
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    rng: np.random.Generator,
    *,
    photons_per_ray: float = 1e7,
    dose_fraction: float = 0.25,
    electronic_sigma: float = 10.0,
    n_views: int = 1000,
) -> np.ndarray:
    """Simulate a lower-dose CT in the image domain: ``HU + σ(x, y) · t(x, y)`` per axial slice.

    ``σ`` is `ct_noise_std_hu` (quantum + electronic noise of the missing photons, stronger behind
    dense paths), ``t`` is `ramp_texture_noise` (FBP's correlated texture). See
    `ct_noise_std_hu` for the model, its assumptions and its units.

    Args:
        hu: a 2-D slice (x, y) or a 3-D volume (x, y, z) in HU, z the axial slice axis.
        spacing_mm: pixel spacing; the first two entries (x, y) are used, in mm.
        rng: the random generator.
        photons_per_ray: full-dose unattenuated photons per detector reading (``I₀``).
        dose_fraction: simulated dose as a fraction of the full dose, in (0, 1].
        electronic_sigma: electronic noise per reading, in counts.
        n_views: projections over 180°.

    Returns:
        float32 array of the input's shape, in HU.
    """
    x = np.asarray(hu, dtype=np.float64)
    if x.ndim not in (2, 3):
        raise ConfigError(f"CT dose noise expects a 2-D slice or 3-D volume in HU, got shape {x.shape}")
    slices = x[..., None] if x.ndim == 2 else x
    out = np.empty(slices.shape, dtype=np.float32)
    sp = (float(spacing_mm[0]), float(spacing_mm[1]))
    for z in range(slices.shape[2]):
        s = slices[:, :, z]
        std = ct_noise_std_hu(
            s, sp, photons_per_ray=photons_per_ray, dose_fraction=dose_fraction,
            electronic_sigma=electronic_sigma, n_views=n_views,
        )
        out[:, :, z] = s + std * ramp_texture_noise(s.shape, rng)
    return out[..., 0] if x.ndim == 2 else out


# ------------------------------------------------------------------------------ transforms


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _like(result: np.ndarray, original: Any) -> Any:
    """``result`` in the container type of ``original``: a tensor (a MetaTensor keeps its meta) or float32 numpy."""
    if isinstance(original, torch.Tensor):
        out = original.detach().clone().to(torch.float32)
        with torch.no_grad():
            out.copy_(torch.as_tensor(result, dtype=torch.float32))
        return out
    return result.astype(np.float32, copy=False)


def _check_range(name: str, lo_hi: Sequence[float], low: float = 0.0, high: float | None = None) -> tuple[float, float]:
    if isinstance(lo_hi, (int, float)):
        lo_hi = (float(lo_hi), float(lo_hi))
    if len(lo_hi) != 2:
        raise ConfigError(f"{name} must be a [min, max] pair or one number, got {list(lo_hi)}")
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    if not (low <= lo <= hi) or (high is not None and hi > high):
        bound = f"{low} ≤ min ≤ max" + (f" ≤ {high}" if high is not None else "")
        raise ConfigError(f"{name} must satisfy {bound}, got [{lo}, {hi}]")
    return lo, hi



def in_plane_spacing(value: Any) -> tuple[float, float] | None:
    """The (x, y) pixel spacing in mm from a MetaTensor's affine; None when it has none."""
    affine = getattr(value, "affine", None)
    if affine is None:
        return None
    a = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)
    sp = np.sqrt((a[:3, :3] ** 2).sum(axis=0))
    return float(sp[0]), float(sp[1])

class _NoiseBase(RandomizableTransform, MapTransform):
    """Shared key handling: draw a level per call, apply to each key, optionally keep the clean image."""

    level_units = ""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float,
        output_keys: KeysCollection | None,
        level_key: str | None,
        allow_missing_keys: bool,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        out = self.keys if output_keys is None else ((output_keys,) if isinstance(output_keys, str) else tuple(output_keys))
        if len(out) != len(self.keys):
            raise ConfigError(f"output_keys {list(out)} must have one entry per key {list(self.keys)}")
        self.output_keys = out
        self.level_key = level_key
        self.level: float = 0.0

    def _draw_level(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _noise(self, array: np.ndarray, data: Mapping[Hashable, Any], key: Hashable) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.level = self._draw_level() if self._do_transform else self._no_noise_level()

    def _no_noise_level(self) -> float:
        return 0.0

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        for key, out_key in zip(self.key_iterator(d), self.output_keys):
            original = d[key]
            if not self._do_transform:
                d[out_key] = original.clone() if isinstance(original, torch.Tensor) else np.array(original, dtype=np.float32)
                continue
            noisy = self._noise(_to_numpy(original), d, key)
            d[out_key] = _like(noisy, original)
        if self.level_key is not None:
            d[self.level_key] = float(self.level)
        return d


class RandGaussianNoiseRanged(_NoiseBase):
    """Additive white Gaussian noise ``x + n``, ``n ~ N(0, σ²)``, σ drawn per call from a range.

    Args:
        keys: keys of the images to corrupt.
        sigma_range: ``[σ_min, σ_max]`` in the image's units (HU for CT in HU; network units when
            placed after the intensity plan); σ ~ U(σ_min, σ_max) per call. One number = fixed σ.
        prob: probability of adding noise (1.0: always).
        output_keys: where the noisy images go (default: in place); the clean ones stay.
        level_key: if set, the drawn σ is stored under this key (image units).

    Example:
        >>> t = RandGaussianNoiseRanged("image", sigma_range=(10.0, 50.0), output_keys="noisy")
        >>> t.set_random_state(seed=0)
        >>> out = t({"image": hu})  # out["noisy"] = hu + N(0, σ²), σ ∈ [10, 50] HU
    """

    level_units = "sigma (image units)"

    def __init__(
        self,
        keys: KeysCollection,
        sigma_range: Sequence[float] | float = (0.0, 0.1),
        prob: float = 1.0,
        output_keys: KeysCollection | None = None,
        level_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, output_keys, level_key, allow_missing_keys)
        self.sigma_range = _check_range("sigma_range", sigma_range)

    def _draw_level(self) -> float:
        return float(self.R.uniform(*self.sigma_range))

    def _noise(self, array: np.ndarray, data: Mapping[Hashable, Any], key: Hashable) -> np.ndarray:
        return add_gaussian_noise(array, self.level, self.R)


class RandRicianNoiseRanged(_NoiseBase):
    """Rician (MR magnitude) noise ``|x + n₁ + i·n₂|`` with σ relative to the image's robust max.

    ``σ = f · P99.5(x ≠ 0)`` with the fraction ``f`` drawn per call from ``fraction_range``;
    ``P99.5`` is `robust_max` of the clean image (per image, so one fraction means the same
    relative noise on scans of any scaling). See `add_rician_noise` for the distribution.

    Args:
        keys: keys of the magnitude images (≥ 0) to corrupt.
        fraction_range: ``[f_min, f_max]``, σ as a fraction of the robust max; f ~ U(f_min, f_max).
            Default 1 %–10 % (blind training over a clinically wide range).
        prob, output_keys, level_key: as in `RandGaussianNoiseRanged` (level = f, a fraction).
        reference_key: a key holding the robust max of the *whole* scan (`RobustMaxd`, computed
            before cropping). Needed on patches: a patch's own robust max is that of whatever
            tissue it happens to hold (tiny on a patch of background), so its noise would not
            be the scan's; the scan's noise is the same σ everywhere, background included.
            Without it the robust max of the array itself is used (a whole scan).
    """

    level_units = "sigma / P99.5 (fraction)"

    def __init__(
        self,
        keys: KeysCollection,
        fraction_range: Sequence[float] | float = (0.01, 0.10),
        prob: float = 1.0,
        output_keys: KeysCollection | None = None,
        level_key: str | None = None,
        reference_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, output_keys, level_key, allow_missing_keys)
        self.fraction_range = _check_range("fraction_range", fraction_range)
        self.reference_key = reference_key

    def _draw_level(self) -> float:
        return float(self.R.uniform(*self.fraction_range))

    def _noise(self, array: np.ndarray, data: Mapping[Hashable, Any], key: Hashable) -> np.ndarray:
        if self.reference_key is None:
            reference = robust_max(array)
        elif self.reference_key in data:
            reference = float(data[self.reference_key])
        else:
            raise ConfigError(f"Rician noise: reference_key {self.reference_key!r} is not in the item (add RobustMaxd before the crop)")
        return add_rician_noise(array, self.level * reference, self.R)


class RobustMaxd(MapTransform):
    """Deterministic: store `robust_max` of the (whole) image under ``reference_key``.

    Put it before the patch crop (e.g. in a ``CacheDataset``'s cached part) and give
    `RandRicianNoiseRanged` the same ``reference_key``: patches then get the noise of their scan.
    """

    def __init__(self, keys: KeysCollection, reference_key: str = "noise_reference", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ConfigError(f"RobustMaxd takes one image key, got {list(self.keys)}")
        self.reference_key = reference_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.reference_key] = robust_max(_to_numpy(d[key]))
        return d


def has_masked_background(image: np.ndarray, min_zero_fraction: float = 0.2) -> bool:
    """Whether at least ``min_zero_fraction`` of the voxels are exactly 0.

    An acquired magnitude image is exactly 0 almost nowhere (its background is a Rayleigh floor);
    a template (an average of many registered scans) or a skull-stripped / masked scan is 0 over
    the whole region outside the mask.
    """
    x = np.asarray(image)
    return bool(x.size) and float(np.count_nonzero(x == 0)) >= min_zero_fraction * x.size


class AcquisitionNoised(MapTransform):
    """Deterministic: give a scan with a masked background the Rician noise of an acquisition.

    Templates and masked scans hold exactly 0 outside their mask and carry almost no noise, while
    every acquired magnitude image has a Rayleigh floor in its background (mean σ₀·√(π/2)). A
    denoiser trained with such a scan as its clean target learns to output 0 there; on a real
    scan the clean reference is its own floor, and that bias costs far more SSIM than noise does
    (SSIM's luminance term in a dark region is ``(2μₓμᵧ + C₁)/(μₓ² + μᵧ² + C₁)``, 0.5 for an
    output of 0 against a floor of ~C₁^½). This transform makes the scan look acquired:
    `add_rician_noise` with σ₀ = ``fraction`` × `robust_max` of the scan, everywhere, once.

    Only scans for which `has_masked_background` holds are changed; the others carry their own
    floor already. The realisation is fixed per scan (seeded by ``seed`` and a CRC of its voxels),
    as one acquisition would be, so a cached dataset gives the same target every epoch and run.

    Put it before the intensity plan, on the scan's own grid (resampling would smooth the noise).
    """

    def __init__(self, keys: KeysCollection, fraction: float, seed: int = 0, min_zero_fraction: float = 0.2,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0 < fraction < 1:
            raise ConfigError(f"acquisition noise fraction must be in (0, 1), got {fraction}")
        self.fraction, self.seed, self.min_zero_fraction = float(fraction), int(seed), float(min_zero_fraction)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import zlib

        d = dict(data)
        for key in self.key_iterator(d):
            x = np.ascontiguousarray(_to_numpy(d[key]), dtype=np.float32)
            if not has_masked_background(x, self.min_zero_fraction):
                continue
            rng = np.random.default_rng([self.seed, zlib.crc32(x.tobytes())])
            d[key] = _like(add_rician_noise(x, self.fraction * robust_max(x), rng), d[key])
        return d


class RandCTDoseNoised(_NoiseBase):
    """Lower-dose CT simulation (Poisson-Gaussian quantum + electronic noise) in the image domain.

    For each call a dose fraction ``a`` is drawn log-uniformly from ``dose_range`` (low doses
    are as likely per octave as high ones) and `add_ct_dose_noise` adds the noise a scan with
    ``a · photons_per_ray`` photons per reading would have on top of the full-dose input.

    Arrays are channel first ``(C, X, Y[, Z])``; z is the axial slice axis (RAS). Spacing comes
    from the MetaTensor's affine (or ``spacing_mm``). With ``intensity`` (a ``hu_linear`` plan)
    the images are in network units and are converted to HU and back around the noise.

    Args:
        keys: keys of the CT images.
        dose_range: ``[a_min, a_max]`` ⊂ (0, 1], dose fraction of the full dose (default 5 %–50 %).
        photons_per_ray: full-dose unattenuated photons per detector reading (``I₀``), default 1e7 (an effective count: see the module docs).
        electronic_sigma: electronic noise std per reading, in counts (default 10).
        n_views: projections over 180° (default 1000).
        intensity: the image's intensity plan if not in HU (``{"kind": "hu_linear", ...}``).
        spacing_mm: pixel spacing (x, y) in mm when the images carry no affine.
        maps_key: a key holding `CTNoiseMapsd`'s maps of the *whole* slices, cropped like the
            image. With it, noise on a patch has the variance of its place in the full slice
            (the rays cross the whole body, not the patch) and costs only the texture draw;
            without it the maps are computed from the array itself, which must then hold
            whole axial slices.
        prob, output_keys, level_key: as in `RandGaussianNoiseRanged` (level = dose fraction).

    Example (patch training)::

        CTNoiseMapsd("image", maps_key="ct_maps", intensity=plan)   # deterministic: cached
        RandSpatialCropd(["image", "ct_maps"], roi_size=(64, 64, 3))
        RandCTDoseNoised("image", maps_key="ct_maps", intensity=plan, output_keys="noisy")
    """

    level_units = "dose fraction"

    def __init__(
        self,
        keys: KeysCollection,
        dose_range: Sequence[float] | float = (0.05, 0.5),
        photons_per_ray: float = 1e7,
        electronic_sigma: float = 10.0,
        n_views: int = 1000,
        intensity: dict[str, Any] | None = None,
        spacing_mm: Sequence[float] | None = None,
        maps_key: str | None = None,
        prob: float = 1.0,
        output_keys: KeysCollection | None = None,
        level_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, output_keys, level_key, allow_missing_keys)
        self.maps_key = maps_key
        lo, hi = _check_range("dose_range", dose_range, high=1.0)
        if lo <= 0:
            raise ConfigError(f"dose_range must be within (0, 1], got [{lo}, {hi}]")
        if photons_per_ray <= 0:
            raise ConfigError(f"photons_per_ray must be > 0, got {photons_per_ray}")
        if intensity is not None and intensity.get("kind") != "hu_linear":
            raise ConfigError(f"CT dose noise needs HU or a hu_linear intensity plan, got kind {intensity.get('kind')!r}")
        self.dose_range = (lo, hi)
        self.photons_per_ray = float(photons_per_ray)
        self.electronic_sigma = float(electronic_sigma)
        self.n_views = int(n_views)
        self.intensity = intensity
        self.spacing_mm = None if spacing_mm is None else tuple(float(s) for s in spacing_mm)

    def _draw_level(self) -> float:
        lo, hi = self.dose_range
        return float(math.exp(self.R.uniform(math.log(lo), math.log(hi))))

    def _no_noise_level(self) -> float:
        return 1.0

    def _spacing(self, value: Any) -> tuple[float, float]:
        if self.spacing_mm is not None:
            return self.spacing_mm[0], self.spacing_mm[1]
        spacing = in_plane_spacing(value)
        if spacing is None:
            raise ConfigError("CT dose noise needs the pixel spacing: pass spacing_mm or a MetaTensor with an affine")
        return spacing

    def _noise(self, array: np.ndarray, data: Mapping[Hashable, Any], key: Hashable) -> np.ndarray:
        params = intensity_params(array, self.intensity) if self.intensity is not None else None
        hu = from_network_units(array.astype(np.float64), params) if params else array.astype(np.float64)
        if self.maps_key is not None:
            if self.maps_key not in data:
                raise ConfigError(f"CT dose noise: maps_key {self.maps_key!r} is not in the data; put CTNoiseMapsd before it")
            maps = _to_numpy(data[self.maps_key]).astype(np.float64)
            if maps.shape[0] != 2 or maps.shape[1:] != hu.shape[1:]:
                raise ConfigError(
                    f"CT dose noise: maps {self.maps_key!r} of shape {maps.shape} do not match the image {hu.shape}; "
                    "crop them with the image"
                )
            std = _std_from_maps(maps[0], maps[1], self.photons_per_ray, self.level, self.electronic_sigma, self.n_views)
            added = _textured(std, self.R)
            noisy = hu + added[None]
            return (to_network_units(noisy, params) if params else noisy).astype(np.float32)
        spacing = self._spacing(data[key])
        noisy = np.stack([
            add_ct_dose_noise(
                channel, spacing, self.R, photons_per_ray=self.photons_per_ray, dose_fraction=self.level,
                electronic_sigma=self.electronic_sigma, n_views=self.n_views,
            )
            for channel in hu
        ])
        return (to_network_units(noisy.astype(np.float64), params) if params else noisy).astype(np.float32)


class CTNoiseMapsd(MapTransform):
    """Deterministic: store `ct_noise_maps` of each axial slice of a CT under ``maps_key``.

    The maps (``(2, X, Y[, Z])``, float32, same type as the image — a MetaTensor keeps the
    affine) depend only on the clean scan, so MONAI's ``CacheDataset`` computes them once; crop
    them together with the image and give `RandCTDoseNoised` the same ``maps_key``.

    Args:
        keys: the CT image key (one; channel 0 is used).
        maps_key: where the maps go.
        intensity: the image's ``hu_linear`` plan if not in HU.
        spacing_mm: pixel spacing (x, y) in mm when the image carries no affine.
        n_angles: ray directions per pixel (see `ct_noise_std_hu`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        maps_key: str = "ct_noise_maps",
        intensity: dict[str, Any] | None = None,
        spacing_mm: Sequence[float] | None = None,
        n_angles: int = 16,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ConfigError(f"CTNoiseMapsd takes one image key, got {list(self.keys)}")
        self.maps_key = maps_key
        self.n_angles = int(n_angles)
        # RandCTDoseNoised's checks and spacing logic, without its randomness
        self._geometry = RandCTDoseNoised(keys, intensity=intensity, spacing_mm=spacing_mm)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            original = d[key]
            array = _to_numpy(original)[0].astype(np.float64)
            intensity = self._geometry.intensity
            hu = from_network_units(array, intensity_params(array, intensity)) if intensity is not None else array
            spacing = self._geometry._spacing(original)
            slices = hu[..., None] if hu.ndim == 2 else hu
            maps = np.stack([ct_noise_maps(slices[:, :, z], spacing, n_angles=self.n_angles) for z in range(slices.shape[2])], axis=-1)
            maps = maps.reshape((2, *hu.shape))
            if isinstance(original, torch.Tensor):
                out = torch.as_tensor(maps)
                if hasattr(original, "meta"):
                    from monai.data import MetaTensor

                    out = MetaTensor(out, affine=original.affine, meta=dict(original.meta))
                d[self.maps_key] = out
            else:
                d[self.maps_key] = maps
        return d


class RandCTFineTextured(RandomizableTransform, MapTransform):
    """Give an up-sampled CT patch the fine full-dose grain that up-sampling smoothed away.

    A patch zoomed by ``f`` (`medseg.data.transforms.RandInPlaneZoomd` with ``factor_key``) has
    pixels ``f`` times finer, but its texture is the coarse scan's, interpolated: smooth at the
    new pixel scale. A real scan at that pixel size carries the grain of its own dose, whose
    variance grows as ``1/d²``. This adds the full-dose noise of the finer pixels (the
    `RandCTDoseNoised` model at dose 0.5 of ``photons_per_ray``, whose added variance equals a
    full-dose scan's) times ``sqrt(1 − 1/f²)``: the part of that variance the coarse scan's own
    texture did not already hold. ``f = 1`` adds nothing, nor do pixels at the ``hu_linear``
    plan's lowest HU (outside a reconstruction's circle scanners write that constant). Use it
    on the clean image before the training noise, so target and input both carry it and the
    network learns to keep it.

    Args:
        keys: the CT image key(s), channel-first ``(C, X, Y[, Z])``, in network units of ``intensity``
            (a ``hu_linear`` plan) or HU when ``intensity`` is None.
        maps_key: `CTNoiseMapsd`'s maps of the whole slices, zoomed and cropped with the image.
        factor_key: where `RandInPlaneZoomd` stored its zoom factor.
        photons_per_ray, electronic_sigma, n_views: as in `RandCTDoseNoised`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        maps_key: str,
        factor_key: str,
        photons_per_ray: float = 1e7,
        electronic_sigma: float = 10.0,
        n_views: int = 1000,
        intensity: dict[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        if intensity is not None and intensity.get("kind") != "hu_linear":
            raise ConfigError(f"CT fine texture needs HU or a hu_linear intensity plan, got kind {intensity.get('kind')!r}")
        self.maps_key, self.factor_key = maps_key, factor_key
        self.photons_per_ray, self.electronic_sigma, self.n_views = float(photons_per_ray), float(electronic_sigma), int(n_views)
        self.intensity = intensity

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in ((self.maps_key, "CTNoiseMapsd"), (self.factor_key, "RandInPlaneZoomd(factor_key=...)")):
            if key[0] not in d:
                raise ConfigError(f"CT fine texture: {key[0]!r} is not in the data; put {key[1]} before it")
        factor = float(d[self.factor_key])
        if factor <= 1.0:
            return d
        maps = _to_numpy(d[self.maps_key]).astype(np.float64)
        # full-dose std at the zoomed pixels (the maps were scaled with the zoom), less what the
        # interpolated coarse texture already holds
        std = _std_from_maps(maps[0], maps[1], self.photons_per_ray, 0.5, self.electronic_sigma, self.n_views)
        added = _textured(std * math.sqrt(1.0 - 1.0 / factor**2), self.R)
        for key in self.key_iterator(d):
            original = d[key]
            array = _to_numpy(original).astype(np.float64)
            params = intensity_params(array, self.intensity) if self.intensity is not None else None
            hu = from_network_units(array, params) if params else array
            if hu.shape[1:] != added.shape:
                raise ConfigError(f"CT fine texture: maps of shape {maps.shape} do not match the image {hu.shape}")
            # no grain where the clean scan holds the plan's lowest HU: outside a reconstruction's
            # circle (and in the air padding of `PadToFieldOfViewd`) scanners write a constant
            grain = added[None] * (hu > float(params["offset"]) + 0.5) if params else added[None]
            out = hu + grain
            d[key] = _like((to_network_units(out, params) if params else out).astype(np.float32), original)
        return d


def build_noise_transform(
    keys: KeysCollection, spec: Mapping[str, Any], *, output_keys: KeysCollection | None = None, level_key: str | None = None
) -> _NoiseBase:
    """One noise transform from a plain config dict (what a workflow's ``noise:`` holds).

    ``spec["model"]`` selects it; the other entries are that transform's keyword arguments:

    - ``{"model": "gaussian", "sigma_range": [0.0, 0.05]}``
    - ``{"model": "rician", "fraction_range": [0.01, 0.1]}``
    - ``{"model": "ct_dose", "dose_range": [0.05, 0.5], "photons_per_ray": 1e7,
      "intensity": {"kind": "hu_linear", ...}}``

    Raises:
        ConfigError: unknown model or option (the message lists the valid ones).
    """
    kinds: dict[str, type[_NoiseBase]] = {
        "gaussian": RandGaussianNoiseRanged, "rician": RandRicianNoiseRanged, "ct_dose": RandCTDoseNoised,
    }
    options = dict(spec)
    name = options.pop("model", None)
    if name not in kinds:
        raise ConfigError(f"noise.model must be one of {', '.join(kinds)}, got {name!r}")
    cls = kinds[name]
    import inspect

    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "keys", "output_keys", "level_key")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"noise ({name}): unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return cls(keys, output_keys=output_keys, level_key=level_key, **options)

"""Low-dose CT simulation from a normal-dose image by noise insertion in the projection domain.

The normal-dose image already carries the quantum and electronic noise of its own scan, so a
lower dose is simulated by adding only the *extra* noise a lower tube current would bring
(the noise-insertion approach of Yu et al. 2012 and Zeng et al. 2015, here applied to a
synthetic sinogram re-projected from the image, as image-based simulators do):

1. HU → linear attenuation ``μ = μ_water · (1 + HU/1000)`` (μ ≥ 0; padding outside the
   scanner's field of view, e.g. −2048 HU, becomes air).
2. Forward projection → line integrals ``p``.
3. A ray with ``I0`` unattenuated photons at normal dose detects ``N = I0·e^{−p}`` photons;
   after the log, ``var(p̂) ≈ 1/N + σ_e²/N²`` (Poisson + additive Gaussian electronic noise
   of std σ_e photons, first-order propagation through the log). At dose fraction ``a`` the
   counts are ``a·N``, so the variance the low-dose scan has *in excess* of the normal-dose
   one is::

       var_extra(p) = (1/a − 1)·e^{p}/I0 + (1/a² − 1)·σ_e²·e^{2p}/I0²

   which is Yu et al.'s insertion formula ``(1−a)/a · e^{p}/I0 · (1 + (1+a)/a · σ_e² e^{p}/I0)``
   written out.
4. Zero-mean Gaussian noise with that variance, per ray, independent between rays.
5. FBP of the **noise sinogram only**, converted to HU and added to the input. At ``a = 1``
   the extra variance is 0, so the output equals the input exactly (no FBP blur or
   re-projection error touches the anatomy).

``mode="full"`` instead reconstructs the whole noisy sinogram (Poisson counts at ``a·I0`` plus
electronic noise, log, FBP): useful to validate the projector, not to simulate from real
scans (it would add the projector's own FBP error and double-count the noise of the input).

Only two projector operations per slice: one forward projection of the input (for the
variance) and one FBP (of the noise); FBP is linear, so FBP(p + n) = FBP(p) + FBP(n) and the
anatomy never needs reconstructing. On the CPU they run in the Fourier domain
(`medseg.ct.fourier_projector`, parallel beam), elsewhere with `medseg.ct.projector`.

Defaults and their sources (check them against your scanner: the real quarter-/full-dose pairs
are the arbiter):

- **I0** (``photons_per_ray``, photons per ray and view at normal dose): by default
  `photons_per_ray_for` the geometry, ``Φ·Δ·h / views`` with a normal-dose fluence
  ``Φ = DEFAULT_PHOTONS_PER_MM2 = 1.1e9`` photons/mm² at the isocentre per rotation, the bin
  width Δ and the slice thickness h. Why not a fixed 1e5–1.5e5 per ray (the figure of
  published simulations, and this module's old default): FBP noise is
  ``var(μ̂) = π²·C_W·var(p) / (views·Δ²)`` with ``var(p) = e^{p}/I0`` (C_W the window's noise
  gain; tests/ct/test_low_dose.py checks the code against this formula on a water cylinder),
  so with a fixed per-ray I0 the noise follows the simulation's views, bin width and slice
  thickness instead of the dose. The published figures are per detector element and view
  of a real scanner (elements ≈ 0.6 × 0.6–0.7 mm at the isocentre, ~1000–2300 views per
  rotation); a simulated ray here is a 0.98 mm × 2 mm slab and there are 720 views, so it
  must carry ~20× the photons for the same dose. Taking the per-element figure per ray was
  the old default's error: 73 HU of extra noise in the liver at quarter dose (134 HU with
  its electronic noise) where a real quarter-dose scan adds 14–20 HU.
  **Calibration of Φ**: quarter dose on the bundled CT (0.98 mm pixels, 2 mm slices) then
  adds 16.6 HU in the eroded liver (benchmarks/bench_low_dose.py), inside √3 × the scan's
  own noise, 8.0 HU (neighbouring-slice differences) to 11.7 HU (median 9×9 local std,
  texture included), i.e. 14–20 HU. Cross-checks: per detector element of 0.6 × 0.6 mm,
  Φ gives 1.7e5 photons per view at 2304 views per rotation (3.4e5 at 1152), next to the
  published 1e5–1.5e5; and at ~60 keV one mGy of air kerma is ≈ 3.4e7 photons/mm²
  (1/(E·μ_en/ρ), μ_en/ρ of air 0.0304 cm²/g, NIST), so Φ is ~32 mGy free in air at the
  isocentre per rotation, the order of a routine abdominal protocol (an order-of-magnitude
  check only). The variance scales as 1/Φ: a real pair calibrates Φ as
  ``Φ·(σ_simulated / σ_real extra)²``.
- ``electronic_noise_std = 0`` (off). The variance of 10 photons² that earlier versions used
  had no source we could verify, and an electronic-noise variance is specified per detector
  reading of a real scanner, whereas a simulated ray here stands for k ≈ (Δ·h/A_element) ·
  (views per rotation / views) ≈ 20 readings (I0_ray = k·I0_element, σ_e,ray² = k·σ_e²): a
  per-reading value does not transfer as it is. Relative to the quantum term it is
  ``(1+a)/a · σ_e²·e^{p}/I0``, so it matters only for photon-starved rays (lateral rays
  through shoulders or pelvis); pass ``σ_e·√k`` for a measured per-reading σ_e.
- ``μ_water = 0.0194 /mm``: water at ~70 keV effective energy (NIST XCOM: 0.2059 cm²/g at
  60 keV, 0.1837 at 80 keV, log-interpolated), typical of a 120 kVp spectrum.
- the geometry: 720 parallel views over 180° (or 1440 fan views over 360°), detector bins one
  pixel wide, and a Hann-windowed ramp for the FBP of the inserted noise: clinical soft-tissue
  kernels are smooth, and Ram-Lak (the sharpest) gives ~2.7× the noise std with a finer grain.
  With the default I0 the noise does not depend on the number of views (360, 720, 1440
  parallel or 1440 fan views: 16.6–17.5 HU at quarter dose in the same liver).

References: L. Yu, M. Shiung, D. Jondal, C. H. McCollough, "Development and validation of a
practical lower-dose-simulation tool for optimizing computed tomography scan protocols",
J Comput Assist Tomogr 36(4):477–487, 2012. D. Zeng et al., "A simple low-dose x-ray CT
simulation from high-dose scan", IEEE Trans Nucl Sci 62(5):2226–2233, 2015.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from medseg.ct.fourier_projector import FourierProjector
from medseg.ct.fourier_projector import available as fourier_available
from medseg.ct.projector import FILTERS, CTGeometry, Projector
from medseg.errors import ConfigError, InputError

log = logging.getLogger(__name__)

MU_WATER_PER_MM = 0.0194
#: Normal-dose photon fluence at the isocentre, photons per mm² summed over one rotation (the
#: default `photons_per_ray` is derived from it; see the module docstring for its calibration).
DEFAULT_PHOTONS_PER_MM2 = 1.1e9
#: Slice thickness assumed for a 2-D/3-D array when none is given (`simulate_low_dose_volume`
#: takes the volume's slice spacing).
DEFAULT_SLICE_THICKNESS_MM = 1.0
#: Electronic noise is off by default (module docstring: no value transfers to effective rays).
DEFAULT_ELECTRONIC_NOISE_STD = 0.0

Mode = Literal["insert", "full"]


def hu_to_mu(hu: torch.Tensor, mu_water_per_mm: float = MU_WATER_PER_MM) -> torch.Tensor:
    """Linear attenuation (1/mm) from HU: ``μ_water·(1 + HU/1000)``, clipped at 0."""
    return torch.clamp(mu_water_per_mm * (1.0 + hu / 1000.0), min=0.0)


def mu_to_hu(mu: torch.Tensor, mu_water_per_mm: float = MU_WATER_PER_MM) -> torch.Tensor:
    """HU from linear attenuation (1/mm): ``1000·(μ/μ_water − 1)``."""
    return 1000.0 * (mu / mu_water_per_mm - 1.0)


def photons_per_ray_for(
    geometry: CTGeometry, slice_thickness_mm: float, photons_per_mm2: float = DEFAULT_PHOTONS_PER_MM2
) -> float:
    """Unattenuated photons per simulated ray and view at normal dose: the fluence of one
    rotation shared by the geometry's views, through a ray one detector bin (at the
    isocentre) wide and one slice thick: ``Φ·Δ·h / views``.

    All of a rotation's photons are used whatever the geometry: a 360° fan scan spreads them
    over its views, a 180° parallel sinogram stands for the whole rotation (each line is
    measured twice in 360°). With this the simulated noise depends on the dose, the bin width
    and the slice thickness as a scanner's does (variance ∝ 1/(Φ·Δ³·h)), not on how many views
    the simulation uses.

    Args:
        geometry: the simulation's geometry (``det_spacing`` in mm at the isocentre, ``views``).
        slice_thickness_mm: reconstructed slice thickness ``h``.
        photons_per_mm2: normal-dose fluence ``Φ`` at the isocentre per rotation.

    Raises:
        ConfigError: a non-positive thickness or fluence.
    """
    if not (slice_thickness_mm > 0 and math.isfinite(slice_thickness_mm)):
        raise ConfigError(f"slice_thickness_mm must be a positive number, got {slice_thickness_mm}")
    if not (photons_per_mm2 > 0 and math.isfinite(photons_per_mm2)):
        raise ConfigError(f"photons_per_mm2 must be a positive number, got {photons_per_mm2}")
    return float(photons_per_mm2) * geometry.det_spacing * float(slice_thickness_mm) / geometry.views


def extra_variance(
    p: torch.Tensor, dose_fraction: float, photons_per_ray: float, electronic_noise_std: float
) -> torch.Tensor:
    """Variance of the line integrals that a scan at `dose_fraction` has beyond normal dose.

    ``(1/a − 1)·e^{p}/I0 + (1/a² − 1)·σ_e²·e^{2p}/I0²`` (see the module docstring).

    Args:
        p: line integrals (dimensionless), any shape.
        dose_fraction: ``a`` in (0, 1].
        photons_per_ray: ``I0``, unattenuated photons per ray at normal dose.
        electronic_noise_std: ``σ_e`` in photons.

    Returns:
        Tensor like `p` (0 everywhere at ``a = 1``).
    """
    a = float(dose_fraction)
    q = torch.exp(p) / photons_per_ray  # 1 / normal-dose counts
    var = (1.0 / a - 1.0) * q
    if electronic_noise_std > 0:
        var = var + (1.0 / a**2 - 1.0) * (electronic_noise_std**2) * q * q
    return var


def _slice_generator(seed: int, index: int) -> torch.Generator:
    # one stream per (seed, slice): results do not depend on the batch size or the device
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def _make_projector(geo: CTGeometry, choice: str, device: torch.device) -> Projector | FourierProjector:
    if choice not in ("auto", "fourier", "direct"):
        raise ConfigError(f"projector must be 'auto', 'fourier' or 'direct', got {choice!r}")
    if choice == "fourier" or (choice == "auto" and geo.kind == "parallel" and device.type == "cpu"):
        if choice == "auto" and not fourier_available():
            log.warning("the 'finufft' package is missing: using the slower direct projector")
            return Projector(geo)
        return FourierProjector(geo)  # raises ConfigError for the fan beam / without finufft
    return Projector(geo)


def _check_args(dose_fraction: float, photons_per_ray: float, electronic_noise_std: float, filter: str, mode: str) -> None:
    if not (0.0 < dose_fraction <= 1.0):
        raise ConfigError(f"dose_fraction must be in (0, 1], got {dose_fraction}")
    if not (photons_per_ray > 0 and math.isfinite(photons_per_ray)):
        raise ConfigError(f"photons_per_ray must be a positive number, got {photons_per_ray}")
    if not (electronic_noise_std >= 0 and math.isfinite(electronic_noise_std)):
        raise ConfigError(f"electronic_noise_std must be ≥ 0 photons, got {electronic_noise_std}")
    if filter not in FILTERS:
        raise ConfigError(f"filter must be one of {', '.join(FILTERS)}, got {filter!r}")
    if mode not in ("insert", "full"):
        raise ConfigError(f"mode must be 'insert' or 'full', got {mode!r}")


def simulate_low_dose(
    hu: np.ndarray | torch.Tensor,
    pixel_spacing_mm: tuple[float, ...] | float,
    *,
    dose_fraction: float = 0.25,
    photons_per_ray: float | None = None,
    views: int | None = None,
    detector_pixels: int | None = None,
    electronic_noise_std: float = DEFAULT_ELECTRONIC_NOISE_STD,
    geometry: Literal["parallel", "fan"] = "parallel",
    filter: str = "hann",
    mode: Mode = "insert",
    seed: int = 0,
    mu_water_per_mm: float = MU_WATER_PER_MM,
    device: str | torch.device | None = None,
    slices_per_batch: int = 4,
    progress: Callable[[int, int], None] | None = None,
    projector: Literal["auto", "fourier", "direct"] = "auto",
    slice_thickness_mm: float | None = None,
    photons_per_mm2: float = DEFAULT_PHOTONS_PER_MM2,
) -> np.ndarray | torch.Tensor:
    """Simulate a lower-dose CT image from a normal-dose one (see the module docstring).

    Each axial slice (array axes 0, 1) is simulated on its own, ``slices_per_batch`` at a time.

    Args:
        hu: ``(X, Y)`` or ``(X, Y, Z)`` image in HU (NumPy or torch).
        pixel_spacing_mm: in-plane spacing ``(sx, sy)`` in mm (or one number), or
            ``(sx, sy, sz)``: then ``sz`` is the slice thickness of the default I0 unless
            `slice_thickness_mm` is given.
        dose_fraction: simulated dose / normal dose, in (0, 1] (0.25 = quarter dose).
        photons_per_ray: unattenuated photons per ray and view at normal dose (I0); default
            (None) `photons_per_ray_for` the geometry, `slice_thickness_mm` and
            `photons_per_mm2`.
        views: projection angles (default 720 parallel over 180°, 1440 fan over 360°).
        detector_pixels: detector bins (default: cover the image's circumscribed circle with
            bins one pixel wide).
        electronic_noise_std: electronic noise std σ_e in photons of one simulated ray (default 0:
            see the module docstring).
        geometry: ``"parallel"`` or ``"fan"`` (equi-angular detector).
        filter: FBP window (`medseg.ct.projector.FILTERS`).
        mode: ``"insert"`` (add FBP of the extra noise to the input) or ``"full"``
            (FBP of a complete noisy sinogram; for validation).
        seed: random seed; the noise of slice k depends only on (seed, k).
        mu_water_per_mm: μ of water at the effective energy.
        device: torch device (default: the input tensor's device, or CPU for NumPy input).
        slices_per_batch: slices projected together (memory vs. overhead).
        progress: called as ``progress(slices_done, n_slices)`` after each batch.
        projector: ``"fourier"`` (`medseg.ct.fourier_projector`, NUFFT-based, parallel beam on
            the CPU, the fast path), ``"direct"`` (`medseg.ct.projector`, `grid_sample`, any
            geometry and device) or ``"auto"`` (Fourier for the parallel beam on the CPU, direct
            otherwise). Both compute the same discrete operators (the Fourier one to ~2·10⁻⁴
            for the line integrals and ~0.1 % for the noise variance), so the choice changes
            speed, not the statistics.
        slice_thickness_mm: slice thickness for the default I0 (default: the third spacing,
            else `DEFAULT_SLICE_THICKNESS_MM`; `simulate_low_dose_volume` passes the slice
            spacing).
        photons_per_mm2: normal-dose fluence for the default I0 (`DEFAULT_PHOTONS_PER_MM2`).

    Returns:
        float32 HU image of the input's shape and kind (NumPy in, NumPy out).

    Raises:
        InputError: the image is not 2-D/3-D or holds non-finite values.
        ConfigError: an argument is out of range.
    """
    if photons_per_ray is not None:
        _check_args(dose_fraction, photons_per_ray, electronic_noise_std, filter, mode)
    is_numpy = not isinstance(hu, torch.Tensor)
    x = torch.as_tensor(np.asarray(hu)) if is_numpy else hu
    if x.ndim not in (2, 3):
        raise InputError(f"simulate_low_dose: expected a 2-D slice or 3-D volume in HU, got shape {tuple(x.shape)}")
    out_device = x.device
    dev = torch.device(device) if device is not None else x.device
    x = x.to(dev, torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise InputError("simulate_low_dose: the image holds NaN or infinite values; repair them first")
    squeeze = x.ndim == 2
    vol = x[..., None] if squeeze else x
    spacing = [float(pixel_spacing_mm)] * 2 if np.isscalar(pixel_spacing_mm) else [float(v) for v in pixel_spacing_mm]
    if len(spacing) not in (2, 3):
        raise ConfigError(f"pixel_spacing_mm must be one number, (sx, sy) or (sx, sy, sz), got {pixel_spacing_mm}")
    sx, sy = spacing[:2]
    if slice_thickness_mm is None and len(spacing) == 3:
        slice_thickness_mm = spacing[2]
    geo = CTGeometry((vol.shape[0], vol.shape[1]), (float(sx), float(sy)), kind=geometry,
                     n_views=views, n_detectors=detector_pixels)
    if photons_per_ray is None:
        thickness = DEFAULT_SLICE_THICKNESS_MM if slice_thickness_mm is None else slice_thickness_mm
        photons_per_ray = photons_per_ray_for(geo, thickness, photons_per_mm2)
    _check_args(dose_fraction, photons_per_ray, electronic_noise_std, filter, mode)
    log.debug("low-dose simulation: %.4g photons per ray at normal dose", photons_per_ray)
    proj = _make_projector(geo, projector, dev)
    n = vol.shape[2]
    out = torch.empty_like(vol)
    for k0 in range(0, n, max(1, slices_per_batch)):
        k1 = min(n, k0 + max(1, slices_per_batch))
        slab = vol[..., k0:k1].permute(2, 0, 1)  # (Z, X, Y)
        with torch.no_grad():
            if mode == "insert" and dose_fraction == 1.0:
                result = slab  # the extra variance is 0 everywhere: the identity, exactly
            else:
                p = proj.forward(hu_to_mu(slab, mu_water_per_mm))
                if mode == "insert":
                    std = extra_variance(p, dose_fraction, photons_per_ray, electronic_noise_std).sqrt()
                    noise = torch.stack([torch.randn(p.shape[1:], generator=_slice_generator(seed, k)) for k in range(k0, k1)])
                    noise_mu = proj.fbp(noise.to(dev) * std, filter=filter)
                    result = slab + noise_mu * (1000.0 / mu_water_per_mm)
                else:
                    result = mu_to_hu(proj.fbp(_noisy_line_integrals(p, dose_fraction, photons_per_ray,
                                                                     electronic_noise_std, seed, k0), filter=filter),
                                      mu_water_per_mm)
        out[..., k0:k1] = result.permute(1, 2, 0)
        if progress is not None:
            progress(k1, n)
    out = out[..., 0] if squeeze else out
    if is_numpy:
        return out.cpu().numpy()
    return out.to(out_device)


def _noisy_line_integrals(
    p: torch.Tensor, dose_fraction: float, photons_per_ray: float, electronic_noise_std: float, seed: int, k0: int
) -> torch.Tensor:
    """Full simulation of a scan at `dose_fraction`: Poisson counts + electronic noise, log."""
    i0 = dose_fraction * photons_per_ray
    rows = []
    for z in range(p.shape[0]):
        gen = _slice_generator(seed, k0 + z)
        mean = (i0 * torch.exp(-p[z])).cpu().double()
        counts = torch.poisson(mean, generator=gen)
        if electronic_noise_std > 0:
            counts = counts + electronic_noise_std * torch.randn(counts.shape, generator=gen, dtype=counts.dtype)
        # a ray with (almost) no photons left: clip to one photon, as scanners clip before the log
        rows.append(-torch.log(torch.clamp(counts, min=1.0) / i0))
    return torch.stack(rows).to(p.device, p.dtype)


def simulate_low_dose_volume(volume: "Volume", **kwargs) -> "Volume":  # noqa: F821 - io type, imported lazily
    """`simulate_low_dose` on a CT `Volume` (axial slices = array axes 0, 1), same grid.

    Args:
        volume: CT in HU (``meta["modality"]``, when present, must be ``"CT"``).
        **kwargs: the keyword arguments of `simulate_low_dose` (not `pixel_spacing_mm`); the
            default I0 takes the slice spacing as the slice thickness unless
            `slice_thickness_mm` is given.

    Returns:
        A float32 `Volume` on the same grid, ``meta["low_dose_simulation"]`` holding the
        parameters.

    Raises:
        InputError: not a CT / not 3-D single-channel / values that are not HU.
    """
    from medseg.io.volume import Volume

    source = volume.meta.get("source_path") or volume.meta.get("series_description") or "input"
    modality = str(volume.meta.get("modality") or "CT").upper()
    if modality != "CT":
        raise InputError(f"{source}: low-dose simulation needs a CT in HU, found modality {modality!r}")
    array = np.asarray(volume.array)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(f"{source}: expected one 3-D CT volume, found shape {array.shape}")
    lo, hi = float(array.min()), float(array.max())
    if lo > -500 or lo < -10000 or hi > 1e5:
        raise InputError(
            f"{source}: values {lo:g}…{hi:g} do not look like CT in HU (air near −1000 expected); "
            "convert the image to HU first"
        )
    kwargs = dict(kwargs)
    if kwargs.get("photons_per_ray") is None:
        # the readers keep no SliceThickness: the slice spacing stands for it (equal for
        # contiguous axial series)
        thickness = kwargs.pop("slice_thickness_mm", None) or float(volume.spacing[2])
        geo = CTGeometry(array.shape[:2], tuple(float(v) for v in volume.spacing[:2]),
                         kind=kwargs.get("geometry", "parallel"), n_views=kwargs.get("views"),
                         n_detectors=kwargs.get("detector_pixels"))
        kwargs["photons_per_ray"] = photons_per_ray_for(geo, thickness, kwargs.pop("photons_per_mm2", DEFAULT_PHOTONS_PER_MM2))
        used = {"slice_thickness_mm": thickness}
    else:
        used = {}
    sim = simulate_low_dose(array, volume.spacing[:2], **kwargs)
    params = {k: v for k, v in kwargs.items() if k not in ("progress", "device")}
    params.update(used, photons_per_ray_used=float(kwargs["photons_per_ray"]))
    return Volume(sim.astype(np.float32, copy=False), volume.affine.copy(),
                  {**volume.meta, "low_dose_simulation": params})

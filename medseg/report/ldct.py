"""Low-dose CT enhancement evaluation: fidelity, noise texture and panels on a held-out scan.

Protocol (`evaluate_low_dose`; `benchmarks/bench_ldct.py` runs it on the bundled held-out CT):

1. The normal-dose scan (reoriented to RAS, no interpolation) is simulated at each dose of the
   protocol with `medseg.ct.low_dose.simulate_low_dose_volume` (projection-domain noise
   insertion, the simulator's default I0 for the scan's pixel size and slice thickness, one
   fixed seed per dose).
2. Every method turns the low-dose volume into an enhanced one; ``low-dose`` (the input
   itself) is always the first row. A method sees the whole low-dose volume (a 2.5-D network
   needs the neighbours) and returns the scored slices only.
3. **Fidelity** against the normal-dose scan on the scored slices (`medseg.report.denoise.
   score_denoised`, i.e. `medseg.metrics.image`): PSNR (dB), SSIM (per-slice mean) and RMSE
   (HU), each in every HU window of the protocol, both images clipped to the window and the
   data range = its width. The default windows are the full 12-bit range −1024..3071 HU (data
   range 4095 HU, the convention of the low-dose CT literature and of the training
   validation) and the soft-tissue window −160..240 HU (data range 400 HU, what a reader sees).
4. **Noise texture**: square ROIs wholly inside a uniform region (the caller's mask, e.g. the
   eroded liver; `medseg.ct.nps.uniform_roi_centres` per scored slice, the same ROIs for every
   method), each detrended by its least-squares plane; the 2-D NPS of each method's ROIs
   (`medseg.ct.nps.noise_power_spectrum`) is compared with the NPS of the **normal-dose** scan
   in the same ROIs: ``nps_error = Σ|NPS − NPS_normal| / Σ NPS_normal`` over the frequency plane
   (`nps_relative_error`). The target of enhancement is the normal-dose image, noise texture
   included: 0 means normal-dose texture; a method that over-smooths (the "plastic" look of
   MSE-trained networks) removes power, mostly at high frequencies, and scores up to 1; one that
   leaves noise scores above 0 the other way. Also reported: the noise std in the ROIs (√ of
   the NPS integral, anatomy texture of the organ included, the same for all methods), its
   ratio to normal dose, and the NPS-weighted mean frequency (lower = coarser grain).
5. **Panels**: one slice per dose, every method and the normal dose in one fixed HU window,
   and each one's difference to normal dose (`write_denoise_panel`); the radial NPS curves.

`write_low_dose_report` writes the CSVs, a markdown and an HTML report that say which method
wins where.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.ct.nps import mean_frequency, noise_power_spectrum, nps_relative_error, radial_average, uniform_roi_centres
from medseg.errors import GeometryError, InputError
from medseg.io.volume import Volume
from medseg.report.denoise import DenoiseRow, score_denoised

__all__ = [
    "LOW_DOSE_INPUT",
    "LowDoseEvaluation",
    "LowDoseProtocol",
    "NpsRow",
    "baseline_method",
    "evaluate_low_dose",
    "nps_rows_for",
    "volume_method",
]

log = logging.getLogger(__name__)

#: The name of the row of the unprocessed low-dose input.
LOW_DOSE_INPUT = "low-dose"
#: The reference's name in NPS tables and panels.
NORMAL_DOSE = "normal dose"

#: A method: ``fn(low_dose_volume, scored_slices) -> (X, Y, len(scored_slices))`` array in HU on
#: the low-dose volume's grid (RAS-ordered, as `evaluate_low_dose` passes it).
EnhanceMethod = Callable[[Volume, Sequence[int]], np.ndarray]


@dataclass(frozen=True)
class LowDoseProtocol:
    """What `evaluate_low_dose` measures (every table states these).

    Attributes:
        doses: simulated dose fractions of the normal dose (0.25 = quarter dose).
        windows: HU windows ``(lo, hi)`` of the fidelity metrics; data range = ``hi − lo``.
        display_window: the one HU window of every image panel.
        slices: scored axial slices (None = all).
        panel_slice: the slice of the panels (default: the middle scored slice).
        roi_size_px: side of the NPS ROIs in pixels.
        max_rois_per_slice: at most this many ROIs per scored slice.
        seed: simulation seed of the first dose (dose i uses ``seed + i``).
        simulation: extra keyword arguments of `simulate_low_dose_volume` (views, geometry…).
    """

    doses: tuple[float, ...] = (0.25, 0.1)
    windows: tuple[tuple[float, float], ...] = ((-1024.0, 3071.0), (-160.0, 240.0))
    display_window: tuple[float, float] = (-160.0, 240.0)
    slices: tuple[int, ...] | None = None
    panel_slice: int | None = None
    roi_size_px: int = 32
    max_rois_per_slice: int = 8
    seed: int = 0
    simulation: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NpsRow:
    """Noise texture of one method at one dose in the uniform-region ROIs."""

    case: str
    dose_fraction: float
    method: str
    n_rois: int
    roi_px: int
    noise_std_hu: float  # √(∫ NPS): std in the detrended ROIs (organ texture included)
    std_ratio_vs_normal: float
    mean_frequency_per_mm: float
    nps_error: float  # Σ|NPS − NPS_normal| / Σ NPS_normal over the 2-D frequency plane


@dataclass
class LowDoseEvaluation:
    """What `evaluate_low_dose` measured (the report writer's input)."""

    case: str
    protocol: LowDoseProtocol
    scored_slices: list[int]
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    rows: list[DenoiseRow]
    nps: list[NpsRow]
    #: (dose, method) → (frequencies cycles/mm, radial NPS HU²·mm²); the normal dose under NORMAL_DOSE
    nps_curves: dict[tuple[float, str], tuple[np.ndarray, np.ndarray]]
    #: dose → {"low-dose": slice, method: slice, …, NORMAL_DOSE: slice} of the panel slice (HU, RAS)
    panel_images: dict[float, dict[str, np.ndarray]]
    panel_slice: int
    simulation_params: dict[float, dict[str, Any]]
    seconds: dict[tuple[float, str], float]


def _orient_ras(volume: Volume) -> Volume:
    from medseg.data.ldct_pairs import orient_ras

    return orient_ras(volume)


def _roi_stacks(image: np.ndarray, centres: Sequence[Sequence[tuple[int, int]]], size: int) -> np.ndarray:
    """ROIs (n, size, size) of the scored slices of ``image`` (X, Y, n_scored) at per-slice centres."""
    half = size // 2
    out = [
        image[ci - half : ci - half + size, cj - half : cj - half + size, k]
        for k, cs in enumerate(centres)
        for ci, cj in cs
    ]
    return np.stack(out) if out else np.empty((0, size, size), dtype=np.float64)


def nps_rows_for(
    images: Mapping[str, np.ndarray],
    reference: np.ndarray,
    centres: Sequence[Sequence[tuple[int, int]]],
    size: int,
    pixel_spacing_mm: tuple[float, float],
    *,
    case: str,
    dose_fraction: float,
) -> tuple[list[NpsRow], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """NPS rows of several images against the reference (normal dose) in the same ROIs.

    Args:
        images: method name → (X, Y, n) scored slices in HU.
        reference: (X, Y, n) normal-dose slices in HU.
        centres: per scored slice, the ROI centres (`uniform_roi_centres`).
        size: ROI side in pixels.
        pixel_spacing_mm: in-plane spacing (mm) along X and Y.
        case, dose_fraction: what the rows describe.

    Returns:
        ``(rows, curves)``: one `NpsRow` per image (the reference's own first, error 0) and
        name → (f, radial NPS).

    Raises:
        InputError: no ROI fits.
    """
    ref_rois = _roi_stacks(reference, centres, size)
    if ref_rois.shape[0] == 0:
        raise InputError(f"{case}: no {size}×{size} px ROI fits inside the uniform-region mask on the scored slices")
    nps_ref, fx, fy = noise_power_spectrum(ref_rois, pixel_spacing_mm, detrend="plane")
    df = (fx[1] - fx[0]) * (fy[1] - fy[0])
    var_ref = float(nps_ref.sum() * df)
    rows, curves = [], {}
    for name, img in {NORMAL_DOSE: reference, **images}.items():
        rois = ref_rois if name == NORMAL_DOSE else _roi_stacks(img, centres, size)
        nps = nps_ref if name == NORMAL_DOSE else noise_power_spectrum(rois, pixel_spacing_mm, detrend="plane")[0]
        var = float(nps.sum() * df)
        rows.append(NpsRow(
            case=case, dose_fraction=float(dose_fraction), method=name, n_rois=int(rois.shape[0]), roi_px=int(size),
            noise_std_hu=float(np.sqrt(var)), std_ratio_vs_normal=float(np.sqrt(var / var_ref)) if var_ref > 0 else float("nan"),
            mean_frequency_per_mm=mean_frequency(nps, fx, fy), nps_error=nps_relative_error(nps, nps_ref),
        ))
        curves[name] = radial_average(nps, fx, fy)
    return rows, curves


def evaluate_low_dose(
    normal_dose: Volume,
    methods: Mapping[str, EnhanceMethod],
    uniform_mask: np.ndarray | Volume,
    *,
    protocol: LowDoseProtocol = LowDoseProtocol(),
    case: str = "case",
    progress: Callable[[str], None] | None = None,
) -> LowDoseEvaluation:
    """Simulate each dose of `protocol`, enhance with each method and score (module docstring).

    Args:
        normal_dose: the normal-dose CT in HU (any orientation; a held-out scan).
        methods: name → `EnhanceMethod` (e.g. NLM, a checkpoint through `predict_image`).
            ``low-dose`` is added first by this function; do not pass it.
        uniform_mask: boolean mask of a uniform region (e.g. the eroded liver) on
            `normal_dose`'s grid: a Volume, or an array in `normal_dose`'s voxel order.
        protocol: doses, windows, slices, ROIs, seed.
        case: the case name in every row.
        progress: called with a short message before each simulation / method.

    Returns:
        A `LowDoseEvaluation` (write it with `medseg.report.ldct_report.write_low_dose_report`).

    Raises:
        GeometryError: the mask is not on the scan's grid, or a method returns a wrong shape.
        InputError: bad slices, or no NPS ROI fits in the mask.
    """
    from medseg.ct.low_dose import simulate_low_dose_volume

    if LOW_DOSE_INPUT in methods:
        raise InputError(f"{LOW_DOSE_INPUT!r} is the unprocessed input's row; name the method otherwise")
    mask_vol = uniform_mask if isinstance(uniform_mask, Volume) else normal_dose.with_array(np.asarray(uniform_mask).astype(np.uint8))
    if not mask_vol.same_grid(normal_dose):
        raise GeometryError(f"{case}: the uniform-region mask (shape {mask_vol.shape}) is not on the scan's grid (shape {normal_dose.shape})")
    nd = _orient_ras(normal_dose)
    mask = np.asarray(_orient_ras(mask_vol).array) > 0
    hu = np.asarray(nd.array, dtype=np.float32)
    if hu.ndim == 4 and hu.shape[3] == 1:
        hu = hu[..., 0]
    nz = hu.shape[2]
    slices = list(range(nz)) if protocol.slices is None else [int(s) for s in protocol.slices]
    if not slices or min(slices) < 0 or max(slices) >= nz or len(set(slices)) != len(slices):
        raise InputError(f"{case}: scored slices {slices} must be distinct indices in 0..{nz - 1}")
    panel = protocol.panel_slice if protocol.panel_slice is not None else slices[len(slices) // 2]
    if panel not in slices:
        raise InputError(f"{case}: the panel slice {panel} is not among the scored slices {slices}")
    k_panel = slices.index(panel)
    sx, sy, sz = nd.spacing
    size = int(protocol.roi_size_px)
    centres = [uniform_roi_centres(mask[:, :, z], size, protocol.max_rois_per_slice) for z in slices]
    log.info("%s: %d NPS ROIs of %d px on %d scored slices", case, sum(map(len, centres)), size, len(slices))
    reference = hu[:, :, slices]

    rows: list[DenoiseRow] = []
    nps_rows: list[NpsRow] = []
    curves: dict[tuple[float, str], tuple[np.ndarray, np.ndarray]] = {}
    panels: dict[float, dict[str, np.ndarray]] = {}
    sim_params: dict[float, dict[str, Any]] = {}
    seconds: dict[tuple[float, str], float] = {}
    for i, dose in enumerate(protocol.doses):
        seed = int(protocol.seed) + i
        if progress is not None:
            progress(f"simulating dose {dose:g}")
        low = simulate_low_dose_volume(nd, dose_fraction=float(dose), seed=seed, **dict(protocol.simulation))
        # the oracle noise level for the classical baselines' σ (as benchmarks/bench_denoise.py):
        # RMS of the inserted noise inside the body (normal dose > −500 HU) on the scored slices
        body = reference > -500.0
        inserted = np.asarray(low.array, dtype=np.float32)[:, :, slices] - reference
        noise_rms = float(np.sqrt(np.mean(inserted[body] ** 2))) if body.any() else float(np.std(inserted))
        low = low.with_array(np.asarray(low.array, dtype=np.float32), inserted_noise_rms_hu=noise_rms)
        sim_params[float(dose)] = {**dict(low.meta.get("low_dose_simulation") or {}), "inserted_noise_rms_hu": noise_rms}
        outputs: dict[str, np.ndarray] = {LOW_DOSE_INPUT: np.asarray(low.array, dtype=np.float32)[:, :, slices]}
        for name, fn in methods.items():
            if progress is not None:
                progress(f"dose {dose:g}: {name}")
            t0 = time.perf_counter()
            out = np.asarray(fn(low, slices), dtype=np.float32)
            seconds[(float(dose), name)] = time.perf_counter() - t0
            if out.shape != reference.shape:
                raise GeometryError(f"{case}: method {name!r} returned shape {out.shape}, expected {reference.shape} (the scored slices)")
            outputs[name] = out
        for name, out in outputs.items():
            t = seconds.get((float(dose), name))
            for window in protocol.windows:
                rows.append(score_denoised(
                    case, "ct_low_dose_simulation", float(dose), "dose fraction", name, out, reference,
                    units="HU", seed=seed, window=(float(window[0]), float(window[1])),
                    seconds_per_slice=None if t is None else t / len(slices),
                ))
        found, named = nps_rows_for(outputs, reference, centres, size, (sx, sy), case=case, dose_fraction=float(dose))
        nps_rows.extend(r for r in found if r.method != NORMAL_DOSE or i == 0)
        curves.update({(float(dose), k): v for k, v in named.items()})
        panels[float(dose)] = {**{k: v[:, :, k_panel] for k, v in outputs.items()}, NORMAL_DOSE: reference[:, :, k_panel]}
    return LowDoseEvaluation(
        case=case, protocol=protocol, scored_slices=slices, pixel_spacing_mm=(float(sx), float(sy)),
        slice_thickness_mm=float(sz), rows=rows, nps=nps_rows, nps_curves=curves, panel_images=panels,
        panel_slice=int(panel), simulation_params=sim_params, seconds=seconds,
    )


def baseline_method(name: str, sigma: float | str | None = "oracle", **kwargs: Any) -> EnhanceMethod:
    """An `EnhanceMethod` running a classical baseline of `medseg.enhance_baselines` (``nlm``,
    ``bm3d``, ``gaussian``) on the scored slices only (they work slice by slice).

    Args:
        name: the baseline.
        sigma: its noise std in HU: ``"oracle"`` = the RMS of the inserted noise in the body,
            which `evaluate_low_dose` puts in ``meta["inserted_noise_rms_hu"]`` (the wavelet
            estimate is far too low on CT's correlated noise: docs/benchmarks.md, "Denoising
            baselines"); None = estimated per slice; or a number.
        **kwargs: the baseline's own options.
    """
    from medseg.enhance_baselines import denoise_baseline

    def run(low: Volume, slices: Sequence[int]) -> np.ndarray:
        sig = low.meta.get("inserted_noise_rms_hu") if sigma == "oracle" else sigma
        if sigma == "oracle" and sig is None:
            raise InputError(f"baseline {name!r}: sigma='oracle' needs meta['inserted_noise_rms_hu'] (set by evaluate_low_dose)")
        return denoise_baseline(name, np.asarray(low.array, dtype=np.float32)[:, :, list(slices)], sig, **kwargs)

    return run


def volume_method(enhance: Callable[[Volume], Volume], context_slices: int | None = None) -> EnhanceMethod:
    """An `EnhanceMethod` from a volume enhancer (e.g. ``lambda v: predict_image(v, model)``).

    Args:
        enhance: low-dose Volume → enhanced Volume on its grid.
        context_slices: None = run on the whole low-dose volume and keep the scored slices.
            ``k`` (a 2-D / 2.5-D network with k neighbours on each side) = run on the slab
            ``s−k … s+k`` of each scored slice ``s`` only and keep its centre: the same result
            (the centre slice sees exactly its neighbours, and a slab clipped at the volume's
            end replicates the edge slice as the whole volume would), for fewer slices.
    """

    def run(low: Volume, slices: Sequence[int]) -> np.ndarray:
        if context_slices is None:
            return np.asarray(enhance(low).array, dtype=np.float32)[:, :, list(slices)]
        array = np.asarray(low.array, dtype=np.float32)
        out = []
        for s in slices:
            a, b = max(0, s - context_slices), min(array.shape[2], s + context_slices + 1)
            affine = low.affine.copy()
            affine[:3, 3] = (low.affine @ np.array([0.0, 0.0, float(a), 1.0]))[:3]
            slab = Volume(np.ascontiguousarray(array[:, :, a:b]), affine, dict(low.meta))
            out.append(np.asarray(enhance(slab).array, dtype=np.float32)[:, :, s - a])
        return np.stack(out, axis=-1)

    return run

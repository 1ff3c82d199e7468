"""Noise power spectrum (NPS) of CT noise, from regions of interest in uniform areas.

The 2-D NPS (ICRU Report 87; Boedeker et al., Med Phys 2007) of an ensemble of ``n`` ROIs of
``h × w`` pixels with spacing ``(sx, sy)`` mm, each made zero-mean first::

    NPS(fx, fy) = sx·sy / (h·w) · ⟨ |DFT₂(roi − mean(roi))|² ⟩    [HU²·mm²]

so that its integral over frequency is the noise variance: ``Σ NPS · Δfx·Δfy = var`` with
``Δf = 1/(h·sx), 1/(w·sy)`` (cycles/mm). Use a difference of two realisations (divided by √2)
or an image of inserted noise alone so that anatomy does not enter the estimate; a mean
subtraction removes only the DC term (pass ``detrend="plane"`` to remove a fitted plane too).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from medseg.errors import InputError


def noise_power_spectrum(
    rois: np.ndarray,
    pixel_spacing_mm: tuple[float, float] | float,
    detrend: Literal["mean", "plane"] = "mean",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-D NPS of an ensemble of ROIs (see the module docstring).

    Args:
        rois: ``(n, h, w)`` or ``(h, w)`` noise samples in HU (ROIs and/or realisations).
        pixel_spacing_mm: ``(sx, sy)`` along ``h`` and ``w`` (or one number).
        detrend: subtract each ROI's mean (``"mean"``) or its least-squares plane (``"plane"``).

    Returns:
        ``(nps, fx, fy)``: the ``(h, w)`` NPS in HU²·mm², zero frequency at the centre
        (``fftshift``), and the frequencies (cycles/mm) along ``h`` and ``w``.

    Raises:
        InputError: not 2-D/3-D, smaller than 4×4, or non-finite.
    """
    a = np.asarray(rois, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1] < 4 or a.shape[2] < 4:
        raise InputError(f"noise_power_spectrum: expected ROIs (n, h, w) of at least 4×4 pixels, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError("noise_power_spectrum: the ROIs hold NaN or infinite values")
    sx, sy = (pixel_spacing_mm, pixel_spacing_mm) if np.isscalar(pixel_spacing_mm) else pixel_spacing_mm
    n, h, w = a.shape
    if detrend == "plane":
        ii, jj = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        design = np.stack((np.ones(h * w), ii.ravel(), jj.ravel()), axis=1)
        coef, *_ = np.linalg.lstsq(design, a.reshape(n, -1).T, rcond=None)
        a = a - (design @ coef).T.reshape(n, h, w)
    elif detrend == "mean":
        a = a - a.mean(axis=(1, 2), keepdims=True)
    else:
        raise InputError(f"noise_power_spectrum: detrend must be 'mean' or 'plane', got {detrend!r}")
    power = np.abs(np.fft.fft2(a)) ** 2
    nps = np.fft.fftshift(power.mean(axis=0)) * (float(sx) * float(sy) / (h * w))
    fx = np.fft.fftshift(np.fft.fftfreq(h, d=float(sx)))
    fy = np.fft.fftshift(np.fft.fftfreq(w, d=float(sy)))
    return nps, fx, fy


def radial_average(
    nps: np.ndarray, fx: np.ndarray, fy: np.ndarray, n_bins: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged NPS: mean of the 2-D NPS in rings of equal radial frequency.

    Args:
        nps, fx, fy: as returned by `noise_power_spectrum`.
        n_bins: rings out to the smaller Nyquist frequency (default ``min(h, w) // 2``).

    Returns:
        ``(f, nps_r)``: ring-centre frequencies (cycles/mm) and the mean NPS in each ring
        (HU²·mm²); empty rings are dropped.
    """
    fr = np.hypot(*np.meshgrid(fx, fy, indexing="ij"))
    f_max = min(np.abs(fx).max(), np.abs(fy).max())
    n_bins = n_bins or min(nps.shape) // 2
    edges = np.linspace(0.0, f_max, n_bins + 1)
    idx = np.digitize(fr.ravel(), edges) - 1
    keep = (idx >= 0) & (idx < n_bins)
    sums = np.bincount(idx[keep], weights=nps.ravel()[keep], minlength=n_bins)
    counts = np.bincount(idx[keep], minlength=n_bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    ok = counts > 0
    return centres[ok], sums[ok] / counts[ok]


def extract_rois(image: np.ndarray, centres: list[tuple[int, int]], size: int) -> np.ndarray:
    """Square ROIs of `size` pixels around `centres` (``(i, j)``) of a 2-D image, or of every
    slice of a ``(X, Y, Z)`` volume; returns ``(n, size, size)``.

    Raises:
        InputError: an ROI leaves the image.
    """
    a = np.asarray(image)
    vol = a[..., None] if a.ndim == 2 else a
    half = size // 2
    out = []
    for ci, cj in centres:
        i0, j0 = int(ci) - half, int(cj) - half
        if i0 < 0 or j0 < 0 or i0 + size > vol.shape[0] or j0 + size > vol.shape[1]:
            raise InputError(f"extract_rois: ROI of {size} px at ({ci}, {cj}) leaves the {vol.shape[0]}×{vol.shape[1]} image")
        for k in range(vol.shape[2]):
            out.append(vol[i0 : i0 + size, j0 : j0 + size, k])
    return np.stack(out)


def uniform_roi_centres(mask: np.ndarray, size: int, max_rois: int | None = None) -> list[tuple[int, int]]:
    """Centres ``(i, j)`` of non-overlapping ``size × size`` squares lying wholly inside a 2-D mask.

    Squares are taken greedily in raster order (first row first), each as soon as it fits and
    touches no square already taken, so the result depends only on the mask. Use an eroded
    organ mask (liver, spleen, muscle) to keep the ROIs away from edges, where anatomy would
    dominate the spectrum.

    Args:
        mask: 2-D boolean array (the uniform region).
        size: ROI side in pixels (≥ 4).
        max_rois: stop after this many (None = all that fit).

    Returns:
        The centres, in the convention of `extract_rois` (``centre − size // 2`` is the first
        row/column of the square).

    Raises:
        InputError: the mask is not 2-D or `size` is below 4.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise InputError(f"uniform_roi_centres: expected a 2-D mask, got shape {m.shape}")
    if size < 4:
        raise InputError(f"uniform_roi_centres: ROI size must be at least 4 pixels, got {size}")
    h, w = m.shape
    if h < size or w < size:
        return []
    # summed-area table: a square is inside when it holds size² mask pixels
    sat = np.zeros((h + 1, w + 1), dtype=np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(m, axis=0), axis=1)
    inside = (sat[size:, size:] - sat[:-size, size:] - sat[size:, :-size] + sat[:-size, :-size]) == size * size
    free = inside.copy()
    centres: list[tuple[int, int]] = []
    half = size // 2
    for i0, j0 in np.argwhere(inside):
        if not free[i0, j0]:
            continue
        centres.append((int(i0) + half, int(j0) + half))
        if max_rois is not None and len(centres) >= max_rois:
            break
        # no later square may start within `size` of this one (they would overlap)
        free[max(0, i0 - size + 1) : i0 + size, max(0, j0 - size + 1) : j0 + size] = False
    return centres


def nps_relative_error(nps: np.ndarray, nps_reference: np.ndarray) -> float:
    """Relative L1 distance of two NPS on the same frequency grid, integrated over frequency:
    ``Σ|NPS − NPS_ref| / Σ NPS_ref`` (2-D spectra, or radial ones on the same rings).

    0 when the noise textures agree; a smoothing method that leaves half the variance at the
    reference's shape scores 0.5, one that removes all noise scores 1, and one that adds noise
    can exceed 1.

    Raises:
        InputError: shapes differ or the reference has no power.
    """
    a, b = np.asarray(nps, dtype=np.float64), np.asarray(nps_reference, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"nps_relative_error: spectra of different shapes {a.shape} and {b.shape}")
    total = float(b.sum())
    if not total > 0:
        raise InputError("nps_relative_error: the reference NPS has no power")
    return float(np.abs(a - b).sum() / total)


def mean_frequency(nps: np.ndarray, fx: np.ndarray, fy: np.ndarray) -> float:
    """NPS-weighted mean radial frequency ``Σ f·NPS / Σ NPS`` (cycles/mm) of a 2-D NPS: lower
    means a coarser (blotchier) noise grain."""
    fr = np.hypot(*np.meshgrid(fx, fy, indexing="ij"))
    p = np.asarray(nps, dtype=np.float64)
    total = float(p.sum())
    return float((fr * p).sum() / total) if total > 0 else float("nan")

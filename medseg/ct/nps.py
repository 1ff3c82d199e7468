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

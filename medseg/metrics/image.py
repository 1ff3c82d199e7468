"""Image-quality metrics for denoising / enhancement: PSNR, SSIM and RMSE with an explicit data range.

A PSNR or SSIM number means nothing without its data range, so every function takes it
explicitly: either ``data_range`` (the image's value span, e.g. 4095 HU for 12-bit CT) or a
``window`` ``(lo, hi)`` in image units (e.g. the HU window ``(-160, 240)``), in which case both
images are clipped to the window first and ``data_range = hi − lo`` (the usual low-dose CT
protocol: the metric sees what a reader sees in that window).

Definitions (``x`` the test image, ``y`` the reference, ``L`` the data range):

- ``rmse = sqrt(mean((x − y)²))`` (image units);
- ``psnr = 10 · log10(L² / mean((x − y)²))`` (dB; +inf for identical images);
- ``ssim``: Wang et al. 2004 (IEEE TIP): Gaussian window σ = 1.5 px (11 px wide), K₁ = 0.01,
  K₂ = 0.03, population covariances, the mean of the SSIM map over the window's valid region.
  ``spatial_dims=2`` averages per axial slice (the last axis) — the usual figure for slice-wise
  denoisers; ``spatial_dims=3`` uses a 3-D window (anisotropic voxels are treated as cubes).

SSIM is scikit-image's `structural_similarity` with those settings: it agrees with MONAI's
``SSIMMetric`` (same parameters) to 1e-5 on a real 512² CT slice and was 8× (2-D) to 10× (3-D)
faster on the CI box (see docs/benchmarks.md, "Denoising"). Inputs may be numpy arrays or torch
tensors (moved to the CPU).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from skimage.metrics import structural_similarity

from medseg.errors import GeometryError

__all__ = ["psnr", "rmse", "ssim"]


def _prepare(
    x: Any, ref: Any, data_range: float | None, window: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray, float]:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    b = np.asarray(ref.detach().cpu() if hasattr(ref, "detach") else ref, dtype=np.float64)
    if a.shape != b.shape:
        raise GeometryError(f"image and reference differ in shape: {a.shape} vs {b.shape}")
    if (data_range is None) == (window is None):
        raise ValueError("give exactly one of data_range (value span) or window (lo, hi) in image units")
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        if not hi > lo:
            raise ValueError(f"window must be (lo, hi) with hi > lo, got {window}")
        a, b = np.clip(a, lo, hi), np.clip(b, lo, hi)
        data_range = hi - lo
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    return a, b, float(data_range)


def rmse(x: Any, ref: Any, *, window: tuple[float, float] | None = None) -> float:
    """Root-mean-square error in image units (after clipping both to ``window`` if given)."""
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    b = np.asarray(ref.detach().cpu() if hasattr(ref, "detach") else ref, dtype=np.float64)
    if a.shape != b.shape:
        raise GeometryError(f"image and reference differ in shape: {a.shape} vs {b.shape}")
    if window is not None:
        a, b = np.clip(a, *window), np.clip(b, *window)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def psnr(x: Any, ref: Any, data_range: float | None = None, *, window: tuple[float, float] | None = None) -> float:
    """Peak signal-to-noise ratio ``10·log10(L² / MSE)`` in dB.

    Args:
        x: the test image (denoised or noisy).
        ref: the clean reference, same shape.
        data_range: ``L``, the value span in image units (exclusive with ``window``).
        window: ``(lo, hi)`` in image units: clip both to it, ``L = hi − lo``.

    Returns:
        PSNR in dB (``inf`` when the images are equal).

    Raises:
        GeometryError: shapes differ. ValueError: neither or both of data_range / window.
    """
    a, b, dr = _prepare(x, ref, data_range, window)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(dr * dr / mse)


def ssim(
    x: Any,
    ref: Any,
    data_range: float | None = None,
    *,
    window: tuple[float, float] | None = None,
    spatial_dims: int = 2,
) -> float:
    """Structural similarity (Wang et al. 2004; Gaussian σ = 1.5 px, K₁ = 0.01, K₂ = 0.03).

    Args:
        x: the test image, 2-D ``(X, Y)`` or 3-D ``(X, Y, Z)`` (z = axial slice axis).
        ref: the clean reference, same shape.
        data_range: the value span in image units (exclusive with ``window``).
        window: ``(lo, hi)`` in image units: clip both, data range ``hi − lo``.
        spatial_dims: 2 = mean of per-slice SSIMs along the last axis (a 2-D image is one slice);
            3 = one 3-D SSIM (every axis must be ≥ 11 voxels).

    Returns:
        SSIM in [−1, 1] (1 for identical images).

    Raises:
        GeometryError: shapes differ or an image is too small for the 11-px window.
        ValueError: neither or both of data_range / window; spatial_dims not 2 or 3.
    """
    a, b, dr = _prepare(x, ref, data_range, window)
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    kwargs = dict(data_range=dr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    if a.ndim == 2 or spatial_dims == 3:
        if a.ndim not in (2, 3) or min(a.shape) < 11:
            raise GeometryError(f"SSIM needs a 2-D or 3-D image of at least 11 voxels per axis, got {a.shape}")
        return float(structural_similarity(a, b, **kwargs))
    if a.ndim != 3 or min(a.shape[:2]) < 11:
        raise GeometryError(f"per-slice SSIM needs (X, Y, Z) with X, Y ≥ 11, got {a.shape}")
    return float(np.mean([structural_similarity(a[:, :, z], b[:, :, z], **kwargs) for z in range(a.shape[2])]))

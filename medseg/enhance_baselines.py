"""Classical denoisers a learned one must beat: Gaussian filter, non-local means, BM3D.

All work slice by slice on axial slices (the last axis of an ``(X, Y, Z)`` array; a 2-D array
is one slice), in the image's own units, and return float32 of the input's shape — the same
footing as a 2-D denoising network.

- `gaussian_denoise`: ``scipy.ndimage.gaussian_filter`` in-plane, σ in pixels.
- `nlm_denoise`: scikit-image's ``denoise_nl_means`` (fast mode, 5×5 patches, 13×13 search,
  ``h = 0.8·σ``: scikit-image's documented setting), σ from `estimate_noise_sigma` unless given.
- `bm3d_denoise`: the ``bm3d`` package (Mäkinen, Azzari & Foi 2020). Its licence is
  non-commercial, so it is an optional extra (``pip install 'medseg[bm3d]'``) used by the
  benchmark, imported only when called. σ is the true noise std when known, else estimated.

`estimate_noise_sigma` is scikit-image's wavelet MAD estimator (Donoho & Johnstone), the
median over slices. It assumes white noise: on CT's correlated (ramp-textured) noise it
under-estimates σ, which is what a user without the true σ gets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.restoration import denoise_nl_means, estimate_sigma

from medseg.errors import ConfigError, MedsegError

__all__ = ["BASELINES", "bm3d_denoise", "denoise_baseline", "estimate_noise_sigma", "gaussian_denoise", "nlm_denoise"]


def _slices(image: np.ndarray) -> tuple[np.ndarray, bool]:
    x = np.asarray(image, dtype=np.float64)
    if x.ndim not in (2, 3):
        raise ConfigError(f"denoising baselines expect a 2-D slice or an (X, Y, Z) volume, got shape {x.shape}")
    return (x[..., None], True) if x.ndim == 2 else (x, False)


def _per_slice(image: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    x, was_2d = _slices(image)
    out = np.empty(x.shape, dtype=np.float32)
    for z in range(x.shape[2]):
        out[:, :, z] = fn(x[:, :, z])
    return out[..., 0] if was_2d else out


def estimate_noise_sigma(image: np.ndarray) -> float:
    """Noise std in image units: the median over axial slices of scikit-image's wavelet estimate."""
    x, _ = _slices(image)
    return float(np.median([estimate_sigma(x[:, :, z]) for z in range(x.shape[2])]))


def gaussian_denoise(image: np.ndarray, sigma_px: float = 1.0) -> np.ndarray:
    """In-plane Gaussian smoothing with std ``sigma_px`` pixels (per axial slice)."""
    if sigma_px <= 0:
        raise ConfigError(f"Gaussian filter sigma_px must be > 0, got {sigma_px}")
    return _per_slice(image, lambda s: gaussian_filter(s, sigma_px, mode="reflect"))


def nlm_denoise(image: np.ndarray, sigma: float | None = None, *, patch_size: int = 5, patch_distance: int = 6) -> np.ndarray:
    """Non-local means per axial slice (scikit-image, fast mode, ``h = 0.8·σ``).

    Args:
        image: 2-D slice or (X, Y, Z) volume, any units.
        sigma: noise std in image units; None = `estimate_noise_sigma` per slice.
        patch_size, patch_distance: patch side and search radius in pixels.
    """

    def one(s: np.ndarray) -> np.ndarray:
        sig = float(estimate_sigma(s)) if sigma is None else float(sigma)
        if sig <= 0:
            return s
        return denoise_nl_means(s, h=0.8 * sig, sigma=sig, fast_mode=True, patch_size=patch_size, patch_distance=patch_distance)

    return _per_slice(image, one)


def bm3d_denoise(image: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """BM3D per axial slice (the optional ``bm3d`` package, both stages, default profile).

    The slice is scaled to [0, 1] by its min/max before BM3D (its block-matching thresholds are
    tuned for that scale) and back afterwards; σ is scaled alike.

    Args:
        image: 2-D slice or (X, Y, Z) volume, any units.
        sigma: noise std in image units (the true one when known); None = estimated per slice.

    Raises:
        MedsegError: the ``bm3d`` package is not installed (the message says how to add it).
    """
    try:
        import bm3d
    except ImportError:
        raise MedsegError(
            "BM3D needs the optional 'bm3d' package (non-commercial licence, not installed by default): "
            "pip install 'medseg[bm3d]'"
        ) from None

    def one(s: np.ndarray) -> np.ndarray:
        lo, hi = float(s.min()), float(s.max())
        scale = hi - lo if hi > lo else 1.0
        sig = float(estimate_sigma(s)) if sigma is None else float(sigma)
        if sig <= 0:
            return s
        return np.asarray(bm3d.bm3d((s - lo) / scale, sig / scale), dtype=np.float64) * scale + lo

    return _per_slice(image, one)


#: Baseline name → function(image, sigma or None) (sigma is ignored by the Gaussian filter).
BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "gaussian": lambda image, sigma=None: gaussian_denoise(image),
    "nlm": nlm_denoise,
    "bm3d": bm3d_denoise,
}


def denoise_baseline(name: str, image: np.ndarray, sigma: float | None = None, **kwargs: Any) -> np.ndarray:
    """Run baseline ``name`` (`BASELINES`) on an image; ``sigma`` None = estimated.

    Raises:
        ConfigError: unknown name.
    """
    if name not in BASELINES:
        raise ConfigError(f"unknown denoising baseline {name!r}; expected one of {', '.join(BASELINES)}")
    return BASELINES[name](image, sigma, **kwargs)

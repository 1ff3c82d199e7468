"""Phantoms for the CT tests: a water cylinder and a smooth (band-limited) phantom."""

from __future__ import annotations

import numpy as np


def water_cylinder(n: int = 96, spacing_mm: float = 2.0, radius_mm: float = 70.0) -> np.ndarray:
    """``(n, n)`` HU image: water (0 HU) inside a disc of `radius_mm`, air (−1000) outside."""
    u = (np.arange(n) - (n - 1) / 2) * spacing_mm
    r = np.hypot(*np.meshgrid(u, u, indexing="ij"))
    return np.where(r <= radius_mm, 0.0, -1000.0).astype(np.float32)


def smooth_phantom(shape: tuple[int, int] = (80, 72), spacing=(1.5, 1.7)) -> np.ndarray:
    """μ (1/mm) made of wide Gaussian blobs: smooth enough that FBP error is small."""
    u = (np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing[0]
    v = (np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing[1]
    uu, vv = np.meshgrid(u, v, indexing="ij")
    img = 0.019 * np.exp(-(uu**2 + vv**2) / (2 * 25.0**2))
    img += 0.008 * np.exp(-((uu - 15) ** 2 + (vv + 10) ** 2) / (2 * 8.0**2))
    img -= 0.005 * np.exp(-((uu + 12) ** 2 + (vv - 14) ** 2) / (2 * 6.0**2))
    return img

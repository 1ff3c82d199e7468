"""Invertible intensity plans for image-to-image tasks (denoising, low-dose CT enhancement).

A segmentation plan may clip (``ct_window``): the labels do not need the clipped values back.
An image-to-image network must hand its output back in the input's units (HU for CT), so its
plan is an exact affine map with no clipping, and `from_network_units` undoes `to_network_units`.

Plan kinds (the ``preprocessing["intensity"]`` dict of a checkpoint):

- ``{"kind": "hu_linear", "hu_min": -1024.0, "hu_max": 3071.0}`` (CT):
  ``x = (HU − hu_min) / (hu_max − hu_min)``; fixed for every scan, so noise levels learned in
  network units mean the same HU everywhere.
- ``{"kind": "percentile_scale", "upper": 99.5}`` (MR, arbitrary units):
  ``x = v / P_upper(v ≠ 0)`` per volume; zero stays zero (keeps Rician magnitude data ≥ 0).

Both work on numpy arrays and torch tensors alike (only arithmetic is used).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medseg.errors import ConfigError

INVERTIBLE_KINDS = ("hu_linear", "percentile_scale")


def intensity_params(image: Any, intensity: dict[str, Any]) -> dict[str, float]:
    """The affine map ``x = (v − offset) / scale`` that the plan gives for this image.

    Args:
        image: the image in its own units (HU for CT), numpy array or torch tensor.
        intensity: the plan's ``intensity`` dict (see the module docstring).

    Returns:
        ``{"offset": ..., "scale": ...}`` (scale > 0), to pass to `to_network_units` /
        `from_network_units`.

    Raises:
        ConfigError: an unknown kind, or a non-invertible one (``ct_window`` clips).
    """
    kind = intensity.get("kind")
    if kind == "hu_linear":
        lo, hi = float(intensity.get("hu_min", -1024.0)), float(intensity.get("hu_max", 3071.0))
        if not hi > lo:
            raise ConfigError(f"intensity plan hu_linear: hu_max ({hi}) must be greater than hu_min ({lo})")
        return {"offset": lo, "scale": hi - lo}
    if kind == "percentile_scale":
        values = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float64)
        values = values[np.isfinite(values) & (values != 0)]
        top = float(np.percentile(values, float(intensity.get("upper", 99.5)))) if values.size else 0.0
        return {"offset": 0.0, "scale": abs(top) if top != 0 else 1.0}
    raise ConfigError(
        f"intensity plan kind {kind!r} cannot be inverted; image-to-image tasks need one of {', '.join(INVERTIBLE_KINDS)}"
    )


def to_network_units(image: Any, params: dict[str, float]) -> Any:
    """``(image − offset) / scale`` (see `intensity_params`)."""
    return (image - params["offset"]) / params["scale"]


def from_network_units(x: Any, params: dict[str, float]) -> Any:
    """``x · scale + offset``: the exact inverse of `to_network_units`."""
    return x * params["scale"] + params["offset"]

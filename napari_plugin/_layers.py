"""Volume ↔ napari layer-data tuples: the geometry comes from `medseg.io.viewer`.

Shared by the reader, the sample data and the widgets, so every layer medseg creates carries
the same geometry record and source metadata (what the writers need to go back to the
source grid and DICOM series).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

# napari imports pandas the first time a layer gets `features`; imported here (the plugin loads on
# napari's GUI thread) rather than first inside a worker, where a large import holds the GIL and
# freezes the GUI
import pandas as pd

from medseg.io import Volume
from medseg.io.viewer import GEOMETRY_KEY, display_contrast_limits, label_colors, layer_geometry

#: Layer-metadata key of the source Volume's metadata (DICOM files/frames/UIDs, warnings).
SOURCE_KEY = "medseg_source"
#: Layer-metadata key of label names ({value: name}).
LABELS_KEY = "medseg_label_names"

LayerData = tuple[Any, dict[str, Any], str]


def _source_meta(volume: Volume) -> dict[str, Any]:
    # probabilities and the like are arrays: the layer metadata keeps the light, JSON-like part
    return {k: v for k, v in volume.meta.items() if not isinstance(v, np.ndarray) and k != "probabilities"}


def _warn(geo_warnings: list[str], volume: Volume | None, name: str) -> None:
    """Reader/geometry warnings as Python warnings (napari shows them as notifications)."""
    source = list(volume.meta.get("warnings") or []) if volume is not None else []
    for w in source + geo_warnings:
        warnings.warn(f"{name}: {w}" if not str(w).startswith(name) else str(w), UserWarning, stacklevel=3)


def image_layer(volume: Volume, name: str, **extra: Any) -> LayerData:
    """An Image layer-data tuple with true geometry and a display window (CT: soft tissue)."""
    geo = layer_geometry(volume, name=name)
    _warn(geo.warnings, volume, name)
    kw = geo.layer_kwargs()
    kw["metadata"][SOURCE_KEY] = _source_meta(volume)
    kw["metadata"]["medseg_warnings"] = list(volume.meta.get("warnings") or []) + geo.warnings
    kw.update(name=name, contrast_limits=display_contrast_limits(volume), colormap="gray")
    kw.update(extra)
    return geo.data, kw, "image"


def labels_layer(volume: Volume, name: str, label_names: dict[int, str] | None = None, **extra: Any) -> LayerData:
    """A Labels layer-data tuple with true geometry, names (status bar features) and colours."""
    from medseg.io.volume import label_values_present

    geo = layer_geometry(volume, name=name)
    _warn(geo.warnings, None, name)  # the source's own warnings are the image layer's to show
    data = geo.data
    if data.dtype.kind != "u":  # float/signed label files: napari and the writers want unsigned values
        top = int(data.max(initial=0))
        data = data.astype(np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32)
    kw = geo.layer_kwargs()
    kw["metadata"][SOURCE_KEY] = _source_meta(volume)
    names = dict(label_names or volume.meta.get("label_names") or {})
    names = {int(k): str(v) for k, v in names.items()}
    present = label_values_present(data)
    values = sorted(set(names) | set(present))
    kw["metadata"][LABELS_KEY] = names
    kw.update(name=name, **label_style(values, names))
    kw.update(extra)
    return data, kw, "labels"


def label_style(values: list[int], names: dict[int, str]) -> dict[str, Any]:
    """``colormap`` (fixed colour per value) and ``features`` (names in the status bar)."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = label_colors(values)
    cmap = DirectLabelColormap(color_dict={**colors, None: (0.5, 0.5, 0.5, 1.0)})
    features = pd.DataFrame(
        {"index": [0, *values], "name": ["background", *(names.get(v, f"label {v}") for v in values)]}
    )
    return {"colormap": cmap, "features": features}


def geometry_of(layer: Any) -> dict[str, Any] | None:
    """The medseg geometry record of a layer, or None."""
    return (getattr(layer, "metadata", None) or {}).get(GEOMETRY_KEY)

"""Volume ↔ viewer-layer geometry (napari or any viewer with data axes + scale/translate/rotate).

A viewer shows the last two data axes as the screen's rows and columns and slices along the
first. medseg's volumes are indexed ``[i, j, k]`` with a RAS affine in any orientation; a
viewer layer instead gets:

- the data reoriented (flips/permutations only, never resampling) so that i, j, k point
  along patient Left, Posterior, Superior (DICOM's LPS) and transposed to ``[k, j, i]``: axial
  slices shown the radiological way (anterior up, patient right on the screen's left);
- ``scale`` = voxel spacing in mm, ``translate`` = the first voxel's centre in LPS mm,
  both in the layer's axis order ``(S, P, L)`` — the world coordinates a viewer shows are
  DICOM patient coordinates (ImagePositionPatient's z, y, x);
- ``rotate`` (3×3) only for an oblique series, with a warning; a sheared grid (e.g. gantry
  tilt kept as shear) gets the full ``affine`` instead, also with a warning;
- ``metadata["medseg_geometry"]``: the source's RAS affine and shape, from which
  `volume_from_layer` puts an edited layer back on the source grid exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.errors import GeometryError
from medseg.io.orientation import ras_to_lps_affine
from medseg.io.volume import Volume

#: Orientation the layer's data is flipped/permuted to (nibabel codes: i→L, j→P, k→S).
DISPLAY_AXCODES = ("L", "P", "S")
#: Soft-tissue CT window (W 400 / L 40 HU).
CT_SOFT_TISSUE_HU = (-160.0, 240.0)
#: Key of the geometry record in a layer's metadata.
GEOMETRY_KEY = "medseg_geometry"
#: Rotations whose matrix differs from the identity by less than this are axis-aligned.
OBLIQUE_TOL = 1e-4

#: Label colours: matplotlib's "tab10" without its grey (invisible on CT) for labels 1–9, then
#: golden-ratio hue steps — the same colours as medseg's QA pictures.
_TAB10 = ("1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd", "8c564b", "e377c2", "bcbd22", "17becf")


@dataclass
class LayerGeometry:
    """A volume prepared for a viewer layer (see the module docstring).

    Attributes:
        data: the reoriented array, axes ``(k, j, i)`` = (S, P, L); a view of the source array
            when only flips/permutations were needed (always).
        scale: voxel spacing in mm per layer axis.
        translate: the first voxel's centre in LPS mm per layer axis (z, y, x).
        rotate: 3×3 direction matrix (layer axes → world axes) for oblique grids, else None.
        affine: 4×4 layer-index → world matrix, only for sheared grids (then `scale`/`translate`
            are ones/zeros and `rotate` None).
        metadata: ``{GEOMETRY_KEY: {...}}`` for the layer's metadata.
        warnings: what the user must know (oblique/sheared grids).
    """

    data: np.ndarray
    scale: tuple[float, float, float]
    translate: tuple[float, float, float]
    rotate: np.ndarray | None = None
    affine: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a napari ``add_image``/``add_labels`` call (without data)."""
        kw: dict[str, Any] = {"scale": self.scale, "translate": self.translate, "metadata": dict(self.metadata)}
        if self.rotate is not None:
            kw["rotate"] = self.rotate
        if self.affine is not None:
            kw["affine"] = self.affine
        return kw


def _orientations(affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(source → display, display → source) nibabel orientation transforms."""
    import nibabel as nib

    src = nib.orientations.io_orientation(affine_ras)
    dst = nib.orientations.axcodes2ornt(DISPLAY_AXCODES)
    return nib.orientations.ornt_transform(src, dst), nib.orientations.ornt_transform(dst, src)


def layer_geometry(volume: Volume, *, name: str | None = None) -> LayerGeometry:
    """Prepare `volume` for a viewer layer with its true geometry.

    Args:
        volume: any medseg `Volume` (3-D; a 4-D array keeps its channel axis last).
        name: how warnings name the volume (default: its series description or source path).

    Returns:
        `LayerGeometry` (data ``(k, j, i)`` in LPS-aligned order, scale in mm, translate in LPS
        mm, rotation for oblique grids, the source geometry in ``metadata``).
    """
    import nibabel as nib

    to_display, _ = _orientations(volume.affine)
    data_ijk = nib.orientations.apply_orientation(volume.array, to_display)
    display_affine = volume.affine @ nib.orientations.inv_ornt_aff(to_display, volume.shape)
    lps = ras_to_lps_affine(display_affine)
    rev = [2, 1, 0]
    linear = lps[:3, :3][np.ix_(rev, rev)]  # layer axes (k, j, i) → world axes (z, y, x)
    origin = lps[:3, 3][rev]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(linear)):
        raise GeometryError(f"{name or 'volume'}: degenerate affine {volume.affine.tolist()}")
    direction = linear / spacing[None, :]
    data = np.moveaxis(data_ijk, (0, 1, 2), (2, 1, 0)) if data_ijk.ndim == 4 else data_ijk.transpose(2, 1, 0)
    label = name or str(volume.meta.get("series_description") or volume.meta.get("source_path") or "volume")
    metadata = {
        GEOMETRY_KEY: {
            "affine_ras": volume.affine.tolist(),
            "shape": list(volume.shape),
            "world": "LPS mm, layer axes (z, y, x)",
        }
    }
    geo = LayerGeometry(
        data=data,
        scale=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        translate=tuple(float(t) for t in origin),  # type: ignore[arg-type]
        metadata=metadata,
    )
    if np.abs(direction - np.eye(3)).max() > OBLIQUE_TOL:
        if np.allclose(direction.T @ direction, np.eye(3), atol=1e-6):
            angle = float(np.degrees(np.arccos(np.clip(np.diag(direction).min(), -1.0, 1.0))))
            geo.rotate = direction
            geo.warnings.append(
                f"{label}: oblique series (voxel axes up to {angle:.1f}° off the patient axes): the layer "
                "carries the rotation; 3-D views show it, 2-D slices are planes of the voxel grid"
            )
        else:
            full = np.eye(4)
            full[:3, :3] = linear
            full[:3, 3] = origin
            geo.affine = full
            geo.scale = (1.0, 1.0, 1.0)
            geo.translate = (0.0, 0.0, 0.0)
            geo.warnings.append(
                f"{label}: sheared voxel grid (e.g. gantry tilt): the layer carries the full affine; "
                "2-D slices are planes of the voxel grid"
            )
    return geo


def source_geometry(metadata: dict[str, Any], what: str = "layer") -> tuple[np.ndarray, tuple[int, int, int]]:
    """The source RAS affine and shape recorded by `layer_geometry` in a layer's metadata.

    Raises:
        GeometryError: no record (the layer was not made from a medseg Volume).
    """
    rec = (metadata or {}).get(GEOMETRY_KEY)
    if not rec:
        raise GeometryError(
            f"{what}: no medseg geometry in the layer metadata; open the image with the medseg reader "
            "(or create the labels for such an image) so its grid is known"
        )
    return np.asarray(rec["affine_ras"], dtype=np.float64), tuple(int(s) for s in rec["shape"])  # type: ignore[return-value]


def volume_from_layer(data: np.ndarray, metadata: dict[str, Any], *, what: str = "layer", **meta: Any) -> Volume:
    """Put a layer's data (e.g. edited labels) back on the source volume's grid, exactly.

    Args:
        data: the layer's array, axes ``(k, j, i)`` as made by `layer_geometry`.
        metadata: the layer's metadata (must hold ``GEOMETRY_KEY``).
        what: how errors name the layer.
        **meta: entries for the returned Volume's ``meta``.

    Returns:
        A `Volume` with the source's array order, shape and RAS affine.

    Raises:
        GeometryError: no geometry record, or the data's shape does not fit it.
    """
    import nibabel as nib

    affine, shape = source_geometry(metadata, what)
    _, to_source = _orientations(affine)
    arr = np.asarray(data)
    data_ijk = np.moveaxis(arr, (2, 1, 0), (0, 1, 2)) if arr.ndim == 4 else arr.transpose(2, 1, 0)
    display_shape = tuple(int(s) for s in nib.orientations.apply_orientation(np.empty(shape, np.uint8), _orientations(affine)[0]).shape)
    if tuple(data_ijk.shape[:3]) != display_shape:
        raise GeometryError(f"{what}: data shape {arr.shape[:3]} does not match its source grid {display_shape[::-1]}")
    out = nib.orientations.apply_orientation(data_ijk, to_source)
    return Volume(np.ascontiguousarray(out), affine.copy(), dict(meta))


def display_contrast_limits(volume: Volume) -> tuple[float, float]:
    """Contrast limits a viewer should open `volume` with.

    CT (``meta["modality"] == "CT"``, or no modality and air below −500 in an integer image,
    as in HU NIfTI files): the soft-tissue window −160…240 HU. Otherwise the 1st–99th
    percentile of a subsample.
    """
    a = volume.array
    modality = str(volume.meta.get("modality") or "").upper()
    if modality == "CT" or (not modality and a.dtype.kind == "i" and a.size and a.min() < -500):
        return CT_SOFT_TISSUE_HU
    step = max(1, round((a.size / 2_000_000) ** (1 / 3)))
    sub = a[::step, ::step, ::step].ravel() if a.ndim == 3 else a.ravel()
    lo, hi = np.percentile(sub, (1, 99)) if sub.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1)


def looks_like_label_map(volume: Volume, max_labels: int = 1000) -> bool:
    """True for an integer, non-negative volume with at most `max_labels` distinct values.

    What a viewer uses to open a file as labels rather than as an image: CT (negative HU) and
    MR (thousands of grey values) fail the test; segmentations pass it.
    """
    a = volume.array
    if a.ndim != 3 or a.size == 0:
        return False
    if a.dtype == np.bool_:
        return True
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(np.mod(a, 1) == 0):
            return False
    elif a.dtype.kind not in "ui":
        return False
    if a.min() < 0 or a.max() > 65535:
        return False
    step = max(1, round((a.size / 4_000_000) ** (1 / 3)))
    return len(np.unique(a[::step, ::step, ::step])) <= max_labels + 1


def label_colors(values: list[int]) -> dict[int, tuple[float, float, float, float]]:
    """RGBA colours (0–1) for label values: tab10 for 1–9, then golden-ratio hue steps; 0 transparent."""
    import colorsys

    out: dict[int, tuple[float, float, float, float]] = {0: (0.0, 0.0, 0.0, 0.0)}
    for value in values:
        if value <= 0:
            continue
        if value <= len(_TAB10):
            hexa = _TAB10[value - 1]
            rgb = tuple(int(hexa[i : i + 2], 16) / 255 for i in (0, 2, 4))
        else:
            hue = (0.07 + (value - len(_TAB10)) * 0.618034) % 1.0
            rgb = colorsys.hsv_to_rgb(hue, 0.75, 0.85)
        out[int(value)] = (float(rgb[0]), float(rgb[1]), float(rgb[2]), 1.0)
    return out

"""Per-series outputs besides the label map: volume table (CSV) and a QA picture (PNG)."""

from __future__ import annotations

import csv
import functools
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from medseg.io.atomic import atomic_path, write_text_atomic
from medseg.io.volume import Volume, box_copy, foreground_box, label_values_present
from medseg.io.orientation import to_ras_view

#: Display window (HU) of CT QA pictures: abdominal soft tissue.
CT_WINDOW_HU = (-160.0, 240.0)


def label_statistics(image: Volume, labels: np.ndarray, label_names: dict[int, str]) -> list[dict]:
    """Per-label voxel count, volume (mL) and mean/std image intensity.

    Args:
        image: the source image (its grid is the label map's; intensities in HU for CT).
        labels: integer label map on `image`'s grid.
        label_names: every label of the model (absent ones are reported with volume 0).

    Returns:
        One dict per label: ``label, name, voxels, volume_ml, mean_intensity, std_intensity``
        (intensities are NaN for an absent label).
    """
    voxel_ml = float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000.0
    image_array = np.asarray(image.array)
    labels = np.asarray(labels)
    n = max(label_names, default=0) + 1
    counts, sums, sq = [0] * n, [0] * n, [0] * n
    for lab, values in _labelled_voxels(labels, image_array):
        n_chunk = max(int(lab.max(initial=0)) + 1, n)
        part = _integer_sums(lab, values, n_chunk) if values.dtype.kind in "iu" else None
        if part is None:  # float images (MR, NIfTI) or integers beyond ±2¹⁶
            lab = lab.astype(np.int64, copy=False)
            values = values.astype(np.float64)
            part = tuple(
                np.bincount(lab, weights=w, minlength=n_chunk).tolist() for w in (None, values, values * values)
            )
        for total, add in zip((counts, sums, sq), part):
            total.extend([0] * (len(add) - len(total)))
            for value in range(len(add)):
                total[value] += add[value]
    rows = []
    for value, name in sorted(label_names.items()):
        c = int(counts[value])
        mean = sums[value] / c if c else float("nan")
        # exact for integer images (Python integers): c² var = c Σx² − (Σx)²
        var = max(0.0, (c * sq[value] - sums[value] * sums[value]) / (c * c)) if c else float("nan")
        rows.append(
            {
                "label": int(value),
                "name": name,
                "voxels": c,
                "volume_ml": round(c * voxel_ml, 4),
                "mean_intensity": round(float(mean), 3) if c else float("nan"),
                "std_intensity": round(float(np.sqrt(var)), 3) if c else float("nan"),
            }
        )
    return rows


def _labelled_voxels(labels: np.ndarray, image: np.ndarray, voxels_per_chunk: int = 4_000_000) -> Any:
    """The labels and image values of the labelled voxels, a slab of slices at a time.

    Only the box around the labels is read, in memory order (Fortran for DICOM/NIfTI
    volumes: C-order boolean indexing of Fortran arrays walks memory with a 512×512-voxel
    stride). Slabs of ~4 M voxels keep the temporaries small: glibc may give large freed
    blocks back to the system, and copies of the whole box (~200 MB for a big CT) were then
    page-faulted in anew for every series (docs/benchmarks.md).
    """
    if not (labels.dtype.kind in "uib" and labels.ndim == 3 and image.shape[:3] == labels.shape):
        fortran = labels.flags.f_contiguous and image.flags.f_contiguous
        flat = labels.ravel(order="F" if fortran else "C")
        fg = flat != 0
        yield flat[fg], image.ravel(order="F" if fortran else "C")[fg]
        return
    box = foreground_box(labels)
    if box is None:
        return
    xs, ys, zs = box
    transpose = labels.flags.f_contiguous and image.flags.f_contiguous  # z, y, x: memory order
    step = max(1, voxels_per_chunk // max(1, (xs.stop - xs.start) * (ys.stop - ys.start)))
    for k0 in range(zs.start, zs.stop, step):
        lab, img = labels[xs, ys, k0 : min(k0 + step, zs.stop)], image[xs, ys, k0 : min(k0 + step, zs.stop)]
        if transpose:
            lab, img = lab.T, img.T
        fg = lab != 0
        yield lab[fg], img[fg]


def _integer_sums(labels: np.ndarray, values: np.ndarray, n: int, max_bins: int = 1 << 22) -> tuple | None:
    """Per-label voxel count, sum and sum of squares of integer intensities, exactly.

    One joint (label, intensity) histogram, then sums over its intensity axis: one integer
    `np.bincount` where the float path needs three, two of them weighted. None when the histogram would exceed `max_bins`.

    Returns:
        ``(counts, sums, sums_of_squares)``: lists of Python ints indexed by label value.
    """
    if values.size == 0:
        return [0] * n, [0] * n, [0] * n
    lo, hi = int(values.min()), int(values.max())
    span = hi - lo + 1
    if n * span > max_bins or max(-lo, hi) > 1 << 16:  # int64 sums of squares cannot overflow
        return None
    key = labels.astype(np.int32 if values.itemsize <= 2 else np.int64) * span  # ≤ 2²² + 2¹⁶: no overflow
    key += values
    key -= lo
    hist = np.bincount(key, minlength=n * span).reshape(n, span)
    level = np.arange(lo, hi + 1, dtype=np.int64)
    return hist.sum(axis=1).tolist(), (hist @ level).tolist(), (hist @ (level * level)).tolist()


def write_volumes_csv(rows: list[dict], path: str | os.PathLike[str]) -> Path:
    """Write `label_statistics` rows to a CSV file atomically (``uncertainty``: the label's
    score when the row has one, `medseg.inference.uncertainty.LabelUncertainty.score`)."""
    buf = io.StringIO()
    fields = ["label", "name", "voxels", "volume_ml", "mean_intensity", "std_intensity", "uncertainty"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in fields})
    return write_text_atomic(path, buf.getvalue())


def _display_window(image: np.ndarray, modality: str | None) -> tuple[float, float]:
    if (modality or "").upper() == "CT":
        return CT_WINDOW_HU
    step = max(1, round((image.size / 2_000_000) ** (1 / 3)))
    sub = image[::step, ::step, ::step].ravel() if image.ndim == 3 else image.ravel()
    lo, hi = np.percentile(sub, (1, 99))
    return float(lo), float(hi if hi > lo else lo + 1)


def qa_slices(
    labels: np.ndarray, affine: np.ndarray, n_axial: int = 3, values: list[int] | None = None
) -> tuple[list[int], int, list[int]]:
    """The slices `write_qa_png` shows, in RAS index space (see `medseg.io.orientation.to_ras_view`).

    Returns:
        ``(axial k indices spread over the labelled extent, coronal j index at the median
        labelled j, label values present)``; without labels, axial slices spread over the
        whole volume and the middle coronal slice.
    """
    import nibabel as nib

    arr = np.asarray(labels)
    ornt = nib.orientations.io_orientation(affine)
    shape_ras = [0, 0, 0]
    for axis, (to, _) in enumerate(ornt):
        shape_ras[int(to)] = arr.shape[axis]
    box = foreground_box(arr) if arr.dtype.kind in "uib" else (tuple(slice(0, n) for n in arr.shape) if arr.any() else None)
    if box is not None:
        # which RAS slices hold labels, from one projection of the labelled box (in memory
        # order) along the voxel axis that maps to left-right
        sub = box_copy(arr, box)
        present = label_values_present(sub) if values is None else sorted(int(v) for v in values if int(v) > 0)
        to_axis = {int(to): (axis, flip) for axis, (to, flip) in enumerate(ornt)}
        proj = (sub != 0).any(axis=to_axis[0][0])  # the two remaining voxel axes, in order
        rest = [a for a in range(3) if a != to_axis[0][0]]

        def occupied(ras_axis: int) -> np.ndarray:
            axis, flip = to_axis[ras_axis]
            idx = box[axis].start + np.flatnonzero(proj.any(axis=1 - rest.index(axis)))
            return np.sort(arr.shape[axis] - 1 - idx) if flip < 0 else idx

        zs, jy = occupied(2), occupied(1)
    else:
        zs, jy, present = np.arange(shape_ras[2]), np.zeros(0, dtype=int), []
    ks = sorted({int(zs[int(round(q * (len(zs) - 1)))]) for q in np.linspace(0.2, 0.8, n_axial)})
    j_cor = int(np.median(jy)) if jy.size else shape_ras[1] // 2
    return ks, j_cor, present


def qa_panels(
    image: Volume,
    labels: np.ndarray,
    label_names: dict[int, str],
    n_axial: int = 3,
    values: list[int] | None = None,
) -> tuple[list[tuple[str, np.ndarray, float]], list[int], np.ndarray]:
    """The pictures `write_qa_png` lays out: image slices with the labels blended in.

    Returns:
        ``(panels, present, palette)``: one ``(title, rgb, aspect)`` per slice (uint8
        ``(rows, cols, 3)`` in radiological convention: patient's right on the left, anterior /
        superior up; ``aspect`` = row spacing / column spacing), the label values present, and
        the uint8 RGB colour of each label value (row 0: background, unused).
    """
    img, spacing = to_ras_view(np.asarray(image.array), image.affine)  # views; slices are converted below
    lab, _ = to_ras_view(labels, image.affine)
    vmin, vmax = _display_window(img, image.meta.get("modality"))
    ks, j_cor, present = qa_slices(labels, image.affine, n_axial, values)
    max_label = max(max(label_names, default=1), max(present, default=0), 1)
    palette = _palette(max_label + 1)
    colours = palette.astype(np.float32)
    alpha = 0.45
    panels = []
    for kind, idx in [("axial", k) for k in ks] + [("coronal", j_cor)]:
        if kind == "axial":
            sl, ls, aspect = img[:, :, idx], lab[:, :, idx], spacing[1] / spacing[0]
        else:
            sl, ls, aspect = img[:, idx, :], lab[:, idx, :], spacing[2] / spacing[0]
        # rows = second axis (anterior / superior up), columns = R→L displayed left→right
        sl, ls = np.flipud(np.fliplr(sl.T)).astype(np.float32), np.flipud(np.fliplr(ls.T))
        grey = np.clip((sl - vmin) * (255.0 / (vmax - vmin)), 0.0, 255.0)
        rgb = np.empty((*grey.shape, 3), dtype=np.uint8)
        rgb[...] = np.rint(grey).astype(np.uint8)[..., None]
        labelled = ls > 0  # blended where labelled only (a few % of a slice)
        if labelled.any():
            blend = (1 - alpha) * grey[labelled][:, None] + alpha * colours[np.minimum(ls[labelled], max_label)]
            rgb[labelled] = np.rint(blend).astype(np.uint8)
        panels.append((f"{kind} {'k' if kind == 'axial' else 'j'}={idx}", rgb, float(aspect)))
    return panels, present, palette


def write_qa_png(
    image: Volume,
    labels: np.ndarray,
    label_names: dict[int, str],
    path: str | os.PathLike[str],
    title: str = "",
    n_axial: int = 3,
    values: list[int] | None = None,
    height: int = 360,
) -> Path:
    """Write a QA picture: `n_axial` axial slices and one coronal slice with the labels overlaid.

    Slices are shown in radiological convention (patient's right on the image's left, anterior
    / superior up) whatever the voxel order of the series, each fitted into a square of `height`
    pixels at its true aspect ratio. Axial slices are spread over the labelled extent (or the whole
    volume when nothing was found); a legend names the labels present. `values`: the label
    values present in `labels` when the caller knows them (saves counting them again).

    Drawn with Pillow, not matplotlib: less work per picture (docs/benchmarks.md), and
    Pillow's resizing and PNG encoding release the GIL, so the picture does not stall other
    Python work of the process.
    """
    from PIL import Image, ImageDraw

    panels, present, palette = qa_panels(image, labels, label_names, n_axial, values)
    small, large = _qa_font(13), _qa_font(15)
    margin, gap, caption = 10, 12, 22
    tiles = []
    for name, rgb, aspect in panels:  # each fitted into a square of `height` at its true aspect
        rows, cols = rgb.shape[:2]
        scale = height / max(rows * aspect, cols, 1e-6)
        size = (max(1, int(round(cols * scale))), max(1, int(round(rows * aspect * scale))))
        tiles.append((name, Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)))
    legend = [(palette[v], f"{v} {label_names.get(v, '?')}") for v in present[:20]]
    per_row = 6
    legend_rows = -(-len(legend) // per_row)
    top = margin + (caption + 6 if title else 0)
    width = 2 * margin + height * len(tiles) + gap * (len(tiles) - 1)
    total_height = top + caption + height + margin + legend_rows * 22
    canvas = Image.new("RGB", (width, total_height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((width / 2, margin), title, fill="black", font=large, anchor="ma")
    x = margin
    for name, tile in tiles:
        y_tile = top + caption + (height - tile.height) // 2
        draw.text((x + height / 2, y_tile - 4), name, fill="black", font=small, anchor="md")
        canvas.paste(tile, (x + (height - tile.width) // 2, y_tile))
        x += height + gap
    y = top + caption + height + margin // 2
    for r in range(legend_rows):
        row = legend[r * per_row : (r + 1) * per_row]
        widths = [30 + draw.textlength(text, font=small) for _, text in row]
        x = (width - sum(widths) - 16 * (len(row) - 1)) / 2
        for (colour, text), w in zip(row, widths):
            draw.rectangle([x, y + 5, x + 22, y + 15], fill=tuple(int(c) for c in colour))
            draw.text((x + 28, y + 10), text, fill="black", font=small, anchor="lm")
            x += w + 16
        y += 22
    with atomic_path(path, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG", compress_level=3)  # QA pictures: speed over the last few % of size
    return Path(path)


@functools.lru_cache(maxsize=8)
def _qa_font(size: int) -> Any:
    """DejaVu Sans (shipped with matplotlib, wide Unicode coverage: titles hold series names)
    at `size` pixels; else Pillow's built-in fonts."""
    import importlib.util

    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")  # finds the package without importing it
    if spec is not None and spec.origin:
        ttf = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        try:
            return ImageFont.truetype(str(ttf), size)
        except (OSError, ImportError):  # not there, or Pillow without FreeType
            pass
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


#: Label colours: matplotlib's "tab10" without its grey (invisible on CT) for labels 1–9,
#: then evenly spread hues.
_TAB10 = ("1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd", "8c564b", "e377c2", "bcbd22", "17becf")


def _palette(n: int) -> np.ndarray:
    """`n` distinct uint8 RGB colours, row = label value (row 0, the background, is black)."""
    import colorsys

    cols = np.zeros((max(n, 1), 3), dtype=np.uint8)
    for value in range(1, n):
        if value <= len(_TAB10):
            hexa = _TAB10[value - 1]
            cols[value] = [int(hexa[i : i + 2], 16) for i in (0, 2, 4)]
        else:  # golden-ratio hue steps: neighbouring label values get distant hues
            hue = (0.07 + (value - len(_TAB10)) * 0.618034) % 1.0
            cols[value] = [round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.85)]
    return cols

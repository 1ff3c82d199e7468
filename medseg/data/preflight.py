"""Pre-flight check of the training data: every case is read once before the first epoch.

A bad case found in the middle of a run (or inside a MONAI transform, where its message is
wrapped in ``RuntimeError: applying transform ...``) costs the run and hides the reason; a
label value that appears in no case trains a class that can never be learnt and still exits 0.
`check_training_cases` reads each case the way training will (`medseg.io` readers, the same
label remapping), collects *every* problem, and raises one `DataError` that lists them by case
and file with what to do — as nnU-Net's ``verify_dataset_integrity`` does before planning.

Checks, per case (training and validation):

- the image is readable (a file that is no image, a DICOM folder without a usable series, an
  image with no finite voxel or more than 10 % NaN/Inf: `medseg.io` refuses those) and 3-D;
- the label is readable, 3-D, holds integers (no fractional values, no negatives);
- the label lies on the image's grid: same shape, spacing, origin and direction within
  `GRID_TOLERANCE_MM` (a label stored with flipped/permuted axes of the same voxels is fine);
- with ``data.unmapped_labels: error``, no label value outside ``data.labels``;

and over the training cases: every class of ``data.labels`` appears in at least one of them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DataError, MedsegError

log = logging.getLogger(__name__)

#: Largest difference (mm, per affine entry) between a label's grid and its image's grid.
GRID_TOLERANCE_MM = 1e-2


def _grid_differences(image: Any, label: Any, atol_mm: float = GRID_TOLERANCE_MM) -> list[str]:
    """What differs between two grids, in words (shape, spacing, origin, direction)."""
    out = []
    if image.shape != label.shape:
        out.append(f"shape {list(label.shape)} vs the image's {list(image.shape)}")
    sp_i, sp_l = np.asarray(image.spacing), np.asarray(label.spacing)
    if not np.allclose(np.sort(sp_i), np.sort(sp_l), atol=atol_mm):
        out.append(f"spacing {[round(float(v), 4) for v in sp_l]} mm vs {[round(float(v), 4) for v in sp_i]} mm")
    origin_gap = float(np.linalg.norm(image.affine[:3, 3] - label.affine[:3, 3]))
    if origin_gap > atol_mm:
        out.append(f"origin {[round(float(v), 3) for v in label.affine[:3, 3]]} vs "
                   f"{[round(float(v), 3) for v in image.affine[:3, 3]]} (RAS mm, {origin_gap:.3g} mm apart)")
    if label.orientation != image.orientation:
        out.append(f"direction {label.orientation} vs the image's {image.orientation}")
    return out or ["affines differ beyond the tolerance"]


def _check_case(case: dict[str, str], value_to_class: dict[int, int], unmapped: str) -> tuple[list[str], set[int]]:
    """Problems of one case and the (configured) label values it holds."""
    from medseg.data.datasets import _load_image, _load_label, align_to_grid

    problems: list[str] = []
    try:
        image = _load_image(case["image"])
    except MedsegError as exc:
        return [f"image {case['image']}: unreadable: {exc}"], set()
    if image.array.ndim != 3 and not (image.array.ndim == 4 and image.array.shape[3] == 1):
        problems.append(f"image {case['image']}: expected a 3-D image, found shape {list(image.array.shape)}; "
                        "give one single-channel 3-D image per case")
    if image.array.dtype.kind == "f" and not np.isfinite(image.array).any():  # readers refuse it; belt and braces
        problems.append(f"image {case['image']}: no finite voxel")
    label_path = case.get("label")
    if not label_path:
        return problems, set()
    try:
        label = _load_label(Path(label_path), image)
    except MedsegError as exc:
        return problems + [f"label {label_path}: unreadable: {exc}"], set()
    arr = np.asarray(label.array)
    if arr.ndim != 3:
        return problems + [f"label {label_path}: a label map must be 3-D, found shape {list(arr.shape)}; "
                           "save one integer label map per case"], set()
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all() or not np.array_equal(np.rint(arr[finite]), arr[finite]):
            return problems + [f"label {label_path}: holds non-integer values ({arr.dtype}); a label map stores integer "
                               "class values — save it with an integer data type (e.g. uint8)"], set()
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        return problems + [f"label {label_path}: data type {arr.dtype} is not an integer type"], set()
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        problems.append(f"label {label_path}: negative values (e.g. {int(arr.min())}); labels are 0 (background) or positive")
    if align_to_grid(label, image, GRID_TOLERANCE_MM) is None:
        problems.append(
            f"label {label_path} is not on the grid of image {case['image']}: "
            + "; ".join(_grid_differences(image, label))
            + " — resample the label onto the image (nearest neighbour) or pair the right files"
        )
    values = {int(v) for v in np.unique(arr) if v > 0}
    unknown = sorted(v for v in values if v not in value_to_class)
    if unknown and unmapped == "error":
        listed = ", ".join(f"{v}→{c}" for v, c in sorted(value_to_class.items()))
        problems.append(
            f"label {label_path}: values {unknown[:10]}{' …' if len(unknown) > 10 else ''} are not in data.labels "
            f"(mapped: {listed}); add them to data.labels or set data.unmapped_labels: background"
        )
    return problems, values & set(value_to_class)


def check_training_cases(cfg: Any) -> None:
    """Read every training and validation case of `cfg` and raise if any cannot be trained on.

    Args:
        cfg: a `medseg.config.WorkflowConfig` (paths already resolved).

    Raises:
        DataError: one message listing every problem, per case and file, with what to do
            (see the module docstring for the checks).
        ConfigError / InputError: the cases cannot even be listed (from `resolve_cases`).
    """
    from medseg.data.datasets import resolve_cases

    paired = getattr(cfg.data, "paired", None)
    if paired is not None:  # task gan on real full-/low-dose pairs: the pairs are its cases
        from medseg.data.ldct_pairs import check_paired_cases

        check_paired_cases(paired.root, paired.full_dose_dir, paired.low_dose_dir, paired.position_tolerance_mm)
        return
    labelled = getattr(cfg, "task", "segmentation") == "segmentation"  # image-only tasks read no labels
    training, validation = resolve_cases(cfg, labels=labelled)
    value_to_class = cfg.data.value_to_class() if labelled else {}
    unmapped = cfg.data.unmapped_labels if labelled else "background"
    report: list[str] = []
    seen_values: set[int] = set()
    n_bad = 0
    for role, cases in (("training", training), ("validation", validation)):
        for case in cases:
            problems, values = _check_case(case, value_to_class, unmapped)
            if role == "training":
                seen_values |= values
            if problems:
                n_bad += 1
                report.append(f"  {role} case {case.get('name', case['image'])!r}:")
                report.extend(f"    - {p}" for p in problems)
    classes = cfg.data.labels if labelled else {}
    absent = []
    for name, vals in classes.items():
        vals = vals if isinstance(vals, list) else [vals]
        if not seen_values & {int(v) for v in vals}:
            absent.append(f"{name!r} (label value{'s' if len(vals) > 1 else ''} {', '.join(str(v) for v in vals)})")
    if absent:
        report.append(
            f"  data.labels: class(es) {', '.join(absent)} appear in none of the {len(training)} training case(s); "
            "check the label values (e.g. `medseg info` / a viewer) or remove the class"
        )
    if report:
        head = f"training data check failed: {n_bad} of {len(training) + len(validation)} case(s) cannot be used"
        if absent:
            head += f", {len(absent)} class(es) never labelled"
        raise DataError(head + "\n" + "\n".join(report))
    log.info("training data check: %d training + %d validation case(s) readable, on their grids, labels present",
             len(training), len(validation))

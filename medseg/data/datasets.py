"""Training cases: where they come from, how they are checked and loaded.

Sources (one per workflow, `medseg.config.DataConfig`):

- an MSD/MONAI **datalist JSON** ``{"training": [{"image": .., "label": ..}], "validation": [..]}``
  with paths relative to the JSON file;
- an **nnU-Net folder**: ``imagesTr/CASE_0000.nii.gz`` + ``labelsTr/CASE.nii.gz`` (``_0000``
  channel suffix optional), and ``imagesTs/`` + ``labelsTs/`` as validation when present;
- cases listed **inline** in the workflow.

Images are NIfTI/NRRD/MHA files or DICOM series folders; labels NIfTI/NRRD/MHA files on the
image's grid, or DICOM SEG files (read onto the image's grid).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ConfigError, GeometryError, InputError
from medseg.io import Volume

log = logging.getLogger(__name__)

Case = dict[str, str]  # {"image": abs path, "label": abs path, "name": str}


def _load_image(path: str | os.PathLike[str]) -> Volume:
    """Any image medseg reads: NIfTI/NRRD/MHA file or DICOM folder/file."""
    try:
        from medseg.io import load_volume  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - before engineer A's dispatcher landed
        load_volume = None
    if load_volume is not None:
        return load_volume(path)
    p = Path(path)
    if p.is_dir():
        from medseg.io.dicom import read_dicom_series

        return read_dicom_series(p)
    from medseg.io import read_volume

    return read_volume(p)


def _is_dicom_seg_file(path: Path) -> bool:
    if path.is_dir():
        return False
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")):
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _load_label(path: Path, image: Volume) -> Volume:
    if _is_dicom_seg_file(path):
        from medseg.io.seg import read_dicom_seg  # type: ignore[import-not-found]

        return read_dicom_seg(path, image)
    return _load_image(path)


def remap_labels(label: np.ndarray, value_to_class: dict[int, int], unmapped: str, source: str) -> np.ndarray:
    """Map label-file values to classes 1..N with a lookup table.

    Raises:
        InputError: values neither mapped nor 0 when ``unmapped == "error"``.
    """
    arr = np.asarray(label)
    if arr.dtype.kind == "f":
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise InputError(f"{source}: label map holds non-integer values; expected integer labels")
        arr = rounded.astype(np.int64)
    if arr.dtype.kind not in "iub":
        raise InputError(f"{source}: label map has data type {arr.dtype}; expected integers")
    values = np.unique(arr)
    if values.size and values.min() < 0:
        raise InputError(f"{source}: negative label values {values[values < 0][:5].tolist()}")
    unknown = [int(v) for v in values if v != 0 and int(v) not in value_to_class]
    if unknown and unmapped == "error":
        listed = ", ".join(f"{v}→{c}" for v, c in sorted(value_to_class.items()))
        raise InputError(
            f"{source}: label values {unknown[:10]}{' …' if len(unknown) > 10 else ''} are not in data.labels "
            f"(mapped: {listed}); add them to data.labels or set data.unmapped_labels: background"
        )
    lut = np.zeros(int(max(values.max() if values.size else 0, max(value_to_class, default=0))) + 1, dtype=np.uint8)
    for value, cls in value_to_class.items():
        lut[value] = cls
    return lut[arr.astype(np.int64, copy=False)]


def align_to_grid(label: Volume, image: Volume, atol_mm: float = 1e-2) -> Volume | None:
    """`label` re-ordered onto `image`'s voxel order when both cover the same voxel centres.

    A label stored with flipped/permuted axes (e.g. a NIfTI written LAS for a DICOM series read
    LPS) holds the same voxels in another index order; this returns it as an array indexed like
    the image (no interpolation). Returns None when the grids are physically different.
    """
    if label.same_grid(image, atol_mm):
        return label
    # label index = T @ image index; a signed permutation with an integer offset means same voxels
    t = np.linalg.inv(label.affine) @ image.affine
    rot = np.rint(t[:3, :3])
    offset = t[:3, 3]
    if not (np.allclose(t[:3, :3], rot, atol=1e-3) and np.allclose(offset, np.rint(offset), atol=1e-2)):
        return None
    if sorted(np.abs(rot).sum(axis=0).tolist()) != [1, 1, 1] or sorted(np.abs(rot).sum(axis=1).tolist()) != [1, 1, 1]:
        return None
    axes = [int(np.flatnonzero(rot[:, a])[0]) for a in range(3)]  # label axis feeding image axis a
    arr = np.transpose(label.array, axes)
    for a in range(3):
        if rot[axes[a], a] < 0:
            arr = np.flip(arr, axis=a)
    if arr.shape != image.shape:
        return None
    out = Volume(np.ascontiguousarray(arr), image.affine.copy(), dict(label.meta))
    # the offset must put image voxel 0 on the first/last label voxel along each axis
    corner = np.rint(offset).astype(int)
    expected = [0 if rot[axes[a], a] > 0 else label.shape[axes[a]] - 1 for a in range(3)]
    if [corner[axes[a]] for a in range(3)] != expected:
        return None
    return out


def load_case_volumes(
    image_path: str | os.PathLike[str],
    label_path: str | os.PathLike[str] | None,
    value_to_class: dict[int, int] | None = None,
    unmapped: str = "error",
) -> tuple[Volume, Volume | None]:
    """Read one case: the image and (optionally) its label, checked to share a grid and remapped.

    Raises:
        InputError: a file is missing/unreadable or holds unknown label values.
        GeometryError: label and image grids differ (shape or affine beyond 0.01 mm).
    """
    image = _load_image(image_path)
    if label_path is None:
        return image, None
    label = _load_label(Path(label_path), image)
    if label.array.ndim != 3:
        raise InputError(f"{label_path}: a label map must be 3-D, found shape {label.array.shape}")
    aligned = align_to_grid(label, image)
    if aligned is None:
        raise GeometryError(
            f"label {label_path} is not on the grid of image {image_path}: image shape {image.shape} spacing "
            f"{tuple(round(s, 3) for s in image.spacing)} {image.orientation}, label shape {label.shape} spacing "
            f"{tuple(round(s, 3) for s in label.spacing)} {label.orientation} (affines differ by up to "
            f"{float(np.abs(image.affine - label.affine).max()):.3g} mm); resample the label onto the image first"
        )
    label = aligned
    if value_to_class is not None:
        label = label.with_array(remap_labels(label.array, value_to_class, unmapped, str(label_path)))
    return image, label


def _case(image: Path, label: Path | None, name: str | None = None) -> Case:
    from medseg.io import case_name

    for p, what in ((image, "image"), (label, "label")):
        if p is not None and not p.exists():
            raise InputError(f"{p}: {what} not found")
    out = {"image": str(image), "name": name or (image.name if image.is_dir() else case_name(image))}
    if label is not None:
        out["label"] = str(label)
    return out


def read_datalist(path: str | os.PathLike[str], labels: bool = True) -> tuple[list[Case], list[Case]]:
    """``(training, validation)`` cases of an MSD/MONAI datalist JSON (paths relative to it).

    ``labels=False`` (image-only tasks such as denoising) accepts entries without a label.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: datalist file not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or "training" not in raw:
        raise InputError(f"{path}: a datalist needs a 'training' list of {{'image': .., 'label': ..}} entries")

    def entries(key: str) -> list[Case]:
        out = []
        for i, item in enumerate(raw.get(key) or []):
            if not isinstance(item, dict) or "image" not in item:
                raise InputError(f"{path}: {key}[{i}] must be an object with an 'image' (and 'label') path")
            if labels and key == "training" and not item.get("label"):
                raise InputError(f"{path}: {key}[{i}] has no 'label'")
            image = (path.parent / item["image"]).resolve()
            label = (path.parent / item["label"]).resolve() if item.get("label") else None
            out.append(_case(image, label, item.get("name")))
        return out

    return entries("training"), entries("validation")


def read_nnunet_folder(root: str | os.PathLike[str]) -> tuple[list[Case], list[Case]]:
    """``(training, validation)`` cases of an nnU-Net raw dataset folder.

    ``imagesTr/NAME_0000.ext`` (or ``NAME.ext``) pairs with ``labelsTr/NAME.ext``; DICOM series
    folders ``imagesTr/NAME/`` are accepted too. ``imagesTs``/``labelsTs`` pairs become validation.
    """
    from medseg.io import case_name

    root = Path(root)
    if not (root / "imagesTr").is_dir() or not (root / "labelsTr").is_dir():
        raise InputError(f"{root}: an nnU-Net folder needs imagesTr/ and labelsTr/")

    def pairs(images_dir: Path, labels_dir: Path, required: bool) -> list[Case]:
        labels = {case_name(p): p for p in labels_dir.iterdir() if not p.name.startswith(".")}
        out = []
        for img in sorted(p for p in images_dir.iterdir() if not p.name.startswith(".")):
            name = case_name(img) if img.is_file() else img.name
            if name.endswith("_0000"):
                name = name[:-5]
            elif len(name) > 5 and name[-5] == "_" and name[-4:].isdigit():
                raise InputError(f"{img}: only single-channel cases (_0000) are supported")
            if name not in labels:
                if required:
                    raise InputError(f"{img}: no label {labels_dir}/{name}.* for this image")
                continue
            out.append(_case(img, labels[name], name))
        return out

    training = pairs(root / "imagesTr", root / "labelsTr", required=True)
    if not training:
        raise InputError(f"{root}/imagesTr: no images found")
    validation = []
    if (root / "imagesTs").is_dir() and (root / "labelsTs").is_dir():
        validation = pairs(root / "imagesTs", root / "labelsTs", required=False)
    return training, validation


def resolve_cases(cfg: Any, labels: bool = True) -> tuple[list[Case], list[Case]]:
    """``(training, validation)`` cases of a `WorkflowConfig` (paths already absolute).

    When no validation cases are given, ``data.val_fraction`` of the training cases (at least
    one, if there are ≥ 2) is held out, chosen with ``seed``. ``labels=False`` (image-only
    tasks) neither needs nor reads labels (case dicts then have no ``"label"``).

    Raises:
        InputError: missing files, malformed datalist/folder; ConfigError: no training cases.
    """
    data = cfg.data
    if data.datalist:
        training, validation = read_datalist(data.datalist, labels=labels)
    elif data.nnunet_dir:
        training, validation = read_nnunet_folder(data.nnunet_dir)
    else:
        training, validation = [], []
        for c in data.training:
            if labels and not c.label:
                raise ConfigError(f"data.training: case {c.image} has no label")
            training.append(_case(Path(c.image), Path(c.label) if c.label and labels else None, c.name))
    validation += [_case(Path(c.image), Path(c.label) if c.label and labels else None, c.name) for c in data.validation]
    if getattr(data, "review_file", None):
        from medseg.data.review import review_training_cases

        training += review_training_cases(data.review_file)
    if not training:
        raise ConfigError("no training cases")
    if not validation and data.val_fraction > 0 and len(training) >= 2:
        order = list(range(len(training)))
        random.Random(cfg.seed).shuffle(order)
        n_val = max(1, round(data.val_fraction * len(training)))
        held = set(order[:n_val])
        validation = [c for i, c in enumerate(training) if i in held]
        training = [c for i, c in enumerate(training) if i not in held]
    if not labels:
        return [{k: v for k, v in c.items() if k != "label"} for c in training], [{k: v for k, v in c.items() if k != "label"} for c in validation]
    for c in validation:
        if "label" not in c:
            raise ConfigError(f"validation case {c['image']} has no label; validation needs labels")
    return training, validation

"""Real medical images bundled with medseg (tests, demo, napari sample data).

See ``NOTICE.md`` in this folder for sources and licences: TotalSegmentator example CT/MR
(Apache-2.0 code, CC BY 4.0 images) and pyradiomics brain/breast MRI (BSD-3-Clause, TCGA
images CC BY 3.0). Nothing is downloaded at run time.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent
_TS = ROOT / "totalsegmentator_example"
_PYRAD = ROOT / "pyradiomics_brain"

#: Named sample files / folders.
FILES: dict[str, Path] = {
    "ct_dicom": _TS / "example_ct_dicom",  # 20-slice 512×512 CT series, JPEG 2000 lossless
    "ct_dicom_seg": _TS / "example_seg_dicom.nii.gz",  # 117-class labels on that series' grid
    "ct_small": _TS / "example_ct_sm.nii.gz",  # 122×101×30 CT at 3 mm
    "ct_small_seg": _TS / "example_seg.nii.gz",  # labels on ct_small's grid
    "ct": _TS / "example_ct.nii.gz",  # 122×101×112 CT at 3 mm, no labels
    "mr_small": _TS / "example_mr_sm.nii.gz",  # 117×91×20 MR at 3 mm, no labels
    "brain_mri": _PYRAD / "brain1_image.nrrd",  # T1 post-contrast, 256×256×25
    "brain_mri_seg": _PYRAD / "brain1_label.nrrd",  # tumour mask
    "breast_mri": _PYRAD / "breast1_image.nrrd",
    "breast_mri_seg": _PYRAD / "breast1_label.nrrd",
}


#: Real images shipped inside other installed packages: name → (package, path inside it).
PACKAGED: dict[str, tuple[str, str]] = {
    # MNI152 2009a symmetric T1 template, 197×233×189 at 1 mm (nilearn's package data)
    "mni152_t1": ("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
}


def path(name: str) -> Path:
    """Path of a bundled sample by name (see `FILES`, and `PACKAGED` for other packages' data).

    Raises:
        KeyError: an unknown name, or a packaged image whose package is not installed.
    """
    if name in FILES:
        return FILES[name]
    if name in PACKAGED:
        import importlib.util

        package, inner = PACKAGED[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise KeyError(f"sample {name!r} comes with the {package!r} package, which is not installed (pip install {package})")
        return Path(spec.origin).parent / inner
    raise KeyError(f"unknown sample {name!r}; available: {', '.join(sorted([*FILES, *PACKAGED]))}")


def totalsegmentator_labels() -> dict[int, str]:
    """TotalSegmentator's 117-class 'total' task: label value → structure name."""
    raw = json.loads((_TS / "labels_total.json").read_text())
    return {int(k): v for k, v in raw.items()}

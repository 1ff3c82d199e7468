"""Datasets and MONAI transforms of training and inference (see `medseg.data.transforms`)."""

from medseg.data.datasets import load_case_volumes, read_datalist, read_nnunet_folder, remap_labels, resolve_cases
from medseg.data.transforms import preprocessing_transforms, volume_to_metatensor

__all__ = [
    "load_case_volumes",
    "preprocessing_transforms",
    "read_datalist",
    "read_nnunet_folder",
    "remap_labels",
    "resolve_cases",
    "volume_to_metatensor",
]

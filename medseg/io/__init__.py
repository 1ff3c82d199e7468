"""Volume I/O: NIfTI/NRRD/MHA files, DICOM series, DICOM SEG.

`Volume` is the one in-memory image type; every reader returns it with a RAS affine.
"""

from medseg.io.nifti import case_name, read_itk, read_nifti, read_volume, write_itk, write_nifti, write_volume
from medseg.io.volume import Volume

__all__ = [
    "Volume",
    "case_name",
    "read_itk",
    "read_nifti",
    "read_volume",
    "write_itk",
    "write_nifti",
    "write_volume",
]

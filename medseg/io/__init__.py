"""Volume I/O: NIfTI/NRRD/MHA files, DICOM series, DICOM SEG.

`Volume` is the one in-memory image type; every reader returns it with a RAS affine.
`load_volume` reads any supported input (file or DICOM folder); DICOM specifics live in
`medseg.io.dicom` (`scan_dicom_folder`, `read_dicom_series`), DICOM SEG in `medseg.io.seg`,
batch conversion to NIfTI in `medseg.io.convert`.
"""

from medseg.io.load import load_volume
from medseg.io.nifti import case_name, read_itk, read_nifti, read_volume, write_itk, write_nifti, write_volume
from medseg.io.volume import Volume

__all__ = [
    "Volume",
    "case_name",
    "load_volume",
    "read_itk",
    "read_nifti",
    "read_volume",
    "write_itk",
    "write_nifti",
    "write_volume",
]

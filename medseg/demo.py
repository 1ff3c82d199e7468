"""The README demo (`make demo` → `medseg demo --out DIR`): train → batch-segment DICOM → SEG → report.

On the real data bundled in `medseg.sample_data` (TotalSegmentator example CT, CC BY 4.0):

1. **train** the abdominal-organ workflow briefly on CPU (`medseg.engine.train`, a few minutes);
2. **build a DICOM folder tree** as a PACS export would look: the TotalSegmentator example CT
   series, a second CT series (the 3 mm example CT written as DICOM) in a nested folder, and
   objects a batch must skip with a reason (an MR image, a 1-slice scout, a structured report);
3. **batch-segment** it with `medseg.inference.segment_batch` → per series NIfTI labels on the
   original grid, DICOM SEG, volumes CSV, QA PNG, and the manifest;
4. **evaluate** against the reference labels (TotalSegmentator's output shipped with the data,
   remapped to the trained classes) with `medseg.report.evaluate_folders` → HTML report;
5. print where everything is.

The bundled data hold two labelled CTs, so the demo evaluates on the cases it trained on: it
shows that the pipeline works end to end, not how well the model generalises.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.io.volume import Volume

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Default training budget of the demo (seconds of training proper, on CPU).
DEFAULT_TRAIN_SECONDS = 240


@dataclass
class DemoResult:
    """Where the demo put everything."""

    out_dir: Path
    checkpoint: Path | None = None
    run_dir: Path | None = None
    dicom_dir: Path | None = None
    segment_dir: Path | None = None
    manifest: Path | None = None
    report_html: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# a DICOM tree from the bundled data


def write_ct_series(
    volume: Volume,
    folder: str | os.PathLike[str],
    *,
    series_description: str,
    series_number: int,
    study_uid: str | None = None,
    patient_id: str = "DEMO",
) -> list[Path]:
    """Write a CT `Volume` (HU) as a DICOM CT series, one uncompressed file per slice.

    Geometry comes from the volume's RAS affine (converted to DICOM's LPS), so reading the
    folder back with `medseg.io.dicom.read_dicom_series` gives the same grid. Patient fields
    are placeholders (no real identifiers exist in the bundled data).

    Returns:
        The written files, in slice order.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from medseg.io.orientation import ras_to_lps_affine

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = ras_to_lps_affine(volume.affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir = lps[:3, 0] / spacing[0]  # direction of increasing column index (i)
    col_dir = lps[:3, 1] / spacing[1]  # direction of increasing row index (j)
    hu = np.clip(np.rint(np.asarray(volume.array, dtype=np.float64)), -32768, 32767).astype(np.int16)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    files = []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Demo^Anonymous", patient_id, "", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "20240101", "120000", "", "", "1"
        ds.Modality, ds.Manufacturer = "CT", "medseg demo"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = series_description, series_number, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (j), column spacing (i)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.ascontiguousarray(hu[:, :, k].T).tobytes()
        path = folder / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def build_demo_dicom_tree(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Lay out a small PACS-export-like DICOM tree from the bundled data.

    ::

        root/patient_A/CT_abdomen/           TotalSegmentator example CT series (20 slices, JPEG 2000)
        root/patient_B/study_2/CT_3mm/       the 3 mm example CT written as a 30-slice series
        root/patient_B/study_2/scout/        pydicom's CT_small (one slice: skipped, --min-slices)
        root/patient_C/MR/                   pydicom's MR_small (skipped: a CT model)
        root/patient_C/report/               pydicom's test-SR (skipped: not an image)

    Returns:
        ``{"ct_dicom": folder, "ct_small": folder}``: the two series the demo evaluates.
    """
    import pydicom.data

    from medseg import sample_data
    from medseg.io import read_volume

    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    a = root / "patient_A" / "CT_abdomen"
    shutil.copytree(sample_data.path("ct_dicom"), a)
    b = root / "patient_B" / "study_2" / "CT_3mm"
    write_ct_series(read_volume(sample_data.path("ct_small")), b, series_description="Abdomen 3.0 mm", series_number=2)
    for sub, name in (("patient_B/study_2/scout", "CT_small.dcm"), ("patient_C/MR", "MR_small.dcm"), ("patient_C/report", "test-SR.dcm")):
        dst = root / sub
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(pydicom.data.get_testdata_file(name), dst / name)
    return {"ct_dicom": a, "ct_small": b}

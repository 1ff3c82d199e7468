"""DICOM RTSTRUCT (RT Structure Set) from a label map on a DICOM series' grid.

`write_rtstruct` writes one ROI per label value (name, colour, ``RTROIInterpretedType
ORGAN``, generated ``AUTOMATIC``) whose planar contours lie on the source series' images,
referencing the series (ReferencedFrameOfReferenceSequence → study → series →
ContourImageSequence with every image's SOP Instance UID) so treatment-planning systems and
viewers (3D Slicer, Eclipse, RayStation, OHIF) overlay it on that series.

Why not rt-utils (the usual choice, ``RTStructBuilder.create_new``): it needs the series as a
folder and re-reads every file in it with its pixel data, whatever series they belong to (the
tree a user points medseg at often holds several); it orders slices by its own position sort,
which is not the volume's slice order when `read_dicom_series` removed duplicates or filled a
gap; and it depends on opencv-python (the GUI build, ~60 MB, libGL). The contours here come
from scikit-image's marching squares on the volume medseg already has, with medseg's mapping
of slices to source images (`medseg.io.dicom_source`).

Contours: for every slice and label, ``skimage.measure.find_contours`` at level 0.5 on the
zero-padded mask gives closed polygons through the midpoints between inside and outside
pixel centres: rasterising them again (pixel centres inside the polygon, even–odd rule across
a slice's contours, so a hole is a contour inside another) gives the mask back. Collinear
vertices are dropped (the marching-squares staircase of straight and 45° edges has many; the
polygon stays the same), and points are mapped through the source
grid's voxel→LPS affine, so ContourData is in patient LPS mm on the image planes (tilted
stacks included). Labelled voxels on slices that `read_dicom_series` interpolated across a gap
have no source image and are left out (with a warning), as in the DICOM SEG.

The file is Implicit VR Little Endian, the RTSTRUCT norm: a ContourData value of more than
~4000 points exceeds the 64 KiB length an explicit-VR DS element can hold.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DicomError, GeometryError
from medseg.io.atomic import atomic_path
from medseg.io.dicom import DicomSeries
from medseg.io.dicom_source import SourceImages, source_images
from medseg.io.orientation import ras_to_lps_affine
from medseg.io.volume import Volume

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
#: RTReferencedStudySequence items reference the study with this (retired but required) class.
_STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
_PATIENT_STUDY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription",
)


def default_colors(values: list[int]) -> dict[int, tuple[int, int, int]]:
    """A distinct RGB colour (0–255) per label value: matplotlib's ``tab20`` by value, cycling."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return {v: tuple(int(round(255 * c)) for c in cmap(((v - 1) % 20) / 20.0 + 0.025)[:3]) for v in values}  # type: ignore[misc]


def _roi_name(text: str) -> str:
    # LO: ≤ 64 characters, no backslash (the value separator) and no control characters
    cleaned = "".join(ch if ch.isprintable() and ch != "\\" else "_" for ch in str(text)).strip()
    return cleaned[:64]


def _labels_on_source_grid(labels: Volume, src: SourceImages) -> np.ndarray:
    """The label array in the source volume's voxel order (a label map in another axis order
    of the same grid, e.g. a NIfTI written in RAS, is permuted/flipped onto it)."""
    import nibabel as nib

    array = np.asarray(labels.array)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim == 3 and tuple(array.shape) == src.shape and np.allclose(labels.affine, src.affine, atol=1e-3):
        return array
    if array.ndim == 3:
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(labels.affine), nib.orientations.io_orientation(src.affine)
        )
        moved = nib.orientations.apply_orientation(array, transform)
        affine = labels.affine @ nib.orientations.inv_ornt_aff(transform, array.shape)
        if tuple(moved.shape) == src.shape and np.allclose(affine, src.affine, atol=1e-3):
            return moved
    raise GeometryError(
        f"label map (shape {tuple(array.shape)}, orientation {labels.orientation}) is not on the grid of source series "
        f"{src.label} (shape {src.shape}); resample it onto the source grid first"
    )


def _drop_collinear(contour: np.ndarray) -> np.ndarray:
    """The closed polygon without its vertices that lie on the straight line through both neighbours.

    Marching squares on a binary mask places a vertex at every pixel edge, so straight and 45°
    runs are long chains of collinear points; dropping them leaves the same polygon (in one
    vectorised pass, unlike Douglas–Peucker, which also moves the outline).
    """
    prev = np.roll(contour, 1, axis=0)
    nxt = np.roll(contour, -1, axis=0)
    a, b = contour - prev, nxt - contour
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    dot = (a * b).sum(axis=1)
    keep = (np.abs(cross) > 1e-9) | (dot <= 0)
    return contour[keep]


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2-D boolean mask, in its index coordinates.

    Args:
        mask: ``mask[i, j]`` of one slice (i = column, j = row for DICOM volumes).

    Returns:
        A list of ``(N, 2)`` float arrays of ``(i, j)`` vertices (N ≥ 3, not repeating the
        first point), collinear vertices dropped. Holes are contours inside others
        (even–odd rule).
    """
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.uint8), 1)
    out = []
    for contour in find_contours(padded, 0.5):
        if len(contour) > 1 and np.array_equal(contour[0], contour[-1]):
            contour = contour[:-1]
        contour = _drop_collinear(contour)
        if len(contour) >= 3:
            out.append(contour - 1.0)
    return out


def contour_data_element(points_mm: np.ndarray) -> Any:
    """The ContourData (3006,0050) element of LPS points ``(N, 3)`` in mm, rounded to 0.1 µm.

    Built with ``already_converted=True`` from plain floats: pydicom then writes each value as
    ``repr(float)``, the same text it writes for ``ds.ContourData = [floats]``, without making
    and validating a ``DSfloat`` per coordinate (the cost of an RTSTRUCT is those objects: a
    CT's label map has millions of coordinates). `tests/io/test_rtstruct.py` checks that both
    give the same bytes. Every value fits the 16 characters of a Decimal String.
    """
    from pydicom.dataelem import DataElement

    values = np.round(np.asarray(points_mm, dtype=np.float64).ravel(), 4) + 0.0  # + 0.0: no "-0.0"
    return DataElement(0x30060050, "DS", values.tolist(), already_converted=True)


def write_rtstruct(
    labels: Volume,
    source: DicomSeries | Volume,
    label_names: dict[int, str],
    path: PathLike,
    *,
    colors: dict[int, tuple[int, int, int]] | None = None,
    structure_set_label: str = "medseg",
    series_number: int | None = None,
) -> Path:
    """Write the labels of `labels` as a DICOM RTSTRUCT referencing the `source` series.

    Args:
        labels: integer label map (0 = background) on the source series' grid (the same voxel
            grid; another axis order of it, e.g. a RAS NIfTI of the series, is accepted).
        source: the source series: its `DicomSeries` (from `scan_dicom_folder`) or the
            `Volume` `read_dicom_series` returned for it.
        label_names: label value → ROI name. Only values present in `labels` become ROIs;
            present values without a name are called ``"label <value>"``.
        path: the output file (written atomically), e.g. ``rtstruct.dcm``.
        colors: label value → ``(r, g, b)`` 0–255 (ROIDisplayColor); default `default_colors`.
        structure_set_label: StructureSetLabel (≤ 16 characters) and the series description.
        series_number: SeriesNumber of the RTSTRUCT; default the source's + 3000 (the SEG takes
            + 1000, a derived image series + 2000).

    Returns:
        `path`.

    Raises:
        GeometryError: `labels` is not on the source series' grid.
        DicomError: the source cannot be referenced (not a DICOM image series, unreadable
            header), or `labels` holds no label at all.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
    from scipy import ndimage

    from medseg import __version__

    src = source_images(source)
    array = _labels_on_source_grid(labels, src)
    if array.dtype.kind not in "uib":
        if not np.all(np.mod(array, 1) == 0):
            raise DicomError("RTSTRUCT labels must be integers; got fractional values")
        array = array.astype(np.int64)
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise DicomError("RTSTRUCT labels must be >= 0 (0 = background)")
    array = array.astype(np.int64) if array.dtype == np.bool_ else array
    boxes = ndimage.find_objects(array)  # one bounding box per label value 1..max
    values = [v + 1 for v, box in enumerate(boxes) if box is not None]
    if not values:
        raise DicomError("nothing to write in the RTSTRUCT: the label map is empty")
    palette = default_colors(values)
    palette.update({int(k): tuple(int(c) for c in rgb) for k, rgb in (colors or {}).items()})  # type: ignore[misc]
    lps = ras_to_lps_affine(src.affine)
    first = next(s for s in src.slices if s is not None)
    try:
        ref_ds = pydicom.dcmread(first.path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - any read failure is a bad source file
        raise DicomError(f"{first.path}: cannot re-read the source DICOM header for the RTSTRUCT ({type(exc).__name__}: {exc})") from exc

    def image_ref(k: int) -> Any:
        s = src.slices[k]
        assert s is not None
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID = s.sop_class_uid
        item.ReferencedSOPInstanceUID = s.sop_instance_uid
        if s.frame_index is not None:
            item.ReferencedFrameNumber = s.frame_index + 1
        return item

    now = datetime.datetime.now()
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: ROI names may be any text
    for keyword in _PATIENT_STUDY:
        if keyword in ref_ds:
            element = ref_ds.data_element(keyword)
            # decoded text: re-encoded in this file's UTF-8, whatever the source's character set
            setattr(ds, keyword, str(element.value) if element.VR == "PN" else element.value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):  # type 2: present, possibly empty
        if keyword not in ds:
            setattr(ds, keyword, "")
    sop_uid = generate_uid()
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.StructureSetTime = now.strftime("%H%M%S.%f")
    ds.Modality = "RTSTRUCT"
    ds.StudyInstanceUID = src.study_instance_uid
    ds.SeriesInstanceUID = generate_uid()
    if series_number is None:
        series_number = int(src.series_number) + 3000 if src.series_number is not None else 3000
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = f"{structure_set_label} structures"[:64]
    ds.InstanceNumber = 1
    ds.OperatorsName = ""
    ds.Manufacturer = "medseg"
    ds.ManufacturerModelName = "medseg"[:64]
    ds.SoftwareVersions = __version__
    ds.StructureSetLabel = _roi_name(structure_set_label)[:16] or "medseg"
    ds.StructureSetName = _roi_name(structure_set_label)[:64]
    ds.ApprovalStatus = "UNAPPROVED"  # automatic contours: a person reviews them before use

    series_item = pydicom.Dataset()
    series_item.SeriesInstanceUID = src.series_instance_uid
    series_item.ContourImageSequence = pydicom.Sequence([image_ref(k) for k, s in enumerate(src.slices) if s is not None])
    study_item = pydicom.Dataset()
    study_item.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP_CLASS
    study_item.ReferencedSOPInstanceUID = src.study_instance_uid
    study_item.RTReferencedSeriesSequence = pydicom.Sequence([series_item])
    for_item = pydicom.Dataset()
    for_item.FrameOfReferenceUID = src.frame_of_reference_uid
    for_item.RTReferencedStudySequence = pydicom.Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = pydicom.Sequence([for_item])

    rois, roi_contours, observations = [], [], []
    dropped = 0
    for number, v in enumerate(values, start=1):
        xs, ys, zs = boxes[v - 1]
        contours = []
        for k in range(zs.start, zs.stop):
            mask = array[xs, ys, k] == v
            if not mask.any():
                continue
            if src.slices[k] is None:
                dropped += int(np.count_nonzero(mask))
                continue
            for c in slice_contours(mask):
                ijk = np.column_stack([c[:, 0] + xs.start, c[:, 1] + ys.start, np.full(len(c), k, dtype=np.float64)])
                points = ijk @ lps[:3, :3].T + lps[:3, 3]
                item = pydicom.Dataset()
                item.ContourImageSequence = pydicom.Sequence([image_ref(k)])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(points)
                item.ContourNumber = len(contours) + 1
                item["ContourData"] = contour_data_element(points)
                contours.append(item)
        roi = pydicom.Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = src.frame_of_reference_uid
        roi.ROIName = _roi_name(label_names.get(v, f"label {v}")) or f"label {v}"
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"medseg {__version__} label {v}"[:64]
        rois.append(roi)
        roi_contour = pydicom.Dataset()
        roi_contour.ROIDisplayColor = list(palette[v])
        roi_contour.ReferencedROINumber = number
        if contours:
            roi_contour.ContourSequence = pydicom.Sequence(contours)
        roi_contours.append(roi_contour)
        obs = pydicom.Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.ROIObservationLabel = roi.ROIName[:16]  # SH
        obs.RTROIInterpretedType = "ORGAN"
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = pydicom.Sequence(rois)
    ds.ROIContourSequence = pydicom.Sequence(roi_contours)
    ds.RTROIObservationsSequence = pydicom.Sequence(observations)
    if dropped:
        log.warning(
            "%s: %d labelled voxels lie on interpolated slices that have no source image; they are not in the RTSTRUCT",
            src.label, dropped,
        )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"medseg {__version__}"[:16]
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    log.info("%s: RTSTRUCT with %d ROI(s) written to %s", src.label, len(values), path)
    return path

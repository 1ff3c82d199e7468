"""Derived DICOM image series: an enhanced/denoised image written back beside its source series.

`write_derived_series` writes one DICOM file per source image of a `Volume` on the source
series' grid (the output of `medseg.inference.image.predict_image`). Each file is a copy of
its source image's header (patient, study, equipment, frame of reference and the plane
geometry: ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness) with:

- a new SeriesInstanceUID (one for the series) and a new SOPInstanceUID per file, in the
  source's study (same StudyInstanceUID and FrameOfReferenceUID), so PACS and viewers show
  it as another series of the same exam, registered with the source;
- ImageType ``DERIVED\\SECONDARY`` (plus the source's third value, e.g. AXIAL),
  DerivationDescription and SeriesDescription from the caller, SourceImageSequence naming
  the source image;
- the pixel data re-encoded uncompressed (Explicit VR Little Endian) as int16, with the source
  image's own RescaleSlope/RescaleIntercept when the values fit in int16 with it (CT: slope 1,
  intercept −1024, so HU stay integral as in the source), else a slope computed from the
  series' value range (see `choose_rescale`);
- private tags and the icon image dropped (they describe the source's pixels).

The series is written into a temporary folder next to `out_dir` and renamed onto it at the
end (`medseg.io.atomic.atomic_directory`): an interrupted write leaves no half series.
Multi-frame (enhanced) sources are not supported yet (a clear `DicomError`).
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DicomError, GeometryError
from medseg.io.atomic import atomic_directory
from medseg.io.dicom import DicomSeries
from medseg.io.dicom_source import SourceImages, source_images
from medseg.io.naming import sanitize_filename
from medseg.io.volume import Volume

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

_INT16_MIN, _INT16_MAX = -32768, 32767
#: Pixel-module and pixel-describing attributes of the source that do not hold for the new
#: pixel data (sizes, statistics, padding values, palettes, a modality LUT replaced by the rescale).
_DROP = (
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "NumberOfFrames", "PlanarConfiguration",
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries", "LargestPixelValueInSeries",
    "PixelPaddingValue", "PixelPaddingRangeLimit", "ModalityLUTSequence", "IconImageSequence",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData", "DataSetTrailingPadding",
)


def choose_rescale(values: np.ndarray, preferred: tuple[float, float]) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept that hold `values` as int16.

    ``stored = round((v − intercept) / slope)`` must lie in [−32768, 32767]. The `preferred`
    rescale (the source image's) is kept when it does, so a CT stays in integral HU with
    slope 1; otherwise the series' range is spread over the whole int16 range:
    ``slope = (max − min) / 65535``, ``intercept = min + 32768 · slope`` (worst rounding
    error slope / 2).

    Args:
        values: the finite values to store (any shape).
        preferred: ``(slope, intercept)`` to keep when possible.

    Returns:
        ``(slope, intercept)``.
    """
    slope, intercept = float(preferred[0]) or 1.0, float(preferred[1])
    if values.size == 0:
        return slope, intercept
    lo, hi = float(np.min(values)), float(np.max(values))
    stored = np.array([(lo - intercept) / slope, (hi - intercept) / slope])
    if np.rint(stored.min()) >= _INT16_MIN and np.rint(stored.max()) <= _INT16_MAX:
        return slope, intercept
    span = hi - lo
    slope = span / (_INT16_MAX - _INT16_MIN) if span > 0 else 1.0
    # a slope printed with 10 significant digits (DS holds 16 characters), rounded up so the
    # range still fits once the value is written as text
    slope = float(np.format_float_positional(slope * (1 + 1e-9), precision=10, unique=False, fractional=False, trim="-"))
    intercept = lo - _INT16_MIN * slope
    intercept = float(np.format_float_positional(intercept, precision=10, unique=False, fractional=False, trim="-"))
    return slope, intercept


def _ds_number(x: float) -> str:
    """A Decimal String (≤ 16 characters) that reads back as `x` to ~10 significant digits."""
    text = np.format_float_positional(float(x), precision=10, unique=True, fractional=False, trim="-")
    if len(text) > 16:
        text = f"{float(x):.9g}"
    return text


def _encode_slice(values: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """int16 stored values of one slice (``rows × columns``)."""
    stored = np.rint((values.astype(np.float64) - intercept) / slope)
    return np.clip(stored, _INT16_MIN, _INT16_MAX).astype("<i2")


def _read_source_header(path: Path) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - any read failure is a bad source file
        raise DicomError(f"{path}: cannot re-read the source DICOM header for the derived series ({type(exc).__name__}: {exc})") from exc


def write_derived_series(
    image: Volume,
    source: DicomSeries | Volume,
    out_dir: PathLike,
    *,
    description: str,
    series_number: int | None = None,
) -> list[Path]:
    """Write `image` as a derived DICOM series in the source series' study.

    Args:
        image: the derived image (e.g. denoised) on the source series' grid, in the source's
            units (HU for CT); any real dtype. Non-finite voxels are stored as the image's
            minimum (with a warning).
        source: the source series: its `DicomSeries` (from `scan_dicom_folder`) or the
            `Volume` `read_dicom_series` returned for it.
        out_dir: the folder to create (replaced if it exists); it holds only this series.
        description: SeriesDescription (cut to 64 characters) and DerivationDescription
            (e.g. ``"medseg denoising, model abc123"``).
        series_number: SeriesNumber of the new series; default the source's + 2000 (the
            DICOM SEG takes + 1000).

    Returns:
        The written files, in slice order (one per source image; slices that
        `read_dicom_series` interpolated across a gap have no source image and are left out).

    Raises:
        GeometryError: `image` is not on the source series' grid.
        DicomError: a source header cannot be read, or the source is a multi-frame image.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.multival import MultiValue
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    from medseg import __version__

    src: SourceImages = source_images(source)
    if src.multi_frame:
        raise DicomError(
            f"series {src.label}: derived series from a multi-frame (enhanced) image are not supported; "
            "write the image as NIfTI instead"
        )
    array = np.asarray(image.array)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3 or tuple(array.shape) != src.shape or not np.allclose(image.affine, src.affine, atol=1e-3):
        raise GeometryError(
            f"derived image (shape {tuple(array.shape)}) is not on the grid of source series {src.label} "
            f"(shape {src.shape}); resample it onto the source grid first"
        )
    values = array.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        fill = float(values[finite].min()) if finite.any() else 0.0
        values = np.where(finite, values, fill)
        log.warning("%s: %d non-finite voxel(s) of the derived image stored as %g", src.label, int((~finite).sum()), fill)
    kept = [k for k, s in enumerate(src.slices) if s is not None]
    if len(kept) < len(src.slices):
        log.info("%s: %d interpolated slice(s) have no source image and are not written", src.label, len(src.slices) - len(kept))
    headers = [_read_source_header(src.slices[k].path) for k in kept]  # type: ignore[union-attr]
    # one rescale for the series when the source's own does not fit (viewers window a series as one)
    preferred = [(float(h.get("RescaleSlope", 1) or 1), float(h.get("RescaleIntercept", 0) or 0)) for h in headers]
    fits = [choose_rescale(values[:, :, k], p) == p for k, p in zip(kept, preferred)]
    series_rescale = None if all(fits) else choose_rescale(values[:, :, kept], preferred[0])

    series_uid = generate_uid()
    if series_number is None:
        series_number = int(src.series_number) + 2000 if src.series_number is not None else 2000
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    prefix = sanitize_filename(src.modality, max_len=8, fallback="IM")
    written: list[Path] = []
    with atomic_directory(out_dir) as tmp:
        for n, (k, ds) in enumerate(zip(kept, headers)):
            ref = src.slices[k]
            assert ref is not None
            slope, intercept = series_rescale or preferred[n]
            for keyword in _DROP:
                if keyword in ds:
                    del ds[keyword]
            ds.remove_private_tags()
            sop_uid = generate_uid()
            ds.SOPClassUID = ref.sop_class_uid
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = src.study_instance_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = src.frame_of_reference_uid
            ds.SeriesNumber = int(series_number)
            ds.InstanceNumber = n + 1
            ds.SeriesDescription = str(description)[:64]
            ds.DerivationDescription = str(description)[:1024]
            old_type = [str(v) for v in (ds.get("ImageType") or [])]
            ds.ImageType = ["DERIVED", "SECONDARY", *old_type[2:3]]
            source_item = pydicom.Dataset()
            source_item.ReferencedSOPClassUID = ref.sop_class_uid
            source_item.ReferencedSOPInstanceUID = ref.sop_instance_uid
            ds.SourceImageSequence = pydicom.Sequence([source_item])
            ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = date
            ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = time
            old_software = ds.get("SoftwareVersions")
            software = [str(v) for v in old_software] if isinstance(old_software, MultiValue) else [str(old_software or "")]
            ds.SoftwareVersions = [*(v for v in software if v), f"medseg {__version__}"]
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = src.shape[1], src.shape[0]
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleSlope, ds.RescaleIntercept = _ds_number(slope), _ds_number(intercept)
            if "RescaleType" not in ds and src.modality.upper() == "CT":
                ds.RescaleType = "HU"
            # read back the slope/intercept as written (decimal text) so the stored ints match it
            slope_w, intercept_w = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            pixels = _encode_slice(values[:, :, k].T, slope_w, intercept_w)  # rows × columns
            ds.PixelData = pixels.tobytes()
            ds["PixelData"].VR = "OW"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ref.sop_class_uid
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            meta.ImplementationVersionName = f"medseg {__version__}"[:16]
            # a fresh dataset of the (decoded) elements: the source's encoding (implicit VR, big
            # endian) is not carried over, so every file is written as Explicit VR Little Endian
            out = pydicom.Dataset()
            for element in ds:
                out.add(element)
            out.file_meta = meta
            out.preamble = b"\0" * 128
            name = f"{prefix}_{n + 1:04d}.dcm"
            out.save_as(tmp / name, enforce_file_format=True)
            written.append(Path(out_dir) / name)
    log.info("%s: derived series of %d image(s) written to %s", src.label, len(written), out_dir)
    return written

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

An Enhanced (multi-frame) source gives one multi-frame derived file: its functional groups
(per-frame plane positions) with one frame per slice, and one rescale in the shared group.

The series is written into a temporary folder next to `out_dir` and renamed onto it at the
end (`medseg.io.atomic.atomic_directory`): an interrupted write leaves no half series.
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
        `read_dicom_series` interpolated across a gap have no source image and are left out);
        one multi-frame file for an Enhanced (multi-frame) source.

    Raises:
        GeometryError: `image` is not on the source series' grid.
        DicomError: a source header cannot be read.
    """
    from pydicom.uid import generate_uid

    src: SourceImages = source_images(source)
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
    if series_number is None:
        series_number = int(src.series_number) + 2000 if src.series_number is not None else 2000
    now = datetime.datetime.now()
    common = {
        "series_uid": generate_uid(),
        "series_number": int(series_number),
        "description": str(description),
        "date": now.strftime("%Y%m%d"),
        "time": now.strftime("%H%M%S.%f"),
    }
    prefix = sanitize_filename(src.modality, max_len=8, fallback="IM")
    written: list[Path] = []
    with atomic_directory(out_dir) as tmp:
        if src.multi_frame:
            name = f"{prefix}_0001.dcm"
            _write_multi_frame(values, src, kept, common, tmp / name)
            written.append(Path(out_dir) / name)
        else:
            headers = [_read_source_header(src.slices[k].path) for k in kept]  # type: ignore[union-attr]
            # one rescale for the series when the source's own does not fit (viewers window a series as one)
            preferred = [(float(h.get("RescaleSlope", 1) or 1), float(h.get("RescaleIntercept", 0) or 0)) for h in headers]
            fits = [choose_rescale(values[:, :, k], p) == p for k, p in zip(kept, preferred)]
            series_rescale = None if all(fits) else choose_rescale(values[:, :, kept], preferred[0])
            for n, (k, ds) in enumerate(zip(kept, headers)):
                ref = src.slices[k]
                assert ref is not None
                _derive_header(ds, src, ref, common, instance_number=n + 1)
                old_type = [str(v) for v in (ds.get("ImageType") or [])]
                ds.ImageType = ["DERIVED", "SECONDARY", *old_type[2:3]]
                slope, intercept = series_rescale or preferred[n]
                ds.RescaleSlope, ds.RescaleIntercept = _ds_number(slope), _ds_number(intercept)
                if "RescaleType" not in ds and src.modality.upper() == "CT":
                    ds.RescaleType = "HU"
                # the slope/intercept as written (decimal text), so the stored integers match it
                pixels = _encode_slice(values[:, :, k].T, float(ds.RescaleSlope), float(ds.RescaleIntercept))
                _set_pixel_data(ds, pixels)
                name = f"{prefix}_{n + 1:04d}.dcm"
                _save(ds, ref.sop_class_uid, tmp / name)
                written.append(Path(out_dir) / name)
    log.info("%s: derived series of %d file(s) written to %s", src.label, len(written), out_dir)
    return written


def _derive_header(ds: Any, src: SourceImages, ref: Any, common: dict[str, Any], instance_number: int) -> None:
    """Turn a source image's header into the derived image's (UIDs, series, description)."""
    import pydicom
    from pydicom.multival import MultiValue

    from medseg import __version__

    for keyword in _DROP:
        if keyword in ds:
            del ds[keyword]
    ds.remove_private_tags()
    ds.SOPClassUID = ref.sop_class_uid
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID = src.study_instance_uid
    ds.SeriesInstanceUID = common["series_uid"]
    ds.FrameOfReferenceUID = src.frame_of_reference_uid
    ds.SeriesNumber = common["series_number"]
    ds.InstanceNumber = instance_number
    ds.SeriesDescription = common["description"][:64]
    ds.DerivationDescription = common["description"][:1024]
    source_item = pydicom.Dataset()
    source_item.ReferencedSOPClassUID = ref.sop_class_uid
    source_item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    ds.SourceImageSequence = pydicom.Sequence([source_item])
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = common["date"]
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = common["time"]
    old_software = ds.get("SoftwareVersions")
    software = [str(v) for v in old_software] if isinstance(old_software, MultiValue) else [str(old_software or "")]
    ds.SoftwareVersions = [*(v for v in software if v), f"medseg {__version__}"]


def _set_pixel_data(ds: Any, pixels: np.ndarray) -> None:
    """int16 MONOCHROME2 pixel data: ``(rows, columns)`` or ``(frames, rows, columns)``."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[-2]), int(pixels.shape[-1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    ds["PixelData"].VR = "OW"


def _save(ds: Any, sop_class_uid: str, path: Path) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    from medseg import __version__

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
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
    out.save_as(path, enforce_file_format=True)


def _set_frame_type(group: Any) -> None:
    """FrameType value 1–2 of the ``*FrameTypeSequence`` items of a functional group: DERIVED\\SECONDARY."""
    for element in group:
        if element.VR == "SQ" and element.keyword.endswith("FrameTypeSequence"):
            for item in element.value:
                if "FrameType" in item:
                    old = [str(v) for v in item.FrameType]
                    item.FrameType = ["DERIVED", "SECONDARY", *old[2:]]


def _write_multi_frame(values: np.ndarray, src: SourceImages, kept: list[int], common: dict[str, Any], path: Path) -> None:
    """One Enhanced (multi-frame) derived image: the source file's functional groups, one
    frame per kept slice in slice order, one rescale in the shared functional group."""
    import pydicom

    ref = src.slices[kept[0]]
    assert ref is not None
    ds = _read_source_header(ref.path)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else pydicom.Dataset()
    per_frame = list(ds.PerFrameFunctionalGroupsSequence) if "PerFrameFunctionalGroupsSequence" in ds else []

    def rescale_of(group: Any) -> tuple[float, float] | None:
        if group is not None and "PixelValueTransformationSequence" in group:
            item = group.PixelValueTransformationSequence[0]
            return float(item.get("RescaleSlope", 1) or 1), float(item.get("RescaleIntercept", 0) or 0)
        return None

    frames = [src.slices[k].frame_index for k in kept]  # type: ignore[union-attr]
    first_group = per_frame[frames[0]] if per_frame else None
    preferred = rescale_of(first_group) or rescale_of(shared) or (1.0, 0.0)
    slope, intercept = choose_rescale(values[:, :, kept], preferred)
    _derive_header(ds, src, ref, common, instance_number=1)
    old_type = [str(v) for v in (ds.get("ImageType") or [])]
    ds.ImageType = ["DERIVED", "SECONDARY", *(old_type[2:4] or ["AXIAL", "NONE"])]
    groups = []
    for f in frames:
        group = per_frame[f] if per_frame else pydicom.Dataset()
        if "PixelValueTransformationSequence" in group:
            del group.PixelValueTransformationSequence  # one rescale, in the shared group
        _set_frame_type(group)
        groups.append(group)
    pvt = pydicom.Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept = _ds_number(slope), _ds_number(intercept)
    pvt.RescaleType = "HU" if src.modality.upper() == "CT" else "US"
    shared.PixelValueTransformationSequence = pydicom.Sequence([pvt])
    _set_frame_type(shared)
    ds.SharedFunctionalGroupsSequence = pydicom.Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence(groups)
    ds.NumberOfFrames = len(frames)
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):  # they live in the groups here
        if keyword in ds:
            del ds[keyword]
    stack = np.stack([_encode_slice(values[:, :, k].T, float(pvt.RescaleSlope), float(pvt.RescaleIntercept)) for k in kept])
    _set_pixel_data(ds, stack)
    _save(ds, ref.sop_class_uid, path)

"""DICOM series discovery and reading.

`scan_dicom_folder` walks a folder tree, reads only the headers (fast), skips what is not a
usable DICOM file (with the reason), groups images into series by SeriesInstanceUID, splits
off frames with another geometry (localizer/scout) and orders the main stack along the slice
normal. `read_dicom_series` then decodes the pixels (in parallel) into a `Volume` with a RAS
affine.

DICOM quirks handled here (each is a test in ``tests/io/test_dicom.py``):
- any file names, nested folders, DICOMDIR files ignored (the tree is scanned directly);
- files without the 128-byte preamble/'DICM' marker, implicit/explicit VR, big endian;
- empty, truncated, non-DICOM files → `SkippedFile` with a reason (a file cut inside its
  header is "truncated", by name, and the series whose UID it still shows carries a warning);
- undecodable slices (damaged JPEG 2000, pixel data cut short, RescaleSlope 0 or implausible)
  are missing slices: interpolated from their neighbours like a gap, with a warning naming the
  file; more than `MAX_MISSING_SLICE_FRACTION` (10 %) of a series missing fails it
  (README "Input handling");
- non-image objects (SR, RTSTRUCT, SEG, PR, RT plan/dose, KOS, PDF…) → ``is_image=False``;
- several geometries in one series (localizer among axials) → main stack + ignored extras;
- order by position along the normal (never InstanceNumber or file name), feet-first,
  oblique; duplicates removed, missing slices / irregular spacing resampled onto an exact
  grid, gantry tilt kept as a sheared affine — each with a warning;
- Enhanced (multi-frame) CT/MR through the functional group sequences;
- per-file / per-frame RescaleSlope/Intercept;
- missing SeriesInstanceUID (anonymised exports): stand-in UID derived from folder + series
  number/description, with a warning.

No patient names or IDs are read into the returned objects.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DicomError
from medseg.io.dicom_fastheader import read_flat_header
from medseg.io.dicom_geometry import StackGeometry, build_stack_geometry, orientation_key
from medseg.io.orientation import lps_to_ras_affine
from medseg.io.volume import Volume, replace_non_finite

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: SOP classes that hold no image to convert (exact UIDs), with a short name for messages.
NON_IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.1.3.10": "DICOMDIR",
    "1.2.840.10008.5.1.4.1.1.66": "raw data",
    "1.2.840.10008.5.1.4.1.1.66.1": "spatial registration",
    "1.2.840.10008.5.1.4.1.1.66.2": "spatial fiducials",
    "1.2.840.10008.5.1.4.1.1.66.3": "deformable registration",
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.66.5": "surface segmentation",
    "1.2.840.10008.5.1.4.1.1.66.6": "tractography",
    "1.2.840.10008.5.1.4.1.1.67": "real world value mapping",
    "1.2.840.10008.5.1.4.1.1.104.1": "encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "encapsulated CDA",
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT",
    "1.2.840.10008.5.1.4.1.1.481.5": "RTPLAN",
}
#: SOP class UID prefixes of non-image families (SR/KOS, presentation states, waveforms, RT).
NON_IMAGE_SOP_PREFIXES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.": "SR",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.9.": "waveform",
    "1.2.840.10008.5.1.4.1.1.481.": "RT object",
}
#: Modalities that are never images, for files whose SOP class is missing.
NON_IMAGE_MODALITIES = {"SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SEG", "PR", "KO", "REG", "DOC", "FID", "PLAN"}
#: Enhanced (multi-frame with functional groups) image SOP classes are recognised by content,
#: not by UID: a PerFrameFunctionalGroupsSequence / SharedFunctionalGroupsSequence.

_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)

#: A series whose undecodable / invalid / unreadable slices exceed this share of its slices
#: fails; up to it they are interpolated from their neighbours like gaps (with a warning).
MAX_MISSING_SLICE_FRACTION = 0.10
#: Largest |RescaleSlope| accepted for CT: HU come from 12-16-bit stored values with slope 1
#: (rarely 0.5-2); a slope beyond 1000 puts values far outside any tissue (-1024..~30000 HU).
MAX_CT_RESCALE_SLOPE = 1e3
#: Largest |RescaleIntercept| accepted for CT (HU).
MAX_CT_RESCALE_INTERCEPT = 1e5
#: Other modalities: the largest rescaled value must stay below this (float32 holds 3.4e38;
#: the margin keeps windowing and network arithmetic finite).
MAX_RESCALED_VALUE = 1e30
_ITEM = 0xFFFEE000
_SEQ_DELIM = 0xFFFEE0DD


# --------------------------------------------------------------------------------------------
# Public data types


@dataclass
class SkippedFile:
    """A file that was not used, and why (e.g. ``'not a DICOM file'``, ``'truncated'``)."""

    path: Path
    reason: str
    #: SeriesInstanceUID read from the file before it broke off ('' if none could be read).
    series_instance_uid: str = ""


def is_damaged(reason: str) -> bool:
    """True when a `SkippedFile` reason says the file is a damaged DICOM file (truncated,
    unreadable, corrupt pixel data, empty...) rather than something that is not DICOM at all
    or a DICOMDIR index: the CLI names damaged files, and only counts the others."""
    return not reason.startswith(("not a DICOM", "DICOMDIR"))


@dataclass
class PixelLayout:
    """How a file's pixel data is stored (enough to decode it without pydicom's parser).

    ``value_offset``/``value_length`` locate a native (uncompressed) Pixel Data value in the
    file; they are None for encapsulated (compressed) or deflated data, which go through
    pydicom's pixel plugins.
    """

    transfer_syntax: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    n_frames: int
    planar_configuration: int = 0
    big_endian: bool = False
    encapsulated: bool = False
    value_offset: int | None = None
    value_length: int | None = None


@dataclass
class DicomFrame:
    """One 2-D image: a single-frame file, or one frame of a multi-frame file.

    Attributes:
        path: the file.
        frame_index: 0-based frame number in a multi-frame file, None for a single-frame file.
        position: ImagePositionPatient (LPS mm) or None if absent.
        orientation: ImageOrientationPatient (6 direction cosines) or None.
        pixel_spacing: PixelSpacing ``(row spacing, column spacing)`` in mm, or None.
        slope, intercept: modality rescale (RescaleSlope/RescaleIntercept), 1/0 if absent.
        instance_number: InstanceNumber (tie-break only; never used for ordering).
        is_localizer: ImageType says LOCALIZER / SCOUT.
        invalid: why the slice's values cannot be used (RescaleSlope 0, implausible rescale);
            such a slice is treated as missing (interpolated), like an undecodable one.
    """

    path: Path
    frame_index: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slope: float = 1.0
    intercept: float = 0.0
    instance_number: int | None = None
    is_localizer: bool = False
    invalid: str | None = None


@dataclass
class DicomFileHeader:
    """What `scan_dicom_folder` keeps of one file's header (no patient-identifying data)."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    series_description: str
    series_number: int | None
    image_type: tuple[str, ...]
    non_image_kind: str | None
    pixels: PixelLayout | None
    frames: list[DicomFrame]
    slice_thickness_mm: float | None = None
    spacing_between_slices_mm: float | None = None
    gantry_tilt_deg: float | None = None


@dataclass
class DicomSeries:
    """One series found by `scan_dicom_folder`.

    Attributes:
        series_instance_uid: the SeriesInstanceUID (a derived ``2.25.…`` stand-in when the
            files have none; a warning says so).
        modality, series_description, series_number: from the headers ('' / None if absent).
        files: the main stack's files, sorted along the slice normal (one file for a
            multi-frame image).
        warnings: everything a user should know (duplicates, gaps, tilt, ignored extras…).
        is_image: False for SR, RTSTRUCT, SEG, PR, RT plan/dose and other non-image objects.
        n_files: number of files carrying this SeriesInstanceUID (main stack + extras).
        ignored: files of this series left out of the main stack, with the reason.
        unreadable: files the scan could not read (truncated...) whose SeriesInstanceUID says
            they belong here; they also appear in `DicomScan.skipped`.
        shape: ``(columns, rows, slices)`` of the volume `read_dicom_series` returns.
        affine: its 4×4 voxel→RAS affine (None for non-image series).
        error: why the series cannot be read (then `read_dicom_series` raises DicomError).
        sop_class: short name of the objects (e.g. 'CT Image Storage', 'SEG').
        frames: the main stack's frames in the order they are stored (internal).
        geometry: the stack geometry (internal).
    """

    series_instance_uid: str
    modality: str
    series_description: str
    series_number: int | None
    files: list[Path]
    warnings: list[str]
    is_image: bool
    n_files: int
    ignored: list[SkippedFile] = field(default_factory=list)
    shape: tuple[int, int, int] | None = None
    affine: np.ndarray | None = None
    error: str | None = None
    sop_class: str = ""
    study_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    frames: list[DicomFrame] = field(default_factory=list, repr=False)
    geometry: StackGeometry | None = field(default=None, repr=False)
    headers: dict[Path, DicomFileHeader] = field(default_factory=dict, repr=False)
    unreadable: list[SkippedFile] = field(default_factory=list, repr=False)

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        """Voxel spacing in mm along (column, row, slice) of the output volume."""
        if self.affine is None:
            return None
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str | None:
        """RAS orientation code of the output volume (e.g. ``'LPS'``), None for non-images."""
        if self.affine is None:
            return None
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    @property
    def label(self) -> str:
        """Short human-readable name: ``'S003 "AX T1" (MR)'``."""
        num = f"S{self.series_number:03d}" if self.series_number is not None else "S-"
        return f'{num} "{self.series_description}" ({self.modality or "?"})'


@dataclass
class DicomScan:
    """Result of `scan_dicom_folder`: the series found and the files skipped."""

    series: list[DicomSeries]
    skipped: list[SkippedFile]

    @property
    def image_series(self) -> list[DicomSeries]:
        """The series holding images (what `read_dicom_series` can read)."""
        return [s for s in self.series if s.is_image]


# --------------------------------------------------------------------------------------------
# Header reading


def _iter_files(root: Path) -> Iterable[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _as_float_list(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        return None
    return arr


def _as_float(value: Any, default: float | None = None) -> float | None:
    if value is None or value == "":
        return default
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if np.isfinite(v) else default


def _as_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(value).strip()


def _get(ds: Any, keyword: str, default: Any = None) -> Any:
    # pydicom converts raw elements lazily; a malformed value raises on access.
    try:
        return ds.get(keyword, default)
    except Exception:  # noqa: BLE001 - any conversion error means "unusable value"
        return default


def _first_item(ds: Any, keyword: str) -> Any:
    seq = _get(ds, keyword)
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


def _functional_group(frame_group: Any, shared: Any, sequence: str, keyword: str) -> Any:
    """Value of `keyword` inside functional group `sequence`: per-frame first, then shared."""
    for group in (frame_group, shared):
        if group is None:
            continue
        item = _first_item(group, sequence)
        if item is not None:
            value = _get(item, keyword)
            if value is not None and value != "":
                return value
    return None


def _non_image_kind(sop_class: str, modality: str) -> str | None:
    if sop_class in NON_IMAGE_SOP_CLASSES:
        return NON_IMAGE_SOP_CLASSES[sop_class]
    for prefix, name in NON_IMAGE_SOP_PREFIXES.items():
        if sop_class.startswith(prefix) and sop_class != "1.2.840.10008.5.1.4.1.1.481.1":  # RT Image is an image
            return name
    if not sop_class and modality in NON_IMAGE_MODALITIES:
        return modality
    return None


def _check_pixel_element(fp: Any, file_size: int, layout: PixelLayout, implicit_vr: bool) -> str | None:
    """Locate the Pixel Data value after the header; return a skip reason if it is damaged.

    `fp` is positioned where pydicom stopped (on the pixel data tag). Sets
    ``layout.value_offset``/``value_length`` for native data.
    """
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return f"truncated: the file ends after {file_size} bytes, before its pixel data"
    endian = ">" if layout.big_endian else "<"
    group, elem = struct.unpack(endian + "HH", head[:4])
    tag = (group << 16) | elem
    if tag not in _PIXEL_TAGS:
        return "no pixel data element"
    vr = head[4:6]
    if not implicit_vr and vr.isalpha() and vr.isupper():
        if len(head) < 12:
            return f"truncated: the file ends after {file_size} bytes, inside the pixel data header"
        (length,) = struct.unpack(endian + "I", head[8:12])
        value_offset = start + 12
    else:  # implicit VR (also files whose meta claims explicit but are not)
        (length,) = struct.unpack(endian + "I", head[4:8])
        value_offset = start + 8
    if length == 0xFFFFFFFF:
        layout.encapsulated = True
        # Walk the fragment items: a truncated file has an item running past EOF or no
        # sequence delimiter. Only item headers are read (a seek per fragment).
        pos = value_offset
        n_items = 0
        while True:
            fp.seek(pos)
            item = fp.read(8)
            if len(item) < 8:
                return "truncated: the compressed pixel data has no end marker"
            g, e, item_len = struct.unpack("<HHI", item)  # encapsulation is always little endian
            item_tag = (g << 16) | e
            if item_tag == _SEQ_DELIM:
                # each frame needs at least one fragment after the basic offset table item
                if n_items - 1 < layout.n_frames:
                    return (f"NumberOfFrames is {layout.n_frames} but the compressed pixel data hold only "
                            f"{max(n_items - 1, 0)} fragment(s): damaged header")
                return None
            n_items += 1
            if item_tag != _ITEM:
                return f"corrupt compressed pixel data (unexpected tag {item_tag:08X} among fragments)"
            pos += 8 + item_len
            if pos > file_size:
                return "truncated: a compressed pixel data fragment runs past the end of the file"
    bits = layout.bits_allocated
    samples = layout.samples_per_pixel
    if layout.photometric == "YBR_FULL_422" and samples == 3:
        samples = 2  # native 4:2:2 stores two values per pixel
    n_values = layout.rows * layout.columns * samples * layout.n_frames
    expected = (n_values * bits + 7) // 8
    if value_offset + min(length, expected) > file_size:
        have = max(file_size - value_offset, 0)
        return f"truncated: pixel data holds {have} of {expected} bytes"
    if length < expected:
        return f"pixel data too short ({length} bytes for {expected} expected from Rows×Columns×frames)"
    layout.value_offset = value_offset
    layout.value_length = length
    return None


def read_dicom_header(path: PathLike, *, fast: bool = True) -> DicomFileHeader | SkippedFile:
    """Read one file's header (no pixel data) into a `DicomFileHeader`, or say why not.

    Args:
        path: the file.
        fast: try `medseg.io.dicom_fastheader` first (pydicom handles what it declines).

    Never raises for a bad file: returns `SkippedFile(path, reason)` instead.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return SkippedFile(path, f"cannot stat file ({exc.strerror or exc})")
    if size == 0:
        return SkippedFile(path, "empty file")
    if path.name.upper() == "DICOMDIR":
        return SkippedFile(path, "DICOMDIR index (the folder tree is scanned directly)")
    try:
        with open(path, "rb") as fp, warnings.catch_warnings():
            if fast:
                flat = read_flat_header(fp)
                if flat is not None:
                    return _header_from_dataset(path, flat, fp, size)
                fp.seek(0)
            # pydicom warns about every oddity it repairs; the scan reports what matters.
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
            except InvalidDicomError:
                # No preamble/'DICM': accept only data that starts like a DICOM data set
                # (group 0002 or 0008 tag, little or big endian), else it is some other file.
                fp.seek(0)
                start = fp.read(4)
                if start[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x08", b"\x00\x02"):
                    return SkippedFile(path, "not a DICOM file (no 'DICM' marker)")
                fp.seek(0)
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            return _header_from_dataset(path, ds, fp, size)
    except (EOFError, struct.error) as exc:
        return SkippedFile(path, f"truncated DICOM header ({type(exc).__name__})")
    except OSError as exc:
        return SkippedFile(path, f"unreadable file ({exc.strerror or exc})")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds of errors on bad input
        msg = str(exc).splitlines()[0][:200] if str(exc) else ""
        return SkippedFile(path, f"unreadable DICOM ({type(exc).__name__}: {msg})")


def _header_from_dataset(path: Path, ds: Any, fp: Any, size: int) -> DicomFileHeader | SkippedFile:
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    ts = _text(_get(meta, "TransferSyntaxUID")) if meta is not None else ""
    if not ts:
        # No meta: pydicom guessed the encoding while reading.
        implicit, little = getattr(ds, "original_encoding", (True, True))
        implicit = True if implicit is None else implicit
        little = True if little is None else little
        ts = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
    uid = UID(ts)
    sop_class = _text(_get(ds, "SOPClassUID")) or (_text(_get(meta, "MediaStorageSOPClassUID")) if meta is not None else "")
    if sop_class == "1.2.840.10008.1.3.10" or "DirectoryRecordSequence" in ds:
        return SkippedFile(path, "DICOMDIR index (the folder tree is scanned directly)")
    modality = _text(_get(ds, "Modality")).upper()
    if not sop_class and not modality and "SeriesInstanceUID" not in ds and "Rows" not in ds:
        return SkippedFile(path, "not a DICOM image or object (no SOP class, modality or series)")
    sop_instance = _text(_get(ds, "SOPInstanceUID")) or (_text(_get(meta, "MediaStorageSOPInstanceUID")) if meta is not None else "")
    raw_type = _get(ds, "ImageType") or ()
    image_type = tuple(_text(v).upper() for v in ([raw_type] if isinstance(raw_type, str) else raw_type) if v is not None)
    header = DicomFileHeader(
        path=path,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        series_instance_uid=_text(_get(ds, "SeriesInstanceUID")),
        study_instance_uid=_text(_get(ds, "StudyInstanceUID")),
        frame_of_reference_uid=_text(_get(ds, "FrameOfReferenceUID")),
        modality=modality,
        series_description=_text(_get(ds, "SeriesDescription")),
        series_number=_as_int(_get(ds, "SeriesNumber")),
        image_type=image_type,
        non_image_kind=_non_image_kind(sop_class, modality),
        pixels=None,
        frames=[],
        slice_thickness_mm=_as_float(_get(ds, "SliceThickness")),
        spacing_between_slices_mm=_as_float(_get(ds, "SpacingBetweenSlices")),
        gantry_tilt_deg=_as_float(_get(ds, "GantryDetectorTilt")),
    )
    if header.non_image_kind is not None:
        return header
    rows, cols = _as_int(_get(ds, "Rows")), _as_int(_get(ds, "Columns"))
    if not rows or not cols:
        sop_name = _sop_class_name(sop_class)
        if "Image Storage" in sop_name and _at_end(fp, size):
            # An image object whose data set stops before Rows/Columns or its pixel data: a
            # file cut short (copy interrupted, partial download), not an object without pixels.
            return SkippedFile(
                path,
                f"truncated: the file ends after {size} bytes, inside its header ({sop_name}, no pixel data)",
                header.series_instance_uid,
            )
        header.non_image_kind = "no pixel data"
        return header
    bits_allocated = _as_int(_get(ds, "BitsAllocated")) or 16
    layout = PixelLayout(
        transfer_syntax=str(uid),
        rows=rows,
        columns=cols,
        samples_per_pixel=_as_int(_get(ds, "SamplesPerPixel")) or 1,
        bits_allocated=bits_allocated,
        bits_stored=_as_int(_get(ds, "BitsStored")) or bits_allocated,
        pixel_representation=_as_int(_get(ds, "PixelRepresentation")) or 0,
        photometric=_text(_get(ds, "PhotometricInterpretation")).upper() or "MONOCHROME2",
        n_frames=max(_as_int(_get(ds, "NumberOfFrames")) or 1, 1),
        planar_configuration=_as_int(_get(ds, "PlanarConfiguration")) or 0,
        big_endian=(uid == "1.2.840.10008.1.2.2"),
    )
    implicit = uid == "1.2.840.10008.1.2"
    if uid.is_deflated:
        layout.encapsulated = False  # pydicom inflates it; no byte offsets to use
        reason = None
    else:
        reason = _check_pixel_element(fp, size, layout, implicit)
    if reason is not None:
        return SkippedFile(path, reason, header.series_instance_uid)
    header.pixels = layout
    header.frames = _frames_from_dataset(path, ds, layout, image_type, modality)
    return header


def _at_end(fp: Any, size: int) -> bool:
    """True when the header reader stopped at the end of the file (nothing left to read)."""
    try:
        return fp.tell() >= size or not fp.read(8)
    except (OSError, ValueError):
        return True


def _rescale(slope_value: Any, intercept_value: Any, layout: PixelLayout, modality: str) -> tuple[float, float, str | None]:
    """``(slope, intercept, why invalid or None)`` of a slice's modality rescale.

    Absent values mean slope 1 / intercept 0. A slope of 0 (every value becomes the intercept),
    a value that is not a finite number, and an implausible rescale (CT: |slope| above
    `MAX_CT_RESCALE_SLOPE` or |intercept| above `MAX_CT_RESCALE_INTERCEPT`; other modalities:
    values beyond `MAX_RESCALED_VALUE`) make the slice invalid: it is read as a missing slice.
    """
    def number(value: Any, default: float, name: str) -> tuple[float, str | None]:
        if value is None or value == "":
            return default, None
        try:
            v = float(value)
        except (TypeError, ValueError):
            return default, f"{name} {str(value)[:40]!r} is not a number"
        if not np.isfinite(v):
            return default, f"{name} is {v}"
        return v, None

    slope, bad_slope = number(slope_value, 1.0, "RescaleSlope")
    intercept, bad_intercept = number(intercept_value, 0.0, "RescaleIntercept")
    why = bad_slope or bad_intercept
    if why is None and slope == 0.0:
        why = "RescaleSlope is 0 (every pixel would have the intercept's value)"
    if why is None and modality == "CT":
        if abs(slope) > MAX_CT_RESCALE_SLOPE:
            why = f"RescaleSlope {slope:g} is implausible for CT (|slope| > {MAX_CT_RESCALE_SLOPE:g})"
        elif abs(intercept) > MAX_CT_RESCALE_INTERCEPT:
            why = f"RescaleIntercept {intercept:g} is implausible for CT (|intercept| > {MAX_CT_RESCALE_INTERCEPT:g} HU)"
    if why is None:
        largest = abs(slope) * float(1 << min(layout.bits_stored, 64)) + abs(intercept)
        if largest > MAX_RESCALED_VALUE:
            why = f"RescaleSlope {slope:g} / RescaleIntercept {intercept:g} give values up to {largest:.3g} (> {MAX_RESCALED_VALUE:g})"
    return slope, intercept, why


def _frames_from_dataset(
    path: Path, ds: Any, layout: PixelLayout, image_type: tuple[str, ...], modality: str = ""
) -> list[DicomFrame]:
    is_localizer = any(t in ("LOCALIZER", "SCOUT", "TOPOGRAM") for t in image_type)
    instance = _as_int(_get(ds, "InstanceNumber"))
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    if per_frame is not None or shared is not None:  # Enhanced CT/MR/PET… (functional groups)
        n = layout.n_frames
        frames = []
        for f in range(n):
            fg = per_frame[f] if per_frame is not None and f < len(per_frame) else None
            pos = _functional_group(fg, shared, "PlanePositionSequence", "ImagePositionPatient")
            ori = _functional_group(fg, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
            spacing = _functional_group(fg, shared, "PixelMeasuresSequence", "PixelSpacing")
            slope = _functional_group(fg, shared, "PixelValueTransformationSequence", "RescaleSlope")
            intercept = _functional_group(fg, shared, "PixelValueTransformationSequence", "RescaleIntercept")
            frame_type = _functional_group(fg, shared, "FrameContentSequence", "FrameType") or ()
            # Top-level values are allowed fallbacks (some converters put them there).
            pos = pos if pos is not None else _get(ds, "ImagePositionPatient")
            ori = ori if ori is not None else _get(ds, "ImageOrientationPatient")
            spacing = spacing if spacing is not None else _get(ds, "PixelSpacing")
            slope = slope if slope is not None else _get(ds, "RescaleSlope")
            intercept = intercept if intercept is not None else _get(ds, "RescaleIntercept")
            ps = _as_float_list(spacing, 2) if spacing is not None else None
            slope_f, intercept_f, invalid = _rescale(slope, intercept, layout, modality)
            frames.append(
                DicomFrame(
                    path=path,
                    frame_index=f,
                    position=_as_float_list(pos, 3) if pos is not None else None,
                    orientation=_as_float_list(ori, 6) if ori is not None else None,
                    pixel_spacing=(float(ps[0]), float(ps[1])) if ps is not None else None,
                    slope=slope_f,
                    intercept=intercept_f,
                    instance_number=instance,
                    is_localizer=is_localizer or "LOCALIZER" in {str(t).upper() for t in frame_type},
                    invalid=invalid,
                )
            )
        return frames
    pos, ori, spacing = _get(ds, "ImagePositionPatient"), _get(ds, "ImageOrientationPatient"), _get(ds, "PixelSpacing")
    ps = _as_float_list(spacing, 2) if spacing is not None else None
    slope_f, intercept_f, invalid = _rescale(_get(ds, "RescaleSlope"), _get(ds, "RescaleIntercept"), layout, modality)
    common = dict(
        position=_as_float_list(pos, 3) if pos is not None else None,
        orientation=_as_float_list(ori, 6) if ori is not None else None,
        pixel_spacing=(float(ps[0]), float(ps[1])) if ps is not None else None,
        slope=slope_f,
        intercept=intercept_f,
        instance_number=instance,
        is_localizer=is_localizer,
        invalid=invalid,
    )
    if layout.n_frames == 1:
        return [DicomFrame(path=path, frame_index=None, **common)]
    # Classic multi-frame (e.g. NM, US cine) without functional groups: frames share one
    # position, so there is no 3-D geometry; they are stacked with a placeholder spacing.
    return [DicomFrame(path=path, frame_index=f, **{**common, "position": None}) for f in range(layout.n_frames)]


# --------------------------------------------------------------------------------------------
# Grouping into series


def derived_uid(key: str) -> str:
    """A deterministic UUID-derived UID (``2.25.<int>``) for `key` (stand-ins for blank UIDs)."""
    import hashlib
    import uuid

    return "2.25." + str(uuid.UUID(bytes=hashlib.sha256(key.encode("utf-8")).digest()[:16]).int)


def scan_dicom_folder(root: PathLike, progress: bool = False) -> DicomScan:
    """Find the DICOM series under `root` (a folder tree or a single file), headers only.

    Args:
        root: folder (searched recursively, any file names) or one DICOM file.
        progress: show a progress bar on stderr (tqdm).

    Returns:
        `DicomScan` with the series (image series first, then by series number) and the
        skipped files with their reasons.

    Raises:
        InputError: `root` does not exist.
    """
    from medseg.errors import InputError

    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    paths = list(_iter_files(root))
    if progress:
        from tqdm import tqdm

        paths_iter: Iterable[Path] = tqdm(paths, desc="reading DICOM headers", unit="file", leave=False)
    else:
        paths_iter = paths
    headers: list[DicomFileHeader] = []
    skipped: list[SkippedFile] = []
    for p in paths_iter:
        h = read_dicom_header(p)
        (skipped if isinstance(h, SkippedFile) else headers).append(h)  # type: ignore[arg-type]
    for s in skipped:
        log.debug("skipped %s: %s", s.path, s.reason)
    series = group_into_series(headers)
    by_uid = {s.series_instance_uid: s for s in series}
    for k in skipped:
        owner = by_uid.get(k.series_instance_uid) if k.series_instance_uid else None
        if owner is not None:
            # the file belonged to this series: its slice is missing (a gap the reader fills)
            owner.unreadable.append(k)
            owner.warnings.append(f"file {k.path.name} of this series is unreadable ({k.reason}): its slice is missing")
    return DicomScan(series=series, skipped=skipped)


def group_into_series(headers: list[DicomFileHeader]) -> list[DicomSeries]:
    """Group file headers into `DicomSeries` (by SeriesInstanceUID) and plan each stack."""
    groups: dict[str, list[DicomFileHeader]] = defaultdict(list)
    stand_ins: dict[str, str] = {}
    for h in headers:
        key = h.series_instance_uid
        if not key:
            # Anonymisers sometimes blank the UIDs: fall back on what identifies a series
            # in practice, within one folder.
            fallback = "|".join(
                [str(h.path.parent.resolve()), str(h.series_number), h.series_description, h.modality, h.frame_of_reference_uid]
            )
            key = stand_ins.setdefault(fallback, derived_uid(fallback))
            stand_ins[key] = fallback
        groups[key].append(h)
    result = []
    for uid, members in groups.items():
        members.sort(key=lambda h: str(h.path))
        series = _plan_series(uid, members)
        if not members[0].series_instance_uid:
            series.warnings.insert(
                0,
                f"no SeriesInstanceUID in the files: grouped by folder + series number/description (stand-in UID {uid})",
            )
        result.append(series)
    result.sort(key=lambda s: (not s.is_image, s.series_number if s.series_number is not None else 1 << 30, s.series_description, s.series_instance_uid))
    return result


def _most_common(values: Iterable[Any]) -> Any:
    counts: dict[Any, int] = defaultdict(int)
    for v in values:
        counts[v] += 1
    return max(counts, key=lambda k: counts[k]) if counts else None


def _sop_class_name(uid: str) -> str:
    try:
        from pydicom.uid import UID

        name = UID(uid).name
        return name if name != uid else uid
    except Exception:  # noqa: BLE001
        return uid


def _plan_series(uid: str, members: list[DicomFileHeader]) -> DicomSeries:
    first = members[0]
    series = DicomSeries(
        series_instance_uid=uid,
        modality=_most_common(h.modality for h in members) or "",
        series_description=_most_common(h.series_description for h in members) or "",
        series_number=_most_common(h.series_number for h in members),
        files=[],
        warnings=[],
        is_image=False,
        n_files=len(members),
        sop_class=_sop_class_name(_most_common(h.sop_class_uid for h in members) or ""),
        study_instance_uid=first.study_instance_uid,
        frame_of_reference_uid=_most_common(h.frame_of_reference_uid for h in members) or "",
        headers={h.path: h for h in members},
    )
    images = [h for h in members if h.non_image_kind is None and h.pixels is not None]
    others = [h for h in members if h.non_image_kind is not None or h.pixels is None]
    if not images:
        kind = _most_common(h.non_image_kind for h in members) or "non-image"
        series.files = [h.path for h in members]
        series.sop_class = kind if kind else series.sop_class
        series.warnings.append(f"not an image series ({kind}): nothing to convert")
        return series
    series.is_image = True
    for h in others:
        series.ignored.append(SkippedFile(h.path, f"non-image object ({h.non_image_kind}) in an image series"))

    # Split by geometry: orientation, matrix size, pixel spacing, pixel format, localizer flag.
    def geometry_key(fr: DicomFrame) -> tuple:
        lay = series.headers[fr.path].pixels
        assert lay is not None
        ps = None if fr.pixel_spacing is None else (round(fr.pixel_spacing[0], 4), round(fr.pixel_spacing[1], 4))
        return (
            orientation_key(fr.orientation),
            lay.rows,
            lay.columns,
            ps,
            lay.samples_per_pixel,
            fr.is_localizer,
            fr.position is None,
        )

    by_geometry: dict[tuple, list[DicomFrame]] = defaultdict(list)
    for h in images:
        for fr in h.frames:
            by_geometry[geometry_key(fr)].append(fr)

    def rank(key: tuple) -> tuple:
        frames = by_geometry[key]
        # Most frames wins; never a localizer or a geometry-less group if another exists.
        return (not key[5], not key[6], len(frames))

    main_key = max(by_geometry, key=rank)
    main = by_geometry[main_key]
    extra_files: dict[Path, str] = {}
    for key, frames in by_geometry.items():
        if key == main_key:
            continue
        why = "localizer/scout" if key[5] else "another orientation, size or pixel spacing"
        for fr in frames:
            extra_files.setdefault(fr.path, f"different geometry from the main stack ({why}): ignored")
    main_paths = {fr.path for fr in main}
    for p, reason in extra_files.items():
        if p not in main_paths:
            series.ignored.append(SkippedFile(p, reason))
    if extra_files:
        n_extra = len([p for p in extra_files if p not in main_paths])
        series.warnings.append(f"{n_extra} file(s) with another geometry ignored (e.g. localizer); main stack: {len(main)} image(s)")
    series.frames = main
    _plan_stack(series, main)
    return series


def _plan_stack(series: DicomSeries, frames: list[DicomFrame]) -> None:
    layout = series.headers[frames[0].path].pixels
    assert layout is not None
    h0 = series.headers[frames[0].path]
    labels = [fr.path.name + (f"#{fr.frame_index + 1}" if fr.frame_index is not None else "") for fr in frames]
    if frames[0].position is None or frames[0].orientation is None:
        # No patient geometry (secondary capture, classic multi-frame): stack in file/frame
        # order with a placeholder grid, and say so loudly.
        ps = frames[0].pixel_spacing or (1.0, 1.0)
        order = sorted(range(len(frames)), key=lambda i: (frames[i].instance_number or 0, str(frames[i].path), frames[i].frame_index or 0))
        aff = np.diag([ps[1], ps[0], h0.spacing_between_slices_mm or h0.slice_thickness_mm or 1.0, 1.0])
        series.geometry = StackGeometry(order, [], aff, len(order), None, float(aff[2, 2]))
        series.warnings.append(
            "no patient geometry (no ImagePositionPatient/ImageOrientationPatient): slices in InstanceNumber "
            "order, placeholder affine"
        )
    else:
        if frames[0].pixel_spacing is None:
            series.warnings.append("no PixelSpacing: 1 mm assumed in-plane")
        orientation = frames[0].orientation
        try:
            geo = build_stack_geometry(
                np.stack([fr.position for fr in frames]),  # type: ignore[misc]
                orientation,
                frames[0].pixel_spacing or (1.0, 1.0),
                tie_break=[(fr.instance_number if fr.instance_number is not None else 1 << 30, str(fr.path), fr.frame_index or 0) for fr in frames],
                fallback_slice_spacing_mm=h0.spacing_between_slices_mm or h0.slice_thickness_mm,
                labels=labels,
            )
        except ValueError as exc:
            series.error = str(exc)
            series.warnings.append(str(exc))
            series.files = sorted({fr.path for fr in frames}, key=str)
            return
        series.geometry = geo
        series.warnings.extend(geo.warnings)
        if geo.tilt_deg == 0.0 and h0.gantry_tilt_deg and abs(h0.gantry_tilt_deg) > 0.05:
            series.warnings.append(
                f"GantryDetectorTilt is {h0.gantry_tilt_deg:g}° but the slice positions show no shear: positions used"
            )
    geo = series.geometry
    kept = [frames[i] for i in geo.order]
    files: list[Path] = []
    seen: set[Path] = set()
    for fr in kept:
        if fr.path not in seen:
            seen.add(fr.path)
            files.append(fr.path)
    series.files = files
    for i in geo.duplicates:
        if frames[i].path not in seen:
            series.ignored.append(SkippedFile(frames[i].path, "duplicate slice position: ignored"))
    series.shape = (layout.columns, layout.rows, geo.n_slices)
    series.affine = lps_to_ras_affine(geo.affine_lps)


# --------------------------------------------------------------------------------------------
# Reading pixels


def _select_series(path: Path, series_uid: str | None) -> DicomSeries:
    scan = scan_dicom_folder(path)
    images = scan.image_series
    if series_uid is not None:
        for s in scan.series:
            if s.series_instance_uid == series_uid:
                if not s.is_image:
                    raise DicomError(f"{path}: series {series_uid} is not an image series ({s.sop_class})")
                return s
        listing = ", ".join(f"{s.label} uid={s.series_instance_uid}" for s in images) or "none"
        raise DicomError(f"{path}: no series with SeriesInstanceUID {series_uid}; image series found: {listing}")
    if not images:
        reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in scan.skipped[:5])
        extra = f" (skipped: {reasons})" if reasons else ""
        non_images = ", ".join(s.label for s in scan.series)
        if non_images:
            extra += f" (non-image series: {non_images})"
        raise DicomError(f"{path}: no DICOM image series found{extra}")
    if len(images) > 1:
        listing = "\n".join(f"  {s.label} {s.n_files} file(s) uid={s.series_instance_uid}" for s in images)
        raise DicomError(
            f"{path}: holds {len(images)} image series; pick one by SeriesInstanceUID "
            f"(e.g. `load_volume(path, series_uid=...)`) or convert them all with `medseg convert`:\n{listing}"
        )
    return images[0]


def read_dicom_series(
    series: DicomSeries | PathLike,
    *,
    series_uid: str | None = None,
    threads: int | None = None,
    processes: int = 0,
) -> Volume:
    """Decode a DICOM series into a `Volume` (RAS affine, rescaled values).

    Args:
        series: a `DicomSeries` from `scan_dicom_folder`, or a folder/file path holding one
            image series.
        series_uid: with a path, the SeriesInstanceUID to read when several are there.
        threads: decoding threads (default: a few per CPU core; 1 disables the pool).
        processes: decode compressed series (8+ files) in that many worker processes; the
            JPEG 2000/JPEG-LS/JPEG decoders hold the GIL, so threads do not speed them up.
            0 (default) keeps everything in this process.

    Returns:
        Volume with ``array[i, j, k]`` = (column, row, slice along the normal); integer
        dtype when the rescale is integral (e.g. int16 HU for CT), float32 otherwise. `meta`
        holds ``modality``, ``series_instance_uid``, ``series_description``,
        ``series_number``, ``source_files`` (files in k order, or the multi-frame file),
        ``source_frames`` (per slice ``[file index, frame index or None]``, or None for a
        slice interpolated between neighbours), ``warnings`` and ``format='dicom'``.

    Undecodable or invalid slices (damaged compressed data, RescaleSlope 0 or implausible)
    are missing slices: interpolated from their neighbours with a warning naming the file,
    up to `MAX_MISSING_SLICE_FRACTION` of the series. NaN/±Inf values follow
    `medseg.io.volume.replace_non_finite` (finite minimum, warning; refused above 10 %).

    Raises:
        DicomError: no/several image series at the path, an inconsistent stack, or more than
            10 % of the slices undecodable (the message names the files and the decoder needed).
        InputError: no finite voxel, or more than 10 % non-finite.
    """
    from medseg.io.dicom_pixels import decode_stack

    if not isinstance(series, DicomSeries):
        series = _select_series(Path(series), series_uid)
    if not series.is_image:
        raise DicomError(f"series {series.label} uid={series.series_instance_uid} is not an image series ({series.sop_class})")
    if series.error is not None or series.geometry is None:
        raise DicomError(f"series {series.label} uid={series.series_instance_uid}: {series.error or 'no geometry'}")
    geo = series.geometry
    kept = [series.frames[i] for i in geo.order]
    _check_declared_size(series, len(kept))
    failures: dict[int, str] = {}
    stack = decode_stack(kept, series.headers, threads=threads, processes=processes, failures=failures)  # (n_kept, rows, cols[, s])
    warnings_out = list(series.warnings)
    if failures or series.unreadable:
        warnings_out += _fill_missing_slices(series, kept, stack, failures)
    if geo.interpolation is not None:
        stack = _interpolate_slices(stack, geo.interpolation)
    array = np.moveaxis(stack, (0, 1, 2), (2, 1, 0)) if stack.ndim == 4 else stack.transpose(2, 1, 0)
    array, repaired = replace_non_finite(array, f"series {series.label} uid={series.series_instance_uid}")
    if repaired is not None:
        log.warning("%s: %s", series.label, repaired)
        warnings_out.append(repaired)

    file_index = {p: n for n, p in enumerate(series.files)}
    if geo.interpolation is None:
        source_frames: list[Any] = [None if k in failures else [file_index[fr.path], fr.frame_index] for k, fr in enumerate(kept)]
    else:
        source_frames = [
            [file_index[kept[a].path], kept[a].frame_index] if a == b and a not in failures else None
            for a, b, _ in geo.interpolation
        ]
    meta = {
        "format": "dicom",
        "modality": series.modality,
        "series_instance_uid": series.series_instance_uid,
        "series_description": series.series_description,
        "series_number": series.series_number,
        "study_instance_uid": series.study_instance_uid,
        "frame_of_reference_uid": series.frame_of_reference_uid,
        "sop_class": series.sop_class,
        "source_files": [str(p) for p in series.files],
        "source_frames": source_frames,
        "source_headers": _source_headers(series),
        "warnings": warnings_out,
    }
    for w in series.warnings:  # returned in meta["warnings"]; callers decide how loud to be
        log.info("%s: %s", series.label, w)
    return Volume(array, lps_to_ras_affine(geo.affine_lps), meta)


def _check_declared_size(series: DicomSeries, n_frames: int) -> None:
    """Refuse a stack whose declared size (Rows × Columns × slices) exceeds this machine's memory.

    Compressed pixel data reveal their real size only when decoded, and a damaged or hostile
    header can declare 65535 × 65535 pixels: the output array would be allocated first.
    """
    layout = series.headers[series.frames[0].path].pixels
    assert layout is not None
    n_bytes = n_frames * layout.rows * layout.columns * layout.samples_per_pixel * 4  # up to float32
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no limit known
        return
    if n_bytes > 0.8 * memory:
        raise DicomError(
            f"series {series.label} uid={series.series_instance_uid}: the headers declare {n_frames} slice(s) of "
            f"{layout.rows}×{layout.columns} pixels ({n_bytes / 2**30:.1f} GiB decoded), more than this machine's "
            f"memory ({memory / 2**30:.1f} GiB); the Rows/Columns tags are probably damaged"
        )


def _fill_missing_slices(series: DicomSeries, kept: list[DicomFrame], stack: np.ndarray, failures: dict[int, str]) -> list[str]:
    """medseg's rule for undecodable/invalid slices: a missing slice, interpolated like a gap.

    Fills ``stack[k]`` of every failed slot k in place by linear interpolation (along the
    slice normal) between the nearest decoded slices on either side (the nearest one at an
    end of the stack), and returns the warnings naming the files.

    Raises:
        DicomError: more than `MAX_MISSING_SLICE_FRACTION` of the series' slices are
            missing (undecodable, invalid, or in files the scan could not read), or none
            could be decoded; the message names the first files and why.
    """
    n_missing = len(failures) + len(series.unreadable)
    n_total = len(kept) + len(series.unreadable)
    bad_files: dict[Path, str] = {}
    for k in sorted(failures):
        bad_files.setdefault(kept[k].path, " ".join(failures[k].split()))  # one line per reason
    for k in series.unreadable:
        bad_files.setdefault(k.path, k.reason)
    by_reason: dict[str, list[str]] = defaultdict(list)
    for p, why in bad_files.items():
        by_reason[why].append(p.name)
    listing = "; ".join(
        f"{', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''}: {why}"
        for why, names in by_reason.items()
    )
    more = ""
    name = f"series {series.label} uid={series.series_instance_uid}"
    good = [k for k in range(len(kept)) if k not in failures]
    if not good or n_missing > MAX_MISSING_SLICE_FRACTION * n_total:
        raise DicomError(
            f"{name}: {n_missing} of {n_total} slice(s) cannot be used, more than the "
            f"{100 * MAX_MISSING_SLICE_FRACTION:g} % medseg interpolates ({listing}{more}); "
            "re-export the series or remove the damaged files"
        )
    if kept[0].position is not None and kept[0].orientation is not None and all(fr.position is not None for fr in kept):
        from medseg.io.dicom_geometry import slice_normal

        normal = slice_normal(kept[0].orientation)
        where = np.array([float(np.dot(fr.position, normal)) for fr in kept])
    else:
        where = np.arange(len(kept), dtype=np.float64)
    good_arr = np.array(good)
    integer = np.issubdtype(stack.dtype, np.integer)
    for k in sorted(failures):
        i = int(np.searchsorted(good_arr, k))
        lo = good_arr[i - 1] if i > 0 else None
        hi = good_arr[i] if i < len(good_arr) else None
        if lo is None or hi is None or where[hi] == where[lo]:
            stack[k] = stack[hi if lo is None else lo]
            continue
        w = float((where[k] - where[lo]) / (where[hi] - where[lo]))
        v = (1.0 - w) * stack[lo].astype(np.float32) + w * stack[hi].astype(np.float32)
        stack[k] = np.rint(v) if integer else v
    if not failures:
        return []
    out = [
        f"{len(failures)} slice(s) could not be used and were interpolated from their neighbours "
        f"like missing slices ({listing}{more})"
    ]
    for p, why in bad_files.items():
        log.warning("%s: %s: %s (slice interpolated)", series.label, p, why)
    return out


def _source_headers(series: DicomSeries) -> list[dict[str, Any]] | None:
    """What a DICOM SEG needs of each source file besides the first, from the scan's headers.

    `medseg.io.seg` builds the SEG's references and plane positions from these instead of
    parsing every header again with pydicom (a full parse per file adds up over a long series).
    One entry per file of ``source_files``; None for a multi-frame image or
    when a file lacks its header or geometry (the SEG writer then reads the files).
    """
    out = []
    for path in series.files:
        h = series.headers.get(path)
        if h is None or h.pixels is None or len(h.frames) != 1 or h.frames[0].frame_index is not None:
            return None
        fr = h.frames[0]
        if fr.position is None or fr.orientation is None or fr.pixel_spacing is None:
            return None
        out.append({
            "SOPClassUID": h.sop_class_uid, "SOPInstanceUID": h.sop_instance_uid,
            "StudyInstanceUID": h.study_instance_uid, "SeriesInstanceUID": h.series_instance_uid,
            "FrameOfReferenceUID": h.frame_of_reference_uid, "Rows": h.pixels.rows, "Columns": h.pixels.columns,
            "ImagePositionPatient": [float(v) for v in fr.position],
            "ImageOrientationPatient": [float(v) for v in fr.orientation],
            "PixelSpacing": [float(v) for v in fr.pixel_spacing],
        })
    return out


def _interpolate_slices(stack: np.ndarray, plan: list[tuple[int, int, float]]) -> np.ndarray:
    out = np.empty((len(plan),) + stack.shape[1:], dtype=stack.dtype)
    integer = np.issubdtype(stack.dtype, np.integer)
    for k, (a, b, w) in enumerate(plan):
        if a == b or w == 0.0:
            out[k] = stack[a]
        elif w == 1.0:
            out[k] = stack[b]
        else:
            v = (1.0 - w) * stack[a].astype(np.float32) + w * stack[b].astype(np.float32)
            out[k] = np.rint(v) if integer else v
    return out

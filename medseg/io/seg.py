"""DICOM SEG writing and reading (highdicom), on the grid of a source DICOM series.

`write_dicom_seg` turns an integer label map on a `Volume` read by `read_dicom_series` into a
BINARY (or highdicom's LABELMAP) DICOM Segmentation that references the source images frame by frame, so viewers and
PACS overlay it on the series. `read_dicom_seg` maps a SEG's frames back onto a reference
volume's grid by their positions (so it works for SEGs written by other tools too, as long as
their frames lie on the reference grid's planes).

Built with highdicom's public `Segmentation` class; where the installed highdicom and pydicom
are the versions `medseg.io.seg_fast` was tested with, its faster, byte-identical path is used
(a subclass and a pre-encoded sequence; nothing in either library is patched).

Label values are kept through the round trip: a SEG numbers its segments 1..N, so each
segment also carries ``TrackingID = "medseg label <value>"`` (with a TrackingUID), which
`read_dicom_seg` uses to restore the original value.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DicomError, GeometryError, InputError
from medseg.io.atomic import atomic_path
from medseg.io import seg_fast
from medseg.io.orientation import ras_to_lps_affine
from medseg.runtime import gc_paused
from medseg.io.volume import Volume, box_copy, foreground_box, label_values_present

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
_TRACKING = re.compile(r"^medseg label (\d+)$")


def _fill_missing_uids(ds: Any, volume: Volume, index: int) -> None:
    """Anonymised exports may blank UIDs that a SEG must reference: derive stable stand-ins."""
    from medseg.io.dicom import derived_uid

    meta = getattr(ds, "file_meta", None)
    if not str(ds.get("SOPClassUID", "") or "") and meta is not None and meta.get("MediaStorageSOPClassUID"):
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
    if not str(ds.get("SOPInstanceUID", "") or ""):
        if meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        else:
            ds.SOPInstanceUID = derived_uid(f"sop|{volume.meta.get('series_instance_uid', '')}|{index}")
    if not str(ds.get("SeriesInstanceUID", "") or ""):
        ds.SeriesInstanceUID = volume.meta.get("series_instance_uid") or derived_uid(f"series|{ds.SOPInstanceUID}")
    if not str(ds.get("StudyInstanceUID", "") or ""):
        ds.StudyInstanceUID = volume.meta.get("study_instance_uid") or derived_uid(f"study|{ds.SeriesInstanceUID}")
    if not str(ds.get("FrameOfReferenceUID", "") or ""):
        ds.FrameOfReferenceUID = volume.meta.get("frame_of_reference_uid") or derived_uid(f"for|{ds.SeriesInstanceUID}")


def _source_datasets(source: Volume) -> tuple[list[Any], list[Any]]:
    import pydicom

    files = source.meta.get("source_files")
    frames = source.meta.get("source_frames")
    if not files or frames is None:
        raise DicomError(
            "write_dicom_seg needs the Volume returned by read_dicom_series (its meta lacks "
            "'source_files'/'source_frames'); a DICOM SEG can only reference DICOM source images"
        )
    headers = source.meta.get("source_headers")
    if not headers or len(headers) != len(files):
        headers = None
    datasets = []
    for n, f in enumerate(files):
        if n and headers is not None:
            # highdicom reads only UIDs, size and geometry of the images after the first (it
            # copies patient, study and equipment from the first): the scan's values, no
            # pydicom parse (same SEG: tests/io/test_seg.py)
            ds = pydicom.Dataset()
            for keyword, value in headers[n].items():
                setattr(ds, keyword, value)
        else:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception as exc:  # noqa: BLE001
                raise DicomError(f"{f}: cannot re-read source DICOM header for the SEG ({exc})") from exc
        _fill_missing_uids(ds, source, n)
        datasets.append(ds)
    return datasets, frames


def _label_values_present(labels: np.ndarray) -> list[int]:
    """`label_values_present`, its errors as `DicomError` (the SEG writer's error family)."""
    try:
        return label_values_present(labels)
    except InputError as exc:
        raise DicomError(str(exc)) from exc


def write_dicom_seg(
    labels: np.ndarray,
    source: Volume,
    label_names: dict[int, str],
    path: PathLike,
    *,
    algorithm_name: str = "medseg",
    algorithm_version: str | None = None,
    values: list[int] | None = None,
    seg_type: str = "binary",
    fast: bool | None = None,
) -> Path:
    """Write an integer label map as a DICOM SEG referencing `source`'s DICOM images.

    Args:
        labels: integer array on `source`'s grid (shape ``source.shape``), 0 = background.
        source: the image as returned by `read_dicom_series` (its meta names the source files
            and which file/frame each slice came from).
        label_names: label value → segment name. Values present in `labels` but missing here
            are written as ``"label <value>"``; names of absent values still become (empty)
            segments, so a SEG always lists the model's classes.
        path: output file (written atomically).
        algorithm_name, algorithm_version: recorded in each segment's algorithm identification.
        values: the label values present in `labels`, or any superset of them, when the
            caller knows them (saves counting them again; values not present become empty
            segments, as absent values of `label_names` do).
        seg_type: ``"binary"`` (one 1-bit frame per segment and source slice: what every
            viewer reads) or ``"labelmap"`` (highdicom's LABELMAP SEG: one frame per source
            slice holding segment numbers; many times smaller, newer viewers only).
        fast: use `medseg.io.seg_fast` (None: where it was tested with the installed
            highdicom/pydicom; False: highdicom's public class and pydicom's writer only).

    Returns:
        `path`.

    Raises:
        GeometryError: `labels` does not have `source`'s shape.
        DicomError: `source` did not come from DICOM, or there is no label to write at all
            (neither a value in `labels` nor a name in `label_names`).
        InputError: `seg_type` is neither "binary" nor "labelmap".
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medseg import __version__

    kinds = {"binary": hd.seg.SegmentationTypeValues.BINARY, "labelmap": hd.seg.SegmentationTypeValues.LABELMAP}
    if seg_type not in kinds:
        raise InputError(f"seg_type {seg_type!r}: expected 'binary' or 'labelmap'")
    use_fast = seg_fast.tested_versions() if fast is None else bool(fast)
    labels = np.asarray(labels)
    if labels.shape[:3] != source.shape or labels.ndim != 3:
        raise GeometryError(f"label map shape {labels.shape} does not match the source volume {source.shape}")
    # labels fill a small box of a CT: values and frames come from that box only
    box = foreground_box(labels) if labels.dtype.kind in "uib" else (slice(None),) * 3
    if box is None:
        present = []
    elif values is not None:
        present = sorted({int(v) for v in values if int(v) > 0})
    else:
        present = _label_values_present(box_copy(labels, box))
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        labels = labels.astype(np.uint8 if labels.dtype == np.bool_ else np.int64)  # index-safe for the LUT below
    values = sorted(set(present) | {int(k) for k in label_names if int(k) > 0})
    if not values:
        raise DicomError(
            "nothing to write in the DICOM SEG: the label map is empty and label_names names no segment; "
            "pass the model's label names to write a SEG with empty segments"
        )
    with gc_paused():  # ~300 small Datasets: a generation-2 collection here costs more than building them
        datasets, frames = _source_datasets(source)
    multi_frame = len(datasets) == 1 and any(fr is not None and fr[1] is not None for fr in frames)
    rows, cols = source.shape[1], source.shape[0]
    n_src = int(datasets[0].get("NumberOfFrames", 1) or 1) if multi_frame else len(datasets)
    # Segment numbers (1..N, required for BINARY) in the order of the label values.
    seg_number = {v: n + 1 for n, v in enumerate(values)}
    # uint8 segment numbers whenever possible: half the memory and passes of uint16 in highdicom
    seg_dtype = np.uint8 if len(values) < 256 else np.uint16
    lut = np.zeros(max(values) + 1, dtype=seg_dtype)
    for v, n in seg_number.items():
        lut[v] = n
    # label value == segment number (the usual labels 1..N): copied as they are, no lookup
    # (a lookup costs several times the copy)
    identity = bool(np.array_equal(lut, np.arange(len(lut))))
    pixel = np.zeros((n_src, rows, cols), dtype=seg_dtype)
    dropped = 0
    xs, ys, zs = box if box is not None else (slice(0, 0),) * 3
    for k in range(*zs.indices(labels.shape[2])):
        src = frames[k]
        slab = labels[xs, ys, k]
        if src is None:
            dropped += int(np.count_nonzero(slab))
            continue
        idx = src[1] if multi_frame else src[0]
        if identity:
            pixel[idx, ys, xs] = slab.T
        else:
            np.take(lut, slab.T, out=pixel[idx, ys, xs])
    if dropped:
        log.warning(
            "%d labelled voxels lie on interpolated slices that have no source image; they are not in the SEG",
            dropped,
        )
    empty = not pixel.any()
    if empty and not multi_frame:
        # highdicom keeps every frame of every segment when all are empty; a valid SEG with
        # empty segments only needs frames on one source image.
        log.info("empty label map: writing empty segments on the first source image only")
        datasets, pixel = datasets[:1], pixel[:1]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        version=algorithm_version or __version__,
        family=codes.cid7162.ArtificialIntelligence,
    )
    descriptions = []
    for v in values:
        name = str(label_names.get(v, f"label {v}"))[:64] or f"label {v}"
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=seg_number[v],
                segment_label=name,
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=codes.SCT.AnatomicalStructure,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=f"medseg label {v}",
                tracking_uid=hd.UID(),
            )
        )
    series_number = source.meta.get("series_number")
    with warnings.catch_warnings(), gc_paused():
        warnings.simplefilter("ignore")  # highdicom warns about optional attributes of the source
        arguments = dict(
            source_images=datasets,
            pixel_array=pixel,
            segmentation_type=kinds[seg_type],
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=(int(series_number) + 1000) if series_number is not None else 1000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medseg",
            manufacturer_model_name=algorithm_name,
            software_versions=__version__,
            device_serial_number="0",
            series_description=f"{algorithm_name} segmentation"[:64],
            omit_empty_frames=not empty,  # all empty: highdicom keeps them all anyway (and logs a warning)
        )
        seg = seg_fast.build_segmentation(arguments) if use_fast else hd.seg.Segmentation(**arguments)
    path = Path(path)
    with gc_paused():
        if use_fast:
            seg_fast.pre_encode_sequence(seg, "PerFrameFunctionalGroupsSequence")
        with atomic_path(path) as tmp:
            seg.save_as(tmp)
    return path


def read_dicom_seg(path: PathLike, reference: Volume) -> Volume:
    """Read a DICOM SEG onto `reference`'s grid as an integer label map.

    Args:
        path: the SEG file.
        reference: the image the SEG was drawn on (from `read_dicom_series`, or any Volume on
            the same grid). Each SEG frame must lie on one of its slices, with the same
            in-plane orientation and pixel spacing.

    Returns:
        Volume on `reference`'s grid, uint8/uint16 labels; ``meta["label_names"]`` maps label
        value → segment label. Overlapping segments: the higher label value wins.

    Raises:
        DicomError: not a readable SEG.
        GeometryError: the SEG's frames do not lie on the reference grid.
    """
    import highdicom as hd

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.segread(str(path))
    except Exception as exc:  # noqa: BLE001
        raise DicomError(f"{path}: cannot read as DICOM SEG ({type(exc).__name__}: {exc})") from exc

    value_of: dict[int, int] = {}
    names: dict[int, str] = {}
    for number in seg.segment_numbers:
        desc = seg.get_segment_description(number)
        m = _TRACKING.match(str(getattr(desc, "tracking_id", "") or ""))
        value = int(m.group(1)) if m else int(number)
        value_of[int(number)] = value
        names[value] = str(desc.segment_label)

    pixels = seg.pixel_array  # (frames, rows, cols) for BINARY/FRACTIONAL, labelmap values for LABELMAP
    if pixels.ndim == 2:
        pixels = pixels[None]
    seg_type = str(seg.SegmentationType)
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    per_frame = seg.PerFrameFunctionalGroupsSequence

    inv = np.linalg.inv(ras_to_lps_affine(reference.affine))
    ni, nj, nk = reference.shape
    max_value = max(list(value_of.values()) + [1])
    out = np.zeros(reference.shape, dtype=np.uint8 if max_value < 256 else np.uint16)
    ref_lps = ras_to_lps_affine(reference.affine)
    ref_row = ref_lps[:3, 0] / np.linalg.norm(ref_lps[:3, 0])
    ref_col = ref_lps[:3, 1] / np.linalg.norm(ref_lps[:3, 1])
    ref_dx, ref_dy = np.linalg.norm(ref_lps[:3, 0]), np.linalg.norm(ref_lps[:3, 1])

    def group_value(fg: Any, sequence: str, keyword: str) -> Any:
        for g in (fg, shared):
            if g is not None and sequence in g and keyword in g[sequence][0]:
                return g[sequence][0][keyword].value
        return None

    order = []
    for f, fg in enumerate(per_frame):
        ipp = group_value(fg, "PlanePositionSequence", "ImagePositionPatient")
        iop = group_value(fg, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = group_value(fg, "PixelMeasuresSequence", "PixelSpacing")
        if ipp is None or iop is None:
            raise GeometryError(f"{path}: SEG frame {f + 1} has no plane position/orientation")
        iop = np.asarray([float(v) for v in iop])
        if not (np.allclose(iop[:3], ref_row, atol=1e-3) and np.allclose(iop[3:], ref_col, atol=1e-3)):
            raise GeometryError(
                f"{path}: SEG frame {f + 1} orientation {iop.round(4).tolist()} differs from the reference "
                f"image's {np.concatenate([ref_row, ref_col]).round(4).tolist()}; resample the SEG first"
            )
        if ps is not None and not np.allclose([float(ps[0]), float(ps[1])], [ref_dy, ref_dx], rtol=1e-3):
            raise GeometryError(f"{path}: SEG pixel spacing {list(ps)} differs from the reference's {[ref_dy, ref_dx]}")
        ijk = inv @ np.array([float(v) for v in ipp] + [1.0])
        idx = np.rint(ijk[:3])
        if np.abs(ijk[:3] - idx).max() > 0.05 or not (0 <= idx[2] < nk):
            raise GeometryError(
                f"{path}: SEG frame {f + 1} at {[round(float(v), 2) for v in ipp]} mm is not on a slice of the "
                "reference grid"
            )
        number = None
        if seg_type != "LABELMAP":
            number = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber) if "SegmentIdentificationSequence" in fg else 1
        order.append((f, int(idx[0]), int(idx[1]), int(idx[2]), number))

    max_fraction = int(seg.get("MaximumFractionalValue", 1) or 1)
    for f, i0, j0, k, number in order:
        plane = pixels[f]
        r, c = plane.shape
        if i0 < 0 or j0 < 0 or i0 + c > ni or j0 + r > nj:
            raise GeometryError(f"{path}: SEG frame {f + 1} extends beyond the reference grid")
        dest = out[i0 : i0 + c, j0 : j0 + r, k]
        if seg_type == "LABELMAP":
            lut = np.arange(int(plane.max()) + 1, dtype=np.int64)
            for number_, value_ in value_of.items():
                if number_ < len(lut):
                    lut[number_] = value_
            np.copyto(dest, lut[plane.T].astype(out.dtype), where=plane.T > 0)
        else:
            # FRACTIONAL: a voxel belongs to the segment from half the maximum fraction on
            mask = plane.T.astype(np.int32) * 2 >= max_fraction if seg_type == "FRACTIONAL" else plane.T > 0
            value = value_of.get(number, number)
            np.copyto(dest, np.maximum(dest, value).astype(out.dtype), where=mask)
    meta = {
        "format": "dicom-seg",
        "source_path": str(path),
        "label_names": dict(sorted(names.items())),
        "series_instance_uid": str(seg.SeriesInstanceUID),
        "referenced_series_instance_uid": reference.meta.get("series_instance_uid"),
    }
    return Volume(out, reference.affine.copy(), meta)

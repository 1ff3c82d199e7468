"""Which DICOM image lies behind each slice of a series' volume (for writers that reference it).

Writers of objects that live beside a source series (RTSTRUCT, derived image series) need, for
every slice ``k`` of the `Volume` that `read_dicom_series` returns, the file (and frame) it was
decoded from and that image's SOP Class/Instance UIDs; slices that `read_dicom_series`
interpolated across a gap have no source image. `source_images` answers that from a
`DicomSeries` (the scan) or from the `Volume` itself (its ``meta``), so a writer gets the same
mapping whichever the caller holds.

Anonymised exports may blank the UIDs a reference needs; the stand-ins here are the ones the
DICOM SEG writer derives (`medseg.io.dicom.derived_uid` of the same keys), so every output of
one series references the same study, frame of reference and images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DicomError
from medseg.io.dicom import DicomSeries, derived_uid
from medseg.io.volume import Volume

#: SOP class used when a file names none (classic single-frame images of that modality).
_DEFAULT_SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "PT": "1.2.840.10008.5.1.4.1.1.128",  # PET Image Storage
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class SourceImage:
    """The DICOM image behind one slice of a series' volume.

    Attributes:
        path: the file.
        frame_index: 0-based frame in a multi-frame file, None for a single-frame file.
        sop_class_uid, sop_instance_uid: the image's UIDs (stand-ins where the file has none).
    """

    path: Path
    frame_index: int | None
    sop_class_uid: str
    sop_instance_uid: str


@dataclass
class SourceImages:
    """The source images of a series' volume, slice by slice.

    Attributes:
        series_instance_uid, study_instance_uid, frame_of_reference_uid: the series' UIDs
            (stand-ins where the files have none).
        modality, series_number, series_description: from the headers.
        affine: the volume's voxel→RAS affine; shape: its ``(columns, rows, slices)``.
        slices: per slice ``k`` its `SourceImage`, or None for a slice interpolated across a gap.
        multi_frame: the series is one multi-frame (enhanced) file.
    """

    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    series_number: int | None
    series_description: str
    affine: np.ndarray
    shape: tuple[int, int, int]
    slices: list[SourceImage | None]
    multi_frame: bool = False

    @property
    def label(self) -> str:
        """Short name for messages (no patient data): ``'S003 "AX T1" (MR)'``."""
        num = f"S{self.series_number:03d}" if self.series_number is not None else "S-"
        return f'{num} "{self.series_description}" ({self.modality or "?"})'


def _sop_class(value: str, modality: str) -> str:
    return value or _DEFAULT_SOP_CLASS.get(modality.upper(), _SECONDARY_CAPTURE)


def source_images(source: DicomSeries | Volume) -> SourceImages:
    """The source image of every slice of a DICOM series' volume.

    Args:
        source: a `DicomSeries` from `scan_dicom_folder`, or the `Volume` that
            `read_dicom_series` returned (its ``meta`` names the files and frames).

    Returns:
        `SourceImages`, one entry per slice ``k`` of the volume (``array[:, :, k]``).

    Raises:
        DicomError: `source` is not an image series with a geometry, or a Volume that did not
            come from `read_dicom_series`.
    """
    if isinstance(source, DicomSeries):
        return _from_series(source)
    if isinstance(source, Volume):
        return _from_volume(source)
    raise DicomError(f"expected a DicomSeries or the Volume read from it, got {type(source).__name__}")


def _from_series(series: DicomSeries) -> SourceImages:
    if not series.is_image or series.geometry is None or series.affine is None or series.shape is None:
        raise DicomError(f"series {series.label} uid={series.series_instance_uid}: not an image series with a geometry ({series.error or series.sop_class})")
    uid = series.series_instance_uid
    geo = series.geometry
    kept = [series.frames[i] for i in geo.order]
    file_index = {p: n for n, p in enumerate(series.files)}

    def image(fr: Any) -> SourceImage:
        h = series.headers[fr.path]
        n = file_index[fr.path]
        return SourceImage(
            path=fr.path,
            frame_index=fr.frame_index,
            sop_class_uid=_sop_class(h.sop_class_uid, series.modality),
            sop_instance_uid=h.sop_instance_uid or derived_uid(f"sop|{uid}|{n}"),
        )

    if geo.interpolation is None:
        slices: list[SourceImage | None] = [image(fr) for fr in kept]
    else:
        slices = [image(kept[a]) if a == b else None for a, b, _ in geo.interpolation]
    return SourceImages(
        series_instance_uid=uid,
        study_instance_uid=series.study_instance_uid or derived_uid(f"study|{uid}"),
        frame_of_reference_uid=series.frame_of_reference_uid or derived_uid(f"for|{uid}"),
        modality=series.modality,
        series_number=series.series_number,
        series_description=series.series_description,
        affine=np.asarray(series.affine, dtype=np.float64),
        shape=tuple(int(s) for s in series.shape),  # type: ignore[arg-type]
        slices=slices,
        multi_frame=len(series.files) == 1 and any(fr.frame_index is not None for fr in kept),
    )


def _from_volume(volume: Volume) -> SourceImages:
    import pydicom

    meta = volume.meta
    files = meta.get("source_files")
    frames = meta.get("source_frames")
    if not files or frames is None or len(frames) != volume.shape[2]:
        raise DicomError(
            "the volume carries no DICOM source references (meta 'source_files'/'source_frames'); "
            "pass the DicomSeries or the Volume returned by read_dicom_series"
        )
    uid = str(meta.get("series_instance_uid") or "")
    modality = str(meta.get("modality") or "")
    headers = meta.get("source_headers")
    if not headers or len(headers) != len(files):
        headers = None
    per_file: list[tuple[str, str]] = []
    for n, f in enumerate(files):
        if headers is not None:
            h = headers[n]
            sop_class, sop_instance = str(h.get("SOPClassUID") or ""), str(h.get("SOPInstanceUID") or "")
        else:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception as exc:  # noqa: BLE001 - any read failure is a bad source file
                raise DicomError(f"{f}: cannot re-read the source DICOM header ({type(exc).__name__}: {exc})") from exc
            fm = getattr(ds, "file_meta", None)
            sop_class = str(ds.get("SOPClassUID", "") or "") or str(getattr(fm, "MediaStorageSOPClassUID", "") or "")
            sop_instance = str(ds.get("SOPInstanceUID", "") or "") or str(getattr(fm, "MediaStorageSOPInstanceUID", "") or "")
        per_file.append((_sop_class(sop_class, modality), sop_instance or derived_uid(f"sop|{uid}|{n}")))
    slices: list[SourceImage | None] = []
    for fr in frames:
        if fr is None:
            slices.append(None)
            continue
        n, frame = int(fr[0]), fr[1]
        sop_class, sop_instance = per_file[n]
        slices.append(SourceImage(Path(files[n]), None if frame is None else int(frame), sop_class, sop_instance))
    return SourceImages(
        series_instance_uid=uid,
        study_instance_uid=str(meta.get("study_instance_uid") or "") or derived_uid(f"study|{uid}"),
        frame_of_reference_uid=str(meta.get("frame_of_reference_uid") or "") or derived_uid(f"for|{uid}"),
        modality=modality,
        series_number=meta.get("series_number"),
        series_description=str(meta.get("series_description") or ""),
        affine=volume.affine.copy(),
        shape=volume.shape,
        slices=slices,
        multi_frame=len(files) == 1 and any(fr is not None and fr[1] is not None for fr in frames),
    )

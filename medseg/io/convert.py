"""`medseg info` / `medseg convert` logic: describe inputs and convert them to NIfTI.

`describe_input` lists the series (or the single volume) under a path from headers only;
`convert_to_nifti` writes one NIfTI per image series plus ``series.json``. One bad series
never stops the others: its entry carries the error and the run reports a failure count.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import InputError, MedsegError
from medseg.io.atomic import write_json_atomic
from medseg.io.naming import sanitize_filename, series_stem
from medseg.io.nifti import case_name, volume_suffix, write_nifti

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Name of the index file `convert_to_nifti` writes into the output folder.
SERIES_JSON = "series.json"


@dataclass
class SeriesSummary:
    """One row of `medseg info` / one entry of ``series.json`` (no patient data)."""

    series_instance_uid: str | None
    modality: str | None
    description: str
    series_number: int | None
    shape: list[int] | None
    spacing: list[float] | None
    orientation: str | None
    n_files: int
    is_image: bool
    warnings: list[str] = field(default_factory=list)
    kind: str = ""
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """Dict with JSON-friendly values."""
        return {
            "series_instance_uid": self.series_instance_uid,
            "modality": self.modality,
            "description": self.description,
            "series_number": self.series_number,
            "shape": self.shape,
            "spacing": self.spacing,
            "orientation": self.orientation,
            "n_files": self.n_files,
            "is_image": self.is_image,
            "kind": self.kind,
            "warnings": self.warnings,
            "error": self.error,
        }


@dataclass
class InputDescription:
    """What `describe_input` found under a path."""

    path: Path
    kind: str  # "dicom" or "volume"
    series: list[SeriesSummary]
    skipped: list[dict[str, str]]


@dataclass
class ConversionResult:
    """What `convert_to_nifti` did; ``index`` is the content of ``series.json``."""

    out_dir: Path
    index: dict[str, Any]
    n_converted: int
    n_failed: int

    @property
    def ok(self) -> bool:
        """True when no image series failed."""
        return self.n_failed == 0


def is_volume_file(path: PathLike) -> bool:
    """True for a NIfTI/NRRD/MHA file (by suffix), False for DICOM files and folders."""
    p = Path(path)
    return p.is_file() and volume_suffix(p) is not None


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root if root.is_dir() else root.parent))
    except ValueError:
        return str(path)


def _round_list(values: Any, ndigits: int = 6) -> list[float] | None:
    if values is None:
        return None
    return [round(float(v), ndigits) for v in values]


def describe_input(path: PathLike, progress: bool = False) -> InputDescription:
    """Summarise the image series under `path` from headers only (fast).

    Args:
        path: DICOM folder tree / DICOM file, or a NIfTI/NRRD/MHA file.
        progress: progress bar while reading DICOM headers.

    Raises:
        InputError: `path` does not exist or a volume file cannot be read.
    """
    from medseg.io.dicom import scan_dicom_folder

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if is_volume_file(p):
        from medseg.io.nifti import read_volume

        vol = read_volume(p)
        summary = SeriesSummary(
            series_instance_uid=None,
            modality=None,
            description=p.name,
            series_number=None,
            shape=list(vol.shape),
            spacing=_round_list(vol.spacing),
            orientation=vol.orientation,
            n_files=1,
            is_image=True,
            kind=vol.meta.get("format", "volume"),
        )
        return InputDescription(p, "volume", [summary], [])
    scan = scan_dicom_folder(p, progress=progress)
    rows = [describe_series(s) for s in scan.series]
    skipped = [{"path": _rel(k.path, p), "reason": k.reason} for k in scan.skipped]
    return InputDescription(p, "dicom", rows, skipped)


def _entry(summary: SeriesSummary, output: str | None, error: str | None) -> dict[str, Any]:
    return {
        "series_instance_uid": summary.series_instance_uid,
        "output": output,
        "modality": summary.modality,
        "shape": summary.shape,
        "spacing": summary.spacing,
        "orientation": summary.orientation,
        "n_files": summary.n_files,
        "warnings": list(summary.warnings),
        "error": error,
    }


def convert_to_nifti(
    input_path: PathLike,
    out_dir: PathLike,
    *,
    progress: bool = False,
    threads: int | None = None,
    processes: int = 0,
) -> ConversionResult:
    """Convert a DICOM tree / DICOM file / NIfTI-NRRD-MHA file to NIfTI files in `out_dir`.

    Writes one ``<stem>.nii.gz`` per image series, the stem from `series_stem` (series number,
    sanitised description, short UID hash; never raw tag text), and ``series.json``::

        {"series": [{"series_instance_uid", "output" (relative path or null), "modality",
                     "shape", "spacing", "orientation", "n_files", "warnings": [...],
                     "error": null or text}],
         "skipped": [{"path", "reason", "damaged" (a truncated/unreadable DICOM file, vs
                      not DICOM or left out of a stack)}]}

    Non-image series (SR, SEG, RTSTRUCT…) are listed with ``output: null`` and a warning.
    Files left out of a series' main stack (localizer, duplicates) are listed in "skipped".
    All files are written atomically.

    Args:
        input_path: what to convert.
        out_dir: output folder (created).
        progress: progress bars on stderr.
        threads: decoding threads per series (None: automatic).
        processes: worker processes for large compressed series (0: none).

    Returns:
        `ConversionResult`; ``n_failed`` counts image series that could not be converted.

    Raises:
        InputError: `input_path` does not exist (a bad series is reported, not raised).
    """
    from medseg.io.dicom import is_damaged, read_dicom_series, scan_dicom_folder
    from medseg.io.nifti import read_volume

    src = Path(input_path)
    out = Path(out_dir)
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    n_ok = n_failed = 0

    if is_volume_file(src):
        summary = SeriesSummary(None, None, src.name, None, None, None, None, 1, True)
        name = f"{sanitize_filename(case_name(src), fallback='volume')}.nii.gz"
        try:
            vol = read_volume(src)
            summary.shape, summary.spacing, summary.orientation = list(vol.shape), _round_list(vol.spacing), vol.orientation
            summary.warnings = list(vol.meta.get("warnings", []))
            write_nifti(vol, out / name)
            entries.append(_entry(summary, name, None))
            n_ok += 1
        except MedsegError as exc:
            entries.append(_entry(summary, None, str(exc)))
            n_failed += 1
    else:
        scan = scan_dicom_folder(src, progress=progress)
        skipped.extend({"path": _rel(k.path, src), "reason": k.reason, "damaged": is_damaged(k.reason)} for k in scan.skipped)
        series_list = scan.series
        if progress:
            from tqdm import tqdm

            series_iter: Any = tqdm(series_list, desc="converting series", unit="series", leave=False)
        else:
            series_iter = series_list
        for s in series_iter:
            summary = describe_series(s)
            skipped.extend({"path": _rel(k.path, src), "reason": f"{s.label}: {k.reason}", "damaged": False} for k in s.ignored)
            if not s.is_image:
                entries.append(_entry(summary, None, None))
                continue
            name = f"{series_stem(s.series_number, s.series_description, s.series_instance_uid)}.nii.gz"
            try:
                vol = read_dicom_series(s, threads=threads, processes=processes)
                # what reading found (interpolated slices, repaired voxels) joins the scan's warnings
                summary.warnings += [w for w in vol.meta.get("warnings", []) if w not in summary.warnings and w != s.error]
                write_nifti(vol, out / name)
            except MedsegError as exc:
                log.error("%s: %s", s.label, exc)
                entries.append(_entry(summary, None, str(exc)))
                n_failed += 1
                continue
            except Exception as exc:  # noqa: BLE001 - one broken series must not stop the others
                log.error("%s: unexpected %s: %s", s.label, type(exc).__name__, exc)
                entries.append(_entry(summary, None, f"unexpected {type(exc).__name__}: {exc}"))
                n_failed += 1
                continue
            entries.append(_entry(summary, name, None))
            n_ok += 1
    index = {"series": entries, "skipped": skipped}
    write_json_atomic(out / SERIES_JSON, index)
    return ConversionResult(out, index, n_ok, n_failed)


def describe_series(s: Any) -> SeriesSummary:
    """`SeriesSummary` of a `DicomSeries`."""
    return SeriesSummary(
        series_instance_uid=s.series_instance_uid,
        modality=s.modality or None,
        description=s.series_description,
        series_number=s.series_number,
        shape=list(s.shape) if s.shape else None,
        spacing=_round_list(s.spacing),
        orientation=s.orientation,
        n_files=s.n_files,
        is_image=s.is_image,
        warnings=[w for w in s.warnings if w != s.error],
        kind=s.sop_class,
        error=s.error,
    )

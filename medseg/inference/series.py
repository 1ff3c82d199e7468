"""One series of a batch on disk: reading it, its output folder, and its completion marker.

A series is *done* only when its marker ``<series>/done.json`` exists; the batch's own process
writes it, last, after every output was written (each atomically). A re-run trusts a marker
only when its outputs all exist and it was made by the same checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.inference.discovery import SeriesRecord
from medseg.io.atomic import write_json_atomic
from medseg.io.volume import Volume

if TYPE_CHECKING:
    from medseg.inference.model import LoadedModel

log = logging.getLogger(__name__)

DONE_MARKER = "done.json"


def now_utc() -> str:
    """The current UTC time, ISO 8601 to the second (manifest and marker timestamps)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_series(record: SeriesRecord) -> Volume:
    """Read the series or image file of `record` (DICOM via its scanned `series`).

    Raises:
        MedsegError: whatever the reader raises for bad input (named file, problem).
    """
    if record.kind == "dicom":
        from medseg.io.dicom import read_dicom_series

        return read_dicom_series(record.series)
    from medseg.io.nifti import read_volume

    return read_volume(record.source)


def record_fields(volume: Volume) -> dict[str, Any]:
    """What a manifest row learns from the read volume: slices, modality, reader warnings."""
    return {
        "n_slices": int(volume.shape[2]),
        "modality": str(volume.meta.get("modality") or ""),
        "warnings": [str(w) for w in volume.meta.get("warnings") or []],
    }


def apply_record_fields(record: SeriesRecord, fields: dict[str, Any]) -> None:
    """Fill `record` from `record_fields` (keeping what discovery already knew)."""
    if record.n_slices is None:
        record.n_slices = fields["n_slices"]
    record.modality = record.modality or fields["modality"]
    record.warnings = list(fields["warnings"])


def clean_partial(series_dir: Path) -> None:
    """Remove temp files a killed run left behind (atomic writes never leave a half target)."""
    if series_dir.is_dir():
        for p in series_dir.glob(".*.part*"):
            with contextlib.suppress(OSError):
                p.unlink()


def prepare_series_dir(series_dir: Path) -> None:
    """Un-finish a series before (re)computing it: marker first, then stale temp files."""
    with contextlib.suppress(FileNotFoundError):
        (series_dir / DONE_MARKER).unlink()  # from here on the series is not done until rewritten
    series_dir.mkdir(parents=True, exist_ok=True)
    clean_partial(series_dir)


def is_done(series_dir: Path, models: list[LoadedModel]) -> dict[str, Any] | None:
    """The completion marker of a finished series made by the same checkpoints, else None."""
    try:
        info = json.loads((series_dir / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if sorted(info.get("model_fingerprints", [])) != sorted(m.fingerprint for m in models):
        log.info("%s: finished by other checkpoints; processing it again", series_dir.name)
        return None
    if not all((series_dir / name).exists() for name in info.get("outputs", {}).values()):  # files, or a DICOM folder
        return None
    return info


def write_done_marker(
    series_dir: Path, record: SeriesRecord, models: list[LoadedModel], result: dict[str, Any], threads: int
) -> Path:
    """Write the completion marker of a series whose outputs are all written (atomically, last).

    Args:
        result: what the export stage returned: ``outputs`` (kind → file name), ``volumes``
            (label statistics, segmentation), ``uncertainty_labels``, ``timings``.
        threads: torch threads the network ran with (part of the arithmetic on CPU: oneDNN
            and MKL split their sums by thread count).
    """
    outputs = dict(result.get("outputs", {}))
    return write_json_atomic(
        series_dir / DONE_MARKER,
        {
            "series": record.to_dict() | {"status": "done", "outputs": outputs},
            "outputs": outputs,
            "task": models[0].task,
            "model_fingerprints": [m.fingerprint for m in models],
            "models": [str(m.path) for m in models],
            "labels": {str(k): v for k, v in models[0].labels.items()},
            "volumes": result.get("volumes", []),
            "uncertainty": result.get("uncertainty_labels", {}),
            "timings": result.get("timings", {}),
            "torch_threads": int(threads),
            "finished": now_utc(),
        },
    )

"""Inputs and outputs of `medseg simulate-low-dose`: find the CT volumes in INPUT, simulate
each, write NIfTI (and a derived DICOM series for DICOM input) into OUTDIR.

Per case ``<name>``: ``<name>_dose<pct>.nii.gz`` (float32 HU), for DICOM input the folder
``<name>_dose<pct>_dicom/`` (derived series in the source study, `medseg.io.derived`), and
``<name>_dose<pct>.json`` (the parameters, written last). A re-run skips the cases whose JSON
holds the same parameters, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medseg.ct.low_dose import DEFAULT_ELECTRONIC_NOISE_STD
from medseg.errors import InputError, MedsegError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LowDoseParams:
    """Keyword arguments of `medseg.ct.low_dose.simulate_low_dose` (see there for units)."""

    dose_fraction: float = 0.25
    photons_per_ray: float | None = None  # None: derived from the fluence, bins, slice thickness, views
    views: int | None = None
    detector_pixels: int | None = None
    electronic_noise_std: float = DEFAULT_ELECTRONIC_NOISE_STD
    geometry: str = "parallel"
    filter: str = "hann"
    seed: int = 0


@dataclass
class CaseResult:
    """One simulated (or skipped / failed) input."""

    name: str
    source: str
    nifti: Path | None = None
    dicom_dir: Path | None = None
    skipped: bool = False
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Case:
    name: str
    source: str
    load: Callable[[], Any]
    dicom: Any = None  # the DicomSeries for DICOM input


def _cases(input_path: Path, series_uid: str | None) -> list[_Case]:
    from medseg.io.dicom import read_dicom_series, scan_dicom_folder
    from medseg.io.naming import sanitize_filename, short_uid_hash
    from medseg.io.nifti import case_name, read_volume, volume_suffix

    if not input_path.exists():
        raise InputError(f"{input_path}: no such file or folder")
    if input_path.is_file() and volume_suffix(input_path):
        return [_Case(case_name(input_path), str(input_path), lambda p=input_path: read_volume(p))]
    if input_path.is_dir():
        files = sorted(p for p in input_path.iterdir() if p.is_file() and volume_suffix(p))
        if files:
            return [_Case(case_name(p), str(p), lambda p=p: read_volume(p)) for p in files]
    scan = scan_dicom_folder(input_path)
    series = [s for s in scan.series if s.is_image]
    if series_uid is not None:
        series = [s for s in series if s.series_instance_uid == series_uid]
        if not series:
            raise InputError(f"{input_path}: no image series with SeriesInstanceUID {series_uid} (see `medseg info`)")
    else:
        series = [s for s in series if (s.modality or "").upper() == "CT"]
    if not series:
        raise InputError(f"{input_path}: no CT image series or NIfTI/NRRD/MHA files found")
    out = []
    for s in series:
        desc = sanitize_filename(s.series_description or "series", max_len=40)
        name = f"S{s.series_number:03d}_{desc}" if s.series_number is not None else f"{desc}_{short_uid_hash(s.series_instance_uid)}"
        out.append(_Case(name, f"series {s.label}", lambda s=s: read_dicom_series(s), dicom=s))
    return out


def simulate_low_dose_inputs(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    params: LowDoseParams = LowDoseParams(),
    *,
    series_uid: str | None = None,
    write_dicom: bool = True,
    device: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[CaseResult]:
    """Simulate every CT volume found in `input_path` at `params.dose_fraction`.

    Args:
        input_path: a NIfTI/NRRD/MHA file, a folder of them, or a DICOM file/folder tree (all
            its CT series, or the one `series_uid` names).
        out_dir: output folder (created).
        params: simulation parameters.
        series_uid: DICOM input: only this series.
        write_dicom: DICOM input: also write a derived DICOM series.
        device: torch device (default CPU).
        progress: called as ``progress(case_name, slices_done, n_slices)``.

    Returns:
        One `CaseResult` per input; a failing case is reported in its `error` and does not
        stop the others.

    Raises:
        InputError: nothing usable in `input_path`.
    """
    from medseg.ct.low_dose import simulate_low_dose_volume
    from medseg.io.atomic import write_json_atomic
    from medseg.io.nifti import write_nifti

    input_path, out_dir = Path(input_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"dose{round(params.dose_fraction * 100):d}"
    if abs(params.dose_fraction * 100 - round(params.dose_fraction * 100)) > 1e-9:
        tag = f"dose{params.dose_fraction:g}".replace(".", "p")
    wanted = {**asdict(params), "dicom": bool(write_dicom)}
    results = []
    for case in _cases(input_path, series_uid):
        stem = f"{case.name}_{tag}"
        nii, sidecar, ddir = out_dir / f"{stem}.nii.gz", out_dir / f"{stem}.json", out_dir / f"{stem}_dicom"
        res = CaseResult(case.name, case.source)
        if sidecar.is_file() and nii.is_file():
            import json

            try:
                done = json.loads(sidecar.read_text()).get("parameters")
            except (OSError, ValueError):
                done = None
            if done == wanted:
                res.skipped, res.nifti = True, nii
                res.dicom_dir = ddir if ddir.is_dir() else None
                results.append(res)
                continue
        try:
            vol = case.load()
            res.warnings = list(vol.meta.get("warnings") or [])
            cb = (lambda d, n, name=case.name: progress(name, d, n)) if progress else None
            sim = simulate_low_dose_volume(vol, **asdict(params), device=device, progress=cb)
            write_nifti(sim, nii, dtype="float32")
            res.nifti = nii
            if case.dicom is not None and write_dicom:
                from medseg.io.derived import write_derived_series

                i0 = sim.meta["low_dose_simulation"].get("photons_per_ray_used")
                desc = f"medseg simulated {params.dose_fraction:g} dose ({params.geometry}, I0={i0:.3g})"
                write_derived_series(sim, vol, ddir, description=desc)
                res.dicom_dir = ddir
            write_json_atomic(sidecar, {"source": case.source, "parameters": wanted,
                                        "outputs": {"nifti": nii.name, "dicom": ddir.name if res.dicom_dir else None}})
        except MedsegError as exc:
            res.error = str(exc)
            log.info("%s failed: %s", case.source, exc)
        results.append(res)
    return results

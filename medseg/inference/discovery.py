"""Finding the series of a batch: every DICOM series and image file under an input, their
stable output names, the shard each belongs to, and the filters that skip some (with reasons)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.errors import InputError

if TYPE_CHECKING:
    from medseg.inference.model import LoadedModel
    from medseg.inference.options import BatchOptions

#: manifest columns (CSV), in order; the JSON rows also carry ``outputs`` and ``label_uncertainty``
MANIFEST_FIELDS = [
    "status", "stem", "kind", "modality", "series_description", "series_number", "n_slices",
    "seconds", "previous_run", "reason", "warnings", "uncertainty", "key", "source",
]


@dataclass
class SeriesRecord:
    """One series of the batch and what happened to it (one manifest row)."""

    key: str
    stem: str
    kind: str  # "dicom" | "file"
    source: str
    modality: str = ""
    series_description: str = ""
    series_number: int | None = None
    n_slices: int | None = None
    status: str = "pending"  # "done" | "skipped" | "failed" | "pending"
    reason: str = ""
    previous_run: bool = False
    seconds: float | None = None
    warnings: list[str] = field(default_factory=list)  # from the reader (`Volume.meta["warnings"]`)
    uncertainty: float | None = None  # segmentation: the series' score (review first when high)
    label_uncertainty: dict[str, float] = field(default_factory=dict)  # label name → score
    outputs: dict[str, str] = field(default_factory=dict)
    series: Any = field(default=None, repr=False, compare=False)  # DicomSeries, not serialised

    def to_dict(self) -> dict[str, Any]:
        # not dataclasses.asdict: it would deep-copy `series` (every file's header) only to drop it
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "series"}
        d["outputs"] = dict(self.outputs)
        d["warnings"] = list(self.warnings)
        d["label_uncertainty"] = dict(self.label_uncertainty)
        return d



def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` → ``(2, 4)``; 1 ≤ i ≤ n.

    Raises:
        InputError: malformed text or i outside 1..n.
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise InputError(f"--shard {text!r}: expected i/N, e.g. 1/4 (shards are numbered 1..N)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise InputError(f"--shard {text!r}: i must be between 1 and N (got i={i}, N={n})")
    return i, n


def shard_of(key: str, n: int) -> int:
    """1-based shard of a series key (UID or path) among `n`: stable across runs and machines."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % n + 1


def _unique_stem(stem: str, used: set[str], key: str) -> str:
    if stem not in used:
        return stem
    from medseg.io.naming import short_uid_hash

    return f"{stem}_{short_uid_hash(key)}"


def discover_series(
    input_path: str | os.PathLike[str], progress: bool = False
) -> tuple[list[SeriesRecord], list[dict[str, str]]]:
    """Every series (DICOM) and image file under `input_path`, unfiltered.

    Returns:
        ``(records, unreadable_files)``: one pending record per series/file, and the files the
        DICOM scan could not use (``{"path", "reason"}``), image files excluded.

    Raises:
        InputError: the input does not exist, or holds neither DICOM nor image files.
    """
    from medseg.io.naming import sanitize_filename, series_stem
    from medseg.io.nifti import case_name, volume_suffix

    root = Path(input_path)
    if not root.exists():
        raise InputError(f"{root}: input not found (expected a DICOM folder, an image file or a folder of them)")
    records: list[SeriesRecord] = []
    used: set[str] = set()
    unreadable: list[dict[str, str]] = []

    def add_file(p: Path, key: str) -> None:
        stem = _unique_stem(sanitize_filename(case_name(p), fallback="image"), used, key)
        used.add(stem)
        records.append(SeriesRecord(key=key, stem=stem, kind="file", source=str(p)))

    if root.is_file() and volume_suffix(root):
        add_file(root, root.name)
        return records, unreadable

    scan_root = root if root.is_dir() else root.parent
    if root.is_dir():
        for p in sorted(q for q in root.rglob("*") if q.is_file() and volume_suffix(q)):
            add_file(p, p.relative_to(root).as_posix())

    from medseg.io.dicom import scan_dicom_folder

    scan = scan_dicom_folder(scan_root, progress=progress)
    series_list = list(scan.series)
    if root.is_file():  # one DICOM file: the series it belongs to
        series_list = [s for s in series_list if any(Path(f).resolve() == root.resolve() for f in s.files)]
    for s in series_list:
        stem = _unique_stem(series_stem(s.series_number, s.series_description, s.series_instance_uid), used, s.series_instance_uid)
        used.add(stem)
        shape = getattr(s, "shape", None)
        n_slices = shape[2] if shape else (len(s.files) if s.files else None)
        records.append(
            SeriesRecord(
                key=s.series_instance_uid,
                stem=stem,
                kind="dicom",
                source=str(Path(s.files[0]).parent) if s.files else str(scan_root),
                modality=str(s.modality or ""),
                series_description=str(s.series_description or ""),
                series_number=s.series_number,
                n_slices=int(n_slices) if n_slices is not None else None,
                series=s,
            )
        )
    for sk in scan.skipped:
        if volume_suffix(sk.path) is None:
            unreadable.append({"path": str(sk.path), "reason": str(sk.reason)})
    if not records:
        raise InputError(
            f"{root}: no DICOM image series and no NIfTI/NRRD/MHA files found"
            + (f" ({len(unreadable)} unreadable files, e.g. {unreadable[0]['path']}: {unreadable[0]['reason']})" if unreadable else "")
        )
    return records, unreadable


def select_series(records: list[SeriesRecord], options: BatchOptions, models: list[LoadedModel]) -> list[SeriesRecord]:
    """Apply shard, image/modality/description/slice filters; filtered series become "skipped".

    Returns the records of this shard (others are dropped; they belong to another job).
    """
    if options.shard is not None:
        i, n = options.shard
        records = [r for r in records if shard_of(r.key, n) == i]
    model_mod = models[0].modality if models else None
    wanted = tuple(m.upper() for m in options.modalities) if options.modalities else ((model_mod,) if model_mod else None)
    pattern = re.compile(options.series_regex, re.IGNORECASE) if options.series_regex else None
    for r in records:
        if r.kind != "dicom":
            continue
        s = r.series
        if s is not None and not getattr(s, "is_image", True):
            r.status, r.reason = "skipped", f"not an image series (modality {r.modality or '?'})"
        elif wanted and r.modality.upper() not in wanted:
            why = "the model segments" if not options.modalities else "--modality asks for"
            r.status, r.reason = "skipped", f"modality {r.modality or '?'}; {why} {'/'.join(wanted)}"
        elif pattern and not pattern.search(r.series_description):
            r.status, r.reason = "skipped", f"series description {r.series_description!r} does not match {options.series_regex!r}"
        elif r.n_slices is not None and r.n_slices < options.min_slices:
            r.status, r.reason = "skipped", f"{r.n_slices} slices < --min-slices {options.min_slices}"
    return records

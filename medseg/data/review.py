"""Review queue: cases to check and correct, their status in a review file, and the reviewed
cases as training data.

A queue is opened from a ``segment.json`` manifest written by ``medseg segment`` (image =
the row's source, labels = its ``labels.nii.gz``) or from a folder of cases (``images/`` +
``labels/``, or nnU-Net's ``imagesTr/`` + ``labelsTr/``, paired by case name). Its state lives
in one review file (JSON, written atomically after every change)::

    {"version": 1, "source": "<manifest or folder>", "corrections_dir": "<dir>",
     "cases": [{"name", "image", "series_uid", "labels", "corrected", "uncertainty",
                "status": "pending" | "accepted" | "needs_fix", "comment", "updated"}]}

Corrected label maps are NIfTI files in ``corrections_dir`` (atomic writes too), so a crash
loses at most the edit being written. `review_training_cases` turns the accepted cases into
training cases (the corrected labels where there are some), which ``data.review_file`` in a
workflow adds to the training set.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.io import Volume

#: Review statuses; only ``accepted`` cases become training data.
STATUSES = ("pending", "accepted", "needs_fix")
REVIEW_FILE_NAME = "review.json"
_PAIRED_FOLDERS = (("images", "labels"), ("imagesTr", "labelsTr"))


@dataclass
class ReviewCase:
    """One case of a review queue (paths absolute; `corrected` None until the labels are edited)."""

    name: str
    image: str
    labels: str
    series_uid: str | None = None
    corrected: str | None = None
    uncertainty: float | None = None
    status: str = "pending"
    comment: str = ""
    updated: str | None = None

    @property
    def current_labels(self) -> str:
        """The labels to show or train on: the corrected ones when they exist."""
        return self.corrected or self.labels


@dataclass
class ReviewQueue:
    """The cases of a review, in review order, and where their state is saved."""

    review_file: Path
    source: str
    corrections_dir: Path
    cases: list[ReviewCase] = field(default_factory=list)
    # a viewer saves corrections in a worker thread while the user marks cases: one writer at a time
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def save(self) -> Path:
        """Write the review file atomically."""
        from medseg.io.atomic import write_json_atomic

        with self._lock:
            return write_json_atomic(
                self.review_file,
                {"version": 1, "source": self.source, "corrections_dir": str(self.corrections_dir),
                 "cases": [asdict(c) for c in self.cases]},
            )

    def set_status(self, index: int, status: str, comment: str | None = None) -> ReviewCase:
        """Mark case `index` and save the review file.

        Raises:
            ValueError: unknown status.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        with self._lock:
            case = self.cases[index]
            case.status = status
            if comment is not None:
                case.comment = comment
            case.updated = _now()
            self.save()
        return case

    def save_correction(self, index: int, labels: Volume) -> Path:
        """Write case `index`'s edited labels (NIfTI, atomic) and record them in the review file."""
        import numpy as np

        from medseg.io import write_nifti
        from medseg.io.naming import sanitize_filename

        case = self.cases[index]
        path = self.corrections_dir / f"{sanitize_filename(case.name, fallback='case')}.nii.gz"
        dtype = np.uint8 if int(labels.array.max(initial=0)) <= 255 else np.uint16
        write_nifti(labels, path, dtype=dtype)
        with self._lock:
            case.corrected = str(path)
            case.updated = _now()
            self.save()
        return path


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _uncertainty(row: dict[str, Any]) -> float | None:
    """A row's uncertainty score, under the names the batch runner may use (higher = less sure)."""
    for key in ("uncertainty", "uncertainty_score", "mean_entropy"):
        value = row.get(key)
        if isinstance(value, dict):
            value = value.get("score", value.get("mean_entropy"))
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _cases_from_manifest(path: Path) -> list[ReviewCase]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the segment manifest ({exc})") from exc
    rows = raw.get("series") if isinstance(raw, dict) else None
    if not isinstance(rows, list):
        raise InputError(f"{path}: not a `medseg segment` manifest (no 'series' list)")
    cases = []
    for row in rows:
        labels = (row.get("outputs") or {}).get("labels")
        if row.get("status") != "done" or not labels:
            continue
        cases.append(
            ReviewCase(
                name=str(row.get("stem") or row.get("key")),
                image=str(row["source"]),
                labels=str((path.parent / str(row["stem"]) / labels).resolve()),
                series_uid=str(row["key"]) if row.get("kind") == "dicom" else None,
                uncertainty=_uncertainty(row),
            )
        )
    return cases


def _cases_from_folder(root: Path) -> list[ReviewCase]:
    from medseg.report.cases import list_cases

    for img_dir, lab_dir in _PAIRED_FOLDERS:
        if (root / img_dir).is_dir() and (root / lab_dir).is_dir():
            images = {_strip_channel(k): v for k, v in list_cases(root / img_dir).items()}
            labels = list_cases(root / lab_dir, allow_dicom=False)
            cases = [ReviewCase(name=n, image=str(images[n].resolve()), labels=str(labels[n].resolve())) for n in sorted(images) if n in labels]
            if not cases:
                raise InputError(f"{root}: no case has both an image in {img_dir}/ and labels in {lab_dir}/ (paired by name)")
            return cases
    raise InputError(
        f"{root}: a review folder needs images/ + labels/ (or imagesTr/ + labelsTr/) with files paired by "
        "name, or pass the segment.json of `medseg segment`"
    )


def _strip_channel(name: str) -> str:
    """nnU-Net image names carry a channel suffix: ``case_0000`` → ``case``."""
    stem, _, chan = name.rpartition("_")
    return stem if stem and len(chan) == 4 and chan.isdigit() else name


def open_review_queue(source: str | os.PathLike[str], review_file: str | os.PathLike[str] | None = None) -> ReviewQueue:
    """Open (or resume) a review of a ``segment.json`` manifest or a folder of cases.

    Cases are ordered by uncertainty (most uncertain first) when every case has a score, else
    by name. An existing review file keeps its statuses, comments and corrections.

    Args:
        source: the manifest file, or a folder (``images/`` + ``labels/`` or nnU-Net's
            ``imagesTr/`` + ``labelsTr/``); a folder holding ``segment.json`` is read as that.
        review_file: where the state goes (default: ``review.json`` beside the manifest / in
            the folder).

    Returns:
        The `ReviewQueue` (its review file written).

    Raises:
        InputError: no such source, an unreadable manifest, or no cases.
    """
    src = Path(source).resolve()
    if src.is_dir() and (src / "segment.json").is_file():
        src = src / "segment.json"
    if not src.exists():
        raise InputError(f"{src}: no such manifest or folder")
    cases = _cases_from_manifest(src) if src.is_file() else _cases_from_folder(src)
    if not cases:
        raise InputError(f"{src}: no finished case with labels to review")
    if all(c.uncertainty is not None for c in cases):
        cases.sort(key=lambda c: (-float(c.uncertainty or 0.0), c.name))
    else:
        cases.sort(key=lambda c: c.name)
    root = src.parent if src.is_file() else src
    rf = Path(review_file) if review_file is not None else root / REVIEW_FILE_NAME
    queue = ReviewQueue(review_file=rf.resolve(), source=str(src), corrections_dir=(rf.parent / "corrections").resolve(), cases=cases)
    if rf.is_file():
        previous = {c.name: c for c in read_review_file(rf).cases}
        for c in queue.cases:
            old = previous.get(c.name)
            if old is not None:
                c.status, c.comment, c.updated = old.status, old.comment, old.updated
                c.corrected = old.corrected if old.corrected and Path(old.corrected).is_file() else None
    queue.save()
    return queue


def read_review_file(path: str | os.PathLike[str]) -> ReviewQueue:
    """Read a review file written by `ReviewQueue.save`.

    Raises:
        InputError: missing or malformed file (named, with the problem).
    """
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{p}: cannot read the review file ({exc})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("cases"), list):
        raise InputError(f"{p}: not a medseg review file (no 'cases' list)")
    known = set(ReviewCase.__dataclass_fields__)
    try:
        cases = [ReviewCase(**{k: v for k, v in c.items() if k in known}) for c in raw["cases"]]
    except TypeError as exc:
        raise InputError(f"{p}: a case lacks a field ({exc})") from exc
    return ReviewQueue(review_file=p.resolve(), source=str(raw.get("source", "")),
                       corrections_dir=Path(raw.get("corrections_dir") or p.parent / "corrections"), cases=cases)


def review_training_cases(review_file: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Training cases from a review file: every accepted case, with its corrected labels if any.

    Pending and needs-fix cases are left out (nobody has vouched for their labels yet).

    Returns:
        ``[{"image", "label", "name"}]`` as `medseg.data.datasets.resolve_cases` returns them.

    Raises:
        InputError: unreadable review file, or an accepted case whose files are gone.
    """
    queue = read_review_file(review_file)
    out = []
    for c in queue.cases:
        if c.status != "accepted":
            continue
        for p, what in ((c.image, "image"), (c.current_labels, "labels")):
            if not Path(p).exists():
                raise InputError(f"{review_file}: accepted case {c.name!r}: {what} {p} not found")
        out.append({"image": c.image, "label": c.current_labels, "name": f"review:{c.name}"})
    return out

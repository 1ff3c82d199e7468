"""The batch manifest (``segment.json`` + ``segment.csv``): every series, its status and why.

The manifest is a view of the done markers: at the start of a batch every series' status is
rebuilt from its marker (`resume_from_markers`), so a manifest left behind by a killed run
never disagrees with the files for long.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.inference.discovery import MANIFEST_FIELDS, SeriesRecord
from medseg.inference.series import is_done, now_utc
from medseg.io.atomic import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from medseg.inference.model import LoadedModel

STATUSES = ("done", "skipped", "failed", "pending")


def manifest_name(shard: tuple[int, int] | None) -> str:
    """``segment.json``, or ``segment.shard-i-of-n.json`` for a shard (shards may share OUTDIR)."""
    return "segment.json" if shard is None else f"segment.shard-{shard[0]}-of-{shard[1]}.json"


def manifest_files(shard: tuple[int, int] | None) -> tuple[str, str]:
    """The names of the files `write_manifest` writes: the JSON manifest and its CSV twin."""
    name = manifest_name(shard)
    return name, str(Path(name).with_suffix(".csv"))


def resume_from_markers(
    records: list[SeriesRecord], out_dir: Path, models: list[LoadedModel], overwrite: bool, threads: int
) -> list[SeriesRecord]:
    """Mark series finished by a previous run (valid marker, same checkpoints) as done.

    Args:
        threads: torch threads of this run's network. Series that a previous run computed with
            another count are kept, with one log line: on CPU the count is part of the
            arithmetic (a voxel at a tie may differ from what this run would write).

    Returns:
        The pending records left to process, in order.
    """
    todo = []
    other_threads: set[int] = set()
    for r in records:
        if r.status != "pending":
            continue
        info = None if overwrite else is_done(out_dir / r.stem, models)
        if info is None:
            todo.append(r)
            continue
        if info.get("torch_threads") not in (None, threads):
            other_threads.add(int(info["torch_threads"]))
        _take_marker(r, info)
        r.previous_run = True
    if other_threads:
        log.info(
            "series finished by a previous run with %s torch thread(s) are kept; this run uses %d (on CPU the "
            "count changes float sums, so a voxel at a tie may differ from a run with one setting throughout)",
            "/".join(map(str, sorted(other_threads))), threads,
        )
    return todo


def _take_marker(r: SeriesRecord, info: dict[str, Any]) -> None:
    """Set a record to what its done marker says."""
    prev = info.get("series", {})
    r.status, r.reason = "done", ""
    r.outputs = dict(info.get("outputs", {}))
    r.seconds = prev.get("seconds")
    r.n_slices = r.n_slices or prev.get("n_slices")
    r.warnings = list(prev.get("warnings") or [])
    r.uncertainty = prev.get("uncertainty")
    r.label_uncertainty = dict(prev.get("label_uncertainty") or {})


def agree_with_markers(records: list[SeriesRecord], out_dir: Path, models: list[LoadedModel]) -> None:
    """Make the records of this run's series say what their done markers say.

    Called before the last manifest write: a run stopped (Ctrl-C, a job terminated) between
    writing a series' marker and recording it would otherwise leave a manifest that counts it
    as pending, and a record said done without a valid marker goes back to pending.
    """
    for r in records:
        if r.status not in ("pending", "done"):
            continue
        info = is_done(out_dir / r.stem, models)
        if info is not None and r.status != "done":
            _take_marker(r, info)
        elif info is None and r.status == "done":
            r.status, r.reason = "pending", ""


def write_manifest(
    out_dir: Path,
    records: list[SeriesRecord],
    header: dict[str, Any],
    unreadable: list[dict[str, str]],
    shard: tuple[int, int] | None,
) -> Path:
    """Write the JSON manifest and its CSV twin atomically; returns the JSON path."""
    counts = {s: sum(r.status == s for r in records) for s in STATUSES}
    json_name, csv_name = manifest_files(shard)
    path = out_dir / json_name
    rows = [r.to_dict() for r in records]
    write_json_atomic(path, {**header, "updated": now_utc(), "counts": counts, "series": rows, "unreadable_files": unreadable})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS + ["label_uncertainty"], lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow(row | {"warnings": "; ".join(row["warnings"]),
                          "label_uncertainty": "; ".join(f"{k}={v:.4g}" for k, v in row["label_uncertainty"].items())})
    write_text_atomic(out_dir / csv_name, buf.getvalue())
    return path


def read_manifest_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of a manifest by series key ({} when it is missing or unreadable)."""
    try:
        return {row["key"]: row for row in json.loads(path.read_text()).get("series", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}

"""Per-epoch logs of a run: ``metrics.csv`` (one row per epoch) and TensorBoard events."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from medseg.io.atomic import write_text_atomic


class EpochLog:
    """Append-only CSV of epoch rows, truncated to the resumed epoch on ``--resume``.

    Args:
        path: the CSV file.
        columns: column names (fixed for the run).
        resume_epoch: keep only rows with ``epoch <= resume_epoch`` of an existing file (rows
            written after the checkpoint a run resumes from would otherwise appear twice);
            None starts a new file.
    """

    def __init__(self, path: Path, columns: list[str], resume_epoch: int | None = None) -> None:
        self.path = path
        self.columns = columns
        kept: list[dict[str, str]] = []
        if resume_epoch is not None and path.is_file():
            with path.open(newline="") as fh:
                kept = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= resume_epoch]
        lines = [",".join(columns)] + [",".join(r.get(c, "") for c in columns) for r in kept]
        write_text_atomic(path, "\n".join(lines) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        """Add one epoch's values (missing columns stay empty)."""

        def fmt(v: Any) -> str:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return ""
            return f"{v:.6g}" if isinstance(v, float) else str(v)

        with self.path.open("a", newline="") as fh:
            fh.write(",".join(fmt(row.get(c)) for c in self.columns) + "\n")


def read_epoch_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as floats (empty cells → nan)."""
    with Path(path).open(newline="") as fh:
        return [{k: float(v) if v != "" else math.nan for k, v in r.items()} for r in csv.DictReader(fh)]


class TensorBoardLog:
    """Scalars to ``<run>/tensorboard`` (no-op when disabled or tensorboard is missing)."""

    def __init__(self, log_dir: Path, enabled: bool, purge_step: int | None = None) -> None:
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                return
            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, Any], step: int) -> None:
        """Log every finite number of `values` at `step`."""
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)) and key != "epoch":
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()

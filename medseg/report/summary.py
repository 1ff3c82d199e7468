"""metrics.csv rows and the per-label statistics of summary.json."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medseg.metrics import METRIC_KEYS

#: Columns of metrics.csv, in order.
#: ``absent`` is ``true`` where the label is in neither map of the case (scored 1.0 / 0 mm by the
#: both-empty convention: a correct "nothing there", not a measured overlap).
CSV_COLUMNS: tuple[str, ...] = ("case", "label", "name", *METRIC_KEYS, "absent")


def is_absent(row: Mapping[str, Any]) -> bool:
    """True when the row's label is in neither the ground truth nor the prediction."""
    return row["volume_gt_ml"] == 0 and row["volume_pred_ml"] == 0
#: Metrics that are distances (``inf`` when exactly one mask is empty).
DISTANCE_KEYS: tuple[str, ...] = ("hd", "hd95", "assd")
#: Metrics where larger is better (the others: smaller is better).
HIGHER_IS_BETTER: frozenset[str] = frozenset({"dice", "iou", "nsd"})


def format_value(value: Any) -> str:
    """A CSV cell: floats at full precision (``repr``), infinities as ``inf``."""
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if math.isnan(v):
            return "nan"
        return repr(v)
    return str(value)


def metrics_csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """metrics.csv content: header `CSV_COLUMNS`, one row per case and label."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([("true" if is_absent(row) else "false") if c == "absent" else format_value(row[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


def _stats(values: Sequence[float]) -> dict[str, Any]:
    """mean, std (population, ddof=0), median, quartiles, IQR, min, max over the finite values."""
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    n_inf = sum(1 for v in values if math.isinf(v))
    if arr.size == 0:
        return {"count": 0, "inf": n_inf, "mean": None, "std": None, "median": None, "q1": None, "q3": None, "iqr": None, "min": None, "max": None}
    q1, med, q3 = (float(x) for x in np.percentile(arr, [25, 50, 75]))
    return {
        "count": int(arr.size),
        "inf": n_inf,
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "median": med,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def summarize(rows: Sequence[Mapping[str, Any]], labels: Mapping[int, str], n_missing: int = 0, n_failed: int = 0) -> dict[str, dict[str, Any]]:
    """Per-label statistics of the evaluated rows.

    For each label (keyed by name): ``label``, ``cases`` (rows evaluated), ``empty_both`` (label
    absent from both: scored as perfect), ``empty_gt`` (absent from the ground truth but
    predicted: false positive), ``empty_pred`` (present but not predicted: missed),
    ``missing`` / ``failed`` (cases without a usable prediction: no row), ``absent`` (True when
    the label is in neither map of every evaluated case: its scores are the convention only), and per metric
    ``count, inf, mean, std, median, q1, q3, iqr, min, max``. Statistics use the finite values
    only; ``inf`` distances (exactly one mask empty) are counted in ``inf``, never averaged.
    """
    out: dict[str, dict[str, Any]] = {}
    for label, name in labels.items():
        mine = [r for r in rows if r["label"] == label]
        gt_empty = [r["volume_gt_ml"] == 0 for r in mine]
        pred_empty = [r["volume_pred_ml"] == 0 for r in mine]
        entry: dict[str, Any] = {
            "label": int(label),
            "cases": len(mine),
            "empty_both": sum(g and p for g, p in zip(gt_empty, pred_empty)),
            "empty_gt": sum(g and not p for g, p in zip(gt_empty, pred_empty)),
            "empty_pred": sum(p and not g for g, p in zip(gt_empty, pred_empty)),
            "missing": n_missing,
            "failed": n_failed,
            "absent": bool(mine) and all(g and p for g, p in zip(gt_empty, pred_empty)),
        }
        for key in METRIC_KEYS:
            entry[key] = _stats([float(r[key]) for r in mine])
        out[name] = entry
    return out

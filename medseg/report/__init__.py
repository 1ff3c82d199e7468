"""Evaluation reports: metrics.csv, summary.json and a self-contained report.html.

`evaluate_folders` is the one entry point (``medseg evaluate`` calls it; so can the napari
plugin or a notebook). Metric definitions live in `medseg.metrics`.

Example:
    >>> from medseg.report import evaluate_folders
    >>> result = evaluate_folders("labelsTs", "predictions", "eval_out",
    ...                           labels={1: "liver", 2: "spleen"}, images="imagesTs", workers=4)
    >>> result.summary["per_label"]["liver"]["dice"]["mean"]
"""

from medseg.report.cases import CasePaths, pair_cases, resample_nearest
from medseg.report.evaluate import EvaluationResult, evaluate_folders, parse_label_names
from medseg.report.summary import CSV_COLUMNS, metrics_csv_text, summarize

__all__ = [
    "CSV_COLUMNS",
    "CasePaths",
    "EvaluationResult",
    "evaluate_folders",
    "metrics_csv_text",
    "pair_cases",
    "parse_label_names",
    "resample_nearest",
    "summarize",
]

"""`evaluate_folders`: score predictions against ground truth and write metrics.csv,
summary.json and report.html (the library behind ``medseg evaluate``)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError, MedsegError
from medseg.io import Volume
from medseg.io.atomic import write_json_atomic, write_text_atomic
from medseg.metrics import evaluate_case
from medseg.metrics.case import default_label_name, empty_row
from medseg.report.cases import CasePaths, check_same_grid, load_prediction, load_volume_any, pair_cases, resample_nearest
from medseg.report.summary import metrics_csv_text, summarize

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """What `evaluate_folders` found and wrote.

    Attributes:
        out_dir: the output folder; `metrics_csv`, `summary_json`, `report_html` inside it.
        rows: one dict per evaluated case and label (keys: ``case`` + `medseg.metrics.ROW_KEYS`).
        summary: the content of summary.json (``warnings``: negative label values, labels
            absent from every case; ``per_label[name]["absent"]``).
        labels: ``{label value: name}`` that were evaluated.
        missing: cases with ground truth but no prediction (not scored).
        failed: ``{case: error message}`` for cases that could not be scored (unreadable file,
            grid mismatch without ``resample``...).
        unmatched: predictions without ground truth (ignored).
    """

    out_dir: Path
    metrics_csv: Path
    summary_json: Path
    report_html: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    labels: dict[int, str]
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every ground-truth case had a prediction and was scored."""
        return not self.missing and not self.failed


@dataclass
class _Outcome:
    case: str
    status: str  # "ok" | "missing" | "failed"
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    label_names: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def parse_label_names(text: str | None) -> dict[int, str] | None:
    """``"1=liver,2=spleen"`` (or a JSON file ``{"1": "liver"}``) → ``{1: "liver", 2: "spleen"}``.

    A bare number names the label ``label_<n>``. None or "" → None (all labels present).

    Raises:
        InputError: malformed text (says which item and what is expected).
    """
    if text is None or not text.strip():
        return None
    if text.strip().lower().endswith(".json") and Path(text.strip()).is_file():
        import json

        raw = json.loads(Path(text.strip()).read_text())
        try:
            return {int(k): str(v) for k, v in raw.items() if int(k) != 0}
        except (AttributeError, ValueError) as exc:
            raise InputError(f"{text}: expected a JSON object {{\"1\": \"liver\", ...}} ({exc})") from exc
    out: dict[int, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, name = item.partition("=")
        try:
            value = int(key.strip())
        except ValueError:
            raise InputError(f"--labels item {item!r}: expected VALUE=NAME with an integer value, e.g. 1=liver,2=spleen") from None
        if value <= 0:
            raise InputError(f"--labels item {item!r}: label values must be positive (0 is background)")
        if value in out:
            raise InputError(f"--labels: label {value} given twice")
        out[value] = name.strip() or default_label_name(value)
    if len(set(out.values())) != len(out):
        raise InputError(f"--labels: label names must be unique, got {list(out.values())}")
    return out or None


def _load_pair(pair: CasePaths, resample: bool) -> tuple[Any, np.ndarray, dict[int, str]]:
    """(ground-truth Volume, prediction array on its grid, label names the prediction carries)."""
    gt = load_volume_any(pair.gt)
    if gt.array.ndim != 3:
        raise InputError(f"case {pair.case!r}: ground truth {pair.gt} is {gt.array.ndim}-D; expected a 3-D label map")
    assert pair.pred is not None
    pred = load_prediction(pair.pred, gt)
    if pred.array.ndim != 3:
        raise InputError(f"case {pair.case!r}: prediction {pair.pred} is {pred.array.ndim}-D; expected a 3-D label map")
    names = {int(k): str(v) for k, v in (pred.meta.get("label_names") or {}).items()}  # e.g. DICOM SEG segments
    if resample:
        return gt, resample_nearest(pred, gt), names
    check_same_grid(pair.case, gt, pred)
    return gt, np.asarray(pred.array), names


def _evaluate_pair(pair: CasePaths, labels: dict[int, str] | None, nsd_tolerance_mm: float, resample: bool) -> _Outcome:
    if pair.pred is None:
        return _Outcome(pair.case, "missing")
    try:
        gt, pred, names = _load_pair(pair, resample)
        notes = [w for w in (_negative_labels(gt.array, pair.gt, "ground truth"), _negative_labels(pred, pair.pred, "prediction")) if w]
        rows = evaluate_case(np.asarray(gt.array), pred, gt.spacing, labels=labels, nsd_tolerance_mm=nsd_tolerance_mm)
    except MedsegError as exc:
        return _Outcome(pair.case, "failed", error=str(exc))
    except (OSError, ValueError, MemoryError) as exc:
        return _Outcome(pair.case, "failed", error=f"{type(exc).__name__}: {exc}")
    return _Outcome(pair.case, "ok", rows=rows, label_names=names, warnings=notes)


def _negative_labels(array: Any, path: Any, what: str) -> str | None:
    """A warning when a label map holds negative values (scored as background), else None."""
    a = np.asarray(array)
    if a.dtype.kind not in "if" or a.size == 0:
        return None
    n = int(np.count_nonzero(a < 0))
    if n == 0:
        return None
    return (f"{what} {path}: {n} voxel(s) with negative label values (e.g. {a.min():g}) are scored as background; "
            "labels are 0 (background) or positive")


def _worst_entries(rows: list[dict[str, Any]], labels: Mapping[int, str], n: int) -> list[dict[str, Any]]:
    out = []
    for label, name in labels.items():
        mine = [r for r in rows if r["label"] == label and not (r["volume_gt_ml"] == 0 and r["volume_pred_ml"] == 0)]
        mine.sort(key=lambda r: (r["dice"], -r["hd95"] if not math.isinf(r["hd95"]) else -math.inf, r["case"]))
        out.extend({"label": label, "name": name, "case": r["case"], "row": r, "image_uri": None} for r in mine[:n])
    return out


def _draw_worst(worst: list[dict[str, Any]], pairs: dict[str, CasePaths], resample: bool) -> None:
    """Slice images of the worst cases (each case read once)."""
    from medseg.report.html import slice_image

    by_case: dict[str, list[dict[str, Any]]] = {}
    for w in worst:
        by_case.setdefault(w["case"], []).append(w)
    for case, entries in by_case.items():
        pair = pairs[case]
        if pair.image is None:
            continue
        try:
            gt, pred, _ = _load_pair(pair, resample)
            image = load_volume_any(pair.image)
            if not image.same_grid(gt, atol_mm=1e-3):
                image = Volume(resample_nearest(image, gt), gt.affine, image.meta)
            g = np.asarray(gt.array)
            for w in entries:
                w["image_uri"] = slice_image(image, g == w["label"], pred == w["label"], gt.affine, f"{case} — {w['name']}")
        except (MedsegError, OSError, ValueError) as exc:
            log.warning("case %s: no slice image (%s)", case, exc)


def evaluate_folders(
    gt: str | os.PathLike[str],
    pred: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    labels: Mapping[int, str] | None = None,
    images: str | os.PathLike[str] | None = None,
    *,
    nsd_tolerance_mm: float = 1.0,
    resample: bool = False,
    workers: int = 1,
    worst_cases: int = 3,
    progress: bool | Callable[[int, int, str], None] = False,
) -> EvaluationResult:
    """Score predictions against ground truth; write metrics.csv, summary.json, report.html.

    Args:
        gt: ground-truth label file, or folder of them (NIfTI/NRRD/MHA; DICOM where
            `medseg.io.load_volume` reads it). Cases are matched by file name without suffix.
        pred: prediction file / folder (same formats; a DICOM SEG ``.dcm`` is decoded onto the
            ground truth's grid).
        out_dir: output folder (created). Files are written atomically.
        labels: ``{value: name}`` to evaluate, in report order; labels absent from both maps of
            a case count as both-empty (perfect). None: every label present in any case, named
            by the prediction's metadata where it has names (DICOM SEG segment labels), else
            ``label_<value>``.
        images: optional image file / folder matched by case name; the worst cases then get
            an axial slice with ground-truth and prediction contours in report.html.
        nsd_tolerance_mm: τ of the normalised surface Dice, mm.
        resample: put predictions on a different grid onto the ground truth's grid (nearest
            neighbour) instead of failing that case with a `GeometryError` message.
        workers: processes scoring cases in parallel (1 = in this process).
        worst_cases: worst cases per label listed (and drawn) in the report.
        progress: True for a rich progress bar on stderr, or a callback ``(done, total, case)``.

    Returns:
        `EvaluationResult`. Missing predictions and failed cases do not raise: they are listed
        in the result, summary.json and report.html (`EvaluationResult.ok` is False).

    Raises:
        InputError: a path does not exist, or the folders hold no ground truth.
    """
    from medseg import __version__
    from medseg.report.html import render_html

    if not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise InputError(f"NSD tolerance must be a finite number of mm >= 0, got {nsd_tolerance_mm}")
    pairs, unmatched = pair_cases(gt, pred, images)
    for name in unmatched:
        log.warning("prediction %s has no ground truth: ignored", name)
    wanted = dict(labels) if labels else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    outcomes: dict[str, _Outcome] = {}
    callback = progress if callable(progress) else None
    bar = None
    if progress is True:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                       TextColumn("{task.description}"), console=Console(stderr=True), transient=False)
        bar.start()
        task = bar.add_task("", total=len(pairs))

    def _done(o: _Outcome) -> None:
        outcomes[o.case] = o
        if o.status == "failed":
            log.error("case %s failed: %s", o.case, o.error)
        if bar is not None:
            bar.update(task, advance=1, description=o.case)
        if callback is not None:
            callback(len(outcomes), len(pairs), o.case)

    try:
        n_workers = max(1, min(int(workers), len(pairs)))
        if n_workers == 1:
            for pair in pairs:
                _done(_evaluate_pair(pair, wanted, nsd_tolerance_mm, resample))
        else:
            import multiprocessing

            # spawn: workers must not inherit a parent's torch / CUDA / thread state
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(_evaluate_pair, p, wanted, nsd_tolerance_mm, resample) for p in pairs]
                for fut in as_completed(futures):
                    _done(fut.result())
    finally:
        if bar is not None:
            bar.stop()

    ordered = [outcomes[p.case] for p in pairs]
    if wanted is None:
        present = sorted({r["label"] for o in ordered for r in o.rows})
        carried: dict[int, str] = {}
        for o in ordered:
            for k, v in o.label_names.items():
                carried.setdefault(k, v)
        wanted = {k: carried.get(k, default_label_name(k)) for k in present}
    rows: list[dict[str, Any]] = []
    for o in ordered:
        if o.status != "ok":
            continue
        have = {r["label"]: r for r in o.rows}
        for label, name in wanted.items():
            r = have.get(label) or empty_row(label, name)  # absent from both maps of this case
            rows.append({"case": o.case, **r, "name": name})
    missing = [o.case for o in ordered if o.status == "missing"]
    failed = {o.case: o.error for o in ordered if o.status == "failed"}

    per_label = summarize(rows, wanted, n_missing=len(missing), n_failed=len(failed))
    warnings = [w for o in ordered for w in o.warnings]
    for name, s in per_label.items():
        if s["absent"]:
            warnings.append(
                f"label {s['label']} ({name}) is absent from ground truth and prediction in all {s['cases']} evaluated case(s): "
                "its Dice 1.0 / distance 0 are the both-empty convention, not a measurement; check the label value"
            )
    for w in warnings:
        log.warning("%s", w)
    summary: dict[str, Any] = {
        "medseg_version": __version__,
        "ground_truth": str(gt),
        "prediction": str(pred),
        "images": str(images) if images is not None else None,
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "resample": resample,
        "labels": {str(k): v for k, v in wanted.items()},
        "cases": {
            "total": len(pairs),
            "evaluated": len(pairs) - len(missing) - len(failed),
            "missing": missing,
            "failed": failed,
            "unmatched_predictions": unmatched,
        },
        "per_label": per_label,
        "warnings": warnings,
        "notes": "Statistics use finite values only; 'inf' counts cases with exactly one mask empty "
        "(distances undefined). std is the population std (ddof=0). IQR = q3 - q1 (numpy linear percentiles).",
    }

    worst = _worst_entries(rows, wanted, worst_cases)
    if images is not None:
        _draw_worst(worst, {p.case: p for p in pairs}, resample)
    page = render_html(
        title="medseg evaluation report",
        meta={"ground truth": gt, "prediction": pred, "medseg": __version__},
        labels=wanted,
        rows=rows,
        summary=per_label,
        missing=missing,
        failed=failed,
        unmatched=unmatched,
        worst=worst,
        nsd_tolerance_mm=nsd_tolerance_mm,
        warnings=warnings,
    )
    metrics_csv = write_text_atomic(out / "metrics.csv", metrics_csv_text(rows))
    summary_json = write_json_atomic(out / "summary.json", summary)
    report_html = write_text_atomic(out / "report.html", page)
    return EvaluationResult(out, metrics_csv, summary_json, report_html, rows, summary, wanted, missing, failed, unmatched)


__all__ = ["EvaluationResult", "evaluate_folders", "parse_label_names"]

"""The denoising report: per-case CSV, a summary HTML page and one PNG panel per case.

Every row states what its numbers mean: the noise model and level *with units*, the method, the
data range (and the window it comes from, in image units) of PSNR/SSIM, and the seed. The panel
shows the noisy input, each method's output and the clean reference in one fixed display window,
and below them each one's difference to the clean image in one fixed symmetric window, so
images and residual noise compare at a glance.

Typical use (see ``benchmarks/bench_denoise.py``)::

    rows = [score_denoised("ct_dicom", "ct_dose", 0.25, "dose fraction", "nlm", out, clean,
                           window=(-1024, 3071), units="HU", seed=0)]
    write_denoise_panel("panel.png", noisy[:, :, 5], {"nlm": out[:, :, 5]}, clean[:, :, 5],
                        window=(-160, 240), title="ct_dicom · dose 0.25")
    write_denoise_report(rows, "report_dir", panels={"ct_dicom · dose 0.25": Path("panel.png")})
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from medseg.io.atomic import write_bytes_atomic, write_text_atomic
from medseg.metrics.image import psnr, rmse, ssim

__all__ = ["DenoiseRow", "score_denoised", "summarize_denoise", "write_denoise_panel", "write_denoise_report"]


@dataclass(frozen=True)
class DenoiseRow:
    """One method on one noisy case: the metrics and everything needed to read them."""

    case: str
    noise_model: str
    level: float
    level_units: str
    method: str
    seed: int
    psnr_db: float
    ssim: float
    rmse: float
    data_range: float
    window: str  # "lo..hi units" (both images clipped to it before the metrics) or "not clipped, range R units"
    units: str
    seconds_per_slice: float | None = None


CSV_COLUMNS = tuple(f.name for f in fields(DenoiseRow))


def score_denoised(
    case: str,
    noise_model: str,
    level: float,
    level_units: str,
    method: str,
    denoised: np.ndarray,
    clean: np.ndarray,
    *,
    units: str,
    seed: int,
    window: tuple[float, float] | None = None,
    data_range: float | None = None,
    seconds_per_slice: float | None = None,
) -> DenoiseRow:
    """PSNR (dB), per-slice SSIM and RMSE of ``denoised`` against ``clean``.

    Args:
        case, noise_model, level, level_units, method, seed: what the row describes.
        denoised, clean: same-shape arrays in image units (HU for CT), (X, Y[, Z]).
        units: the image units' name ("HU", "a.u.").
        window: ``(lo, hi)`` in image units: both clipped to it, data range ``hi − lo``.
        data_range: instead of a window: the data range, nothing clipped (e.g. MR's P99.5).
        seconds_per_slice: the method's time per slice, if measured.

    Raises:
        ValueError: neither or both of window / data_range.
    """
    if (window is None) == (data_range is None):
        raise ValueError("give exactly one of window (lo, hi) or data_range")
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        kw: dict[str, Any] = {"window": (lo, hi)}
        span, text = hi - lo, f"{lo:g}..{hi:g} {units}"
    else:
        span = float(data_range)  # type: ignore[arg-type]
        kw, text = {"data_range": span}, f"not clipped, range {span:.4g} {units}"
    return DenoiseRow(
        case=case, noise_model=noise_model, level=float(level), level_units=level_units, method=method, seed=int(seed),
        psnr_db=psnr(denoised, clean, **kw), ssim=ssim(denoised, clean, **kw),
        rmse=rmse(denoised, clean, window=kw.get("window")), data_range=span, window=text, units=units,
        seconds_per_slice=seconds_per_slice,
    )


def summarize_denoise(rows: Sequence[DenoiseRow]) -> list[dict[str, Any]]:
    """Mean and std over cases and seeds per (noise model, level, method), in first-seen order.

    Each case (volume) contributes its volume-level PSNR/SSIM; ``n`` counts the rows averaged.
    """
    groups: dict[tuple[str, float, str], list[DenoiseRow]] = {}
    for r in rows:
        groups.setdefault((r.noise_model, r.level, r.method), []).append(r)
    out = []
    for (model, level, method), rs in groups.items():
        entry: dict[str, Any] = {
            "noise_model": model, "level": level, "level_units": rs[0].level_units, "method": method, "n": len(rs),
            "window": rs[0].window,
        }
        for key in ("psnr_db", "ssim", "rmse"):
            values = np.array([getattr(r, key) for r in rs], dtype=np.float64)
            entry[key] = float(values.mean())
            entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        times = [r.seconds_per_slice for r in rs if r.seconds_per_slice is not None]
        entry["seconds_per_slice"] = float(np.median(times)) if times else None
        out.append(entry)
    return out


def _radiological(image: np.ndarray) -> np.ndarray:
    """An (X, Y) RAS slice as rows = y (drawn bottom-up), columns = x reversed (right on the left)."""
    return np.asarray(image, dtype=np.float32)[::-1, :].T


def write_denoise_panel(
    path: str | os.PathLike[str],
    noisy: np.ndarray,
    denoised: Mapping[str, np.ndarray],
    clean: np.ndarray,
    *,
    window: tuple[float, float],
    difference_window: float | None = None,
    title: str = "",
    units: str = "HU",
) -> Path:
    """A PNG: top row noisy · each method · clean in ``window``; bottom row each minus clean.

    Args:
        path: the PNG to write (atomically).
        noisy, clean: 2-D axial slices of RAS-oriented arrays (X, Y) in image units, shown in
            the radiological view (anterior up, the patient's right on the left).
        denoised: method name → its 2-D output.
        window: display window (lo, hi) in image units, the same for every image.
        difference_window: differences are shown in ±this (image units); default 20 % of the
            window's width, the same for every difference image.
        title: the panel's title (case, noise model and level).
        units: the image units' name for the colour bars.

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lo, hi = float(window[0]), float(window[1])
    dwin = float(difference_window) if difference_window is not None else 0.2 * (hi - lo)
    columns = [("noisy", noisy), *denoised.items(), ("clean", clean)]
    n = len(columns)
    fig = Figure(figsize=(2.6 * n + 0.6, 5.6), dpi=110)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, n + 1, width_ratios=[1] * n + [0.05], wspace=0.05, hspace=0.12)
    for i, (name, image) in enumerate(columns):
        ax = fig.add_subplot(grid[0, i])
        shown = ax.imshow(_radiological(image), cmap="gray", vmin=lo, vmax=hi, origin="lower")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
        if i == n - 1:
            fig.colorbar(shown, cax=fig.add_subplot(grid[0, n]), label=f"{units} (window {lo:g}..{hi:g})")
        if name == "clean":
            continue
        ax = fig.add_subplot(grid[1, i])
        diff = np.asarray(image, dtype=np.float32) - np.asarray(clean, dtype=np.float32)
        dshown = ax.imshow(_radiological(diff), cmap="RdBu_r", vmin=-dwin, vmax=dwin, origin="lower")
        ax.set_title(f"{name} − clean", fontsize=8)
        ax.set_axis_off()
    fig.colorbar(dshown, cax=fig.add_subplot(grid[1, n]), label=f"difference ({units})")
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return write_bytes_atomic(path, buf.getvalue())


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def write_denoise_report(
    rows: Sequence[DenoiseRow],
    out_dir: str | os.PathLike[str],
    *,
    panels: Mapping[str, Path] | None = None,
    protocol: str = "",
) -> dict[str, Path]:
    """Write ``denoise_metrics.csv`` (one row per case × noise × level × method × seed) and
    ``denoise_report.html`` (the protocol, the summary table, the per-case table and the panels).

    Args:
        rows: the scored rows (`score_denoised`).
        out_dir: the folder (created); files are written atomically.
        panels: panel title → PNG path (linked relative to out_dir when inside it).
        protocol: a sentence or two on the protocol (data range, averaging, seeds, split).

    Returns:
        ``{"csv": path, "html": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    csv_path = write_text_atomic(out / "denoise_metrics.csv", buf.getvalue())

    def table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        lines = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in body)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>"

    summary = summarize_denoise(rows)
    summary_table = table(
        ["noise model", "level", "units", "method", "n", "PSNR (dB)", "± sd", "SSIM", "± sd", "RMSE", "s / slice", "window"],
        [[s["noise_model"], s["level"], s["level_units"], s["method"], s["n"], s["psnr_db"], s["psnr_db_std"], s["ssim"],
          s["ssim_std"], s["rmse"], s["seconds_per_slice"], s["window"]] for s in summary],
    )
    case_table = table(list(CSV_COLUMNS), [list(asdict(r).values()) for r in rows])
    figures = []
    for title, png in (panels or {}).items():
        try:
            src = Path(png).resolve().relative_to(out.resolve()).as_posix()
        except ValueError:
            src = Path(png).resolve().as_uri()
        figures.append(f"<figure><img src='{html.escape(src)}' alt='{html.escape(title)}'><figcaption>{html.escape(title)}</figcaption></figure>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>medseg denoising report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}th{{background:#eee}}img{{max-width:100%}}</style></head>
<body><h1>Denoising report</h1>
<p>{html.escape(protocol) or "PSNR/SSIM/RMSE against the clean image; both clipped to the stated window, whose width is the data range."}</p>
<h2>Summary (mean over cases and seeds)</h2>{summary_table}
<h2>Per case</h2>{case_table}
<h2>Panels</h2>{''.join(figures) or '<p>none</p>'}
</body></html>
"""
    html_path = write_text_atomic(out / "denoise_report.html", page)
    return {"csv": csv_path, "html": html_path}

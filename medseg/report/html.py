"""The self-contained report.html: summary table, box/strip plots, worst cases with slice images.

Plots are drawn with matplotlib's Agg canvas (no display, no pyplot global state) and embedded
as base64 PNG, so the file can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medseg.io import Volume
from medseg.report.summary import DISTANCE_KEYS, HIGHER_IS_BETTER
from medseg.io.orientation import to_ras_view

METRIC_TITLES: dict[str, str] = {
    "dice": "Dice",
    "iou": "IoU",
    "hd": "Hausdorff distance (mm)",
    "hd95": "HD95 (mm)",
    "assd": "ASSD (mm)",
    "nsd": "NSD",
    "volume_gt_ml": "GT volume (mL)",
    "volume_pred_ml": "Predicted volume (mL)",
}
PLOT_METRICS: tuple[str, ...] = ("dice", "iou", "hd", "hd95", "assd", "nsd")
GT_COLOUR = "#00c853"
PRED_COLOUR = "#ff1744"


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def metric_plot(rows: Sequence[Mapping[str, Any]], labels: Mapping[int, str], metric: str, seed: int = 0) -> str:
    """Box plot with the individual cases as jittered points, one box per label; a PNG data URI.

    ``inf`` values (exactly one mask empty) cannot be drawn: each label's tick says how many.
    """
    from matplotlib.figure import Figure

    names = list(labels.values())
    fig = Figure(figsize=(max(3.2, 0.75 * len(names) + 1.4), 3.0))
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(seed)
    data, ticks = [], []
    for label, name in labels.items():
        vals = np.array([float(r[metric]) for r in rows if r["label"] == label], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        data.append(finite)
        n_inf = int(np.count_nonzero(np.isinf(vals)))
        ticks.append(name + (f"\n({n_inf} inf)" if n_inf else ""))
    positions = np.arange(1, len(names) + 1)
    non_empty = [i for i, d in enumerate(data) if d.size]
    if non_empty:
        ax.boxplot(
            [data[i] for i in non_empty],
            positions=positions[non_empty],
            widths=0.55,
            showfliers=False,
            medianprops={"color": "#1565c0", "linewidth": 1.6},
            boxprops={"color": "#455a64"},
            whiskerprops={"color": "#455a64"},
            capprops={"color": "#455a64"},
        )
    for pos, d in zip(positions, data):
        if d.size:
            ax.scatter(pos + rng.uniform(-0.16, 0.16, d.size), d, s=12, alpha=0.65, color="#ef6c00", edgecolors="none", zorder=3)
    ax.set_xticks(positions)
    ax.set_xticklabels(ticks, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center", fontsize=8)
    ax.set_xlim(0.4, len(names) + 0.6)
    ax.set_title(METRIC_TITLES[metric], fontsize=10)
    if metric in HIGHER_IS_BETTER:
        ax.set_ylim(-0.02, 1.02)
    elif all(d.size == 0 for d in data):
        ax.set_ylim(0, 1)
    else:
        ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def slice_image(image: Volume | None, gt: np.ndarray, pred: np.ndarray, affine: np.ndarray, title: str) -> str:
    """Axial slice with the most disagreement between two binary masks, GT and prediction
    contours drawn over the image (radiological view: patient's right on the left); PNG URI.

    Without an image the masks are drawn over a black background.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    g, spacing = to_ras_view(gt.astype(bool), affine)
    p, _ = to_ras_view(pred.astype(bool), affine)
    img = to_ras_view(np.asarray(image.array[..., 0] if image.array.ndim == 4 else image.array, dtype=np.float32), affine)[0] if image is not None else None
    disagreement = (g ^ p).sum(axis=(0, 1))
    union = (g | p).sum(axis=(0, 1))
    k = int(np.argmax(disagreement)) if disagreement.any() else int(np.argmax(union))

    def view(a: np.ndarray) -> np.ndarray:  # rows anterior→posterior, columns right→left
        return a[::-1, ::-1, k].T

    gs, ps = view(g), view(p)
    both = gs | ps
    rows_any, cols_any = np.flatnonzero(both.any(axis=1)), np.flatnonzero(both.any(axis=0))
    if rows_any.size:
        pad_r = max(10, (rows_any[-1] - rows_any[0]) // 2)
        pad_c = max(10, (cols_any[-1] - cols_any[0]) // 2)
        r0, r1 = max(rows_any[0] - pad_r, 0), min(rows_any[-1] + pad_r + 1, both.shape[0])
        c0, c1 = max(cols_any[0] - pad_c, 0), min(cols_any[-1] + pad_c + 1, both.shape[1])
    else:
        r0, r1, c0, c1 = 0, both.shape[0], 0, both.shape[1]
    crop = (slice(r0, r1), slice(c0, c1))
    fig = Figure(figsize=(3.4, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    aspect = float(spacing[1] / spacing[0])  # pixel height / width in mm
    if img is not None:
        sl = view(img)
        lo, hi = np.percentile(img[::4, ::4, ::2], [1, 99])
        if lo <= -500 and hi >= 100:  # CT in HU: soft-tissue window (level 40, width 400)
            lo, hi = -160.0, 240.0
        ax.imshow(sl[crop], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect, interpolation="nearest")
    else:
        ax.imshow(np.zeros((r1 - r0, c1 - c0)), cmap="gray", vmin=0, vmax=1, aspect=aspect)
    for mask, colour in ((gs, GT_COLOUR), (ps, PRED_COLOUR)):
        m = mask[crop]
        if m.any() and not m.all():
            ax.contour(m.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.3)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title}\naxial slice {k} (R on left)", fontsize=8)
    ax.legend(
        handles=[Line2D([], [], color=GT_COLOUR, label="ground truth"), Line2D([], [], color=PRED_COLOUR, label="prediction")],
        loc="lower center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=7, frameon=False,
    )
    return _png(fig)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isinf(v):
            return "inf"
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}"
    return html.escape(str(value))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#212121;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.2em;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#616161;font-size:.9em} table{border-collapse:collapse;font-size:.85em;margin:8px 0}
th,td{border:1px solid #e0e0e0;padding:4px 8px;text-align:right} th{background:#f5f5f5} td.l,th.l{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:12px} .plots img{border:1px solid #eee;max-width:100%}
.cases{display:flex;flex-wrap:wrap;gap:10px} figure{margin:0;border:1px solid #eee;padding:4px}
figcaption{font-size:.8em;color:#424242;max-width:330px} .bad{color:#c62828} .warn{background:#fff8e1;padding:8px;border:1px solid #ffe082}
details summary{cursor:pointer;color:#1565c0} code{background:#f5f5f5;padding:1px 4px}
"""

DEFINITIONS_HTML = """
<ul>
<li><b>Dice</b> = 2|G∩P|/(|G|+|P|); <b>IoU</b> = |G∩P|/|G∪P|; volumes in mL from the voxel spacing.</li>
<li><b>Boundary</b> of a mask: its voxels removed by a 6-connected (face) binary erosion (outside the image counts as background).</li>
<li><b>Directed distances</b>: from each boundary voxel of one mask to the nearest boundary voxel of the other,
Euclidean in mm between voxel centres (voxel spacing from the ground truth's header).</li>
<li><b>HD</b> = max of both directed maxima; <b>HD95</b> = max of both directed 95th percentiles (linear interpolation, numpy's default);
<b>ASSD</b> = mean of both directed distance sets pooled; <b>NSD(τ)</b> = boundary voxels of both masks within τ of the other boundary / all boundary voxels of both.</li>
<li>Both masks empty: Dice = IoU = NSD = 1, distances 0. Exactly one empty: Dice = IoU = NSD = 0, distances = inf;
summaries average the finite values and count the inf cases separately.</li>
<li>These equal MONAI 1.6's DiceMetric, MeanIoU, compute_hausdorff_distance (percentile=95 for HD95),
compute_average_surface_distance(symmetric=True) and compute_surface_dice (with spacing), within float32 rounding, except that MONAI gives nan when both masks are empty.</li>
</ul>
"""


def render_html(
    *,
    title: str,
    meta: Mapping[str, Any],
    labels: Mapping[int, str],
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Mapping[str, Any]],
    missing: Sequence[str],
    failed: Mapping[str, str],
    unmatched: Sequence[str],
    worst: Sequence[Mapping[str, Any]],
    nsd_tolerance_mm: float,
    warnings: Sequence[str] = (),
) -> str:
    """The report page. `worst` holds ``{label, name, case, row, image_uri | None}`` entries;
    `warnings` are shown at the top (labels absent everywhere, negative label values...)."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>{e(title)}</h1>")
    parts.append("<p class='meta'>" + " · ".join(f"{e(str(k))}: <code>{e(str(v))}</code>" for k, v in meta.items()) + "</p>")
    n_cases = len({r["case"] for r in rows})
    parts.append(f"<p>{n_cases} case(s) evaluated, {len(labels)} label(s), NSD tolerance τ = {nsd_tolerance_mm:g} mm.</p>")
    if missing or failed or unmatched or warnings:
        parts.append("<div class='warn'>")
        if warnings:
            parts.append("<ul>" + "".join(f"<li>{e(w)}</li>" for w in warnings) + "</ul>")
        if missing:
            parts.append(f"<p class='bad'><b>{len(missing)} case(s) without a prediction</b> (not scored): {e(', '.join(missing))}</p>")
        if failed:
            parts.append(f"<p class='bad'><b>{len(failed)} case(s) failed</b>:</p><ul>" + "".join(f"<li><b>{e(c)}</b>: {e(msg)}</li>" for c, msg in failed.items()) + "</ul>")
        if unmatched:
            parts.append(f"<p>{len(unmatched)} prediction(s) without ground truth (ignored): {e(', '.join(unmatched))}</p>")
        parts.append("</div>")

    parts.append("<h2>Summary</h2><p class='meta'>mean ± std (population) and median [IQR] over the finite values; "
                 "inf = cases with exactly one mask empty (not averaged).</p>")
    parts.append("<table><tr><th class='l'>label</th><th>cases</th><th>empty: both / GT / pred</th>")
    parts.extend(f"<th>{e(METRIC_TITLES[k])}</th>" for k in PLOT_METRICS)
    parts.append("</tr>")
    for name, s in summary.items():
        absent = " <b class='bad'>absent</b>" if s.get("absent") else ""
        parts.append(f"<tr><td class='l'>{e(name)} ({s['label']}){absent}</td><td>{s['cases']}</td><td>{s['empty_both']} / {s['empty_gt']} / {s['empty_pred']}</td>")
        for k in PLOT_METRICS:
            st = s[k]
            cell = "–" if st["mean"] is None else f"{_fmt(st['mean'])} ± {_fmt(st['std'])}<br><small>{_fmt(st['median'])} [{_fmt(st['iqr'])}]</small>"
            if st["inf"]:
                cell += f"<br><small class='bad'>{st['inf']} inf</small>"
            parts.append(f"<td>{cell}</td>")
        parts.append("</tr>")
    parts.append("</table>")

    if rows:
        parts.append("<h2>Distributions</h2><div class='plots'>")
        for k in PLOT_METRICS:
            parts.append(f"<img alt='{e(METRIC_TITLES[k])} per label' src='{metric_plot(rows, labels, k)}'>")
        parts.append("</div>")

    if worst:
        parts.append("<h2>Worst cases</h2><p class='meta'>Lowest Dice per label (ties: larger HD95 first). "
                     f"Contours: <span style='color:{GT_COLOUR}'>ground truth</span>, <span style='color:{PRED_COLOUR}'>prediction</span>, "
                     "on the axial slice where they disagree most.</p>")
        for name in labels.values():
            mine = [w for w in worst if w["name"] == name]
            if not mine:
                continue
            parts.append(f"<h3>{e(name)}</h3><table><tr><th class='l'>case</th>" + "".join(f"<th>{e(k)}</th>" for k in PLOT_METRICS) + "</tr>")
            for w in mine:
                parts.append(f"<tr><td class='l'>{e(w['case'])}</td>" + "".join(f"<td>{_fmt(w['row'][k])}</td>" for k in PLOT_METRICS) + "</tr>")
            parts.append("</table>")
            figs = [w for w in mine if w.get("image_uri")]
            if figs:
                parts.append("<div class='cases'>")
                for w in figs:
                    parts.append(f"<figure><img alt='{e(w['case'])} {e(name)}' src='{w['image_uri']}'><figcaption>{e(w['case'])}: "
                                 f"Dice {_fmt(w['row']['dice'])}, HD95 {_fmt(w['row']['hd95'])}"
                                 f"{'' if math.isinf(w['row']['hd95']) else ' mm'}</figcaption></figure>")
                parts.append("</div>")

    parts.append(f"<h2>All cases</h2><details><summary>{len(rows)} rows (also in metrics.csv)</summary><table><tr><th class='l'>case</th><th class='l'>label</th>")
    parts.extend(f"<th>{e(k)}</th>" for k in (*PLOT_METRICS, "volume_gt_ml", "volume_pred_ml"))
    parts.append("</tr>")
    for r in rows:
        absent = " <small>(absent)</small>" if r["volume_gt_ml"] == 0 and r["volume_pred_ml"] == 0 else ""
        parts.append(f"<tr><td class='l'>{e(r['case'])}</td><td class='l'>{e(r['name'])}{absent}</td>"
                     + "".join(f"<td>{_fmt(r[k])}</td>" for k in (*PLOT_METRICS, "volume_gt_ml", "volume_pred_ml")) + "</tr>")
    parts.append("</table></details>")
    parts.append(f"<h2>Definitions</h2>{DEFINITIONS_HTML}")
    parts.append("</body></html>\n")
    return "".join(parts)


__all__ = ["DISTANCE_KEYS", "metric_plot", "render_html", "slice_image"]

"""The low-dose CT evaluation report: CSVs, panels, NPS curves, a markdown and an HTML page.

Written from a `medseg.report.ldct.LowDoseEvaluation` into one folder::

    ldct_metrics.csv      one row per dose × method × HU window: PSNR, SSIM, RMSE, data range
    ldct_nps.csv          one row per dose × method: ROIs, noise std, mean frequency, NPS error
    ldct_nps_curves.csv   the radial NPS curves (dose, method, frequency, NPS)
    panel_dose<pct>.png   the panel slice, every method and the normal dose in one HU window
    nps_dose<pct>.png     the radial NPS of every method against the normal dose's
    ldct_report.md / ldct_report.html   protocol, tables, "who wins where", panels
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from medseg.io.atomic import write_bytes_atomic, write_text_atomic
from medseg.report.denoise import CSV_COLUMNS as METRIC_COLUMNS
from medseg.report.denoise import write_denoise_panel
from medseg.report.ldct import LOW_DOSE_INPUT, NORMAL_DOSE, LowDoseEvaluation, NpsRow

__all__ = ["winners", "write_low_dose_report"]

NPS_COLUMNS = tuple(f.name for f in fields(NpsRow))


def _pct(dose: float) -> str:
    return f"{100 * dose:g}".replace(".", "p")


def _csv(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    return buf.getvalue()


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞"
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def winners(ev: LowDoseEvaluation) -> list[str]:
    """One sentence per dose (and window): which method has the best PSNR, SSIM, RMSE, and the
    NPS closest to normal dose (the low-dose input competes too: a method that loses to it
    makes things worse)."""
    lines = []
    for dose in ev.protocol.doses:
        rows = [r for r in ev.rows if r.level == float(dose)]
        for window in dict.fromkeys(r.window for r in rows):
            wr = [r for r in rows if r.window == window]
            bp = max(wr, key=lambda r: r.psnr_db)
            bs = max(wr, key=lambda r: r.ssim)
            br = min(wr, key=lambda r: r.rmse)
            lines.append(
                f"dose {dose:g}, window {window}: best PSNR {bp.method} ({bp.psnr_db:.2f} dB), "
                f"best SSIM {bs.method} ({bs.ssim:.4f}), lowest RMSE {br.method} ({br.rmse:.2f} HU)"
            )
        nr = [r for r in ev.nps if r.dose_fraction == float(dose) and r.method != NORMAL_DOSE]
        if nr:
            bn = min(nr, key=lambda r: r.nps_error)
            smooth = [r.method for r in nr if r.std_ratio_vs_normal < 0.9]
            lines.append(
                f"dose {dose:g}, noise texture: NPS closest to normal dose {bn.method} (error {bn.nps_error:.3f}, "
                f"noise std {bn.std_ratio_vs_normal:.2f}× normal dose)"
                + (f"; below 0.9× the normal-dose noise (over-smoothed): {', '.join(smooth)}" if smooth else "")
            )
    return lines


def _nps_plot(ev: LowDoseEvaluation, dose: float, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names = [NORMAL_DOSE, *[m for (d, m) in ev.nps_curves if d == float(dose) and m != NORMAL_DOSE]]
    for name in dict.fromkeys(names):
        f, p = ev.nps_curves[(float(dose), name)]
        f, p = f[1:], p[1:]  # the first ring holds the zero frequency, which the detrending removes
        style = dict(color="black", linewidth=2.2) if name == NORMAL_DOSE else dict(linewidth=1.3)
        ax.plot(f, p, label=name, **style)
    ax.set_yscale("log")
    ax.set_xlabel("radial frequency (cycles/mm)")
    ax.set_ylabel("NPS (HU²·mm²)")
    n = next((r.n_rois for r in ev.nps if r.dose_fraction == float(dose)), 0)
    ax.set_title(f"{ev.case} · dose {dose:g} · radial NPS in {n} uniform-region ROIs", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return write_bytes_atomic(path, buf.getvalue())


def _protocol_text(ev: LowDoseEvaluation) -> list[str]:
    p = ev.protocol
    sim = ", ".join(
        f"dose {d:g}: I0 {v.get('photons_per_ray_used', float('nan')):.3g} photons/ray, seed {v.get('seed')}, "
        f"views {v.get('views') or 'default'}"
        for d, v in ev.simulation_params.items()
    )
    windows = "; ".join(f"{lo:g}..{hi:g} HU (data range {hi - lo:g} HU)" for lo, hi in p.windows)
    return [
        f"Case {ev.case}: normal-dose scan, RAS, {ev.pixel_spacing_mm[0]:.3g} × {ev.pixel_spacing_mm[1]:.3g} mm pixels, "
        f"{ev.slice_thickness_mm:.3g} mm slices; scored slices {ev.scored_slices} (panel slice {ev.panel_slice}).",
        f"Low dose: medseg.ct.low_dose.simulate_low_dose_volume (projection-domain noise insertion, default I0 from "
        f"the fluence unless set); {sim}.",
        f"Fidelity against the normal-dose scan: PSNR, per-slice-mean SSIM (Gaussian σ 1.5 px) and RMSE in HU, "
        f"both images clipped to the window, data range = window width; windows: {windows}. Means over the scored slices.",
        f"Noise texture: {p.roi_size_px}×{p.roi_size_px} px ROIs wholly inside the uniform-region mask (at most "
        f"{p.max_rois_per_slice} per scored slice, the same ROIs for every method), plane-detrended; "
        "nps_error = Σ|NPS − NPS_normal dose| / Σ NPS_normal dose over the 2-D frequency plane (0 = normal-dose texture, "
        "1 = all noise removed); noise_std_hu includes the organ's own texture, identical for every method.",
        f"Panels: display window {p.display_window[0]:g}..{p.display_window[1]:g} HU for every image; differences "
        f"to normal dose in ±{0.2 * (p.display_window[1] - p.display_window[0]):g} HU.",
        "Seconds per slice: the method's call time divided by the scored slices (a network that runs on the whole "
        "volume or on each scored slice's slab counts those extra slices too; on a shared machine, a rough figure).",
    ]


def write_low_dose_report(ev: LowDoseEvaluation, out_dir: str | os.PathLike[str], *, title: str = "Low-dose CT enhancement") -> dict[str, Path]:
    """Write the evaluation's CSVs, panels and reports into `out_dir` (module docstring).

    Returns:
        ``{"metrics_csv", "nps_csv", "curves_csv", "markdown", "html"}`` → path, plus one
        ``panel_<pct>`` and ``nps_<pct>`` per dose.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["metrics_csv"] = write_text_atomic(out / "ldct_metrics.csv", _csv(METRIC_COLUMNS, [asdict(r) for r in ev.rows]))
    paths["nps_csv"] = write_text_atomic(out / "ldct_nps.csv", _csv(NPS_COLUMNS, [asdict(r) for r in ev.nps]))
    curve_rows = [
        {"dose_fraction": d, "method": m, "frequency_per_mm": float(fi), "nps_hu2_mm2": float(pi)}
        for (d, m), (f, p) in ev.nps_curves.items() for fi, pi in zip(f, p)
    ]
    paths["curves_csv"] = write_text_atomic(
        out / "ldct_nps_curves.csv", _csv(("dose_fraction", "method", "frequency_per_mm", "nps_hu2_mm2"), curve_rows)
    )
    figures: list[tuple[str, Path]] = []
    for dose, images in ev.panel_images.items():
        methods = {k: v for k, v in images.items() if k not in (LOW_DOSE_INPUT, NORMAL_DOSE)}
        panel = write_denoise_panel(
            out / f"panel_dose{_pct(dose)}.png", images[LOW_DOSE_INPUT], methods, images[NORMAL_DOSE],
            window=ev.protocol.display_window,
            title=f"{ev.case} · slice {ev.panel_slice} · simulated dose {dose:g} (left) … normal dose (right)",
        )
        paths[f"panel_{_pct(dose)}"] = panel
        figures.append((f"dose {dose:g}: images in {ev.protocol.display_window[0]:g}..{ev.protocol.display_window[1]:g} HU", panel))
        nps_png = _nps_plot(ev, dose, out / f"nps_dose{_pct(dose)}.png")
        paths[f"nps_{_pct(dose)}"] = nps_png
        figures.append((f"dose {dose:g}: radial NPS", nps_png))

    metric_header = ["dose", "method", "window (data range)", "PSNR dB", "SSIM", "RMSE HU", "s / slice"]
    metric_body = [[r.level, r.method, f"{r.window} ({r.data_range:g})", r.psnr_db, r.ssim, r.rmse, r.seconds_per_slice]
                   for r in ev.rows]
    nps_header = ["dose", "method", "ROIs", "noise std HU", "× normal dose", "mean f (1/mm)", "NPS error"]
    nps_body = [[r.dose_fraction, r.method, r.n_rois, r.noise_std_hu, r.std_ratio_vs_normal, r.mean_frequency_per_mm, r.nps_error]
                for r in ev.nps]
    protocol = _protocol_text(ev)
    wins = winners(ev)

    def md_table(header: list[str], body: list[list[Any]]) -> str:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in body]
        return "\n".join(lines)

    md = [f"# {title}", "", "## Protocol", "", *[f"- {t}" for t in protocol], "", "## Who wins where", "",
          *[f"- {w}" for w in wins], "", "## Fidelity against normal dose", "", md_table(metric_header, metric_body), "",
          "## Noise texture (NPS in uniform-region ROIs)", "", md_table(nps_header, nps_body), "", "## Panels", ""]
    md += [f"![{name}]({png.name})" for name, png in figures]
    paths["markdown"] = write_text_atomic(out / "ldct_report.md", "\n".join(md) + "\n")

    def html_table(header: list[str], body: list[list[Any]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in body)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"

    figs = "".join(
        f"<figure><img src='{html.escape(png.name)}' alt='{html.escape(name)}'><figcaption>{html.escape(name)}</figcaption></figure>"
        for name, png in figures
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;font-size:13px;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}th{{background:#eee}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<h2>Protocol</h2><ul>{''.join(f'<li>{html.escape(t)}</li>' for t in protocol)}</ul>
<h2>Who wins where</h2><ul>{''.join(f'<li>{html.escape(w)}</li>' for w in wins)}</ul>
<h2>Fidelity against normal dose</h2>{html_table(metric_header, metric_body)}
<h2>Noise texture (NPS in uniform-region ROIs)</h2>{html_table(nps_header, nps_body)}
<h2>Panels</h2>{figs}
</body></html>
"""
    paths["html"] = write_text_atomic(out / "ldct_report.html", page)
    return paths

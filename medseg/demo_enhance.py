"""`medseg demo --enhance`: does low-dose CT enhancement help segmentation? One command, bundled data.

On the held-out bundled CT series (`sample:ct_dicom`, 20 slices, 512², 0.98 mm, 2 mm slices;
the segmentation demo only validates on it, the enhancement workflows never see it):

1. **models**: the demo segmentation network (`medseg.demo.train_briefly` on
   ``abdomen_ct_organs.yaml``, as `medseg demo` trains it) and a RED-CNN enhancer
   (``ldct_redcnn.yaml``, MSE, on simulated pairs of the other bundled CT, 3 mm pixels, at the
   held-out series' per-pixel noise level: `noise_matched_photons_per_ray`) on a short
   schedule, unless checkpoints are passed (``seg_model``, ``enhance_model``);
2. **low dose**: the series simulated at ``dose`` (default 10 %) by
   `medseg.ct.low_dose.simulate_low_dose_volume` and written as a derived DICOM series
   (`medseg.io.derived.write_derived_series`) next to a copy of the full-dose series;
3. **enhance**: the enhancer applied by the batch runner (`medseg.inference.segment_batch`, as
   `medseg enhance` does): a derived DICOM series;
4. **segment** the three series (full dose, low dose, enhanced) in one `segment_batch` run;
5. **score** each against the bundled reference labels (`medseg.report.evaluate_folders`:
   Dice, HD95…) and write ``enhance_segment.csv`` (per organ: Dice at full dose, low dose and
   enhanced) and ``enhance_segment.html`` (the table, PSNR/SSIM of the two low-dose images
   against full dose, an image panel in one HU window and the three QA pictures).

Layout of ``OUT/enhance/``: ``dicom/{full_dose,low_dose,enhanced}/`` (the inputs),
``enhanced/`` (the enhancement batch), ``segmentations/`` (the segmentation batch),
``evaluation/`` (gt/pred/images + evaluate_folders' report), the CSV, HTML and panel PNG.
"""

from __future__ import annotations

import csv
import html
import io
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: The enhancer the demo trains, and its short schedule (a few minutes on 2 CPU cores).
ENHANCE_WORKFLOW = "ldct_redcnn.yaml"
ENHANCE_OVERRIDES = ("training.epochs=6", "training.val_every=3")
#: The simulated dose (fraction of the series' own dose).
DEMO_DOSE = 0.1
#: The HU window of the panel and of the PSNR/SSIM lines (soft tissue).
DISPLAY_WINDOW = (-160.0, 240.0)
CONDITIONS = ("full_dose", "low_dose", "enhanced")


@dataclass
class EnhanceDemoResult:
    """Where `run_enhance_demo` put everything, and the Dice table."""

    out_dir: Path
    seg_checkpoint: Path | None = None
    enhance_checkpoint: Path | None = None
    dicom_dir: Path | None = None
    segment_dir: Path | None = None
    evaluation_dir: Path | None = None
    csv: Path | None = None
    report_html: Path | None = None
    #: organ → {"full_dose": Dice, "low_dose": Dice, "enhanced": Dice}
    dice: dict[str, dict[str, float]] = field(default_factory=dict)
    #: "low_dose" / "enhanced" → {"psnr_db", "ssim", "rmse_hu"} against full dose
    image_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)


def noise_matched_photons_per_ray(training_ct: str | os.PathLike[str], target_ct: str | os.PathLike[str], *,
                                  training_views: int, target_views: int | None = None) -> float:
    """Photons per ray for simulating the training CT so that its *per-pixel* noise at a dose
    fraction equals what the simulator's default gives the target CT at the same fraction.

    Why: the simulator's default I0 follows the physics (noise variance ∝ 1/(Φ·Δ³·h) for pixel
    size Δ and slice thickness h), so the bundled 3 mm training CT gets ~6.6× less noise std
    than the 0.98 mm / 2 mm held-out series at the same dose, and an enhancer trained on it
    meets noise it never saw. A network works in pixels, so the training pairs are made at the
    target's per-pixel level: FBP noise is ``var ∝ e^p / (I0·views·Δ²)``, hence
    ``I0_train = I0_target · views_target·Δ_target² / (views_train·Δ_train²)``.

    Args:
        training_ct, target_ct: image files / DICOM folders (only their grids are read).
        training_views: views of the training simulation (the workflow's ``simulation.views``).
        target_views: views of the target's simulation (None = the simulator's default).
    """
    from medseg.ct.low_dose import photons_per_ray_for
    from medseg.ct.projector import CTGeometry
    from medseg.io import load_volume

    train, target = load_volume(training_ct), load_volume(target_ct)
    g_train = CTGeometry(train.shape[:2], tuple(float(v) for v in train.spacing[:2]), kind="parallel", n_views=training_views)
    g_target = CTGeometry(target.shape[:2], tuple(float(v) for v in target.spacing[:2]), kind="parallel", n_views=target_views)
    i0_target = photons_per_ray_for(g_target, float(target.spacing[2]))
    return i0_target * g_target.views * g_target.det_spacing**2 / (g_train.views * g_train.det_spacing**2)


def run_enhance_demo(
    out_dir: str | os.PathLike[str],
    *,
    seg_model: str | os.PathLike[str] | None = None,
    enhance_model: str | os.PathLike[str] | None = None,
    dose: float = DEMO_DOSE,
    seg_overrides: tuple[str, ...] | list[str] | None = None,
    enhance_overrides: tuple[str, ...] | list[str] = ENHANCE_OVERRIDES,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> EnhanceDemoResult:
    """Run the enhance → segment chain into ``out_dir/enhance`` (module docstring).

    Args:
        out_dir: the demo's output folder (created; ``runs/`` and ``enhance/`` inside are replaced).
        seg_model: segmentation checkpoint to use instead of training the demo's.
        enhance_model: image-to-image checkpoint (RED-CNN, WGAN generator) instead of training one.
        dose: simulated dose fraction in (0, 1).
        seg_overrides: workflow overrides of the segmentation training (default `medseg.demo.DEMO_OVERRIDES`).
        enhance_overrides: overrides of the enhancer's training (`ENHANCE_WORKFLOW`).
        seed: simulation seed.
        device: ``"cpu"``, ``"auto"`` or ``"cuda"``.
        progress: progress bars on stderr.

    Returns:
        An `EnhanceDemoResult`.

    Raises:
        ConfigError: a dose outside (0, 1). MedsegError: a step failed (the message says which).
    """
    from medseg import sample_data
    from medseg.ct.low_dose import simulate_low_dose_volume
    from medseg.demo import DEMO_OVERRIDES, DEMO_WORKFLOW, demo_inference_options, train_briefly
    from medseg.errors import ConfigError, MedsegError
    from medseg.inference import BatchOptions, InferenceOptions, segment_batch
    from medseg.io.derived import write_derived_series
    from medseg.io.dicom import read_dicom_series

    if not 0.0 < float(dose) < 1.0:
        raise ConfigError(f"the enhance demo's dose must be a fraction in (0, 1), got {dose}")
    out = Path(out_dir).resolve()
    root = out / "enhance"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    res = EnhanceDemoResult(out_dir=out)

    t0 = time.perf_counter()
    if seg_model is None:
        _, seg_model = train_briefly(DEMO_WORKFLOW, tuple(DEMO_OVERRIDES if seg_overrides is None else seg_overrides),
                                     out / "runs", device)
    res.seg_checkpoint = Path(seg_model)
    res.timings_s["train_segmentation"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    if enhance_model is None:
        i0 = noise_matched_photons_per_ray(sample_data.path("ct"), sample_data.path("ct_dicom"), training_views=360)
        _, enhance_model = train_briefly(ENHANCE_WORKFLOW, (f"simulation.photons_per_ray={i0:.4g}", *enhance_overrides),
                                         out / "runs", device)
    res.enhance_checkpoint = Path(enhance_model)
    res.timings_s["train_enhancer"] = round(time.perf_counter() - t0, 1)

    # the three input series
    t0 = time.perf_counter()
    source = sample_data.path("ct_dicom")
    res.dicom_dir = root / "dicom"
    folders = {c: res.dicom_dir / c for c in CONDITIONS}
    shutil.copytree(source, folders["full_dose"])
    full = read_dicom_series(folders["full_dose"])
    low = simulate_low_dose_volume(full, dose_fraction=float(dose), seed=seed)
    write_derived_series(low, full, folders["low_dose"], description=f"simulated {100 * dose:g} % dose (medseg)",
                         series_number=901)
    res.timings_s["simulate"] = round(time.perf_counter() - t0, 1)

    # enhancement through the batch runner (what `medseg enhance` does)
    t0 = time.perf_counter()
    enh_batch = segment_batch(folders["low_dose"], root / "enhanced", [res.enhance_checkpoint],
                              BatchOptions(inference=InferenceOptions(device=device), progress=progress, workers=0))
    done = [r for r in enh_batch.records if r.status == "done"]
    if len(done) != 1:
        raise MedsegError(f"enhance demo: enhancing the low-dose series failed: {[(r.stem, r.reason) for r in enh_batch.records]}")
    shutil.copytree(root / "enhanced" / done[0].stem / "dicom", folders["enhanced"])
    res.timings_s["enhance"] = round(time.perf_counter() - t0, 1)

    # segmentation of all three in one batch
    t0 = time.perf_counter()
    res.segment_dir = root / "segmentations"
    seg_batch = segment_batch(res.dicom_dir, res.segment_dir, [res.seg_checkpoint],
                              BatchOptions(inference=demo_inference_options(res.seg_checkpoint, device), progress=progress,
                                           dicom_seg=False, workers=0))
    by_condition: dict[str, Any] = {}
    for rec in seg_batch.records:
        for c, folder in folders.items():
            if rec.status == "done" and Path(rec.source).resolve() == folder.resolve():
                by_condition[c] = rec
    missing = [c for c in CONDITIONS if c not in by_condition]
    if missing:
        raise MedsegError(f"enhance demo: segmentation failed for {missing}: {[(r.stem, r.status, r.reason) for r in seg_batch.records]}")
    res.timings_s["segment"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    images = {c: read_dicom_series(folders[c]) for c in CONDITIONS}
    res.evaluation_dir, rows = _score(root, images, by_condition, seg_batch.out_dir, res.seg_checkpoint, progress)
    for r in rows:
        res.dice.setdefault(str(r["name"]), {})[str(r["case"])] = float(r["dice"])
    res.image_metrics = _image_metrics(images)
    res.csv, res.report_html = _write_report(root, res, images, by_condition, seg_batch.out_dir, dose)
    res.timings_s["evaluate"] = round(time.perf_counter() - t0, 1)
    return res


def _score(root: Path, images: dict[str, Any], records: dict[str, Any], seg_dir: Path, ckpt: Path, progress: bool) -> tuple[Path, list[dict]]:
    """Reference labels on each series' grid, the predictions and images, matched by condition → evaluate_folders."""
    from medseg import sample_data
    from medseg.demo import class_map_from_checkpoint, reference_on_grid
    from medseg.inference import load_model
    from medseg.io import read_volume, write_nifti
    from medseg.report import evaluate_folders

    ev = root / "evaluation"
    value_to_class = class_map_from_checkpoint(ckpt)
    names = load_model(ckpt, "cpu").labels
    reference = read_volume(sample_data.path("ct_dicom_seg"))
    for c, image in images.items():
        write_nifti(reference_on_grid(reference, image, value_to_class), ev / "gt" / f"{c}.nii.gz")
        write_nifti(image, ev / "images" / f"{c}.nii.gz")
        (ev / "pred").mkdir(parents=True, exist_ok=True)
        shutil.copy(seg_dir / records[c].stem / "labels.nii.gz", ev / "pred" / f"{c}.nii.gz")
    result = evaluate_folders(ev / "gt", ev / "pred", ev, labels=names, images=ev / "images", progress=progress)
    return ev, list(result.rows)


def _image_metrics(images: dict[str, Any]) -> dict[str, dict[str, float]]:
    from medseg.metrics.image import psnr, rmse, ssim

    ref = np.asarray(images["full_dose"].array, dtype=np.float32)
    out = {}
    for c in ("low_dose", "enhanced"):
        x = np.asarray(images[c].array, dtype=np.float32)
        out[c] = {"psnr_db": psnr(x, ref, window=DISPLAY_WINDOW), "ssim": ssim(x, ref, window=DISPLAY_WINDOW),
                  "rmse_hu": rmse(x, ref, window=DISPLAY_WINDOW)}
    return out


def _write_report(root: Path, res: EnhanceDemoResult, images: dict[str, Any], records: dict[str, Any], seg_dir: Path,
                  dose: float) -> tuple[Path, Path]:
    from medseg.data.ldct_pairs import orient_ras
    from medseg.io.atomic import write_text_atomic
    from medseg.report.denoise import write_denoise_panel

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["organ", "dice_full_dose", "dice_low_dose", "dice_enhanced", "dose_fraction"])
    for organ, d in res.dice.items():
        writer.writerow([organ, *(f"{d.get(c, float('nan')):.4f}" for c in CONDITIONS), f"{dose:g}"])
    csv_path = write_text_atomic(root / "enhance_segment.csv", buf.getvalue())

    ras = {c: np.asarray(orient_ras(v).array, dtype=np.float32) for c, v in images.items()}
    k = ras["full_dose"].shape[2] // 2
    panel = write_denoise_panel(
        root / "enhance_panel.png", ras["low_dose"][:, :, k], {"enhanced": ras["enhanced"][:, :, k]}, ras["full_dose"][:, :, k],
        window=DISPLAY_WINDOW, title=f"held-out CT, slice {k}: simulated {100 * dose:g} % dose · enhanced · full dose",
    )
    qa = {}
    for c in CONDITIONS:
        src = seg_dir / records[c].stem / "qa.png"
        if src.is_file():
            qa[c] = src.relative_to(root).as_posix()

    def cell(v: float) -> str:
        return "—" if v != v else f"{v:.3f}"

    rows = "".join(
        f"<tr><td>{html.escape(o)}</td>" + "".join(f"<td>{cell(d.get(c, float('nan')))}</td>" for c in CONDITIONS)
        + f"<td>{cell(d.get('enhanced', float('nan')) - d.get('low_dose', float('nan')))}</td></tr>"
        for o, d in res.dice.items()
    )
    metric_rows = "".join(
        f"<tr><td>{c.replace('_', ' ')}</td><td>{m['psnr_db']:.2f}</td><td>{m['ssim']:.4f}</td><td>{m['rmse_hu']:.2f}</td></tr>"
        for c, m in res.image_metrics.items()
    )
    lo, hi = DISPLAY_WINDOW
    figures = "".join(
        f"<figure><img src='{html.escape(p)}' alt='{c}'><figcaption>segmentation of the {c.replace('_', ' ')} series</figcaption></figure>"
        for c, p in qa.items()
    )
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in res.timings_s.items())
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>medseg: enhance → segment at {100 * dose:g} % dose</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;font-size:13px;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}th{{background:#eee}}img{{max-width:100%}}</style></head>
<body><h1>Enhance → segment at {100 * dose:g} % dose</h1>
<p>The held-out bundled CT series (20 slices, 512², 0.98 mm, 2 mm slices), simulated at {dose:g} of its dose
(medseg.ct.low_dose, projection-domain noise insertion, default I0, seed fixed), enhanced with
{html.escape(res.enhance_checkpoint.name if res.enhance_checkpoint else '?')} and segmented with
{html.escape(res.seg_checkpoint.name if res.seg_checkpoint else '?')}; each segmentation scored against the
bundled reference labels (TotalSegmentator, remapped to the model's classes). Per-organ details (HD95, NSD,
volumes): <a href="evaluation/report.html">evaluation/report.html</a>.</p>
<h2>Dice per organ</h2>
<table><thead><tr><th>organ</th><th>full dose</th><th>low dose</th><th>low dose, enhanced</th><th>enhanced − low</th></tr></thead>
<tbody>{rows}</tbody></table>
<h2>Images against full dose (window {lo:g}..{hi:g} HU, data range {hi - lo:g} HU, all 20 slices)</h2>
<table><thead><tr><th>image</th><th>PSNR dB</th><th>SSIM</th><th>RMSE HU</th></tr></thead><tbody>{metric_rows}</tbody></table>
<figure><img src='{html.escape(panel.name)}' alt='panel'><figcaption>one slice in {lo:g}..{hi:g} HU; bottom: difference to full dose</figcaption></figure>
{figures}
<p>Timings: {html.escape(timings)}.</p>
</body></html>
"""
    html_path = write_text_atomic(root / "enhance_segment.html", page)
    return csv_path, html_path

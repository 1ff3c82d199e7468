"""Denoising benchmark, the issue-17 goal protocol in one command: train the DAEs, score them
against the classical baselines on held-out real scans, print the table.

Protocol (also in docs/benchmarks.md, "Denoising: the goal protocol"):

- Training (skipped with --ct-checkpoint/--mr-checkpoint): workflows/denoise_ct.yaml and
  workflows/denoise_mr.yaml with their defaults, once per seed (``seed=<s>``), blind over their
  noise range, with ``data.validation=[]`` and ``data.val_fraction=0``: the weights scored are the *last* epoch's, never
  selected on the evaluation scan. Runs go to ``OUT/runs/seed<s>/`` and resume if cut.
- Held-out scans (no workflow trains on them): CT = the bundled 20-slice 512×512 DICOM series
  (``sample:ct_dicom``, TotalSegmentator example, 0.98 mm pixels, 2 mm slices); MR = pyradiomics'
  brain1 (``sample:brain_mri``, T1 post-contrast 256×256×25). Both reoriented to RAS; the clean
  reference is the scan itself (it carries its own acquisition noise).
- Noise models, 3 levels each, added to the whole volume: CT Poisson-Gaussian dose reduction
  (`medseg.data.noise.add_ct_dose_noise`, I₀ = 1e7 effective photons per ray, σₑ = 10 counts,
  1000 views) at dose fractions 0.5 / 0.25 / 0.1 (the table also gives the added noise's median
  σ in the soft tissue, HU); white Gaussian on CT at σ = 10 / 25 / 50 HU (the CT DAE was trained
  on dose noise only: out of its training distribution); Rician on MR at σ = 2 / 4 / 8 % of the
  scan's P99.5.
- Seeds: seed s trains the DAE of seed s and draws the noise realisation of seed s.
- Metrics per volume: PSNR over the evaluated slices together (``--slices`` evenly spaced axial
  slices, default 5) and SSIM averaged over them (Wang et al. settings, `medseg.metrics.image`);
  tables give mean ± sd over the seeds. BM3D (≈25-60 s per 512² slice) runs on the centre slice
  only (``--bm3d-seeds``, default seed 0), so every method is also scored on that centre slice
  for the DAE-vs-BM3D column.
- Data range: CT — both images clipped to −1024..3071 HU, data range 4095 HU; MR — not clipped,
  data range = the clean scan's P99.5 (the percentile_scale plan's unit).
- Methods: noisy input; Gaussian filter (σ = 1 px); NLM (scikit-image, σ estimated, and with the
  true σ); BM3D (``bm3d`` package, optional extra, true and estimated σ; true σ for CT dose noise
  = RMS of the added noise inside the body, HU > −500); the DAE (slice by slice with its
  checkpoint's context slices, as ``medseg enhance`` applies it; time per slice on --threads).

Run:  python benchmarks/bench_denoise.py                 # 3 seeds, 3 levels per noise model
      python benchmarks/bench_denoise.py --quick         # seed 0, the middle level only
      python benchmarks/bench_denoise.py --ct-checkpoint CT.pt --mr-checkpoint MR.pt --seeds 0
Re-running continues: finished rows are kept in ``OUT/rows.jsonl``, finished trainings are reused.
"""

from __future__ import annotations

import argparse
import json
import math
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from medseg import sample_data
from medseg.data.noise import add_ct_dose_noise, add_gaussian_noise, add_rician_noise, robust_max
from medseg.enhance_baselines import bm3d_denoise, gaussian_denoise, nlm_denoise
from medseg.io import load_volume
from medseg.report.denoise import DenoiseRow, score_denoised, write_denoise_panel, write_denoise_report

log = logging.getLogger("bench_denoise")

CT_WINDOW = (-1024.0, 3071.0)
CT_DISPLAY = (-160.0, 240.0)
CT_PHOTONS, CT_ELECTRONIC = 1e7, 10.0
NOISE = [  # (model, scan, levels, level units)
    ("ct_dose", "ct", (0.5, 0.25, 0.1), "dose fraction (I0=1e7 photons/ray)"),
    ("gaussian", "ct", (10.0, 25.0, 50.0), "sigma HU"),
    ("rician", "mr", (0.02, 0.04, 0.08), "sigma / P99.5"),
]
SCANS = {"ct": ("ct_dicom", "HU"), "mr": ("brain_mri", "a.u.")}
ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = {"ct": ROOT / "workflows" / "denoise_ct.yaml", "mr": ROOT / "workflows" / "denoise_mr.yaml"}


def _ras(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import nibabel as nib

    vol = load_volume(path)
    ornt = nib.orientations.io_orientation(vol.affine)
    array = nib.orientations.apply_orientation(np.asarray(vol.array, dtype=np.float64), ornt)
    spacing = np.linalg.norm(vol.affine[:3, :3], axis=0)[ornt[:, 0].astype(int)]
    return array, tuple(float(s) for s in spacing)


def _add_noise(model: str, clean: np.ndarray, spacing: tuple[float, ...], level: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(noisy volume, the true σ used by the true-σ methods) in image units."""
    if model == "gaussian":
        return add_gaussian_noise(clean, level, rng).astype(np.float64), level
    if model == "rician":
        sigma = level * robust_max(clean)
        return add_rician_noise(clean, sigma, rng).astype(np.float64), sigma
    noisy = add_ct_dose_noise(clean, spacing, rng, photons_per_ray=CT_PHOTONS, dose_fraction=level, electronic_sigma=CT_ELECTRONIC)
    body = clean > -500
    return noisy.astype(np.float64), float(np.sqrt(np.mean((noisy - clean)[body] ** 2)))


class _Network:
    """A denoising checkpoint applied slice by slice (2-D / 2.5-D) or whole (3-D), as medseg enhance would."""

    def __init__(self, path: Path) -> None:
        import torch

        from medseg.checkpoint import load_checkpoint
        from medseg.models import build_model

        self.ckpt = load_checkpoint(path)
        self.net = build_model(self.ckpt.model)
        self.net.load_state_dict(self.ckpt.state_dict)
        self.net.eval()
        self.torch = torch

    def __call__(self, noisy: np.ndarray, zs: list[int], tta: bool = False) -> np.ndarray:
        """The denoised slices ``zs``; ``tta``: the mean over mirrored copies as `medseg enhance --tta`
        (`medseg.inference.image.image_flips`; the array is RAS (X, Y, Z) as predict_image's)."""
        from medseg.data.intensity import from_network_units, intensity_params
        from medseg.inference.image import image_flips

        params = intensity_params(noisy, self.ckpt.preprocessing["intensity"])
        flips = image_flips(int(self.ckpt.inference.get("spatial_dims", 2)), tta)
        total = 0.0
        for axes in flips:
            mirrored = np.ascontiguousarray(np.flip(noisy, axes)) if axes else noisy
            z_run = [noisy.shape[2] - 1 - z for z in zs] if 2 in axes else zs
            out = self._once(mirrored, z_run, params)
            total = total + (np.flip(out, tuple(a for a in axes if a != 2)) if axes else out)
        return from_network_units(total / len(flips), params)

    def _once(self, noisy: np.ndarray, zs: list[int], params: dict[str, Any]) -> np.ndarray:
        from medseg.data.intensity import to_network_units

        torch = self.torch
        x = to_network_units(noisy, params).astype(np.float32)
        inf = self.ckpt.inference
        out = np.empty((*noisy.shape[:2], len(zs)), dtype=np.float64)
        with torch.inference_mode():
            if int(inf.get("spatial_dims", 2)) == 3:
                from monai.inferers import sliding_window_inference

                t = torch.from_numpy(x)[None, None]
                roi = inf.get("roi_size") or list(x.shape)
                y = sliding_window_inference(t, roi, 1, self.net, overlap=float(inf.get("overlap", 0.25)), mode="gaussian")
                full = y[0, 0].numpy()
                out[:] = full[:, :, zs]
            else:
                k = int(inf.get("context_slices", 0))
                for i, z in enumerate(zs):
                    idx = np.clip(np.arange(z - k, z + k + 1), 0, x.shape[2] - 1)
                    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x[:, :, idx], -1, 0)))[None]
                    out[:, :, i] = self.net(t)[0, 0].numpy()
        return out


def _train(modality: str, seed: int, out: Path, extra: list[str]) -> Path:
    """The modality's workflow trained with ``seed`` (resumed if cut, reused if finished); its last.pt."""
    from medseg.config import load_workflow
    from medseg.engine import train
    from medseg.engine.logs import read_epoch_log

    overrides = [f"seed={seed}", f"output.dir={out / 'runs' / f'seed{seed}'}", "data.validation=[]", "data.val_fraction=0", *extra]
    cfg = load_workflow(WORKFLOWS[modality], overrides)
    run = out / "runs" / f"seed{seed}" / cfg.name
    last = run / "checkpoints" / "last.pt"
    if last.is_file() and len(read_epoch_log(run / "metrics.csv")) >= cfg.training.epochs:
        return last
    log.info("training %s (seed %d) into %s", cfg.name, seed, run)
    t0 = time.perf_counter()
    train(WORKFLOWS[modality], overrides=overrides, device="cpu", resume=last.is_file())
    log.info("trained %s (seed %d) in %.0f s", cfg.name, seed, time.perf_counter() - t0)
    return last


def _level_label(model: str, level: float, clean: np.ndarray, spacing: tuple[float, ...]) -> str:
    """The level in physical units (CT dose: with the median added σ in the soft tissue of the centre slice)."""
    if model == "ct_dose":
        from medseg.data.noise import ct_noise_std_hu

        centre = clean[:, :, clean.shape[2] // 2]
        std = ct_noise_std_hu(centre, spacing[:2], photons_per_ray=CT_PHOTONS, dose_fraction=level, electronic_sigma=CT_ELECTRONIC)
        soft = (centre > -100) & (centre < 200)
        return f"dose {level:g} ({level * CT_PHOTONS:.2g} photons/ray; +{np.median(std[soft]):.0f} HU)"
    if model == "gaussian":
        return f"σ {level:g} HU"
    return f"σ {100 * level:g} % of P99.5"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct-checkpoint", "--checkpoint", type=Path, nargs="+",
                    help="trained CT denoising checkpoint(s), one per seed, instead of training them")
    ap.add_argument("--mr-checkpoint", type=Path, nargs="+", help="trained MR denoising checkpoint(s), one per seed")
    ap.add_argument("--no-train", action="store_true", help="baselines only (no DAE rows unless checkpoints are given)")
    ap.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                    help="--set for the DAE trainings, e.g. training.epochs=5 (say so when you report the figures)")
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache/medseg-bench/denoise")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="seed 0 and the middle level of each noise model only")
    ap.add_argument("--slices", type=int, default=5, help="evenly spaced axial slices per volume (always holding the centre one)")
    ap.add_argument("--no-bm3d", action="store_true", help="skip BM3D (slow; optional package)")
    ap.add_argument("--bm3d-seeds", type=int, nargs="+", default=[0], help="seeds BM3D runs for (centre slice only)")
    ap.add_argument("--bm3d-noise", nargs="+", default=[n[0] for n in NOISE], choices=[n[0] for n in NOISE],
                    help="noise models BM3D runs for (default all)")
    ap.add_argument("--methods", nargs="+", help="compute only these methods now (e.g. dae; the others come from rows.jsonl)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tta", action="store_true", help="also score the DAE with flip TTA (method dae_tta, as medseg enhance --tta)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    seeds = [args.seeds[0]] if args.quick else args.seeds

    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "rows.jsonl"
    done: dict[tuple, dict[str, Any]] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            done[(r["case"], r["noise_model"], r["level"], r["method"], r["seed"])] = r

    # ---- the DAEs, one per (modality, seed)
    networks: dict[tuple[str, int], _Network] = {}
    for modality, given in (("ct", args.ct_checkpoint), ("mr", args.mr_checkpoint)):
        if given:
            if len(given) not in (1, len(seeds)):
                ap.error(f"--{modality}-checkpoint: give one checkpoint or one per seed ({len(seeds)})")
            for i, seed in enumerate(seeds):
                networks[(modality, seed)] = _Network(given[i if len(given) > 1 else 0])
        elif not args.no_train:
            for seed in seeds:
                networks[(modality, seed)] = _Network(_train(modality, seed, args.out, args.train_set))
    use_bm3d = not args.no_bm3d
    if use_bm3d:
        try:
            import bm3d  # noqa: F401
        except ImportError:
            log.warning("bm3d not installed (pip install 'medseg[bm3d]'): BM3D rows skipped")
            use_bm3d = False

    scans = {key: _ras(sample_data.path(name)) for key, (name, _) in SCANS.items()}
    panels: dict[str, Path] = {}
    labels: dict[tuple[str, float], str] = {}
    for model, scan_key, all_levels, level_units in NOISE:
        levels = (all_levels[len(all_levels) // 2],) if args.quick else all_levels
        clean, spacing = scans[scan_key]
        name, units = SCANS[scan_key]
        centre = clean.shape[2] // 2
        zs = sorted({*np.linspace(0, clean.shape[2] - 1, args.slices).round().astype(int).tolist(), centre})
        slab_case, centre_case = f"{name} z{'-'.join(map(str, zs))}", f"{name} z{centre}"
        scoring: dict[str, Any] = {"window": CT_WINDOW} if scan_key == "ct" else {"data_range": robust_max(clean)}
        for level in levels:
            labels[(model, float(level))] = _level_label(model, level, clean, spacing)
            for seed in seeds:
                methods = ["noisy", "gaussian", "nlm", "nlm_true_sigma"]
                methods += ["bm3d_true_sigma", "bm3d_est_sigma"] if use_bm3d and seed in args.bm3d_seeds and model in args.bm3d_noise else []
                methods += ["dae", *(["dae_tta"] if args.tta else [])] if (scan_key, seed) in networks else []
                methods = [m for m in methods if args.methods is None or m in args.methods]
                title = f"{name} z{centre} · {model} {level:g} ({level_units}) · seed {seed}"
                panel_path = args.out / "panels" / f"{scan_key}_{model}_{level:g}.png"
                wants_panel = seed == seeds[0] and level == levels[len(levels) // 2]
                need_panel = wants_panel and not panel_path.exists() and args.methods is None
                todo = [m for m in methods if need_panel or (centre_case, model, float(level), m, seed) not in done]
                if wants_panel:
                    panels[title] = panel_path
                if not todo:
                    continue
                rng = np.random.default_rng([seed, [n[0] for n in NOISE].index(model), int(round(level * 1000))])
                noisy, true_sigma = _add_noise(model, clean, spacing, level, rng)
                outputs: dict[str, np.ndarray] = {}
                for method in todo:
                    on_centre_only = method.startswith("bm3d")
                    z_run = [centre] if on_centre_only else zs
                    t0, c0 = time.perf_counter(), time.process_time()
                    if method == "noisy":
                        out = noisy[:, :, z_run]
                    elif method == "gaussian":
                        out = gaussian_denoise(noisy[:, :, z_run])
                    elif method == "nlm":
                        out = nlm_denoise(noisy[:, :, z_run])
                    elif method == "nlm_true_sigma":
                        out = nlm_denoise(noisy[:, :, z_run], sigma=true_sigma)
                    elif method == "bm3d_true_sigma":
                        out = bm3d_denoise(noisy[:, :, z_run], sigma=true_sigma)
                    elif method == "bm3d_est_sigma":
                        out = bm3d_denoise(noisy[:, :, z_run])
                    else:
                        out = networks[(scan_key, seed)](noisy, z_run, tta=method == "dae_tta")
                    per_slice = (time.perf_counter() - t0) / len(z_run) if method != "noisy" else None
                    # CPU seconds of all threads: on a shared machine wall time says little
                    cpu_per_slice = (time.process_time() - c0) / len(z_run)
                    centre_out = out[:, :, z_run.index(centre)]
                    outputs[method] = centre_out
                    new_rows = [score_denoised(centre_case, model, level, level_units, method, centre_out, clean[:, :, centre],
                                               units=units, seed=seed, seconds_per_slice=per_slice, **scoring)]
                    if not on_centre_only:
                        new_rows.append(score_denoised(slab_case, model, level, level_units, method, out, clean[:, :, zs],
                                                       units=units, seed=seed, seconds_per_slice=per_slice, **scoring))
                    with cache.open("a") as f:
                        for r in new_rows:
                            k = (r.case, r.noise_model, r.level, r.method, r.seed)
                            if k not in done:
                                done[k] = asdict(r)
                                f.write(json.dumps(asdict(r)) + "\n")
                    log.info("%s %s=%g seed %d %s: PSNR %.2f dB, SSIM %.4f, %.2f s/slice (%.2f CPU s/slice)", name, model, level,
                             seed, method, new_rows[0].psnr_db, new_rows[0].ssim, per_slice or 0.0, cpu_per_slice)
                if need_panel:
                    display = CT_DISPLAY if scan_key == "ct" else (0.0, robust_max(clean))
                    write_denoise_panel(panel_path, noisy[:, :, centre], {m: o for m, o in outputs.items() if m != "noisy"},
                                        clean[:, :, centre], window=display, title=title, units=units)

    wanted = {(m, float(lv)) for m, _, lvs, _ in NOISE for lv in ((lvs[len(lvs) // 2],) if args.quick else lvs)}
    rows = [DenoiseRow(**r) for r in done.values() if r["seed"] in seeds and (r["noise_model"], r["level"]) in wanted]
    protocol = (
        "Held-out scans (CT: bundled DICOM series; MR: pyradiomics brain1), RAS, clean = the scan itself. "
        "CT: both images clipped to -1024..3071 HU, data range 4095 HU; MR: not clipped, data range = P99.5 of the clean scan. "
        f"Per volume: PSNR over {args.slices} evenly spaced axial slices, SSIM averaged over them. Seeds {seeds} "
        "(DAE training and noise). BM3D and the DAE-vs-BM3D comparison: the centre slice."
    )
    paths = write_denoise_report(rows, args.out, panels=panels, protocol=protocol)
    _print_tables(rows, labels, seeds)
    print(f"\nreport: {paths['html']}  csv: {paths['csv']}")


def _print_tables(rows: list[DenoiseRow], labels: dict[tuple[str, float], str], seeds: list[int]) -> None:
    """Markdown: per-volume PSNR / SSIM per method (mean ± sd over seeds), the DAE's margins, times."""
    slab = [r for r in rows if "-" in r.case.split(" z")[-1]]
    centre = [r for r in rows if "-" not in r.case.split(" z")[-1]]

    def stats(subset: list[DenoiseRow], model: str, level: float, method: str, key: str) -> tuple[float, float, int]:
        v = [getattr(r, key) for r in subset if r.noise_model == model and r.level == level and r.method == method]
        return (float(np.mean(v)), float(np.std(v)), len(v)) if v else (math.nan, math.nan, 0)

    methods = [m for m in ("noisy", "gaussian", "nlm", "nlm_true_sigma", "dae", "dae_tta") if any(r.method == m for r in slab)]
    daes = [m for m in ("dae", "dae_tta") if m in methods]
    keys = list(dict.fromkeys((r.noise_model, r.level) for r in slab))
    print(f"\n### per volume (evenly spaced slices), PSNR dB / SSIM, mean ± sd over seeds {seeds}\n")
    print("| scan · noise · level | " + " | ".join(methods) + "".join(f" | {m} − nlm" for m in daes) + " |")
    print("| --- | " + " | ".join("---:" for _ in methods) + " | ---:" * len(daes) + " |")
    for model, level in keys:
        scan = next(r.case for r in slab if r.noise_model == model).split(" ")[0]
        cells = []
        for m in methods:
            p, ps, _ = stats(slab, model, level, m, "psnr_db")
            q, qs, _ = stats(slab, model, level, m, "ssim")
            cells.append(f"{p:.2f} ± {ps:.2f} / {q:.4f}" if not math.isnan(p) else "")
        margins = []
        for m in daes:
            d = stats(slab, model, level, m, "psnr_db")[0] - stats(slab, model, level, "nlm", "psnr_db")[0]
            ds = stats(slab, model, level, m, "ssim")[0] - stats(slab, model, level, "nlm", "ssim")[0]
            margins.append(f"{d:+.2f} dB / {ds:+.4f}" if not math.isnan(d) else "")
        print(f"| {scan} · {model} · {labels.get((model, level), level)} | " + " | ".join(cells) + "".join(f" | {m}" for m in margins) + " |")

    bm = [m for m in ("nlm", "bm3d_est_sigma", "bm3d_true_sigma", "dae", "dae_tta") if any(r.method == m for r in centre)]
    if "bm3d_est_sigma" in bm or "bm3d_true_sigma" in bm:
        bm3d_seeds = sorted({r.seed for r in centre if r.method.startswith("bm3d")})
        print(f"\n### centre slice, PSNR dB / SSIM (seeds {bm3d_seeds}: those BM3D ran for)\n")
        print("| scan · noise · level | " + " | ".join(bm) + " | DAE − BM3D (est σ) | DAE − BM3D (true σ) |")
        print("| --- | " + " | ".join("---:" for _ in bm) + " | ---: | ---: |")
        sub = [r for r in centre if r.seed in bm3d_seeds]
        for model, level in keys:
            scan = next(r.case for r in sub if r.noise_model == model).split(" ")[0]
            cells = []
            for m in bm:
                p = stats(sub, model, level, m, "psnr_db")[0]
                cells.append(f"{p:.2f} / {stats(sub, model, level, m, 'ssim')[0]:.4f}" if not math.isnan(p) else "")
            dae = stats(sub, model, level, "dae", "psnr_db")[0]
            diffs = [dae - stats(sub, model, level, b, "psnr_db")[0] for b in ("bm3d_est_sigma", "bm3d_true_sigma")]
            margins = ["" if math.isnan(d) else f"{d:+.2f} dB" for d in diffs]
            print(f"| {scan} · {model} · {labels.get((model, level), level)} | " + " | ".join(cells) + " | " + " | ".join(margins) + " |")

    print("\n### wall time per slice (median over the runs, s; --threads torch threads; CPU seconds are in the log)\n")
    for m in ("gaussian", "nlm", "bm3d_est_sigma", "dae", "dae_tta"):
        for scan in ("ct_dicom", "brain_mri"):
            t = [r.seconds_per_slice for r in rows if r.method == m and r.case.startswith(scan) and r.seconds_per_slice]
            if t:
                print(f"- {m} on {scan}: {np.median(t):.2f} s per slice ({len(t)} runs)")


if __name__ == "__main__":
    main()

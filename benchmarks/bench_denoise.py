"""Denoising benchmark: classical baselines (and a trained DAE) on held-out real scans.

Protocol (also in docs/benchmarks.md, "Denoising"):

- Scans held out from every denoising workflow's training: CT = the bundled 512×512 DICOM series
  (``sample:ct_dicom``, TotalSegmentator example, 0.98 mm pixels, 2 mm slices); MR = pyradiomics'
  brain1 (``sample:brain_mri``, T1 post-contrast 256×256×25). Both reoriented to RAS; the clean
  reference is the scan itself (it carries its own acquisition noise).
- Noise models, 3 levels each, added to the whole volume: CT Poisson-Gaussian dose reduction
  (`medseg.data.noise.add_ct_dose_noise`, I₀ = 1e7 effective photons per ray, σₑ = 10 counts) at dose
  fractions 0.5 / 0.25 / 0.1; Gaussian on CT at σ = 10 / 25 / 50 HU; Rician on MR at
  σ = 2 / 4 / 8 % of the scan's P99.5.
- Seeds 0, 1, 2 (the noise realisation). Metrics per volume over a slab of axial slices
  (default the 3 central ones) and over its centre slice alone (the BM3D comparison: BM3D runs on
  the centre slice only, ~25 s per 512² slice on the CI box); the tables average over seeds.
- Data range: CT — both images clipped to −1024..3071 HU, data range 4095 HU; MR — not clipped,
  data range = the clean scan's P99.5 (the percentile_scale plan's unit). SSIM per slice
  (Wang et al. settings, `medseg.metrics.image`).
- Methods: the noisy input, Gaussian filter (σ = 1 px), NLM (scikit-image, σ estimated and true σ), BM3D
  (``bm3d`` package, with the true σ and with the estimated σ; true σ for CT dose noise = the RMS
  of the added noise inside the body, HU > −500), and a trained denoiser from ``--checkpoint``.

Run:  python benchmarks/bench_denoise.py [--checkpoint CT.pt] [--mr-checkpoint MR.pt] [--out DIR]
Re-running continues: finished rows are kept in ``DIR/rows.jsonl``.
"""

from __future__ import annotations

import argparse
import json
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
from medseg.report.denoise import DenoiseRow, score_denoised, summarize_denoise, write_denoise_panel, write_denoise_report

log = logging.getLogger("bench_denoise")

CT_WINDOW = (-1024.0, 3071.0)
CT_DISPLAY = (-160.0, 240.0)
NOISE = [  # (model, scan, levels, level units)
    ("ct_dose", "ct", (0.5, 0.25, 0.1), "dose fraction (I0=1e7 photons/ray)"),
    ("gaussian", "ct", (10.0, 25.0, 50.0), "sigma HU"),
    ("rician", "mr", (0.02, 0.04, 0.08), "sigma / P99.5"),
]
SCANS = {"ct": ("ct_dicom", "HU"), "mr": ("brain_mri", "a.u.")}


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
    noisy = add_ct_dose_noise(clean, spacing, rng, photons_per_ray=1e7, dose_fraction=level, electronic_sigma=10.0)
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

    def __call__(self, noisy: np.ndarray, zs: list[int]) -> np.ndarray:
        from medseg.data.intensity import from_network_units, intensity_params, to_network_units

        torch = self.torch
        params = intensity_params(noisy, self.ckpt.preprocessing["intensity"])
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
        return from_network_units(out, params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="a trained CT denoising checkpoint (the DAE row)")
    ap.add_argument("--mr-checkpoint", type=Path, help="a trained MR denoising checkpoint")
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache/medseg-bench/denoise")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--slices", type=int, default=3, help="central axial slices per volume (slab)")
    ap.add_argument("--no-bm3d", action="store_true", help="skip BM3D (slow; optional package)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "rows.jsonl"
    done: dict[tuple, dict[str, Any]] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            done[(r["case"], r["noise_model"], r["level"], r["method"], r["seed"])] = r

    networks = {"ct": _Network(args.checkpoint) if args.checkpoint else None, "mr": _Network(args.mr_checkpoint) if args.mr_checkpoint else None}
    use_bm3d = not args.no_bm3d
    if use_bm3d:
        try:
            import bm3d  # noqa: F401
        except ImportError:
            log.warning("bm3d not installed (pip install 'medseg[bm3d]'): BM3D rows skipped")
            use_bm3d = False

    scans = {key: _ras(sample_data.path(name)) for key, (name, _) in SCANS.items()}
    panels: dict[str, Path] = {}
    for model, scan_key, levels, level_units in NOISE:
        clean, spacing = scans[scan_key]
        name, units = SCANS[scan_key]
        centre = clean.shape[2] // 2
        zs = list(range(centre - args.slices // 2, centre - args.slices // 2 + args.slices))
        slab_case, centre_case = f"{name} z{zs[0]}-{zs[-1]}", f"{name} z{centre}"
        scoring: dict[str, Any] = (
            {"window": CT_WINDOW} if scan_key == "ct" else {"data_range": robust_max(clean)}
        )
        for level in levels:
            for seed in args.seeds:
                methods = ["noisy", "gaussian", "nlm", "nlm_true_sigma"] + (["bm3d_true_sigma", "bm3d_est_sigma"] if use_bm3d else [])
                methods += ["dae"] if networks[scan_key] is not None else []
                title = f"{name} z{centre} · {model} {level:g} ({level_units}) · seed {seed}"
                panel_path = args.out / "panels" / f"{scan_key}_{model}_{level:g}.png"
                wants_panel = seed == args.seeds[0] and level == levels[1]
                need_panel = wants_panel and not panel_path.exists()
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
                    t0 = time.perf_counter()
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
                        out = networks[scan_key](noisy, z_run)
                    per_slice = (time.perf_counter() - t0) / len(z_run) if method != "noisy" else None
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
                    log.info("%s %s=%g seed %d %s: PSNR %.2f dB, SSIM %.4f, %.2f s/slice", name, model, level, seed, method,
                             new_rows[0].psnr_db, new_rows[0].ssim, per_slice or 0.0)
                if need_panel:
                    display = CT_DISPLAY if scan_key == "ct" else (0.0, robust_max(clean))
                    write_denoise_panel(panel_path, noisy[:, :, centre], {m: o for m, o in outputs.items() if m != "noisy"},
                                        clean[:, :, centre], window=display, title=title, units=units)

    rows = [DenoiseRow(**r) for r in done.values()]
    protocol = (
        "Held-out scans (CT: bundled DICOM series; MR: pyradiomics brain1), RAS, clean = the scan itself. "
        "CT: both images clipped to -1024..3071 HU, data range 4095 HU; MR: not clipped, data range = P99.5 of the clean scan. "
        f"SSIM per slice. Seeds {args.seeds}. Rows per slab of {args.slices} central slices and per centre slice "
        "(BM3D: centre slice only)."
    )
    paths = write_denoise_report(rows, args.out, panels=panels, protocol=protocol)
    for which in ("slab", "centre"):
        subset = [r for r in rows if ("-" in r.case.split(" z")[-1]) == (which == "slab")]
        print(f"\n### {which} ({'3 central slices' if which == 'slab' else 'centre slice'}), mean ± sd over seeds\n")
        print("| scan | noise | level | method | PSNR (dB) | SSIM | s / slice |")
        print("| --- | --- | ---: | --- | ---: | ---: | ---: |")
        for s in summarize_denoise(subset):
            scan = next(r.case for r in subset if r.noise_model == s["noise_model"]).split(" ")[0]
            t = "" if s["seconds_per_slice"] is None else f"{s['seconds_per_slice']:.2f}"
            print(f"| {scan} | {s['noise_model']} | {s['level']:g} | {s['method']} | {s['psnr_db']:.2f} ± {s['psnr_db_std']:.2f} "
                  f"| {s['ssim']:.4f} ± {s['ssim_std']:.4f} | {t} |")
    print(f"\nreport: {paths['html']}  csv: {paths['csv']}")


if __name__ == "__main__":
    main()

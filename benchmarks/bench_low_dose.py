"""Low-dose CT simulation: medseg vs scikit-image `radon` + `iradon`, noise statistics, calibration.

On real 512×512 slices of the bundled CT series (`ct_dicom`), with the same views and detector
bins, in one process:

1. **speed**, back to back: what simulating one slice needs — one forward projection (for the
   variance of the extra noise) and one FBP (of the noise) — with scikit-image, with medseg's
   Fourier-slice projector (`medseg.ct.fourier_projector`, the default on the CPU) and,
   optionally, medseg's direct `grid_sample` projector; plus `simulate_low_dose` end to end,
   one slice and a batch of slices per call;
2. **noise statistics** of the inserted noise at one dose on the same slice, made with the
   scikit-image pipeline (`radon` → `extra_variance` → Gaussian noise → `iradon`, the same
   window) and with `simulate_low_dose`: std in the eroded liver and the radial NPS there;
3. **dose scaling**: variance of the inserted noise in the liver vs dose, log-log slope;
4. **calibration**: the default normal-dose fluence's quarter-dose extra noise in the liver vs
   √3 × the scan's own noise (what a real quarter-dose scan would add), and its independence
   of the simulated views / geometry.

Usage: ``python benchmarks/bench_low_dose.py [--views 720] [--batch 4] [--repeat 2] [--direct]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch


def liver_masks(ct, seg_path) -> np.ndarray:
    """Eroded liver (TotalSegmentator label 5) on the CT series' grid, every slice."""
    from scipy import ndimage

    from medseg.io import load_volume

    seg = load_volume(seg_path)
    labels = seg.array
    for ax in range(2):  # the label file's axes may run the other way: follow the affines
        if np.sign(seg.affine[ax, ax]) != np.sign(ct.affine[ax, ax]):
            labels = np.flip(labels, axis=ax)
    return np.stack([ndimage.binary_erosion(labels[:, :, k] == 5, iterations=8) for k in range(labels.shape[2])], -1)


def local_std(img: np.ndarray, mask: np.ndarray, w: int = 9) -> np.ndarray:
    """Std in every w×w window that lies inside `mask` (the usual noise estimate of a real scan:
    its median over a uniform organ)."""
    from scipy import ndimage

    img = img.astype(np.float64)
    m, m2 = ndimage.uniform_filter(img, w), ndimage.uniform_filter(img * img, w)
    s = np.sqrt(np.maximum(m2 - m * m, 0.0) * (w * w / (w * w - 1)))
    return s[ndimage.binary_erosion(mask, iterations=w // 2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=720)
    ap.add_argument("--slice", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4, help="slices per simulate_low_dose call for the batched timing")
    ap.add_argument("--repeat", type=int, default=2, help="timing repeats (best is reported)")
    ap.add_argument("--dose", type=float, default=0.25)
    ap.add_argument("--filter", default="hann", help="FBP window (scikit-image's names; 'ramp' = ram-lak)")
    ap.add_argument("--realisations", type=int, default=12, help="noise realisations per pipeline for the statistics (≥ 2)")
    ap.add_argument("--direct", action="store_true", help="also time medseg's direct (grid_sample) projector")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.realisations < 2:
        ap.error("--realisations must be at least 2 (the NPS scatter compares two halves)")
    if args.threads:
        torch.set_num_threads(args.threads)

    from skimage.transform import iradon, radon

    from medseg import sample_data
    from medseg.ct.fourier_projector import FourierProjector
    from medseg.ct.low_dose import (DEFAULT_PHOTONS_PER_MM2, MU_WATER_PER_MM, extra_variance, hu_to_mu,
                                    photons_per_ray_for, simulate_low_dose)
    from medseg.ct.nps import extract_rois, noise_power_spectrum, radial_average
    from medseg.ct.projector import CTGeometry, Projector
    from medseg.io import load_volume

    vol = load_volume(sample_data.path("ct_dicom"))
    sx, sy, sz = vol.spacing
    assert abs(sx - sy) < 1e-6, "scikit-image needs square pixels"
    hu_all = vol.array.astype(np.float32)
    hu = hu_all[:, :, args.slice]
    mu = hu_to_mu(torch.from_numpy(hu))
    n = hu.shape[0]
    theta = np.linspace(0.0, 180.0, args.views, endpoint=False)
    n_det = int(np.ceil(np.sqrt(2) * n))  # what radon(circle=False) uses
    geo = CTGeometry(hu.shape, (sx, sy), kind="parallel", n_views=args.views, n_detectors=n_det)
    same = dict(views=args.views, detector_pixels=n_det)  # simulate_low_dose on scikit-image's grid (its default: 727)
    i0 = photons_per_ray_for(geo, sz)
    md_filter = "ram-lak" if args.filter == "ramp" else args.filter
    load0 = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), load average at start {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f}")
    print(f"slice {hu.shape} at {sx:.4f} mm ({sz:g} mm slices), {args.views} views, {n_det} bins, dose {args.dose}, "
          f"window {args.filter}; default I0 {i0:.3g} photons/ray ({DEFAULT_PHOTONS_PER_MM2:.3g}/mm² per rotation)")

    def best(fn):
        times, out = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return min(times), out

    # ---------------------------------------------------------------- 1. speed
    mu64 = mu.numpy().astype(np.float64) * sx
    t_sk_fwd, sino_sk = best(lambda: radon(mu64, theta, circle=False))  # (bins, views)
    rng = np.random.default_rng(0)
    std_sk = np.sqrt(extra_variance(torch.from_numpy(sino_sk), args.dose, i0, 0.0).numpy())
    noise_sino_sk = std_sk * rng.standard_normal(sino_sk.shape)
    t_sk_fbp, _ = best(lambda: iradon(noise_sino_sk, theta, circle=False, output_size=n, filter_name=args.filter))
    fp = FourierProjector(geo)
    x = mu[None]
    fp.forward(x)  # plans are made once per projector (a volume reuses them): not timed
    t_fp_fwd, sino_fp = best(lambda: fp.forward(x))
    noise_sino_fp = extra_variance(sino_fp, args.dose, i0, 0.0).sqrt() * torch.randn(sino_fp.shape)
    fp.fbp(noise_sino_fp, md_filter)
    t_fp_fbp, _ = best(lambda: fp.fbp(noise_sino_fp, md_filter))
    rows = [("scikit-image `radon` + `iradon`", t_sk_fwd, t_sk_fbp),
            ("medseg Fourier projector (default)", t_fp_fwd, t_fp_fbp)]
    if args.direct:
        dp = Projector(geo)
        t_d_fwd, sino_d = best(lambda: dp.forward(x))
        t_d_fbp, _ = best(lambda: dp.fbp(noise_sino_fp, md_filter))
        rows.append(("medseg direct projector (grid_sample)", t_d_fwd, t_d_fbp))
    t_sim1, _ = best(lambda: simulate_low_dose(hu, (sx, sy, sz), dose_fraction=args.dose, filter=md_filter, **same))
    k0 = max(0, min(args.slice - args.batch // 2, hu_all.shape[2] - args.batch))
    slab = hu_all[:, :, k0:k0 + args.batch]
    t_simb, _ = best(lambda: simulate_low_dose(slab, (sx, sy, sz), dose_fraction=args.dose, filter=md_filter, **same,
                                               slices_per_batch=args.batch))
    tot_sk = t_sk_fwd + t_sk_fbp
    print("\n| one 512² slice | forward projection | FBP | both | vs scikit-image |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, tf, tb in rows:
        print(f"| {name} | {tf:.3f} s | {tb:.3f} s | {tf + tb:.3f} s | {tot_sk / (tf + tb):.1f}× |")
    print(f"| medseg `simulate_low_dose`, 1 slice per call | | | {t_sim1:.3f} s | {tot_sk / t_sim1:.1f}× |")
    print(f"| medseg `simulate_low_dose`, {args.batch} slices per call, per slice | | | {t_simb / args.batch:.3f} s | "
          f"{tot_sk * args.batch / t_simb:.1f}× |")
    # the two order views and bins differently (angle direction, axes): compare what does not
    # depend on that, the total and the largest line integral
    tot = abs(float(sino_fp.sum()) - float(sino_sk.sum())) / float(sino_sk.sum())
    top = abs(float(sino_fp.max()) - float(sino_sk.max())) / float(sino_sk.max())
    print(f"line integrals, medseg Fourier vs scikit-image: total {100 * tot:.3f} %, maximum {100 * top:.3f} % apart")

    # ---------------------------------------------------------------- 2. noise statistics
    masks = liver_masks(vol, sample_data.path("ct_dicom_seg"))
    liver = masks[:, :, args.slice]
    to_hu = 1000.0 / MU_WATER_PER_MM
    noises_sk, noises_md = [], []
    for r in range(args.realisations):
        z = rng.standard_normal(sino_sk.shape)
        noises_sk.append(iradon(std_sk * z, theta, circle=False, output_size=n, filter_name=args.filter) / sx * to_hu)
        noises_md.append(simulate_low_dose(hu, (sx, sy, sz), dose_fraction=args.dose, filter=md_filter, **same,
                                           seed=r) - hu)
    sd_sk = float(np.sqrt(np.mean([np.var(a[liver]) for a in noises_sk])))
    sd_md = float(np.sqrt(np.mean([np.var(a[liver]) for a in noises_md])))
    print(f"\nextra noise at dose {args.dose} (I0 {i0:.3g}, no electronic noise) in the liver of slice {args.slice} "
          f"({int(liver.sum())} px, {args.realisations} realisations each): std scikit-image pipeline {sd_sk:.2f} HU, "
          f"medseg simulate_low_dose {sd_md:.2f} HU (ratio {sd_md / sd_sk:.3f})")
    ii, jj = np.nonzero(liver)
    size = 24
    centres = [(ci, cj) for ci in range(ii.min() + size // 2, ii.max() - size // 2, size)
               for cj in range(jj.min() + size // 2, jj.max() - size // 2, size)
               if liver[ci - size // 2:ci + size // 2, cj - size // 2:cj + size // 2].all()]
    spectra = []
    for name, imgs in (("scikit-image", noises_sk), ("medseg", noises_md)):
        rois = np.concatenate([extract_rois(img, centres, size) for img in imgs])
        nps, fx, fy = noise_power_spectrum(rois, (sx, sy))
        f, radial = radial_average(nps, fx, fy, n_bins=8)
        spectra.append((name, f, radial))
    print(f"radial NPS of that noise in {len(centres)} liver ROIs of {size}² px × {args.realisations} realisations "
          "(HU²·mm²):")
    print("| f (cycles/mm) | " + " | ".join(f"{v:.2f}" for v in spectra[0][1]) + " |")
    print("| --- |" + " ---: |" * len(spectra[0][1]))
    for name, _, radial in spectra:
        print(f"| {name} | " + " | ".join(f"{v:.0f}" for v in radial) + " |")
    print("| medseg / scikit-image | " + " | ".join(f"{a / b:.3f}" for a, b in zip(spectra[1][2], spectra[0][2])) + " |")
    # the estimate's own scatter: the same pipeline, two independent halves of its realisations
    half = args.realisations // 2
    halves = []
    for imgs in (noises_sk[:half], noises_sk[half:]):
        nps, fx, fy = noise_power_spectrum(np.concatenate([extract_rois(img, centres, size) for img in imgs]), (sx, sy))
        halves.append(radial_average(nps, fx, fy, n_bins=8)[1])
    print("| scikit-image, one half / the other (scatter) | " + " | ".join(f"{a / b:.3f}" for a, b in zip(*halves)) + " |")

    # a better-powered comparison: a uniform 300 mm water cylinder (stationary noise, 25 ROIs)
    u = (np.arange(n) - (n - 1) / 2) * sx
    rr = np.hypot(*np.meshgrid(u, u, indexing="ij"))
    water = np.where(rr <= 150.0, 0.0, -1000.0).astype(np.float32)
    sino_w = radon(hu_to_mu(torch.from_numpy(water)).numpy().astype(np.float64) * sx, theta, circle=False)
    std_w = np.sqrt(extra_variance(torch.from_numpy(sino_w), args.dose, i0, 0.0).numpy())
    half = max(2, args.realisations // 2)  # split in two halves below
    w_sk = [iradon(std_w * rng.standard_normal(sino_w.shape), theta, circle=False, output_size=n,
                   filter_name=args.filter) / sx * to_hu for _ in range(half)]
    w_md = [simulate_low_dose(water, (sx, sy, sz), dose_fraction=args.dose, filter=md_filter, seed=100 + k, **same) - water
            for k in range(half)]
    wc = [(n // 2 + 26 * i, n // 2 + 26 * j) for i in range(-2, 3) for j in range(-2, 3)]
    w_sp = []
    for imgs in (w_sk, w_md, w_sk[: half // 2], w_sk[half // 2:]):
        nps, fx, fy = noise_power_spectrum(np.concatenate([extract_rois(img, wc, size) for img in imgs]), (sx, sy))
        w_sp.append(radial_average(nps, fx, fy, n_bins=8))
    centre = rr < 60
    print(f"\nwater cylinder (300 mm), same dose and I0, {len(wc)} ROIs of {size}² px × {half} realisations: std within "
          f"60 mm of the centre scikit-image {np.std(np.concatenate([a[centre] for a in w_sk])):.2f} HU, medseg "
          f"{np.std(np.concatenate([a[centre] for a in w_md])):.2f} HU; radial NPS:")
    print("| f (cycles/mm) | " + " | ".join(f"{v:.2f}" for v in w_sp[0][0]) + " |")
    print("| --- |" + " ---: |" * len(w_sp[0][0]))
    print("| medseg / scikit-image | " + " | ".join(f"{a / b:.3f}" for a, b in zip(w_sp[1][1], w_sp[0][1])) + " |")
    print("| scikit-image, one half / the other (scatter) | " + " | ".join(f"{a / b:.3f}" for a, b in zip(w_sp[2][1], w_sp[3][1])) + " |")

    # ---------------------------------------------------------------- 3. dose scaling
    doses = [0.1, 0.25, 0.5, 0.75]
    var = [float(np.var((simulate_low_dose(hu, (sx, sy, sz), dose_fraction=d, seed=10 + k, **same) - hu)[liver]))
           for k, d in enumerate(doses)]
    slope = float(np.polyfit(np.log(1.0 / np.asarray(doses) - 1.0), np.log(var), 1)[0])
    print(f"\ndose scaling in the liver: variance at doses {doses} = {', '.join(f'{v:.1f}' for v in var)} HU²; "
          f"log-log slope vs (1/d − 1): {slope:.3f} (expected 1)")

    # ---------------------------------------------------------------- 4. calibration
    ks = list(range(0, hu_all.shape[2], 4))
    own = np.concatenate([local_std(hu_all[:, :, k], masks[:, :, k]) for k in ks])
    sim = simulate_low_dose(hu_all[:, :, ks], (sx, sy, sz), dose_fraction=0.25, seed=1)
    extra = [np.var((sim[:, :, i] - hu_all[:, :, k])[masks[:, :, k]]) for i, k in enumerate(ks)]
    extra_local = np.concatenate([local_std(sim[:, :, i] - hu_all[:, :, k], masks[:, :, k]) for i, k in enumerate(ks)])
    own_sd = float(np.median(own))
    both = [masks[:, :, k] & masks[:, :, k + 1] for k in range(hu_all.shape[2] - 1)]
    diff_sd = float(np.std(np.concatenate([(hu_all[:, :, k + 1] - hu_all[:, :, k])[m] for k, m in enumerate(both)])) / np.sqrt(2))
    print(f"\ncalibration (defaults; slices {ks}): the scan's own noise in the liver, median 9×9 local std "
          f"{own_sd:.1f} HU (IQR {np.percentile(own, 25):.1f}–{np.percentile(own, 75):.1f}), std of neighbouring-slice "
          f"differences / √2 {diff_sd:.1f} HU; a real quarter-dose scan adds √3 × that = {np.sqrt(3) * diff_sd:.1f}–"
          f"{np.sqrt(3) * own_sd:.1f} HU; the simulation adds {np.sqrt(np.mean(extra)):.1f} HU "
          f"(liver std; median 9×9 local std {np.median(extra_local):.1f} HU)")
    for label, kw in (("parallel, 360 views", dict(views=360)), ("parallel, 1440 views", dict(views=1440)),
                      ("fan, 1440 views over 360°", dict(geometry="fan"))):
        out = simulate_low_dose(hu, (sx, sy, sz), dose_fraction=0.25, seed=2, **kw)
        print(f"  same dose, {label}: liver std {np.std((out - hu)[liver]):.1f} HU")
    load1 = os.getloadavg()
    print(f"load average at end {load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f}")


if __name__ == "__main__":
    main()

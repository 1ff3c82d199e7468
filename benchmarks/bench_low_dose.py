"""Low-dose CT simulation: medseg's torch projector + FBP vs scikit-image `radon` + `iradon`.

On a real 512×512 slice of the bundled CT series (`ct_dicom`), with the same views and
detector bins, back to back in one process:

1. timing of the forward projection and of the FBP (one slice; medseg also per slice in a
   batch of slices, its normal use on a volume);
2. the noise statistics of the simulated quarter-dose noise (insertion of the extra variance,
   `medseg.ct.low_dose`) made with each projector: std in the liver and the radial NPS there.

Usage: ``python benchmarks/bench_low_dose.py [--views 720] [--batch 4] [--repeat 1] [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch


def liver_mask(k: int) -> np.ndarray:
    """Eroded liver of slice k (TotalSegmentator label 5) on the CT series' grid."""
    from scipy import ndimage

    from medseg import sample_data
    from medseg.io import load_volume

    seg = load_volume(sample_data.path("ct_dicom_seg"))
    ct = load_volume(sample_data.path("ct_dicom"))
    labels = seg.array
    for ax in range(2):  # the label file's axes may run the other way: follow the affines
        if np.sign(seg.affine[ax, ax]) != np.sign(ct.affine[ax, ax]):
            labels = np.flip(labels, axis=ax)
    return ndimage.binary_erosion(labels[:, :, k] == 5, iterations=8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=720)
    ap.add_argument("--slice", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4, help="slices per medseg call for the batched timing (0: skip)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--dose", type=float, default=0.25)
    ap.add_argument("--realisations", type=int, default=3, help="noise realisations per projector for the NPS")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from skimage.transform import iradon, radon

    from medseg import sample_data
    from medseg.ct.low_dose import MU_WATER_PER_MM, extra_variance, hu_to_mu
    from medseg.ct.nps import extract_rois, noise_power_spectrum, radial_average
    from medseg.ct.projector import CTGeometry, Projector
    from medseg.io import load_volume

    vol = load_volume(sample_data.path("ct_dicom"))
    hu = vol.array[:, :, args.slice].astype(np.float32)
    sx, sy = vol.spacing[:2]
    assert abs(sx - sy) < 1e-6, "scikit-image needs square pixels"
    mu = hu_to_mu(torch.from_numpy(hu)).numpy()
    n = hu.shape[0]
    theta = np.linspace(0.0, 180.0, args.views, endpoint=False)
    n_det = int(np.ceil(np.sqrt(2) * n))  # what radon(circle=False) uses
    geo = CTGeometry(hu.shape, (sx, sy), kind="parallel", n_views=args.views, n_detectors=n_det)
    proj = Projector(geo)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.1f}")
    print(f"slice {hu.shape} at {sx:.4f} mm, {args.views} views, {n_det} detector bins, dose {args.dose}")

    def best(fn):
        times, out = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return min(times), out

    # -- timing, back to back
    t_sk_fwd, sino_sk = best(lambda: radon(mu.astype(np.float64) * sx, theta, circle=False))  # (bins, views)
    x = torch.from_numpy(mu)
    t_md_fwd, sino_md = best(lambda: proj.forward(x))
    rng = np.random.default_rng(0)
    z_sk = rng.standard_normal(sino_sk.shape)
    noise_sino_sk = np.sqrt(extra_variance(torch.from_numpy(sino_sk), args.dose, 1.5e5, 0.0).numpy()) * z_sk
    t_sk_fbp, noise_sk = best(lambda: iradon(noise_sino_sk, theta, circle=False, output_size=n, filter_name="ramp") / sx)
    gen = torch.Generator().manual_seed(0)
    noise_sino_md = extra_variance(sino_md, args.dose, 1.5e5, 0.0).sqrt() * torch.randn(sino_md.shape, generator=gen)
    t_md_fbp, noise_md = best(lambda: proj.fbp(noise_sino_md))
    noise_md = noise_md.numpy()
    # more realisations for the noise statistics (not timed)
    var_sk = np.sqrt(extra_variance(torch.from_numpy(sino_sk), args.dose, 1.5e5, 0.0).numpy())
    var_md = extra_variance(sino_md, args.dose, 1.5e5, 0.0).sqrt()
    noises_sk, noises_md = [noise_sk], [noise_md]
    for _ in range(args.realisations - 1):
        noises_sk.append(iradon(var_sk * rng.standard_normal(sino_sk.shape), theta, circle=False, output_size=n,
                                filter_name="ramp") / sx)
        noises_md.append(proj.fbp(var_md * torch.randn(sino_md.shape, generator=gen)).numpy())
    line_err = abs(float(sino_md.sum()) - float(sino_sk.sum())) / float(sino_sk.sum())

    print("\n| step (one 512² slice) | scikit-image | medseg | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| forward projection | {t_sk_fwd:.2f} s | {t_md_fwd:.2f} s | {t_sk_fwd / t_md_fwd:.1f}× |")
    print(f"| FBP (ramp) | {t_sk_fbp:.2f} s | {t_md_fbp:.2f} s | {t_sk_fbp / t_md_fbp:.1f}× |")
    tot_sk, tot_md = t_sk_fwd + t_sk_fbp, t_md_fwd + t_md_fbp
    print(f"| **both** | {tot_sk:.2f} s | {tot_md:.2f} s | **{tot_sk / tot_md:.1f}×** |")
    if args.batch > 1:
        k0 = max(0, min(args.slice - args.batch // 2, vol.shape[2] - args.batch))
        xb = hu_to_mu(torch.from_numpy(vol.array[:, :, k0:k0 + args.batch].astype(np.float32)).permute(2, 0, 1).contiguous())
        t0 = time.perf_counter()
        sb = proj.forward(xb)
        t1 = time.perf_counter()
        proj.fbp(sb)
        t2 = time.perf_counter()
        per_f, per_b = (t1 - t0) / args.batch, (t2 - t1) / args.batch
        print(f"| medseg, {args.batch} slices per call, per slice | | {per_f:.2f} + {per_b:.2f} s | "
              f"{tot_sk / (per_f + per_b):.1f}× |")
    print(f"total line integral, medseg vs scikit-image: {100 * line_err:.3f} % apart")

    # -- noise statistics of the inserted quarter-dose noise (HU)
    to_hu = 1000.0 / MU_WATER_PER_MM
    liver = liver_mask(args.slice)
    ii, jj = np.nonzero(liver)
    std_sk = float(np.sqrt(np.mean([np.var(a[liver] * to_hu) for a in noises_sk])))
    std_md = float(np.sqrt(np.mean([np.var(a[liver] * to_hu) for a in noises_md])))
    print(f"\nextra noise at dose {args.dose}, I0 1.5e5, no electronic noise, in the liver ({int(liver.sum())} px, "
          f"{args.realisations} realisations): std scikit-image {std_sk:.1f} HU, "
          f"medseg {std_md:.1f} HU (ratio {std_md / std_sk:.3f})")
    size = 24
    centres = []
    for ci in range(ii.min() + size // 2, ii.max() - size // 2, size):
        for cj in range(jj.min() + size // 2, jj.max() - size // 2, size):
            if liver[ci - size // 2:ci + size // 2, cj - size // 2:cj + size // 2].all():
                centres.append((ci, cj))
    rows = []
    for name, imgs in (("scikit-image", noises_sk), ("medseg", noises_md)):
        rois = np.concatenate([extract_rois(img * to_hu, centres, size) for img in imgs])
        nps, fx, fy = noise_power_spectrum(rois, (sx, sy))
        f, radial = radial_average(nps, fx, fy, n_bins=8)
        rows.append((name, f, radial))
    print(f"radial NPS in {len(centres)} liver ROIs of {size}² px × {args.realisations} realisations (HU²·mm²):")
    print("| f (cycles/mm) | " + " | ".join(f"{v:.2f}" for v in rows[0][1]) + " |")
    print("| --- |" + " ---: |" * len(rows[0][1]))
    for name, _, radial in rows:
        print(f"| {name} | " + " | ".join(f"{v:.0f}" for v in radial) + " |")


if __name__ == "__main__":
    main()

"""Low-dose CT enhancement on the held-out real CT: PSNR/SSIM/RMSE, noise texture (NPS), panels.

One command runs `medseg.report.ldct.evaluate_low_dose` on the bundled 20-slice DICOM series
(`sample:ct_dicom`, TotalSegmentator example, 512², 0.98 mm, 2 mm slices; no workflow trains on
it) at each ``--doses`` fraction, for the low-dose input, NLM and BM3D (oracle σ; BM3D when the
optional ``bm3d`` package is installed) and every checkpoint given with ``--model NAME=PATH``
(e.g. the RED-CNN and WGAN runs of workflows/ldct_redcnn.yaml and workflows/ldct_wgan.yaml,
applied with `medseg.inference.image.predict_image`, as `medseg enhance` does). The NPS ROIs
lie in the eroded liver (TotalSegmentator label 5 of the bundled reference, eroded by
``--erode`` px). Writes ldct_metrics.csv, ldct_nps.csv, ldct_nps_curves.csv, panels,
ldct_report.md / .html into ``--out`` and prints the tables and who wins where.

    python benchmarks/bench_ldct.py --out /tmp/ldct_eval \\
        --model redcnn=runs/ldct_redcnn/checkpoints/best.pt --model wgan=runs/ldct_wgan/checkpoints/best.pt
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def liver_mask(ct, erode_px: int) -> np.ndarray:
    """The reference liver (TotalSegmentator value 5) on the series' grid, eroded per slice."""
    from scipy import ndimage

    from medseg import sample_data
    from medseg.demo import reference_on_grid
    from medseg.io import read_volume

    liver = np.asarray(reference_on_grid(read_volume(sample_data.path("ct_dicom_seg")), ct, {5: 1}).array) == 1
    if erode_px > 0:
        liver = np.stack([ndimage.binary_erosion(liver[:, :, k], iterations=erode_px) for k in range(liver.shape[2])], -1)
    return liver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("ldct_eval"))
    ap.add_argument("--doses", type=float, nargs="+", default=[0.25, 0.1])
    ap.add_argument("--slices", type=int, nargs="*", default=[2, 6, 10, 14, 18],
                    help="scored slices (the default 5 keep BM3D affordable; --slices with no value = all 20)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="an enhancement checkpoint (repeatable)")
    ap.add_argument("--no-bm3d", action="store_true", help="skip BM3D even when installed")
    ap.add_argument("--no-nlm", action="store_true")
    ap.add_argument("--views", type=int, default=None, help="simulation views (default: the simulator's)")
    ap.add_argument("--roi", type=int, default=32, help="NPS ROI side in pixels")
    ap.add_argument("--erode", type=int, default=4, help="liver mask erosion (px) before placing ROIs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--goal", action="append", default=None, metavar="WGAN,REDCNN",
                    help="model names to check against the issue's goal (default wgan,redcnn)")
    args = ap.parse_args()
    args.goal = args.goal or ["wgan,redcnn"]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    from medseg import sample_data
    from medseg.inference import load_model
    from medseg.inference.image import predict_image
    from medseg.io.dicom import read_dicom_series
    from medseg.report.ldct import LowDoseProtocol, baseline_method, evaluate_low_dose, volume_method
    from medseg.report.ldct_report import winners, write_low_dose_report

    load0 = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), load average at start {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f}")
    ct = read_dicom_series(sample_data.path("ct_dicom"))
    mask = liver_mask(ct, args.erode)

    methods = {}
    if not args.no_nlm:
        methods["nlm"] = baseline_method("nlm")
    if not args.no_bm3d:
        try:
            import bm3d  # noqa: F401

            methods["bm3d"] = baseline_method("bm3d")
        except ImportError:
            print("bm3d is not installed (pip install 'medseg[bm3d]'): no BM3D rows")
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"--model expects NAME=PATH, got {spec!r}")
        model = load_model(path, "cpu")
        # a 2-D/2.5-D generator restores each slice from its own neighbours: run it on the scored
        # slices' slabs only (the same output as the whole volume, see volume_method)
        k = int(model.inference.get("context_slices", 0) or 0) if int(model.inference.get("spatial_dims", 3)) == 2 else None
        methods[name] = volume_method(lambda v, m=model: predict_image(v, m), context_slices=k)
        print(f"{name}: {path} (task {model.task})")

    protocol = LowDoseProtocol(
        doses=tuple(args.doses), slices=tuple(args.slices) if args.slices else None, roi_size_px=args.roi, seed=args.seed,
        simulation={"views": args.views} if args.views else {},
    )
    t0 = time.perf_counter()
    ev = evaluate_low_dose(ct, methods, mask, protocol=protocol, case="ct_dicom (held out)", progress=print)
    paths = write_low_dose_report(ev, args.out)
    load1 = os.getloadavg()

    print(f"\n{'dose':>5} {'method':<10} {'window':<22} {'PSNR dB':>8} {'SSIM':>7} {'RMSE HU':>8} {'s/slice':>8}")
    for r in ev.rows:
        t = f"{r.seconds_per_slice:.2f}" if r.seconds_per_slice is not None else "-"
        print(f"{r.level:>5g} {r.method:<10} {r.window + f' (L={r.data_range:g})':<22} {r.psnr_db:>8.2f} {r.ssim:>7.4f} {r.rmse:>8.2f} {t:>8}")
    print(f"\n{'dose':>5} {'method':<12} {'ROIs':>5} {'std HU':>7} {'×normal':>8} {'f mean':>7} {'NPS err':>8}")
    for r in ev.nps:
        print(f"{r.dose_fraction:>5g} {r.method:<12} {r.n_rois:>5d} {r.noise_std_hu:>7.2f} {r.std_ratio_vs_normal:>8.3f} "
              f"{r.mean_frequency_per_mm:>7.3f} {r.nps_error:>8.3f}")
    print("\n" + "\n".join(winners(ev)))
    # the goal of issue 18: the WGAN within 1 dB PSNR of RED-CNN, its NPS error ≤ half of RED-CNN's
    for pair in args.goal:
        wgan, _, redcnn = pair.partition(",")
        if not {wgan, redcnn} <= set(methods):
            continue
        for dose in args.doses:
            full = [r for r in ev.rows if r.level == dose and r.window.startswith("-1024")]
            p = {r.method: r.psnr_db for r in full}
            e = {r.method: r.nps_error for r in ev.nps if r.dose_fraction == dose}
            print(f"dose {dose:g}: PSNR {wgan} − {redcnn} {p[wgan] - p[redcnn]:+.2f} dB (goal ≥ −1); "
                  f"NPS error {wgan} / {redcnn} {e[wgan] / e[redcnn]:.2f} (goal ≤ 0.5)")
    print(f"\nreport: {paths['html']}  ({time.perf_counter() - t0:.0f} s; load average at end "
          f"{load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f})")


if __name__ == "__main__":
    main()

"""Benchmark: medseg.metrics.evaluate_case vs MONAI's metric functions on full-resolution CT masks.

Data: the four largest abdominal organs of the bundled TotalSegmentator example (liver, spleen,
both kidneys; `ct_small_seg`, 122×101×30 at 3 mm) upsampled with trilinear interpolation of each
organ mask (threshold 0.5, smooth surfaces) to a 512×512×300 grid (spacing ≈ 0.72×0.59×0.30 mm).
The "prediction" perturbs each organ the way models err: a shift of a few voxels, a one-voxel
erosion or dilation, and a small false-positive island 30 mm away for the spleen.

Both sides compute, for the 4 labels, Dice, IoU, HD, HD95, ASSD and NSD (τ = 1 mm):
- medseg: one `evaluate_case` call.
- MONAI: what a user would write — one-hot tensors (B=1, C=5), `DiceMetric`, `MeanIoU`,
  `compute_hausdorff_distance` (plain and `percentile=95`), `compute_average_surface_distance
  (symmetric=True)` and `compute_surface_dice`, all with `spacing` and `include_background=False`.

Run: ``.venv/bin/python benchmarks/bench_metrics.py [--repeat N] [--threads T]``.
Prints each time, the speed-up ratio and the largest relative difference of every metric.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
import warnings

import numpy as np

SHAPE = (512, 512, 300)
ORGANS = {5: "liver", 1: "spleen", 2: "kidney_right", 3: "kidney_left"}
NEW_LABELS = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left"}


def build_masks() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Upsampled ground truth, perturbed prediction (uint8, 512×512×300) and spacing in mm."""
    from scipy import ndimage

    from medseg import sample_data
    from medseg.io import read_volume

    src = read_volume(sample_data.path("ct_small_seg"))
    small = np.asarray(src.array)
    zoom = np.array(SHAPE) / np.array(small.shape)
    spacing = tuple(float(s) for s in np.array(src.spacing) / zoom)
    gt = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    rng = np.random.default_rng(0)
    for new, (old, _name) in enumerate(ORGANS.items(), start=1):
        box = ndimage.find_objects((small == old).astype(np.uint8))[0]
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, small.shape))
        crop = (small[box] == old).astype(np.float32)
        up = ndimage.zoom(crop, zoom, order=1, grid_mode=True, mode="grid-constant") >= 0.5
        lo = [int(round(s.start * z)) for s, z in zip(box, zoom)]
        hi = [min(a + n, m) for a, n, m in zip(lo, up.shape, SHAPE)]
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        organ = np.zeros(SHAPE, bool)
        organ[region] = up[tuple(slice(0, b - a) for a, b in zip(lo, hi))]
        gt[organ] = new
        # the prediction: shifted, eroded/dilated, sometimes with a false-positive island
        shift = tuple(int(v) for v in rng.integers(-3, 4, size=3))
        p = np.roll(organ, shift, axis=(0, 1, 2))
        p = ndimage.binary_erosion(p) if new % 2 else ndimage.binary_dilation(p)
        if new == 2:  # an island 25 mm beyond the organ's bounding box along axis 1
            c = np.argwhere(organ).mean(axis=0).astype(int)
            c[1] = np.flatnonzero(organ.any(axis=(0, 2)))[0] - int(25 / spacing[1])
            z, y, x = np.ogrid[tuple(slice(int(ci) - 8, int(ci) + 8) for ci in c)]
            island = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= 49
            p[tuple(slice(int(ci) - 8, int(ci) + 8) for ci in c)] |= island
        pred[p & (pred == 0)] = new
    return gt, pred, spacing


def run_medseg(gt, pred, spacing, threads: int) -> dict[int, dict[str, float]]:
    from medseg.metrics import evaluate_case

    rows = evaluate_case(gt, pred, spacing, labels=NEW_LABELS, nsd_tolerance_mm=1.0, threads=threads)
    return {r["label"]: r for r in rows}


def run_monai(gt, pred, spacing) -> tuple[dict[int, dict[str, float]], dict[str, float]]:
    import torch
    from monai.metrics import (
        DiceMetric,
        MeanIoU,
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )
    from monai.networks.utils import one_hot

    times: dict[str, float] = {}
    torch.set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    n = len(NEW_LABELS) + 1
    yp = one_hot(torch.from_numpy(pred.astype(np.int64))[None, None], n)
    yt = one_hot(torch.from_numpy(gt.astype(np.int64))[None, None], n)
    times["one_hot"] = time.perf_counter() - t
    kw = dict(include_background=False, spacing=list(spacing))
    out: dict[str, torch.Tensor] = {}
    t = time.perf_counter()
    out["dice"] = DiceMetric(include_background=False)(yp, yt)
    times["dice"] = time.perf_counter() - t
    t = time.perf_counter()
    out["iou"] = MeanIoU(include_background=False)(yp, yt)
    times["iou"] = time.perf_counter() - t
    for key, fn in (
        ("hd", lambda: compute_hausdorff_distance(yp, yt, **kw)),
        ("hd95", lambda: compute_hausdorff_distance(yp, yt, percentile=95, **kw)),
        ("assd", lambda: compute_average_surface_distance(yp, yt, symmetric=True, **kw)),
        ("nsd", lambda: compute_surface_dice(yp, yt, class_thresholds=[1.0] * (n - 1), **kw)),
    ):
        t = time.perf_counter()
        out[key] = fn()
        times[key] = time.perf_counter() - t
    values = {lab: {k: float(v[0, lab - 1]) for k, v in out.items()} for lab in NEW_LABELS}
    return values, times


def time_edt_variant(gt, pred, spacing) -> tuple[float, float]:
    """Liver distances by two Euclidean distance transforms on the cropped boundaries."""
    from scipy import ndimage

    from medseg.metrics import boundary, bounding_box, surface_distances

    g, p = gt == 1, pred == 1
    box = bounding_box(g | p, margin=1)
    t = time.perf_counter()
    bg, bp = boundary(g[box]), boundary(p[box])
    d_pg = ndimage.distance_transform_edt(~bg, sampling=spacing)[bp]
    d_gp = ndimage.distance_transform_edt(~bp, sampling=spacing)[bg]
    elapsed = time.perf_counter() - t
    sd = surface_distances(g, p, spacing)
    return elapsed, float(max(np.abs(d_pg - sd.pred_to_gt).max(), np.abs(d_gp - sd.gt_to_pred).max()))


def rel_diff(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="medseg timing repeats (best is reported)")
    parser.add_argument("--threads", type=int, default=1, help="medseg threads for the distance searches")
    parser.add_argument("--edt", action="store_true", help="also time the distance-transform variant on the liver")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import monai
    import scipy
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}, scipy {scipy.__version__}, torch {torch.__version__}, MONAI {monai.__version__}")
    t = time.perf_counter()
    gt, pred, spacing = build_masks()
    print(f"masks: {gt.shape}, spacing {tuple(round(s, 4) for s in spacing)} mm, built in {time.perf_counter() - t:.1f} s")
    for lab, name in NEW_LABELS.items():
        print(f"  {lab} {name:13s} gt {np.count_nonzero(gt == lab):>9d} voxels, pred {np.count_nonzero(pred == lab):>9d}")

    best = np.inf
    for _ in range(args.repeat):
        t = time.perf_counter()
        ours = run_medseg(gt, pred, spacing, args.threads)
        best = min(best, time.perf_counter() - t)
    rss_after_medseg = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"medseg evaluate_case (all 6 metrics, 4 labels, threads={args.threads}): {best:.3f} s (best of {args.repeat}); "
          f"peak RSS so far {rss_after_medseg:.0f} MiB")

    theirs, times = run_monai(gt, pred, spacing)
    total = sum(v for k, v in times.items() if k != "one_hot")
    print("MONAI: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()) + f"; total without one_hot {total:.2f} s")
    print(f"speed-up (MONAI metric calls, one-hot encoding not counted / medseg): {total / best:.1f}×; "
          f"counting the one-hot encoding: {(total + times['one_hot']) / best:.1f}×")
    if args.edt:
        edt_time, edt_diff = time_edt_variant(gt, pred, spacing)
        print(f"for comparison, exact EDT (scipy distance_transform_edt, sampling=spacing) on the liver crop, both "
              f"directions: {edt_time:.2f} s; max |EDT - medseg| distance {edt_diff:.1e} mm")

    print(f"{'label':14s}" + "".join(f"{k:>12s}" for k in ("dice", "iou", "hd", "hd95", "assd", "nsd")))
    worst: dict[str, float] = {}
    for lab, name in NEW_LABELS.items():
        print(f"{name:14s}" + "".join(f"{ours[lab][k]:12.6f}" for k in ("dice", "iou", "hd", "hd95", "assd", "nsd")))
        for k in ("dice", "iou", "hd", "hd95", "assd", "nsd"):
            worst[k] = max(worst.get(k, 0.0), rel_diff(ours[lab][k], theirs[lab][k]))
    print("max relative difference medseg vs MONAI: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    ok = all(v <= 1e-6 for v in worst.values())
    print("values equal within 1e-6 relative: " + ("yes" if ok else "NO"))
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

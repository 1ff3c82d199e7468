"""Exported low-dose CT generator vs its checkpoint: speed and PSNR of TorchScript, ONNX and
int8 ONNX (ONNX Runtime dynamic quantisation) on the held-out DICOM series.

The series (20 slices, 512², never trained on) is the full-dose reference; its simulated copy
at ``--dose`` (`medseg.ct.low_dose.simulate_low_dose`) is the input. Each export is timed
against the float checkpoint on whole-volume `predict_image` runs (best of ``--repeats``, after
a warm-up) and compared in PSNR against the reference (HU range −1024…3071) and against the
float output. Prints one row per export with its speed-up ratio.

    python benchmarks/bench_ldct_export.py runs/ldct_wgan/checkpoints/best.pt --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--dose", type=float, default=0.25)
    ap.add_argument("--views", type=int, default=360)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from medseg import sample_data
    from medseg.ct.low_dose import simulate_low_dose
    from medseg.inference.export import export_model
    from medseg.inference.export_image import compare_image_export
    from medseg.io.dicom import read_dicom_series

    full = read_dicom_series(sample_data.path("ct_dicom"))
    full_hu = np.asarray(full.array, dtype=np.float32)
    low = full.with_array(simulate_low_dose(full_hu, full.spacing[:2], dose_fraction=args.dose, views=args.views, seed=1))
    ref = full.with_array(full_hu)
    print(f"held-out series {full_hu.shape}, simulated at {args.dose} of the full dose; {args.threads} torch threads")
    print(f"{'export':<22}{'float s':>9}{'export s':>10}{'speed-up':>10}{'PSNR float':>12}{'PSNR export':>13}{'Δ dB':>8}{'max |Δ| HU':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, q, suffix in (("torchscript", None, "ts"), ("onnx", None, "onnx"), ("onnx", "int8", "onnx")):
            path = export_model(args.checkpoint, Path(tmp) / f"g-{q or 'float'}.{suffix}", fmt=fmt, quantize=q)
            r = compare_image_export(args.checkpoint, path, low, reference=ref, repeats=args.repeats)
            print(f"{fmt + (' ' + q if q else ''):<22}{r['float_s']:>9.2f}{r['exported_s']:>10.2f}{r['speedup']:>9.2f}×"
                  f"{r['psnr_float_db']:>12.2f}{r['psnr_exported_db']:>13.2f}{r['psnr_change_db']:>+8.3f}{r['max_abs_diff_hu']:>12.2f}")


if __name__ == "__main__":
    main()

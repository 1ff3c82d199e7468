"""How much of the held-out CT's own noise a denoiser removes: the checkpoint applied to the
scan *without* added noise, scored against the scan itself (bench_denoise's protocol: the same
5 slices, clipped to −1024..3071 HU, data range 4095 HU).

The protocol's reference is a real normal-dose scan, not a noise-free image; whatever a blind
denoiser takes out of it counts as error. The PSNR printed here is therefore an upper bound on
what that denoiser can score at any noise level of bench_denoise.

Run: ``.venv/bin/python benchmarks/denoise_reference_floor.py CT_DAE_CHECKPOINT``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_denoise  # noqa: E402

from medseg import sample_data  # noqa: E402
from medseg.metrics.image import psnr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    args = ap.parse_args()
    clean, spacing = bench_denoise._ras(sample_data.path("ct_dicom"))
    zs = sorted({*np.linspace(0, clean.shape[2] - 1, 5).round().astype(int).tolist()})
    out = bench_denoise._Network(args.checkpoint)(clean, zs)
    ref = np.clip(clean[:, :, zs], *bench_denoise.CT_WINDOW)
    den = np.clip(out, *bench_denoise.CT_WINDOW)
    body, soft = ref > -500, (ref > -100) & (ref < 200)
    print(f"held-out CT {clean.shape}, spacing {spacing} mm, slices {zs}")
    print(f"denoiser(scan) vs scan: PSNR {psnr(den, ref, data_range=4095.0):.2f} dB; RMS change in the body "
          f"{float(np.sqrt(np.mean((den - ref)[body] ** 2))):.1f} HU; std of the change in soft tissue "
          f"{float(np.std((den - ref)[soft])):.1f} HU")


if __name__ == "__main__":
    main()

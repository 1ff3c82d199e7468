"""Benchmark: does CPU work beside the network slow its forward? A thread vs a process.

Why `segment_batch` runs reading/writing in worker *processes* (`medseg.inference.workers`):
the forward of a network returns to Python between layers, so a thread that runs Python code
(pydicom, highdicom, matplotlib) makes it wait for the GIL, even when a core is free.

Measured on the same network and window settings as `bench_inference.py` (the checkpoint's
plan; random input of the benchmark's preprocessed size, 167×167×150), torch on
``--threads`` threads (default 1, leaving a core for the other work on a 2-core machine):

1. the sliding window alone;
2. the same while a pure-Python loop runs in a **thread** of this process (switch interval 5 ms,
   Python's default, then 0.5 ms);
3. the same while the same loop runs in another **process**.

Run: ``.venv/bin/python benchmarks/bench_gil_stall.py [--checkpoint CKPT] [--threads N]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path


def _spin(stop) -> None:  # type: ignore[no-untyped-def]
    x = 0
    while not stop.is_set():
        x += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("demo_output/runs/abdomen_ct_organs/checkpoints/best.pt"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from medseg.runtime import keep_freed_memory

    keep_freed_memory()
    import torch
    from monai.inferers import sliding_window_inference

    from medseg.inference import load_models

    torch.set_num_threads(args.threads)
    (model,) = load_models([args.checkpoint], "cpu")
    roi = tuple(model.inference["roi_size"])
    sw_bs, overlap = int(model.inference["sw_batch_size"]), float(model.inference["overlap"])
    img = torch.randn(1, 1, 167, 167, 150)

    def forward() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            sliding_window_inference(img, roi, sw_bs, model.network, overlap=overlap, mode="gaussian")
        return time.perf_counter() - t

    forward()
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__} on {torch.get_num_threads()} thread(s); "
          f"checkpoint {args.checkpoint}, window {roi}")
    alone = forward()
    rows = [("sliding window alone", alone)]
    for interval in (0.005, 0.0005):
        sys.setswitchinterval(interval)
        stop = threading.Event()
        th = threading.Thread(target=_spin, args=(stop,))
        th.start()
        rows.append((f"+ Python loop in a thread (switch interval {interval * 1000:g} ms)", forward()))
        stop.set()
        th.join()
    sys.setswitchinterval(0.005)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    proc = ctx.Process(target=_spin, args=(stop,))
    proc.start()
    time.sleep(1.0)  # let it start spinning
    rows.append(("+ Python loop in another process", forward()))
    stop.set()
    proc.join()
    for name, t in rows:
        print(f"{name:60s} {t:7.2f} s  ×{t / alone:.2f}")


if __name__ == "__main__":
    main()

"""`segment_batch` with `--workers 0` against `--workers 1`, alternating, on the benchmark series
of `bench_inference.py` (one series, and its 12-series batch; run bench_inference.py once first
to build them): whether background processes pay on this machine. `medseg segment`'s defaults,
the model loaded once.

Run: ``.venv/bin/python -u benchmarks/bench_workers.py CHECKPOINT [--rounds N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from medseg.inference import BatchOptions, InferenceOptions, load_models, segment_batch
    from medseg.runtime import keep_freed_memory

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    keep_freed_memory()
    (model,) = load_models([args.checkpoint], "cpu")
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medseg-bench"
    one, many = root / "ct_512x512x300_1.5mm" / "series_1", root / "batch_of_12"
    out = Path(tempfile.mkdtemp(prefix="medseg-bench-workers-")) / "out"

    def run(src: Path, n: int, workers: int) -> float:
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        res = segment_batch(src, out, models=[model], options=BatchOptions(inference=InferenceOptions(device="cpu"),
                                                                           progress=False, workers=workers))
        assert res.n_done == n, [(r.status, r.reason) for r in res.records]
        return time.perf_counter() - t

    run(one, 1, 0)  # warm-up
    for rnd in range(args.rounds):
        order = (0, 1) if rnd % 2 == 0 else (1, 0)  # alternate, so that drift hits both alike
        for w in order:
            print(f"round {rnd} one series --workers {w}: {run(one, 1, w):.2f} s", flush=True)
        for w in order:
            t = run(many, 12, w)
            print(f"round {rnd} 12 series --workers {w}: {t:.1f} s = {t / 12:.2f} s/series", flush=True)


if __name__ == "__main__":
    main()

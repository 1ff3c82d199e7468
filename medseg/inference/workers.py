"""Worker processes that read, preprocess, post-process and write series beside the network.

`segment_batch` with ``workers > 0`` runs everything of a series except the network in worker
processes: reading + preprocessing (`prepare_series`) before the forward, and resampling back
to the original grid + post-processing + all outputs (`finish_series`) after it. The main
process only runs the sliding window. This is nnU-Net's design (separate preprocessing and
export processes), for the same reason:

**Threads do not work for this.** The network's forward returns to Python between every layer;
a thread running Python code (pydicom, highdicom, matplotlib) holds the GIL for up to the 5 ms
switch interval each time, so the forward waits. Measured on the benchmark network, 2-core
box, torch on 1 thread, a pure-Python loop in a second thread: sliding window 8.85 s →
21.6 s although a core was free (10.5 s with a 0.5 ms switch interval). Processes share no GIL.

The first series of a batch runs in the main process while the workers start; each later
series stays with one worker ("lane", series n → lane (n - 1) mod W) from reading to writing,
so the original volume never travels between processes; only the preprocessed image and the
probabilities on the network's grid do, as torch tensors in shared memory (~0.06 s for the
84 MB of a 512×512×300 CT at 3 mm; pickling numpy arrays through the pipe took 0.3-0.5 s).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# state of one worker process (set by `_init`)
_STATE: dict[str, Any] = {"volumes": {}}


def default_workers(device: Any) -> int:
    """Worker processes `segment_batch` uses when not told: 0 on machines with fewer than 4 CPUs.

    On 2 cores the overlap costs more than it saves (docs/benchmarks.md, inference "Fourth
    round": 7.72 s per 512×512×300 series in one process vs 8.26 s with a worker, batch of 6;
    the forward takes 4.8 s on both cores, 8.7 s on one). With 4+ cores one worker (two with a
    GPU, whose forward leaves the CPUs free) takes the CPU work off the forward's path.
    """
    n = os.cpu_count() or 1
    if n < 4:
        return 0
    return 2 if getattr(device, "type", str(device)) == "cuda" and n >= 8 else 1


def _watch_parent(parent: int) -> None:
    """Exit when the parent process is gone (killed with SIGKILL: no one would shut us down)."""
    import time

    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


@contextlib.contextmanager
def _busy(counter: Any) -> Iterator[None]:
    """Count this worker as busy in `counter` (the main process lends it a thread meanwhile)."""
    if counter is not None:
        with counter.get_lock():
            counter.value += 1
    try:
        yield
    finally:
        if counter is not None:
            with counter.get_lock():
                counter.value -= 1


def _init(models: list[Any], options: Any, log_level: int, keep_memory: bool, threads: int, parent: int, busy: Any) -> None:
    with _busy(busy):  # starting up is work too (imports: ~2 s of CPU)
        _start(models, options, log_level, keep_memory, threads, parent, busy)


def _start(models: list[Any], options: Any, log_level: int, keep_memory: bool, threads: int, parent: int, busy: Any) -> None:
    # Ctrl-C goes to the whole process group: the parent decides (it waits for running writes,
    # which are atomic anyway), so a worker does not die half-way with a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="medseg-watch-parent").start()
    if keep_memory:
        from medseg.runtime import keep_freed_memory

        keep_freed_memory()
    logging.basicConfig(level=log_level, format="%(levelname)s %(message)s")
    import torch

    torch.set_num_threads(max(1, threads))
    import medseg.inference.batch  # noqa: F401 - import what the tasks need now, counted as busy
    import medseg.inference.predict  # noqa: F401
    import medseg.io.dicom  # noqa: F401

    _STATE.update(models=models, options=options, volumes={}, busy=busy)


def prepare_series(record: Any) -> tuple[Any, dict[str, Any]]:
    """In a worker: read the series and preprocess it; the volume stays here for `finish_series`.

    Returns:
        ``(PreparedInput, record fields learnt from the volume)``.
    """
    from medseg.inference.batch import _fill_record, _load
    from medseg.inference.predict import prepare_input

    with _busy(_STATE.get("busy")):
        volume = _load(record)
        _fill_record(record, volume)
        prepared = prepare_input(volume, _STATE["models"], _STATE["options"].inference)
    _STATE["volumes"][record.key] = volume
    return prepared, {"n_slices": record.n_slices, "modality": record.modality}


def finish_series(record: Any, probabilities: Any, affine: Any, series_dir: Path, timings: dict[str, float]) -> dict[str, str]:
    """In a worker: labels on the original grid, post-processing, outputs, completion marker."""
    import time

    from medseg.inference.batch import write_series_outputs
    from medseg.inference.predict import finish_segmentation

    volume = _STATE["volumes"].pop(record.key)
    with _busy(_STATE.get("busy")):
        t0 = time.perf_counter()
        models, options = _STATE["models"], _STATE["options"]
        seg = finish_segmentation(volume, probabilities, affine, models, options.inference)
        del probabilities
        timings = {**timings, "finish_s": round(time.perf_counter() - t0, 3)}
        return write_series_outputs(volume, seg, record, models, series_dir, options, timings)


def drop_series(key: str) -> None:
    """In a worker: forget a series whose forward failed."""
    _STATE["volumes"].pop(key, None)


class Lane:
    """One worker process (created on first use, again after it died)."""

    def __init__(self, models: list[Any], options: Any, busy: Any = None, threads: int = 1) -> None:
        import torch

        from medseg.runtime import _state

        # the worker needs the models' plans and labels, not their networks
        lean = [replace(m, network=None, device=torch.device("cpu")) for m in models]
        self._initargs = (lean, options, logging.getLogger().level, bool(_state.get("active")), threads, os.getpid(), busy)
        self._pool: cf.ProcessPoolExecutor | None = None

    def submit(self, fn: Any, *args: Any) -> cf.Future:
        if self._pool is not None and getattr(self._pool, "_broken", False):
            self._drop_broken()
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_init, initargs=self._initargs
            )
        try:
            return self._pool.submit(fn, *args)
        except BrokenProcessPool:  # it died between the check and the submit
            self._drop_broken()
            return self.submit(fn, *args)

    def _drop_broken(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def busy_counter() -> Any:
    """A counter of busy workers shared with them (give it to every `Lane` of a batch)."""
    return multiprocessing.get_context("spawn").Value("i", 0)


class ThreadLender:
    """Gives torch in this process the cores that busy workers leave free.

    Called before every forward pass: ``threads - busy workers`` (at least 1). A worker works
    ~2.5 s per 512×512×300 series; the forward takes both cores of a 2-core machine the rest
    of the time instead of one core all the time.
    """

    def __init__(self, busy: Any, threads: int) -> None:
        self.busy, self.threads = busy, threads

    def __call__(self) -> None:
        import torch

        want = max(1, self.threads - max(0, int(self.busy.value)))
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)


def is_worker_death(exc: BaseException) -> bool:
    """True when a future failed because its worker process died (killed, out of memory...)."""
    return isinstance(exc, BrokenProcessPool)

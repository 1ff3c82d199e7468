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

**Jobs** (``jobs > 1``, CPU only) are the other way to use several cores: each job process
segments whole series (`run_series`: read → network → outputs) with its share of the cores,
the jobs sharing one copy of the weights. On a 2-core box, where a worker cannot pay (the
forward gives up a core it uses fully), two 1-thread jobs keep both cores on useful work:
measured in docs/benchmarks.md (inference, "Fifth round"). When fewer jobs are busy than
started (the last series of a batch) the busy ones take the idle cores, window by window.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import re
import signal
import sys
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
def busy_while(counter: Any) -> Iterator[None]:
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


def _init(models: list[Any], options: Any, log_level: int, keep_memory: bool, threads: int, parent: int, busy: Any,
          job_cores: int = 0) -> None:
    if job_cores:  # a job counts as busy while it segments a series, not while it starts
        _start(models, options, log_level, keep_memory, threads, parent, busy, job_cores)
        return
    with busy_while(busy):  # starting up is work too (imports: ~2 s of CPU)
        _start(models, options, log_level, keep_memory, threads, parent, busy)


def _start(models: list[Any], options: Any, log_level: int, keep_memory: bool, threads: int, parent: int, busy: Any,
           job_cores: int = 0) -> None:
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

    _STATE.update(models=models, options=options, volumes={}, busy=busy, job_cores=job_cores)
    atexit.register(_exit_now)  # registered last: runs first when the pool lets this process go


def _exit_now() -> None:
    """End a worker or job process without the interpreter's teardown of torch and MONAI.

    The interpreter's usual exit took 0.9-1.0 s with them loaded (measured on the 2-core box:
    ``Lane.shutdown`` 0.9 s → 0.03 s), time a batch waited for at its end. Nothing is lost: by
    the time the pool lets the process go, every task has returned (its files written
    atomically, its result sent through a queue that writes synchronously), and this process
    opened no temporary file or queue of its own that another exit handler would close.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def prepare_series(record: Any) -> tuple[Any, dict[str, Any]]:
    """In a worker: read the series and preprocess it; the volume stays here for `finish_series`.

    Returns:
        ``(PreparedInput, record fields learnt from the volume)``.
    """
    from medseg.inference.batch import _fill_record, _load
    from medseg.inference.predict import prepare_input

    with busy_while(_STATE.get("busy")):
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
    with busy_while(_STATE.get("busy")):
        t0 = time.perf_counter()
        models, options = _STATE["models"], _STATE["options"]
        seg = finish_segmentation(volume, probabilities, affine, models, options.inference)
        del probabilities
        timings = {**timings, "finish_s": round(time.perf_counter() - t0, 3)}
        return write_series_outputs(volume, seg, record, models, series_dir, options, timings)


def run_series(record: Any, series_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """In a job process: one whole series, read → network → outputs (see `segment_series`).

    Torch here gets ``cores // busy jobs`` threads, set before every forward pass.

    Returns:
        ``(outputs, record fields learnt from the volume + the seconds it took)``.
    """
    import time

    from medseg.inference.batch import _load, segment_series

    t0 = time.perf_counter()
    busy = _STATE.get("busy")
    share = CoreShare(busy, _STATE["job_cores"]) if busy is not None else None
    with busy_while(busy):
        if share is not None:
            share()
        volume = _load(record)
        outputs = segment_series(volume, record, _STATE["models"], series_dir, _STATE["options"], before_window=share)
    return outputs, {"n_slices": record.n_slices, "modality": record.modality, "seconds": time.perf_counter() - t0}


def drop_series(key: str) -> None:
    """In a worker: forget a series whose forward failed."""
    _STATE["volumes"].pop(key, None)


class Lane:
    """One worker process (created on first use, again after it died)."""

    def __init__(self, models: list[Any], options: Any, busy: Any = None, threads: int = 1, job_cores: int = 0) -> None:
        """`job_cores` > 0: a job process (`run_series`) that shares `job_cores` cores with the
        other jobs counted in `busy`; it gets the networks (CPU tensors travel as shared memory,
        one copy of the weights for all jobs). Otherwise a worker, given plans and labels only."""
        import torch

        from medseg.runtime import _state

        if not job_cores:
            models = [replace(m, network=None, device=torch.device("cpu")) for m in models]
        self._initargs = (models, options, logging.getLogger().level, bool(_state.get("active")), threads, os.getpid(), busy,
                          job_cores)
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

    def terminate(self) -> None:
        """Stop the process now, whatever it is doing (its writes are atomic: nothing half-written)."""
        if self._pool is not None:
            for proc in list(getattr(self._pool, "_processes", {}).values()):  # private, but the only handle
                with contextlib.suppress(Exception):
                    proc.terminate()
            self._pool.shutdown(wait=False, cancel_futures=True)
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
        self.busy, self.threads = busy, max(1, int(threads))

    def want(self, busy: int) -> int:
        return max(1, self.threads - max(0, busy))

    def __call__(self) -> None:
        import torch

        want = self.want(int(self.busy.value))
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)


class CoreShare(ThreadLender):
    """A job's share of the cores: ``cores // busy jobs`` torch threads (at least 1).

    Called before every forward pass, so a job left alone (the others idle or done) takes
    the idle cores from its next window on.
    """

    def want(self, busy: int) -> int:
        return max(1, self.threads // max(1, busy))


#: Below this many series a batch is not worth a job process (its start-up and the last
#: series alone eat the gain; 6 series on 2 cores: 42.3 s with 2 jobs vs 45.7 s in one).
JOBS_MIN_SERIES = 6
#: Free memory below which series are not segmented two at a time by default.
JOBS_MIN_FREE_BYTES = 8 << 30


def default_jobs(device: Any, n_series: int) -> int:
    """Series `segment_batch` segments at once when not told (`BatchOptions.jobs`).

    2 on a CPU device with 2-3 cores, for a batch of `JOBS_MIN_SERIES`+ series and 8 GiB free:
    there a worker process cannot pay (`default_workers` is 0) but two 1-thread jobs do
    (docs/benchmarks.md, inference "Fifth round": 5.9 s per 512×512×300 series in the steady
    state vs 7.6 s one at a time). Otherwise 1.
    """
    from medseg.inference.predict import available_memory_bytes

    n = os.cpu_count() or 1
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    if on_cpu and 2 <= n < 4 and n_series >= JOBS_MIN_SERIES and available_memory_bytes() >= JOBS_MIN_FREE_BYTES:
        return 2
    return 1


_MAIN_GUARD = re.compile(r"""__name__\s*==\s*['"]__main__['"]""")


def unguarded_main_script(main: Any = None) -> str | None:
    """The script that a spawned process would run again, when it lacks a ``__main__`` guard.

    A new process made by ``spawn`` imports the parent's main module as ``__mp_main__``,
    which runs its top-level code again: a script that calls `segment_batch` at top level
    would start a second batch in every worker (Python then stops it with a RuntimeError,
    after that code has run). Returns the script's path when its source has no
    ``if __name__ == "__main__":`` test; None when it has one, or when there is no script
    (interactive session, notebook) or it cannot be read.
    """
    main = sys.modules.get("__main__") if main is None else main
    spec = getattr(main, "__spec__", None)
    path = getattr(spec, "origin", None) if spec is not None else getattr(main, "__file__", None)
    if not path or (spec is not None and not str(path).endswith(".py")):  # no script, or a frozen/built-in one
        return None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return None if _MAIN_GUARD.search(text) else str(path)


def is_worker_death(exc: BaseException) -> bool:
    """True when a future failed because its worker process died (killed, out of memory...)."""
    return isinstance(exc, BrokenProcessPool)

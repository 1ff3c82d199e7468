"""The background processes of the batch pipeline: how they start, and that they die with it.

`segment_batch` runs series through three stages, in nnU-Net's shape: background processes
read and preprocess series ahead of the network (bounded), the batch's own process runs the
network, and another set of processes resamples the results onto the original grids and
writes the outputs (bounded). Processes, not threads: the forward pass returns to Python
between layers, and pure-Python work in a thread (pydicom, highdicom) would hold the GIL and
stall it.

Every background process:

- sets torch's thread count once, to 1 (the network's process keeps its own, also set once),
  so no stage's arithmetic depends on what else runs at the time;
- ignores SIGINT: Ctrl-C reaches the whole process group, and the batch decides (its writes
  are atomic; a series is done only when the batch itself writes its marker);
- dies with its parent: on Linux the kernel sends it SIGKILL when the parent dies
  (``PR_SET_PDEATHSIG``), elsewhere a thread watches the parent's pid. A process whose parent
  was gone before it could ask exits at once. So nothing is written after a ``kill -9`` of the
  batch.

With ``workers=0`` the same stages run in this process, one after the other
(`InlineExecutor`): one code path for every setting.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def default_workers(device: Any) -> int:
    """Background processes per stage `segment_batch` uses when not told.

    0 below 4 CPUs: there a background process takes cores from the network's forward pass
    (which uses them all) and costs more than it saves (docs/benchmarks.md). 1 from 4 CPUs,
    2 with a GPU and 8+ CPUs (the forward then leaves the CPUs free).
    """
    n = os.cpu_count() or 1
    if n < 4:
        return 0
    return 2 if getattr(device, "type", str(device)) == "cuda" and n >= 8 else 1


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when `parent_pid` (its parent) dies, however it dies.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, then a check that the parent is still the one
    it was (it may have died before the call). Elsewhere: a daemon thread polls the parent's pid.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="medseg-watch-parent").start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.2)
        if os.getppid() != parent_pid:
            os._exit(1)


def init_background_process(parent_pid: int, log_level: int, keep_memory: bool) -> None:
    """Initializer of every background process (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    if keep_memory:
        from medseg.runtime import keep_freed_memory

        keep_freed_memory()
    logging.basicConfig(level=log_level, format="%(levelname)s %(message)s")
    import torch

    torch.set_num_threads(1)


class InlineExecutor(cf.Executor):
    """An executor that runs each task in the caller, at once (``workers=0``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(exc)
        return fut


@contextlib.contextmanager
def stage_executor(n_processes: int) -> Iterator[cf.Executor]:
    """`n_processes` background processes for one stage (0: `InlineExecutor`).

    On leaving the block, waiting tasks are cancelled; running ones end (their writes are
    atomic) before the block is left.
    """
    if n_processes <= 0:
        yield InlineExecutor()
        return
    from medseg.runtime import keep_freed_memory_active

    pool = cf.ProcessPoolExecutor(
        max_workers=n_processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_background_process,
        initargs=(os.getpid(), logging.getLogger().getEffectiveLevel(), keep_freed_memory_active()),
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def is_worker_death(exc: BaseException) -> bool:
    """True when a future failed because its background process died (killed, out of memory...)."""
    return isinstance(exc, BrokenProcessPool)


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



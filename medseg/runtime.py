"""Process-wide settings that make CPU training and inference faster.

`keep_freed_memory` changes how glibc's ``malloc`` treats large blocks. By default every
allocation above 32 MiB is a fresh ``mmap`` that is returned to the kernel by ``free``: each
convolution output of a 3-D network, each full-resolution label map and each temporary of the
post-processing is then page-faulted in again, page by page, and the kernel zeroes every page.
With ``M_MMAP_MAX = 0`` large blocks come from the heap instead, and with a high
``M_TRIM_THRESHOLD`` freed memory stays there, so the next network step (or the next series of
a batch) reuses pages that are already mapped. This is the effect PyTorch's CPU performance
guides get by preloading jemalloc or tcmalloc, without a native library to install.

It makes CPU training steps and sliding windows markedly faster (figures in
docs/benchmarks.md, "Figures behind the code's choices"). The cost: the process keeps its peak memory until it exits
(what it needed once, it will need again for the next step or series), so the CLI turns it on
and long-lived interactive processes (the napari plugin) do not.

Set ``MEDSEG_KEEP_FREED_MEMORY=0`` to leave the allocator alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Make glibc keep freed large blocks for reuse instead of unmapping them (idempotent).

    Returns:
        True when the setting is active (Linux with glibc, not disabled by
        ``MEDSEG_KEEP_FREED_MEMORY=0``); False otherwise, which changes nothing else.
    """
    if "active" in _state:
        return _state["active"]
    active = False
    if os.environ.get("MEDSEG_KEEP_FREED_MEMORY", "1").strip() not in ("0", "false", "no") and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            # mallopt returns 1 on success, 0 on error; musl and other libcs lack it (AttributeError)
            active = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
        except (OSError, AttributeError) as exc:
            log.debug("keep_freed_memory: not available (%s)", exc)
    _state["active"] = active
    return active


def keep_freed_memory_active() -> bool:
    """Whether `keep_freed_memory` is active in this process (background processes follow it)."""
    return bool(_state.get("active", False))


_gc_lock = threading.Lock()
_gc_pauses = [0, False]  # active pauses, whether gc was enabled before the first


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while building many small objects.

    Building a DICOM SEG creates ~100 000 pydicom objects; the collector's passes over them
    (and over everything torch and numpy hold) made `write_dicom_seg`'s time vary by a third
    (docs/benchmarks.md). Nested and multi-threaded use is safe: the
    collector is re-enabled (if it was enabled) when the last pause ends.
    """
    with _gc_lock:
        if _gc_pauses[0] == 0:
            _gc_pauses[1] = gc.isenabled()
            gc.disable()
        _gc_pauses[0] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses[0] -= 1
            if _gc_pauses[0] == 0 and _gc_pauses[1]:
                gc.enable()

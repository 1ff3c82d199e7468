"""Process-wide speed settings: the malloc setting the CLI turns on, and GC pauses."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_in_a_fresh_process():
    code = (
        "import os, numpy as np, resource\n"
        "from medseg.runtime import keep_freed_memory\n"
        "if os.environ['KEEP'] == '1': assert keep_freed_memory() and keep_freed_memory()\n"  # idempotent
        "np.ones(64 << 20, np.uint8)\n"  # 64 MiB, freed at once
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(5): np.ones(64 << 20, np.uint8)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
    )
    faults = {}
    for keep in ("0", "1"):
        # 4 KiB pages (numpy asks for huge pages otherwise, which hides the difference)
        env = {**os.environ, "KEEP": keep, "NUMPY_MADVISE_HUGEPAGE": "0"}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        faults[keep] = int(out.stdout)
    # glibc's default: each 64 MiB array is a fresh mmap, 16 384 page faults each
    assert faults["0"] > 5 * 16384 * 0.9, faults
    # kept: the freed block is reused
    assert faults["1"] < 2000, faults
    off = subprocess.run(
        [sys.executable, "-c", "from medseg.runtime import keep_freed_memory; print(keep_freed_memory())"],
        capture_output=True, text=True, check=True, env={"MEDSEG_KEEP_FREED_MEMORY": "0", "PATH": ""},
    )
    assert off.stdout.strip() == "False"


def test_gc_paused_nests_across_threads_and_restores():
    from medseg.runtime import gc_paused

    assert gc.isenabled()
    inner_started, release = threading.Event(), threading.Event()

    def other():
        with gc_paused():
            inner_started.set()
            release.wait(5)

    with gc_paused():
        t = threading.Thread(target=other)
        t.start()
        inner_started.wait(5)
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread's pause is still on
    release.set()
    t.join()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()

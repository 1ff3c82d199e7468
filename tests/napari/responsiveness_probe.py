"""Run by test_responsiveness.py in a fresh interpreter (what a user has: napari just started, the
plugin's widget opened, the first run): open a viewer with a large CT, run the Segment or Enhance
widget under a 10 ms QTimer probe, print the event-loop gaps as JSON.

    python tests/napari/responsiveness_probe.py segment|enhance CHECKPOINT X Y Z

With ``MEDSEG_PROBE_STALLS=FILE`` every thread's Python stack is written to FILE each 60 ms the
GUI thread misses a tick (`faulthandler`, which needs no GIL): what held the GUI up.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time
from typing import Any

import numpy as np


def large_ct(shape: tuple[int, int, int]):
    """The bundled real CT resampled (nearest) onto `shape` voxels of the same extent."""
    from medseg import sample_data
    from medseg.io import Volume, read_volume

    ct = read_volume(sample_data.path("ct"))
    idx = [np.minimum((np.arange(n) * s / n).astype(int), s - 1) for n, s in zip(shape, ct.shape)]
    affine = ct.affine.copy()
    affine[:3, :3] = ct.affine[:3, :3] * (np.asarray(ct.shape) / np.asarray(shape))[None, :]
    return Volume(np.asfortranarray(ct.array[np.ix_(*idx)]), affine, {"modality": "CT"})


class Probe:
    """A 10 ms QTimer's tick times while active."""

    def __init__(self, stalls: Any = None) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.stalls = stalls
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        self.ticks.append(time.perf_counter())
        if self.stalls is not None:
            self.stalls.write(f"@@ tick {self.ticks[-1]:.3f}\n")
            self.stalls.flush()
            faulthandler.dump_traceback_later(0.06, repeat=True, file=self.stalls)

    def __enter__(self) -> Probe:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.stop()
        if self.stalls is not None:
            faulthandler.cancel_dump_traceback_later()

    def gaps(self) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(self.ticks)
        return np.diff(t) * 1000.0, t[1:]


def wait(ms: int, until=None) -> None:
    from qtpy.QtCore import QCoreApplication

    end = time.perf_counter() + ms / 1000.0
    while time.perf_counter() < end and not (until and until()):
        QCoreApplication.processEvents()
        time.sleep(0.002)


def main(which: str, ckpt: str, shape: tuple[int, int, int]) -> dict:
    import napari
    from napari.layers import Image, Labels

    from napari_plugin._layers import image_layer
    from napari_plugin._widget import EnhanceWidget, SegmentWidget, _add

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 860)
    image = _add(viewer, image_layer(large_ct(shape), "large CT"))
    widget = (SegmentWidget if which == "segment" else EnhanceWidget)(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value = image
    widget.checkpoint.value = ckpt
    widget.device.value = "cpu"
    result = "large CT segmentation" if which == "segment" else "large CT enhanced"

    def tiny_layer() -> Any:
        return (Labels(np.zeros((3, 4, 5), np.uint8)) if which == "segment"
                else Image(np.zeros((3, 4, 5), np.float32), contrast_limits=(0, 1)))

    # napari's first layer of a kind in a process compiles that kind's shaders and builds its
    # controls once: one tiny layer of the result's kind added and removed first makes the
    # result's insertion and the reference below alike, so the comparison is of medseg's work on
    # the GUI thread only
    viewer.layers.remove(viewer.add_layer(tiny_layer()))
    wait(500)

    inserted: list[float] = []
    viewer.layers.events.inserting.connect(lambda _e: inserted.append(time.perf_counter()))
    finished: list[float] = []
    stalls = open(os.environ["MEDSEG_PROBE_STALLS"], "w") if os.environ.get("MEDSEG_PROBE_STALLS") else None  # noqa: SIM115
    with Probe(stalls) as probe:
        t0 = time.perf_counter()
        worker = widget.start()
        worker.finished.connect(lambda: finished.append(time.perf_counter()))
        wait(900_000, until=lambda: bool(finished))
        wait(10_000, until=lambda: result in viewer.layers)
        wait(150)
    seconds = time.perf_counter() - t0
    gaps, ends = probe.gaps()
    shown = inserted[0] if inserted else float("inf")

    # napari's own cost of adding a 3×4×5 layer of the result's kind, now that all is warm
    reference = 0.0
    for _ in range(3):
        with Probe() as ref:
            wait(60)
            tiny = viewer.add_layer(tiny_layer())
            wait(60)
        viewer.layers.remove(tiny)
        wait(50)
        reference = max(reference, float(ref.gaps()[0].max()))
    out = {
        "status": str(widget.status.value), "result_shape": list(viewer.layers[result].data.shape) if result in viewer.layers else None,
        "image_shape": list(image.data.shape), "seconds": seconds, "ticks": len(probe.ticks),
        "running_ticks": int(np.sum(ends < shown)), "running_max_ms": float(gaps[ends < shown].max()), "running_p99_ms": float(np.percentile(gaps[ends < shown], 99)),
        "showing_max_ms": float(gaps[ends >= shown].max()) if np.any(ends >= shown) else None, "reference_ms": reference,
    }
    viewer.close()
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], tuple(int(v) for v in sys.argv[3:6]))))

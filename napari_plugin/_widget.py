"""medseg's napari widgets: Segment, Enhance, Metrics, Review queue.

Each widget collects parameters, runs one `medseg` call in a `napari.qt.threading.thread_worker`
(so the Qt event loop stays free) and shows the result. Nothing here segments, measures or
stores data by itself: `medseg.inference`, `medseg.metrics`, `medseg.data.review` and
`medseg.io` do.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox, ComboBox, Container, FileEdit, FloatSlider, Label, LineEdit, ProgressBar, PushButton, Table,
)
from qtpy.QtCore import QObject, Signal

from napari_plugin._layers import LABELS_KEY, SOURCE_KEY, geometry_of, image_layer, labels_layer

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

#: Shortest time between two progress updates a widget shows (the last one is always shown).
PROGRESS_INTERVAL_S = 0.25


# --------------------------------------------------------------------------------------------
# shared pieces


class _Relay(QObject):
    """Carries progress from a worker thread to the GUI thread (a queued Qt signal)."""

    progressed = Signal(str, int, int)


class SegmentationCancelled(Exception):
    """Raised inside the worker when the user pressed Cancel."""


def _layers_of(viewer: napari.Viewer, kind: str) -> list[tuple[str, Any]]:
    import napari.layers

    cls = {"image": napari.layers.Image, "labels": napari.layers.Labels}[kind]
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, cls)]


def _add(viewer: napari.Viewer, layer_data: tuple[Any, dict[str, Any], str]) -> Any:
    from napari.layers import Layer

    return viewer.add_layer(Layer.create(*layer_data))


def _layer_volume(layer: Any, **meta: Any) -> Any:
    """A layer's data back on its source grid as a medseg Volume (source metadata restored)."""
    from medseg.io.viewer import volume_from_layer

    source = dict((layer.metadata or {}).get(SOURCE_KEY) or {})
    return volume_from_layer(np.asarray(layer.data), layer.metadata, what=f"layer {layer.name!r}", **{**source, **meta})


def match_labels_geometry(viewer: napari.Viewer, labels: Any) -> Any | None:
    """Give a Labels layer without medseg geometry the geometry of the image it was drawn on.

    The image is the selected one if its data shape matches, else the only Image layer with
    medseg geometry and the same shape. Scale, translate, rotation, affine and the geometry and
    source records are copied, so painting lands on the image's voxels and the writers put
    the labels back on the image's grid (and DICOM series).

    Returns:
        The image layer copied from, or None (nothing matched).
    """
    import napari.layers

    if geometry_of(labels) is not None:
        return None
    shape = tuple(labels.data.shape)
    candidates = [l for l in viewer.layers if isinstance(l, napari.layers.Image) and geometry_of(l) and tuple(l.data.shape[:3]) == shape]
    active = viewer.layers.selection.active
    image = active if active in candidates else (candidates[0] if len(candidates) == 1 else None)
    if image is None:
        return None
    labels.scale = image.scale
    labels.translate = image.translate
    labels.rotate = image.rotate
    labels.affine = image.affine
    labels.metadata = {**labels.metadata, **{k: v for k, v in image.metadata.items() if k != "medseg_warnings"}}
    return image


def install_geometry_hook(viewer: napari.Viewer) -> None:
    """New Labels layers inherit the geometry of their image (see `match_labels_geometry`); once per viewer."""
    import napari.layers

    if getattr(viewer, "_medseg_geometry_hook", False):
        return

    def on_inserted(event: Any) -> None:
        layer = event.value
        if isinstance(layer, napari.layers.Labels):
            match_labels_geometry(viewer, layer)

    viewer.layers.events.inserted.connect(on_inserted)
    viewer._medseg_geometry_hook = True  # type: ignore[attr-defined]


def _notify_error(exc: BaseException) -> str:
    from medseg.errors import MedsegError

    text = str(exc) if isinstance(exc, MedsegError) else f"{type(exc).__name__}: {exc}"
    try:
        from napari.utils.notifications import show_error

        show_error(text)
    except Exception:  # no notification manager (bare tests)
        log.error(text)
    return text


# --------------------------------------------------------------------------------------------
# Segment and Enhance: a checkpoint applied to an image layer in a worker


class _CheckpointRun(Container):
    """What Segment and Enhance share: image, checkpoint, device, run / cancel, progress, status.

    A subclass adds its own options (`_options`), runs `medseg` in `_work` (in the worker; it
    returns layer-data tuples, or None when cancelled) and shows them in `_show`.
    """

    run_text = "Run"

    def __init__(self, viewer: napari.Viewer) -> None:
        from medseg.inference.preload import preload_inference

        super().__init__(labels=True)
        self.viewer = viewer
        install_geometry_hook(viewer)
        # torch, MONAI and the model code are imported now, on the GUI thread, while the widget
        # opens: imported by the first run's worker they would hold the GIL and freeze the GUI
        preload_inference()
        self.image = ComboBox(label="image", choices=lambda _w: _layers_of(self.viewer, "image"))
        self.checkpoint = FileEdit(label="checkpoint", filter="*.pt", mode="r")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.run_button = PushButton(text=self.run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=100, value=0)
        self.status = Label(label="", value="")
        self.extend([self.image, self.checkpoint, self.device, *self._options(), self.run_button, self.cancel_button,
                     self.progress, self.status])
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._cancel = threading.Event()
        self._shown_progress_at = float("-inf")
        self.worker: Any = None
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda _e: self.image.reset_choices())

    def _options(self) -> list[Any]:
        return []

    def _work(self, layer: Any, ckpt: Path, device: str) -> Any:
        """A function the worker runs: ``work(report) -> result | None``; `report` raises when cancelled."""
        raise NotImplementedError

    def _show(self, result: Any) -> str:
        """Add `result` to the viewer (GUI thread); returns the status text."""
        raise NotImplementedError

    def start(self) -> Any:
        """Start the run in a worker thread; returns the worker (None if inputs are missing)."""
        from napari.qt.threading import thread_worker

        layer = self.image.value
        ckpt = Path(str(self.checkpoint.value))
        if layer is None or not ckpt.is_file():
            self.status.value = "choose an image layer and a checkpoint file"
            return None
        self._cancel.clear()
        self._shown_progress_at = float("-inf")
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.status.value = "loading the model…"
        work = self._work(layer, ckpt, str(self.device.value))
        relay, cancel = self._relay, self._cancel

        def report(stage: str, done: int, total: int) -> None:
            if cancel.is_set():
                raise SegmentationCancelled()
            relay.progressed.emit(stage, int(done), int(total))

        @thread_worker(ignore_errors=True)  # errors go to `_on_error` (one notification, no traceback)
        def run() -> Any:
            try:
                return work(report)
            except SegmentationCancelled:
                return None

        self.worker = run()
        self.worker.returned.connect(self._on_done)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next progress step."""
        self._cancel.set()
        self.status.value = "cancelling…"

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        # Each change repaints the dock widget and the window is composed again with napari's
        # OpenGL canvas (slow with software OpenGL); a few updates a second are plenty
        now = time.monotonic()
        if self._cancel.is_set() or (done < total and now - self._shown_progress_at < PROGRESS_INTERVAL_S):
            return
        self._shown_progress_at = now
        self.status.value = f"{stage} {done}/{total}"
        if stage == "infer" and total:
            _set_progress(self.progress, int(100 * done / total))

    def _on_done(self, result: Any) -> None:
        if result is None:
            self.status.value = "cancelled"
            return
        text = self._show(result)
        _set_progress(self.progress, 100)
        self.status.value = text

    def _on_error(self, exc: BaseException) -> None:
        self.status.value = _notify_error(exc)

    def _on_finished(self) -> None:
        self.run_button.enabled = True
        self.cancel_button.enabled = False


def _set_progress(bar: ProgressBar, value: int) -> None:
    """Set `bar` without QProgressBar's synchronous repaint: the change is drawn with the next
    (coalesced) update of the window, together with the status text."""
    native = bar.native
    native.setUpdatesEnabled(False)
    try:
        bar.value = value
    finally:
        native.setUpdatesEnabled(True)  # schedules one ordinary update


def _layer_input(layer: Any) -> tuple[Any, dict[str, Any], str]:
    """What a worker needs of an image layer (its data, a copy of its metadata, its name)."""
    return layer.data, dict(layer.metadata), layer.name


class SegmentWidget(_CheckpointRun):
    """Segment the chosen image with a medseg checkpoint; adds a named Labels layer and, when
    asked, the uncertainty map (normalised softmax entropy, `medseg.inference.uncertainty`)."""

    run_text = "Segment"

    def _options(self) -> list[Any]:
        self.tta = CheckBox(text="flip TTA (4× slower)", value=False)
        self.uncertainty = CheckBox(text="uncertainty map (softmax entropy)", value=False)
        return [self.tta, self.uncertainty]

    def _work(self, layer: Any, ckpt: Path, device: str) -> Any:
        data, metadata, name = _layer_input(layer)
        tta, uncertainty = bool(self.tta.value), bool(self.uncertainty.value)

        def work(report: Any) -> tuple[Any, Any] | None:
            from medseg.inference import InferenceOptions, load_model, segment_volume
            from medseg.io import Volume
            from medseg.io.viewer import volume_from_layer

            source = dict(metadata.get(SOURCE_KEY) or {})
            volume = volume_from_layer(np.asarray(data), metadata, what=f"layer {name!r}", **source)
            model = load_model(ckpt, device)
            options = InferenceOptions(device=device, tta=tta, uncertainty=uncertainty)
            seg = segment_volume(volume, [model], options, progress=report)
            entropy = seg.meta.pop("uncertainty", None)
            seg.meta = {**source, "label_names": dict(model.labels), "models": seg.meta.get("models")}
            labels = labels_layer(seg, f"{name} segmentation", dict(model.labels))
            unc = None
            if entropy is not None:
                # 0 = one-hot softmax, 1 = uniform: a fixed [0, 1] window compares runs and series
                unc = image_layer(Volume(entropy, volume.affine, dict(source)), f"{name} uncertainty",
                                  contrast_limits=(0.0, 1.0), colormap="magma", blending="additive", visible=True)
            return labels, unc

        return work

    def _show(self, result: tuple[Any, Any]) -> str:
        labels, unc = result
        if unc is not None:
            _add(self.viewer, unc)
        _add(self.viewer, labels)
        return f"done: {labels[1]['name']}"


class EnhanceWidget(_CheckpointRun):
    """Apply a denoising / low-dose CT checkpoint (`medseg.inference.image.predict_image`) to the
    chosen image; the result is a new Image layer on the input's grid with its window, compared
    with the input side by side (napari's grid) or overlaid (a blend slider and an A/B toggle)."""

    run_text = "Enhance"

    def _options(self) -> list[Any]:
        self.compare = ComboBox(label="compare", choices=["overlay", "side by side"], value="overlay")
        self.blend = FloatSlider(label="input ↔ enhanced", min=0.0, max=1.0, step=0.05, value=1.0)
        self.toggle_button = PushButton(text="Show input / enhanced")
        self.compare.changed.connect(self._apply_compare)
        self.blend.changed.connect(self._apply_blend)
        self.toggle_button.changed.connect(self.toggle)
        self.pair: tuple[Any, Any] | None = None  # (input layer, enhanced layer) of the last run
        self._hidden: list[Any] = []  # layers side-by-side mode hid (shown again when it ends)
        self.tta = CheckBox(text="mirror TTA (4× slower)", value=False)
        return [self.tta, self.compare, self.blend, self.toggle_button]

    def _work(self, layer: Any, ckpt: Path, device: str) -> Any:
        data, metadata, name = _layer_input(layer)
        window = {"contrast_limits": tuple(float(c) for c in layer.contrast_limits), "gamma": float(layer.gamma),
                  "colormap": layer.colormap.name}
        self._input_layer = layer
        tta = bool(self.tta.value)  # read in the GUI thread

        def work(report: Any) -> Any:
            from medseg.inference import load_model
            from medseg.inference.image import predict_image
            from medseg.io.viewer import volume_from_layer

            source = dict(metadata.get(SOURCE_KEY) or {})
            volume = volume_from_layer(np.asarray(data), metadata, what=f"layer {name!r}", **source)
            model = load_model(ckpt, device)
            if model.task == "segmentation":  # as `medseg enhance` refuses it
                from medseg.errors import CheckpointError

                raise CheckpointError(f"{ckpt}: a segmentation checkpoint; use the Segment widget for it")
            result = predict_image(volume, model, progress=report, tta=tta)
            # the input's window and colormap: the comparison shows the same grey values alike
            return image_layer(result, f"{name} enhanced", **window)

        return work

    def _show(self, result: Any) -> str:
        from napari.experimental import link_layers

        source = self._input_layer
        enhanced = _add(self.viewer, result)
        if source in self.viewer.layers:
            # one window for both: changing it on either layer changes the other
            link_layers([source, enhanced], ("contrast_limits", "gamma", "colormap"))
            self.pair = (source, enhanced)
        if self.compare.value == "side by side":
            self._apply_compare()
        else:  # the enhanced layer lies on the input, same extent: no layout change
            self._apply_blend()
        return f"done: {enhanced.name}"

    # -- comparison
    def _live_pair(self) -> tuple[Any, Any] | None:
        if self.pair is None or any(l not in self.viewer.layers for l in self.pair):
            return None
        return self.pair

    def _apply_compare(self, _value: Any = None) -> None:
        pair = self._live_pair()
        grid = self.viewer.canvas.grid
        if pair is None:
            return
        source, enhanced = pair
        if self.compare.value == "side by side":
            # only the two layers are shown, one per grid cell (napari's grid skips hidden layers)
            self._hidden = [l for l in self.viewer.layers if l.visible and l not in pair]
            for l in self._hidden:
                l.visible = False
            source.visible = enhanced.visible = True
            enhanced.opacity = 1.0
            grid.stride, grid.shape, grid.enabled = 1, (1, 2), True
            self.blend.enabled = self.toggle_button.enabled = False
            self.status.value = f"side by side: {source.name} | {enhanced.name}"
        else:
            grid.enabled = False
            for l in self._hidden:
                if l in self.viewer.layers:
                    l.visible = True
            self._hidden = []
            source.visible = enhanced.visible = True
            self.blend.enabled = self.toggle_button.enabled = True
            self._apply_blend()
            self.status.value = f"overlay: {enhanced.name} over {source.name}"
        self.viewer.reset_view()  # the layout changed: fit the images to the canvas

    def _apply_blend(self, _value: Any = None) -> None:
        """Overlay mode: the enhanced layer's opacity (0 = the input only, 1 = the enhanced only)."""
        pair = self._live_pair()
        if pair is not None and self.compare.value == "overlay":
            pair[1].opacity = float(self.blend.value)

    def toggle(self) -> None:
        """Overlay mode: flip between the input and the enhanced image (A/B)."""
        pair = self._live_pair()
        if pair is not None and self.compare.value == "overlay":
            pair[1].visible = not pair[1].visible
            self.status.value = f"showing {(pair[1] if pair[1].visible else pair[0]).name}"


# --------------------------------------------------------------------------------------------
# Metrics

_METRIC_COLUMNS = ("name", "dice", "iou", "hd", "hd95", "assd")  # the CSV export has every column


class MetricsWidget(Container):
    """Dice, IoU, HD, HD95, ASSD per label between two Labels layers (`medseg.metrics.evaluate_case`)."""

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        install_geometry_hook(viewer)
        self.ground_truth = ComboBox(label="ground truth", choices=lambda _w: _layers_of(self.viewer, "labels"))
        self.prediction = ComboBox(label="prediction", choices=lambda _w: _layers_of(self.viewer, "labels"))
        self.run_button = PushButton(text="Compute")
        self.table = Table(value={c: [] for c in _METRIC_COLUMNS})
        self.csv_path = FileEdit(label="CSV", mode="w", filter="*.csv")
        self.export_button = PushButton(text="Export CSV")
        self.status = Label(label="", value="")
        self.extend([self.ground_truth, self.prediction, self.run_button, self.table, self.csv_path, self.export_button, self.status])
        self.native.setMinimumWidth(520)  # room for the six metric columns
        self.rows: list[dict[str, Any]] = []
        self.worker: Any = None
        self.run_button.changed.connect(self.start)
        self.export_button.changed.connect(self.export_csv)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda _e: (self.ground_truth.reset_choices(), self.prediction.reset_choices()))

    def start(self) -> Any:
        """Compute the metrics in a worker thread; returns the worker."""
        from napari.qt.threading import thread_worker

        from medseg.errors import GeometryError

        gt, pred = self.ground_truth.value, self.prediction.value
        if gt is None or pred is None:
            self.status.value = "choose two Labels layers"
            return None
        if gt.data.shape != pred.data.shape or not np.allclose(gt.scale, pred.scale):
            self.status.value = _notify_error(GeometryError(
                f"{gt.name!r} {tuple(gt.data.shape)} at {_mm(gt.scale)} mm and {pred.name!r} {tuple(pred.data.shape)} "
                f"at {_mm(pred.scale)} mm are not on one grid; resample one onto the other first"))
            return None
        names = {int(k): str(v) for k, v in ((gt.metadata.get(LABELS_KEY) or pred.metadata.get(LABELS_KEY)) or {}).items()}
        gt_data, pred_data, spacing = gt.data, pred.data, tuple(float(s) for s in gt.scale)
        self.status.value = "computing…"
        self.run_button.enabled = False

        @thread_worker
        def work() -> list[dict[str, Any]]:
            from medseg.io.volume import label_values_present
            from medseg.metrics import evaluate_case

            g, p = np.asarray(gt_data), np.asarray(pred_data)
            present = sorted(set(label_values_present(g)) | set(label_values_present(p)))
            # the layer arrays are the volumes with permuted/flipped axes; scale = spacing per axis
            return evaluate_case(g, p, spacing, {v: names.get(v, f"label {v}") for v in present} or None)

        self.worker = work()
        self.worker.returned.connect(self._show)
        self.worker.errored.connect(lambda e: setattr(self.status, "value", _notify_error(e)))
        self.worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self.worker.start()
        return self.worker

    def _show(self, rows: list[dict[str, Any]]) -> None:
        self.rows = [{"case": self.prediction.value.name if self.prediction.value else "", **r} for r in rows]
        self.table.value = {c: [_cell(r[c]) for r in rows] for c in _METRIC_COLUMNS}
        self.status.value = f"{len(rows)} label(s)"

    def export_csv(self) -> Path | None:
        """Write the table (all of medseg's metric columns) to the chosen CSV file, atomically."""
        from medseg.io.atomic import write_text_atomic
        from medseg.report.summary import metrics_csv_text

        if not self.rows:
            self.status.value = "compute the metrics first"
            return None
        path = Path(str(self.csv_path.value))
        if path.suffix.lower() != ".csv":
            path = path.with_suffix(".csv")
        write_text_atomic(path, metrics_csv_text(self.rows))
        self.status.value = f"saved {path.name}"
        return path


def _mm(values: Any) -> str:
    return "×".join(f"{float(v):g}" for v in values)


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "inf" if not np.isfinite(value) else round(value, 3)
    return value


# --------------------------------------------------------------------------------------------
# Review queue


class ReviewWidget(Container):
    """Step through a review queue (`medseg.data.review`): load, correct, accept / needs fix.

    Every committed paint stroke saves the case's labels (NIfTI, atomic, in a worker); the
    status and comment go to the review file at once. Accepted cases become training data for
    a workflow with ``data.review_file``.
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        install_geometry_hook(viewer)
        self.source = FileEdit(label="manifest / folder", mode="r")
        self.open_button = PushButton(text="Open queue")
        self.case_label = Label(label="case", value="")
        self.previous_button = PushButton(text="◀ Previous")
        self.next_button = PushButton(text="Next ▶")
        self.comment = LineEdit(label="comment", value="")
        self.accept_button = PushButton(text="Accept")
        self.needs_fix_button = PushButton(text="Needs fix")
        self.status = Label(label="", value="")
        nav = Container(layout="horizontal", widgets=[self.previous_button, self.next_button], labels=False)
        marks = Container(layout="horizontal", widgets=[self.accept_button, self.needs_fix_button], labels=False)
        self.extend([self.source, self.open_button, self.case_label, nav, self.comment, marks, self.status])
        self.queue: Any = None
        self.index = -1
        self.layers: list[Any] = []
        self.worker: Any = None
        self._saving: Any = None
        self._dirty = False
        self.open_button.changed.connect(lambda: self.open(self.source.value))
        self.previous_button.changed.connect(lambda: self.go(self.index - 1))
        self.next_button.changed.connect(lambda: self.go(self.index + 1))
        self.accept_button.changed.connect(lambda: self.mark("accepted"))
        self.needs_fix_button.changed.connect(lambda: self.mark("needs_fix"))

    # -- queue
    def open(self, source: Any) -> Any:
        """Open a ``segment.json`` manifest or a case folder and load its first case."""
        from medseg.data.review import open_review_queue
        from medseg.errors import MedsegError

        try:
            self.queue = open_review_queue(Path(str(source)))
        except MedsegError as exc:
            self.status.value = _notify_error(exc)
            return None
        return self.go(0)

    def go(self, index: int) -> Any:
        """Load case `index` (image + current labels) in a worker; returns the worker."""
        from napari.qt.threading import thread_worker

        if self.queue is None or not (0 <= index < len(self.queue.cases)):
            return None
        self.index = index
        case = self.queue.cases[index]
        self.comment.value = case.comment
        self._show_case_label()
        self.status.value = "loading…"

        @thread_worker
        def work() -> tuple[Any, Any]:
            from medseg.data.datasets import align_to_grid
            from medseg.errors import GeometryError
            from medseg.io import load_volume

            image = load_volume(case.image, series_uid=case.series_uid)
            image.meta.setdefault("source_path", case.image)
            labels = load_volume(case.current_labels)
            aligned = align_to_grid(labels, image)
            if aligned is None:
                raise GeometryError(f"{case.current_labels}: labels are not on the grid of {case.image}")
            aligned.meta = {**image.meta, "label_names": labels.meta.get("label_names") or {}}
            return image_layer(image, f"{case.name}"), labels_layer(aligned, f"{case.name} labels")

        self.worker = work()
        self.worker.returned.connect(self._show_case)
        self.worker.errored.connect(lambda e: setattr(self.status, "value", _notify_error(e)))
        self.worker.start()
        return self.worker

    def _show_case_label(self) -> None:
        case = self.queue.cases[self.index]
        unc = f", uncertainty {case.uncertainty:.3g}" if case.uncertainty is not None else ""
        self.case_label.value = f"{self.index + 1}/{len(self.queue.cases)} {case.name} [{case.status}{unc}]"

    def _show_case(self, layer_data: tuple[Any, Any]) -> None:
        for layer in self.layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        image = _add(self.viewer, layer_data[0])
        labels = _add(self.viewer, layer_data[1])
        labels.events.paint.connect(self._on_edit)
        self.layers = [image, labels]
        self.viewer.layers.selection.active = labels
        self.status.value = "loaded"

    # -- edits and status
    @property
    def labels_layer(self) -> Any:
        return self.layers[1] if len(self.layers) == 2 else None

    def _on_edit(self, _event: Any = None) -> None:
        """After each committed edit: save the labels in a worker (one save at a time, the last edit wins)."""
        self._dirty = True
        if self._saving is None:
            self._save_now()

    def _save_now(self) -> Any:
        from napari.qt.threading import thread_worker

        layer, queue, index = self.labels_layer, self.queue, self.index
        if layer is None:
            return None
        self._dirty = False
        data, metadata, name = np.array(layer.data, copy=True), dict(layer.metadata), layer.name

        @thread_worker
        def work() -> Path:
            from medseg.io.viewer import volume_from_layer

            return queue.save_correction(index, volume_from_layer(data, metadata, what=f"layer {name!r}"))

        self._saving = work()
        self._saving.returned.connect(lambda p: setattr(self.status, "value", f"saved {Path(p).name}"))
        self._saving.errored.connect(lambda e: setattr(self.status, "value", _notify_error(e)))
        self._saving.finished.connect(self._on_saved)
        self._saving.start()
        return self._saving

    def _on_saved(self) -> None:
        self._saving = None
        if self._dirty:
            self._save_now()

    def mark(self, status: str) -> None:
        """Record the case's status and comment in the review file."""
        if self.queue is None or self.index < 0:
            return
        self.queue.set_status(self.index, status, self.comment.value)
        self._show_case_label()
        self.status.value = f"marked {status}"

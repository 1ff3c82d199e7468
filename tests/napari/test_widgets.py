"""The Segment and Metrics widgets end to end: a real trained checkpoint on the bundled CT."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medseg import sample_data
from medseg.io import read_volume

pytestmark = pytest.mark.gui


def _open_ct(viewer):
    from napari_plugin._sample_data import ct_small
    from napari_plugin._widget import _add

    image_data, labels_data = ct_small()
    return _add(viewer, image_data), _add(viewer, labels_data)


def test_segment_widget_adds_the_models_labels_and_uncertainty_on_the_image_grid(viewer, qtbot, seg_ckpt, screenshot):
    from medseg.inference import InferenceOptions, load_model, segment_volume

    from napari_plugin._widget import SegmentWidget

    image, _ = _open_ct(viewer)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="medseg: Segment")
    widget.image.value = image
    widget.checkpoint.value = seg_ckpt
    widget.device.value = "cpu"
    widget.uncertainty.value = True
    seen = []
    widget._relay.progressed.connect(lambda s, d, t: seen.append((s, d, t)))
    worker = widget.start()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: "ct_small segmentation" in viewer.layers, timeout=5000)
    seg = viewer.layers["ct_small segmentation"]
    assert widget.status.value.startswith("done") and widget.progress.value == 100
    assert any(s == "infer" for s, _, _ in seen)
    np.testing.assert_allclose(seg.scale, image.scale)
    np.testing.assert_allclose(seg.translate, image.translate)
    # the same as medseg's own inference on the file, voxel for voxel, after the way back to the grid
    from medseg.io.viewer import volume_from_layer

    expected = segment_volume(read_volume(sample_data.path("ct_small")), [load_model(seg_ckpt, "cpu")],
                              InferenceOptions(device="cpu", uncertainty=True))
    got = volume_from_layer(seg.data, seg.metadata)
    np.testing.assert_array_equal(got.array, expected.array)
    # the uncertainty map: medseg's normalised entropy, on the image's grid, window [0, 1]
    unc = viewer.layers["ct_small uncertainty"]
    np.testing.assert_allclose(unc.scale, image.scale)
    np.testing.assert_allclose(unc.translate, image.translate)
    assert tuple(unc.contrast_limits) == (0.0, 1.0)
    got_unc = volume_from_layer(unc.data, unc.metadata)
    np.testing.assert_array_equal(got_unc.array, expected.meta["uncertainty"])
    assert 0.0 <= float(got_unc.array.min()) and float(got_unc.array.max()) <= 1.0
    assert float(got_unc.array.max()) > 0.5  # a short-trained model is unsure somewhere
    unc.visible = False
    assert int((got.array == 1).sum()) > 100  # the short-trained model finds some liver
    assert dict(zip(seg.features["index"], seg.features["name"]))[1] == "liver"
    viewer.layers["ct_small labels"].visible = False  # the picture shows the model's labels only
    viewer.layers.selection.active = seg
    viewer.dims.set_point(0, float(image.translate[0] + image.scale[0] * 15))
    screenshot(viewer, "segment")
    # the same slice with the uncertainty map under the labels' outlines: where the model is unsure
    unc.visible = True
    unc.colormap = "inferno"
    image.visible = False  # the map is drawn additively over the CT: alone it reads as it is
    seg.contour = 1
    viewer.layers.selection.active = unc
    screenshot(viewer, "segment_uncertainty")


def test_segment_widget_cancel_stops_without_a_layer(viewer, qtbot, seg_ckpt):
    from napari_plugin._widget import SegmentWidget

    image, _ = _open_ct(viewer)
    widget = SegmentWidget(viewer)
    widget.image.value = image
    widget.checkpoint.value = seg_ckpt
    widget.device.value = "cpu"
    widget.tta.value = True
    n_layers = len(viewer.layers)
    widget._relay.progressed.connect(lambda *a: widget.cancel_button.clicked.emit())
    worker = widget.start()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert widget.status.value == "cancelled"
    assert len(viewer.layers) == n_layers
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_metrics_widget_matches_medseg_evaluate_and_exports_csv(viewer, qtbot, tmp_path, screenshot):
    from medseg.metrics import evaluate_case
    from napari.layers import Labels

    from napari_plugin._widget import MetricsWidget

    image, gt = _open_ct(viewer)
    widget = MetricsWidget(viewer)  # from here on, new Labels layers take their image's geometry
    pred_data = np.roll(gt.data, 2, axis=2)  # a shifted copy: Dice < 1, distances > 0
    pred = viewer.add_layer(Labels(pred_data, name="shifted"))
    viewer.window.add_dock_widget(widget, name="medseg: Metrics")
    widget.ground_truth.value = gt
    widget.prediction.value = pred
    worker = widget.start()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: bool(widget.rows), timeout=5000)
    gt_vol = read_volume(sample_data.path("ct_small_seg"))
    from medseg.io.viewer import volume_from_layer

    pred_vol = volume_from_layer(pred_data, gt.metadata)
    names = sample_data.totalsegmentator_labels()
    present = sorted(set(np.unique(gt_vol.array)) - {0})
    expected = {r["label"]: r for r in evaluate_case(gt_vol.array, pred_vol.array, gt_vol.spacing, {v: names[v] for v in present})}
    assert len(widget.rows) == len(expected)
    for row in widget.rows:
        exp = expected[row["label"]]
        assert row["name"] == exp["name"]
        for key in ("dice", "iou", "hd", "hd95", "assd"):
            assert row[key] == pytest.approx(exp[key], rel=1e-6), (row["name"], key)
    liver = expected[5]
    assert 0.5 < liver["dice"] < 1.0 and liver["hd"] >= 6.0 - 1e-6  # shifted 2 voxels of 3 mm
    table = widget.table.value
    assert list(table["columns"]) == ["name", "dice", "iou", "hd", "hd95", "assd"] and len(table["data"]) == len(expected)

    widget.csv_path.value = tmp_path / "metrics.csv"
    out = widget.export_csv()
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(expected) and {"dice", "hd95", "assd", "case"} <= set(rows[0])
    liver_row = next(r for r in rows if r["name"] == "liver")
    assert float(liver_row["dice"]) == pytest.approx(liver["dice"], rel=1e-4)
    viewer.layers["ct_small labels"].visible = False
    viewer.layers.selection.active = pred
    screenshot(viewer, "metrics")


def test_metrics_widget_refuses_layers_on_different_grids(viewer):
    from napari.layers import Labels

    from napari_plugin._widget import MetricsWidget

    _, gt = _open_ct(viewer)
    other = viewer.add_layer(Labels(np.zeros((4, 5, 6), np.uint8), name="other"))
    widget = MetricsWidget(viewer)
    widget.ground_truth.value = gt
    widget.prediction.value = other
    assert widget.start() is None
    assert "not on one grid" in widget.status.value

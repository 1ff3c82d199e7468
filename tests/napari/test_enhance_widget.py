"""The Enhance widget end to end: a real denoising checkpoint (trained in `denoise_ckpt`) on the
bundled CT with added noise; the result's geometry and window, its values against
`predict_image`, the comparison modes, cancel and a refused segmentation checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from medseg import sample_data
from medseg.io import Volume, read_volume

pytestmark = pytest.mark.gui
SIGMA_HU = 120.0  # the middle of the training noise (100–150 HU)


def _noisy_ct() -> tuple[Volume, Volume]:
    from medseg.data.noise import add_gaussian_noise

    clean = read_volume(sample_data.path("ct_small"))
    noisy = add_gaussian_noise(clean.array.astype(np.float32), SIGMA_HU, np.random.default_rng(0))
    return clean, Volume(noisy.astype(np.float32), clean.affine.copy(), {"modality": "CT"})


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def _widget(viewer, ckpt):
    from napari_plugin._layers import image_layer
    from napari_plugin._widget import EnhanceWidget, _add

    clean, noisy = _noisy_ct()
    image = _add(viewer, image_layer(noisy, "ct_small noisy"))
    widget = EnhanceWidget(viewer)
    widget.image.value = image
    widget.checkpoint.value = ckpt
    widget.device.value = "cpu"
    return widget, image, clean, noisy


def test_enhance_widget_adds_the_denoised_image_on_the_input_grid_and_compares(viewer, qtbot, denoise_ckpt, screenshot):
    from medseg.inference import load_model
    from medseg.inference.image import predict_image
    from medseg.io.viewer import GEOMETRY_KEY, volume_from_layer

    widget, image, clean, noisy = _widget(viewer, denoise_ckpt)
    viewer.window.add_dock_widget(widget, name="medseg: Enhance")
    image.contrast_limits = (-200.0, 300.0)  # the user's window: the result opens with it
    seen = []
    widget._relay.progressed.connect(lambda s, d, t: seen.append((s, d, t)))
    worker = widget.start()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: "ct_small noisy enhanced" in viewer.layers, timeout=5000)
    out = viewer.layers["ct_small noisy enhanced"]
    assert widget.status.value == "done: ct_small noisy enhanced" and widget.progress.value == 100
    assert [d for s, d, t in seen if s == "infer"][-1] == seen[-1][2] > 1  # progress per slice batch
    # the input's geometry and window
    assert out.data.shape == image.data.shape and out.data.dtype == np.float32
    np.testing.assert_allclose(out.scale, image.scale)
    np.testing.assert_allclose(out.translate, image.translate)
    np.testing.assert_allclose(out.affine.affine_matrix, image.affine.affine_matrix)
    assert out.metadata[GEOMETRY_KEY] == image.metadata[GEOMETRY_KEY]
    assert tuple(out.contrast_limits) == (-200.0, 300.0) and out.colormap.name == image.colormap.name
    image.contrast_limits = (-100.0, 200.0)  # linked: one window for both
    assert tuple(out.contrast_limits) == (-100.0, 200.0)
    # medseg's own inference, voxel for voxel, back on the source grid; and it denoises
    got = volume_from_layer(out.data, out.metadata)
    expected = predict_image(noisy, load_model(denoise_ckpt, "cpu"))
    np.testing.assert_array_equal(got.array, expected.array)
    np.testing.assert_allclose(got.affine, clean.affine)
    assert _rmse(got.array, clean.array) < 0.8 * _rmse(noisy.array, clean.array)

    # overlay: the blend slider is the enhanced layer's opacity; the toggle flips to the input and back
    widget.blend.value = 0.25
    assert out.opacity == pytest.approx(0.25)
    widget.toggle()
    assert not out.visible and widget.status.value == "showing ct_small noisy"
    widget.toggle()
    assert out.visible
    # side by side: napari's grid, one cell each, other layers hidden and shown again afterwards
    other = viewer.add_image(np.zeros((2, 3, 4), np.float32), name="other")
    widget.compare.value = "side by side"
    grid = viewer.canvas.grid
    layers = list(viewer.layers)
    assert grid.enabled and not other.visible and out.opacity == 1.0
    assert {grid.position(layers.index(image), layers), grid.position(layers.index(out), layers)} == {(0, 0), (0, 1)}
    widget.compare.value = "overlay"
    assert not grid.enabled and other.visible and out.opacity == pytest.approx(0.25)
    viewer.layers.remove(other)

    widget.blend.value = 1.0
    image.contrast_limits = (-160.0, 240.0)
    widget.compare.value = "side by side"
    viewer.layers.selection.active = out
    viewer.dims.set_point(0, float(image.translate[0] + image.scale[0] * 15))
    screenshot(viewer, "enhance")


def test_enhance_widget_cancel_stops_without_a_layer(viewer, qtbot, denoise_ckpt):
    widget, _, _, _ = _widget(viewer, denoise_ckpt)
    n_layers = len(viewer.layers)
    widget._relay.progressed.connect(lambda *a: widget.cancel_button.clicked.emit())
    worker = widget.start()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert widget.status.value == "cancelled"
    assert len(viewer.layers) == n_layers
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_enhance_widget_refuses_a_segmentation_checkpoint(viewer, qtbot, seg_ckpt):
    widget, _, _, _ = _widget(viewer, seg_ckpt)
    n_layers = len(viewer.layers)
    worker = widget.start()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert "a segmentation checkpoint; use the Segment widget" in widget.status.value
    assert len(viewer.layers) == n_layers


def test_enhance_widget_tta_box_gives_the_mirror_mean(viewer, qtbot, denoise_ckpt):
    from medseg.inference import load_model
    from medseg.inference.image import predict_image
    from medseg.io.viewer import volume_from_layer

    widget, image, clean, noisy = _widget(viewer, denoise_ckpt)
    widget.tta.value = True
    worker = widget.start()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: "ct_small noisy enhanced" in viewer.layers, timeout=5000)
    out = viewer.layers["ct_small noisy enhanced"]
    got = volume_from_layer(out.data, out.metadata).array
    model = load_model(denoise_ckpt, "cpu")
    np.testing.assert_array_equal(got, predict_image(noisy, model, tta=True).array)
    assert not np.array_equal(got, predict_image(noisy, model).array)

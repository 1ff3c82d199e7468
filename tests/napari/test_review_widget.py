"""Review queue end to end: a `medseg segment` manifest → load → correct → accept → fine-tune."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medseg import sample_data
from medseg.io import read_volume

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def segment_run(tmp_path_factory, seg_ckpt):
    """A real `medseg segment` run on two copies of the bundled CT (file names = case names)."""
    from medseg.inference import BatchOptions, InferenceOptions, segment_batch

    root = tmp_path_factory.mktemp("segment")
    inputs = root / "in"
    inputs.mkdir()
    for name in ("case_b", "case_a"):
        shutil.copy(sample_data.path("ct_small"), inputs / f"{name}.nii.gz")
    opts = BatchOptions(inference=InferenceOptions(device="cpu"), qa_png=False, dicom_seg=False, workers=0, jobs=1, progress=False)
    result = segment_batch(inputs, root / "out", [seg_ckpt], opts)
    assert result.ok and result.n_done == 2
    return result.manifest_path


@pytest.fixture
def manifest(segment_run, tmp_path):
    """A fresh copy of the run's output folder (each test starts without a review file)."""
    shutil.copytree(segment_run.parent, tmp_path / "out")
    return tmp_path / "out" / segment_run.name


def test_review_queue_orders_by_uncertainty_when_the_manifest_has_it(manifest, tmp_path):
    from medseg.data.review import open_review_queue

    queue = open_review_queue(manifest)
    assert [c.name for c in queue.cases] == ["case_a", "case_b"]  # no scores: by name
    raw = json.loads(manifest.read_text())
    for row, score in zip(raw["series"], (0.1, 0.7)):
        row["uncertainty"] = score
    scored = tmp_path / "scored" / "segment.json"
    shutil.copytree(manifest.parent, scored.parent)
    scored.write_text(json.dumps(raw))
    queue = open_review_queue(scored)
    ordered = sorted(raw["series"], key=lambda r: -r["uncertainty"])
    assert [c.name for c in queue.cases] == [r["stem"] for r in ordered]  # most uncertain first


def test_review_widget_saves_edits_and_status_and_the_reviewed_set_fine_tunes(viewer, qtbot, manifest, segment_run, seg_ckpt, tmp_path, screenshot):
    from medseg.data.review import read_review_file, review_training_cases

    from napari_plugin._widget import ReviewWidget

    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="medseg: Review queue")
    widget.source.value = manifest
    worker = widget.open(manifest)
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        pass
    qtbot.waitUntil(lambda: widget.labels_layer is not None, timeout=5000)
    assert widget.case_label.value.startswith("1/2 case_a")
    labels = widget.labels_layer
    predicted = read_volume(manifest.parent / "case_a" / "labels.nii.gz")

    # the user corrects: paints a block of liver (label 1) with napari's brush, as a stroke would
    region = (slice(10, 14), slice(0, 6), slice(0, 6))  # in the air: background before
    before = labels.data.copy()
    labels.selected_label = 1
    labels.brush_size = 1
    assert not before[region].any()
    labels.paint((12, 3, 3), 1)  # one committed edit → one paint event → a save
    labels.data[region] = 1  # a change without an event (like a plug-in writing data) ...
    assert before[12, 9, 9] == 0
    labels.paint((12, 9, 9), 1)  # ... is saved with the next committed edit
    qtbot.waitUntil(lambda: widget._saving is None and not widget._dirty and "saved" in widget.status.value, timeout=20_000)
    review = read_review_file(manifest.parent / "review.json")
    corrected = review.cases[0].corrected
    assert corrected and read_volume(corrected).same_grid(predicted)
    saved = read_volume(corrected).array
    from medseg.io.viewer import volume_from_layer

    expected = volume_from_layer(labels.data, labels.metadata).array
    np.testing.assert_array_equal(saved, expected)
    assert int((saved != predicted.array).sum()) == int((labels.data != before).sum()) > 0

    widget.comment.value = "liver tip added"
    widget.accept_button.clicked.emit()
    screenshot(viewer, "review")
    # the next case: needs fix
    worker = widget.go(1)
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        pass
    widget.comment.value = "kidney missing"
    widget.needs_fix_button.clicked.emit()
    review = read_review_file(manifest.parent / "review.json")
    assert [(c.name, c.status, c.comment) for c in review.cases] == [
        ("case_a", "accepted", "liver tip added"), ("case_b", "needs_fix", "kidney missing")]
    # reopening keeps everything (a crash after the last edit loses nothing)
    from medseg.data.review import open_review_queue

    again = open_review_queue(manifest)
    assert again.cases[0].corrected == corrected and again.cases[0].status == "accepted"

    # the accepted, corrected case is training data for a workflow with data.review_file
    cases = review_training_cases(manifest.parent / "review.json")
    assert cases == [{"image": str(segment_run.parent.parent / "in" / "case_a.nii.gz"), "label": corrected, "name": "review:case_a"}]
    from medseg.engine import train
    from medseg.config import load_workflow
    from medseg.data.datasets import resolve_cases

    workflow = {
        "name": "finetune", "seed": 0,
        "data": {"review_file": str(manifest.parent / "review.json"), "labels": {"liver": 1},
                 "validation": [{"image": "sample:ct_small", "label": "sample:ct_small_seg", "name": "val"}],
                 "unmapped_labels": "background"},
        "preprocessing": {"modality": "CT", "spacing_mm": [6, 6, 6], "hu_window": [-200, 300]},
        "augmentation": {"elastic": {"prob": 0.0}, "rotate": {"prob": 0.0}, "scale": {"prob": 0.0}, "noise": {"prob": 0.0}},
        "model": {"encoder": "resnet10", "encoder_channels": [8, 16, 32, 64], "decoder_channels": [32, 32, 16, 16, 8],
                  "aspp_channels": 8, "stem_stride": [2, 2, 1], "pretrained": str(seg_ckpt)},
        "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 1, "patches_per_case": 2, "patch_size": [32, 32, 16],
                     "val_every": 1, "torch_threads": 2},
        "optim": {"lr": 0.001, "warmup_epochs": 0},
        "output": {"dir": str(tmp_path / "runs"), "tensorboard": False},
    }
    train_cases, _ = resolve_cases(load_workflow(workflow))
    assert [c["name"] for c in train_cases] == ["review:case_a"] and train_cases[0]["label"] == corrected
    run = train(workflow, device="cpu")
    ckpt = run / "checkpoints" / "last.pt"
    assert ckpt.is_file()
    from medseg.inference import load_model

    assert load_model(ckpt, "cpu").labels == {1: "liver"}

"""The batch runner's output stage per checkpoint task: segmentation's optional outputs
(RTSTRUCT, LABELMAP SEG, uncertainty) and image-to-image checkpoints (`medseg enhance`)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.inference import BatchOptions, InferenceOptions, segment_batch
from medseg.io import read_nifti
from medseg.io.dicom import read_dicom_series, scan_dicom_folder

FAST = InferenceOptions(device="cpu", overlap=0.0)


@pytest.fixture(scope="module")
def ct_tree(tmp_path_factory, sample) -> Path:
    root = tmp_path_factory.mktemp("ct_tree")
    shutil.copytree(sample("ct_dicom"), root / "ct")
    return root


def test_segmentation_writes_rtstruct_labelmap_seg_and_uncertainty(ct_tree, trained_ckpt, tmp_path):
    from medseg.io.seg import read_dicom_seg

    opts = BatchOptions(inference=InferenceOptions(device="cpu", overlap=0.0, uncertainty=True, tta=True),
                        progress=False, rtstruct=True, seg_type="labelmap")
    res = segment_batch(ct_tree, tmp_path / "out", [trained_ckpt], opts)
    (rec,) = res.records
    assert rec.status == "done", rec.reason
    assert list(rec.outputs) == ["labels", "dicom_seg", "rtstruct", "volumes", "qa", "uncertainty"]
    d = res.out_dir / rec.stem
    source = read_dicom_series(scan_dicom_folder(ct_tree).series[0])
    labels = read_nifti(d / "labels.nii.gz").array
    import highdicom as hd

    assert str(hd.seg.segread(d / "seg.dcm").SegmentationType) == "LABELMAP"
    np.testing.assert_array_equal(read_dicom_seg(d / "seg.dcm", source).array, labels)
    import pydicom

    rt = pydicom.dcmread(d / "rtstruct.dcm")
    assert rt.Modality == "RTSTRUCT" and [r.ROIName for r in rt.StructureSetROISequence] == ["liver"]
    unc = read_nifti(d / "uncertainty.nii.gz").array
    assert unc.shape == labels.shape and 0.0 <= unc.min() and unc.max() <= 1.0 and unc.max() > 0
    # uncertain where the label's boundary is, not deep in the background
    boundary = labels != np.roll(labels, 1, axis=0)
    assert unc[boundary].mean() > unc[~boundary].mean()
    manifest = json.loads(res.manifest_path.read_text())
    (row,) = manifest["series"]
    assert 0.0 < row["uncertainty"] <= 1.0 and set(row["label_uncertainty"]) == {"liver"}
    rows = list(csv.DictReader((d / "volumes.csv").open()))
    assert float(rows[0]["uncertainty"]) == pytest.approx(row["label_uncertainty"]["liver"])
    done = json.loads((d / "done.json").read_text())
    assert done["uncertainty"]["liver"]["boundary_mutual_information"] is not None  # TTA members
    # the batch computes the uncertainty beside the SEG writer; in one call it is the same
    from medseg.inference import load_models, segment_volume

    alone = segment_volume(source, load_models([trained_ckpt], "cpu"), opts.inference)
    np.testing.assert_array_equal(alone.array, labels)
    assert alone.meta["uncertainty_scores"] == row["label_uncertainty"]
    assert alone.meta["uncertainty_series"] == row["uncertainty"]
    np.testing.assert_array_equal(alone.meta["uncertainty"], unc)


def _image_ckpt(path: Path, identity: bool = True) -> Path:
    """A real checkpoint of the contract's image format: a 2-D ResidualConvNet, the identity
    (as built) or with a random residual (``identity=False``)."""
    from medseg.checkpoint import Checkpoint, save_checkpoint
    from medseg.models import build_model

    cfg = {"name": "residual_conv", "spatial_dims": 2, "in_channels": 1, "channels": 4}
    torch.manual_seed(0)
    net = build_model(cfg)
    if not identity:
        torch.nn.init.normal_(net.body[-1].weight, std=0.05)
    plan = {"modality": "CT", "spacing_mm": None, "orientation": "RAS",
            "intensity": {"kind": "hu_linear", "hu_min": -1024.0, "hu_max": 3071.0}}
    return save_checkpoint(
        Checkpoint(task="denoising", model=cfg, state_dict=net.state_dict(), labels={}, preprocessing=plan,
                   inference={"spatial_dims": 2, "context_slices": 0, "roi_size": None, "overlap": 0.25},
                   metrics={"score": 0.0}),
        path,
    )


def test_enhance_writes_the_image_and_a_derived_series_on_the_source_grid(ct_tree, tmp_path):
    """`medseg enhance` on the batch runner: an identity denoiser gives back the source HU as
    NIfTI on the original grid and as a derived DICOM series (new series UID, same study and
    geometry); a re-run skips the finished series."""
    from typer.testing import CliRunner

    from medseg.cli import app

    ckpt = _image_ckpt(tmp_path / "den.pt")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["enhance", str(ct_tree), str(out), "--model", str(ckpt), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads((out / "segment.json").read_text())["series"]
    assert row["status"] == "done" and row["outputs"] == {"image": "image.nii.gz", "dicom_series": "dicom"}
    d = out / row["stem"]
    series = scan_dicom_folder(ct_tree).series[0]
    source = read_dicom_series(series)
    image = read_nifti(d / "image.nii.gz")
    np.testing.assert_allclose(image.affine, source.affine, atol=1e-4)
    assert np.abs(image.array - source.array).max() < 1e-2
    (derived,) = scan_dicom_folder(d / "dicom").series
    back = read_dicom_series(derived)
    assert derived.series_instance_uid != series.series_instance_uid
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-3)
    np.testing.assert_array_equal(back.array, source.array)
    again = CliRunner().invoke(app, ["enhance", str(ct_tree), str(out), "--model", str(ckpt), "--device", "cpu", "--no-progress"])
    assert again.exit_code == 0 and "previous run" in again.output


def test_enhance_refuses_a_segmentation_checkpoint(ct_tree, trained_ckpt, tmp_path):
    from typer.testing import CliRunner

    from medseg.cli import app

    r = CliRunner().invoke(app, ["enhance", str(ct_tree), str(tmp_path / "o"), "--model", str(trained_ckpt), "--device", "cpu"])
    assert r.exit_code != 0 and "use `medseg segment`" in str(r.exception)


def test_enhance_tta_writes_the_mirror_mean(ct_tree, tmp_path):
    """`medseg enhance --tta`: the image written is predict_image's mean over mirrored copies."""
    from typer.testing import CliRunner

    from medseg.cli import app
    from medseg.inference import load_model
    from medseg.inference.image import predict_image

    ckpt = _image_ckpt(tmp_path / "den.pt", identity=False)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["enhance", str(ct_tree), str(out), "--model", str(ckpt), "--device", "cpu",
                                 "--no-progress", "--no-dicom", "--tta"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads((out / "segment.json").read_text())["series"]
    image = read_nifti(out / row["stem"] / "image.nii.gz").array
    source = read_dicom_series(scan_dicom_folder(ct_tree).series[0])
    model = load_model(ckpt, "cpu")
    np.testing.assert_allclose(image, predict_image(source, model, tta=True).array, atol=1e-3)
    assert np.abs(image - predict_image(source, model).array).max() > 0.5

"""medseg export: TorchScript / ONNX / ONNX int8 files segment like the checkpoint they came from."""

from __future__ import annotations

import json

import pytest
import torch

from medseg.errors import CheckpointError, InputError
from medseg.inference import InferenceOptions, load_models, segment_volume
from medseg.inference.export import compare_with_float, export_model
from medseg.io import read_volume


@pytest.fixture(scope="module")
def ct(sample):
    v = read_volume(sample("ct_small"))
    v.meta["modality"] = "CT"
    return v


def test_torchscript_and_onnx_match_the_checkpoint(tmp_path, trained_ckpt, ct):
    opts = InferenceOptions(device="cpu", overlap=0.0)
    ref = segment_volume(ct, load_models([trained_ckpt], "cpu"), opts).array
    assert ref.any()
    for fmt in ("torchscript", "onnx"):
        path = export_model(trained_ckpt, tmp_path / f"m.{'ts' if fmt == 'torchscript' else 'onnx'}", fmt=fmt)
        side = json.loads((tmp_path / f"{path.name}.json").read_text())
        assert side["labels"] == {"1": "liver"} and side["preprocessing"]["modality"] == "CT"
        (model,) = load_models([path], "cpu")
        out = segment_volume(ct, [model], opts).array
        assert (out == ref).mean() > 0.9999, fmt


def test_int8_onnx_runs_and_reports_its_dice_change(tmp_path, trained_ckpt, ct):
    path = export_model(trained_ckpt, tmp_path / "m-int8.onnx", fmt="onnx", quantize="int8")
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "ConvInteger" in ops  # the 3-D convolutions really are int8
    res = compare_with_float(trained_ckpt, path, ct)
    assert set(res["dice"]) == {"liver"} and 0.5 < res["mean_dice"] <= 1.0
    assert res["float_s"] > 0 and res["exported_s"] > 0


def test_fixed_batch_exports_handle_any_window_batch(tmp_path, ct):
    """ResNet-18 with MONAI shortcut "A" (traced wrong as is) exports exactly; fixed-batch files pad / split."""
    from inference_factory import TINY_RESUNET, save_random_ckpt

    from medseg.checkpoint import load_checkpoint, save_checkpoint

    ckpt = save_random_ckpt(tmp_path / "r18.pt", {1: "liver", 2: "spleen"})
    c = load_checkpoint(ckpt)
    from medseg.models import build_model

    c.model = {**TINY_RESUNET, "encoder": "resnet18", "shortcut_type": "A", "out_channels": 3}
    c.state_dict = build_model(c.model).state_dict()
    c.inference["sw_batch_size"] = 2
    save_checkpoint(c, ckpt)
    float_model = load_models([ckpt], "cpu")[0]
    for fmt, suffix in (("onnx", "onnx"), ("torchscript", "ts")):
        (model,) = load_models([export_model(ckpt, tmp_path / f"r18.{suffix}", fmt=fmt)], "cpu")
        x = torch.randn(5, 1, *c.inference["roi_size"])  # 5 windows: 2 + 2 + 1 (padded)
        with torch.no_grad():
            torch.testing.assert_close(model.network(x), float_model.network(x), atol=2e-4, rtol=1e-3)


def test_export_guards(tmp_path, trained_ckpt):
    with pytest.raises(InputError, match="--format onnx"):
        export_model(trained_ckpt, tmp_path / "m.ts", fmt="torchscript", quantize="int8")
    with pytest.raises(InputError, match="unknown export format"):
        export_model(trained_ckpt, tmp_path / "m.x", fmt="tflite")
    (tmp_path / "orphan.onnx").write_bytes(b"")
    with pytest.raises(CheckpointError, match="sidecar"):
        load_models([tmp_path / "orphan.onnx"], "cpu")

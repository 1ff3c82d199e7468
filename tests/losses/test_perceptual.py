"""The perceptual term on a medseg CT checkpoint's encoder: zero for equal images, positive and
differentiable w.r.t. the prediction only; non-CT or encoder-less checkpoints are refused."""

from __future__ import annotations

import pytest
import torch

from medseg.checkpoint import Checkpoint, save_checkpoint
from medseg.errors import ConfigError
from medseg.losses.perceptual import EncoderFeatureLoss
from medseg.models import build_model

HU_LINEAR = {"kind": "hu_linear", "hu_min": -1024.0, "hu_max": 3071.0}


def _ckpt(tmp_path, model, plan, task="segmentation"):
    net = build_model(model)
    return save_checkpoint(Checkpoint(task=task, model=model, state_dict=net.state_dict(), labels={1: "liver"},
                                      preprocessing={"modality": plan.pop("modality", "CT"), "intensity": plan}), tmp_path / "f.pt")


def test_segmentation_encoder_features(tmp_path, sample):
    import nibabel as nib

    seg = {"name": "resunet3d", "out_channels": 2, "encoder": "resnet10", "encoder_channels": [8, 8, 16, 16],
           "decoder_channels": [16, 8, 8, 8, 8], "aspp_channels": 4}
    path = _ckpt(tmp_path, seg, {"kind": "ct_window", "hu_min": -200.0, "hu_max": 300.0})
    loss = EncoderFeatureLoss(path, HU_LINEAR, stages=2)
    hu = torch.from_numpy(nib.load(str(sample("ct_small"))).get_fdata()[:64, :64, 10]).float()
    x = ((hu + 1024) / 4095)[None, None]
    assert float(loss(x, x)) == 0.0
    pred = (x + 0.01 * torch.randn_like(x)).requires_grad_(True)
    value = loss(pred, x)
    value.backward()
    assert float(value) > 0 and pred.grad is not None and float(pred.grad.abs().sum()) > 0
    assert all(p.grad is None for p in loss.encoder.parameters())


def test_refusals(tmp_path):
    mr = _ckpt(tmp_path, {"name": "redcnn", "spatial_dims": 2, "features": 4}, {"modality": "MR", "kind": "percentile_scale", "upper": 99.5}, "denoising")
    with pytest.raises(ConfigError, match="needs a CT network"):
        EncoderFeatureLoss(mr, HU_LINEAR)
    unet = _ckpt(tmp_path, {"name": "unet_denoiser", "spatial_dims": 2, "features": [4, 4, 4, 4, 4, 4]}, dict(HU_LINEAR), "denoising")
    with pytest.raises(ConfigError, match="no encoder"):
        EncoderFeatureLoss(unet, HU_LINEAR)

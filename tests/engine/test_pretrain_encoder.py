"""Encoder pretraining: a denoising run of the segmentation encoder (resnet_denoiser) on real
unlabelled CT, whose checkpoint loads as a segmentation workflow's model.pretrained."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medseg.checkpoint import load_checkpoint
from medseg.engine import train
from medseg.engine.logs import read_epoch_log

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN = ROOT / "workflows" / "pretrain_ct_encoder.yaml"
SMOKE = ROOT / "workflows" / "smoke.yaml"
#: the smoke workflow's encoder (resnet10 at 8-64 channels, batch norm, stem [2, 2, 1])
SMOKE_ENCODER = ["model.options.encoder=resnet10", "model.options.encoder_channels=[8,16,32,64]",
                 "model.options.encoder_norm=batch", "model.options.decoder_channels=8"]


@pytest.mark.slow
def test_pretrained_denoising_encoder_loads_into_segmentation(tmp_path):
    pre = train(PRETRAIN, overrides=[f"output.dir={tmp_path}", *SMOKE_ENCODER, "training.epochs=2", "training.steps_per_epoch=4",
                                     "training.patches_per_case=2", "training.patch_size=[32,32,16]", "optim.warmup_epochs=0",
                                     "training.torch_threads=2"],
                device="cpu")
    rows = read_epoch_log(pre / "metrics.csv")
    assert len(rows) == 2 and all(math.isfinite(r["train_loss"]) for r in rows)
    assert "2 training case(s), 0 validation case(s)" in (pre / "train.log").read_text()  # nothing held out of the 2 scans
    ckpt = load_checkpoint(pre / "checkpoints" / "best.pt", expected_task="denoising")
    assert ckpt.state_dict["head.weight"].abs().sum() > 0  # zero at initialisation: it trained
    assert ckpt.model["name"] == "resnet_denoiser" and ckpt.inference["spatial_dims"] == 3
    donor = {k: v for k, v in ckpt.state_dict.items() if k.startswith("encoder.")}
    assert donor and any(not torch.equal(v, torch.zeros_like(v)) for v in donor.values())

    seg = train(SMOKE, overrides=[f"output.dir={tmp_path}", f"model.pretrained={pre / 'checkpoints' / 'best.pt'}",
                                  "optim.freeze_encoder_epochs=1", "training.epochs=1", "training.steps_per_epoch=2",
                                  "data.validation=[]", "training.torch_threads=2"], device="cpu")
    after = load_checkpoint(seg / "checkpoints" / "last.pt").state_dict
    # the frozen segmentation encoder is exactly the denoiser's (weights and batch-norm statistics)
    assert all(torch.equal(after[k], donor[k]) for k in donor)
    assert "pretrained encoder" in (seg / "train.log").read_text()


def test_encoder_denoiser_shares_the_segmentation_encoder_layout():
    from medseg.models import ResUNet3D, build_model

    den = build_model({"name": "resnet_denoiser", "spatial_dims": 3, "encoder": "resnet18", "encoder_channels": [16, 32, 64, 128],
                       "stem_stride": [2, 2, 1], "encoder_norm": "instance"})
    seg = ResUNet3D(encoder="resnet18", encoder_channels=(16, 32, 64, 128), stem_stride=(2, 2, 1), encoder_norm="instance")
    a, b = den.encoder.state_dict(), seg.encoder.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    x = torch.rand(1, 1, 40, 36, 12)  # any size (padded to /32 inside), identity at initialisation
    torch.testing.assert_close(den(x), x)


def test_encoder_denoiser_is_3d_only():
    from medseg.errors import ConfigError
    from medseg.models import build_model

    with pytest.raises(ConfigError, match="spatial_dims"):
        build_model({"name": "resnet_denoiser", "spatial_dims": 2})

"""ResUNet3D shapes, deep supervision, and pretrained-encoder loading (MedicalNet / medseg)."""

from __future__ import annotations

import pytest
import torch

from medseg.checkpoint import Checkpoint, save_checkpoint
from medseg.errors import CheckpointError, ConfigError
from medseg.models import ResUNet3D, build_model, load_pretrained_encoder

SMALL = {"encoder_channels": [8, 16, 32, 64], "decoder_channels": [32, 16, 16, 8, 8], "aspp_channels": 8}


@pytest.mark.parametrize("encoder", ["resnet10", "resnet18", "resnet34", "resnet50"])
def test_output_shape_for_every_depth(encoder):
    torch.manual_seed(0)
    model = ResUNet3D(in_channels=1, out_channels=4, encoder=encoder, **SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 64, 32, 32))
    assert out.shape == (2, 4, 64, 32, 32)


def test_anisotropic_stem_and_deep_supervision():
    model = ResUNet3D(1, 3, "resnet18", stem_stride=[2, 2, 1], deep_supervision=True, **SMALL)
    assert model.size_divisor == (32, 32, 16)
    outs = model(torch.randn(1, 1, 64, 64, 16))
    assert isinstance(outs, list) and len(outs) == 3
    assert all(o.shape == (1, 3, 64, 64, 16) for o in outs)
    model.eval()
    assert model(torch.randn(1, 1, 64, 64, 16)).shape == (1, 3, 64, 64, 16)
    with pytest.raises(ValueError, match="divisible by"):
        model(torch.randn(1, 1, 48, 64, 16))


def test_build_model_from_checkpoint_config_and_bad_keys():
    net = build_model({"name": "resunet3d", "out_channels": 3, "encoder": "resnet10", **SMALL})
    assert isinstance(net, ResUNet3D)
    with pytest.raises(ConfigError, match="encodr"):
        build_model({"out_channels": 3, "encodr": "resnet10"})
    with pytest.raises(ConfigError, match="out_channels"):
        build_model({"encoder": "resnet10"})


def _medicalnet_file(tmp_path, depth: str, seed: int = 1):
    """A MedicalNet-layout checkpoint: {'state_dict': {'module.conv1.weight': ..., 'module.conv_seg...'}}."""
    torch.manual_seed(seed)
    donor = ResUNet3D(1, 2, depth)  # MedicalNet widths [64, 128, 256, 512]
    sd = {f"module.{k}": v for k, v in donor.encoder.state_dict().items()}
    sd["module.conv_seg.0.weight"] = torch.randn(32, 512, 3, 3, 3)  # MedicalNet's segmentation head
    sd["module.conv_seg.0.bias"] = torch.randn(32)
    path = tmp_path / f"{depth}_medicalnet.pth"
    torch.save({"state_dict": sd, "epoch": 200}, path)
    return path, donor


def test_medicalnet_layout_loads_into_the_encoder(tmp_path):
    path, donor = _medicalnet_file(tmp_path, "resnet10")
    torch.manual_seed(2)
    model = ResUNet3D(1, 5, "resnet10")
    before_decoder = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    report = load_pretrained_encoder(model, path)
    n_encoder = len(model.encoder.state_dict())
    assert report.loaded == n_encoder and report.skipped == 2
    assert "MedicalNet" in report.layout and "conv_seg" in " ".join(report.skipped_names)
    for k, v in donor.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k
    for k, v in model.state_dict().items():  # the new layers are untouched
        if not k.startswith("encoder."):
            assert torch.equal(v, before_decoder[k]), k


def test_wrong_architecture_is_a_clear_error(tmp_path):
    path, _ = _medicalnet_file(tmp_path, "resnet10")
    with pytest.raises(CheckpointError, match="do not fit the encoder.*missing"):
        load_pretrained_encoder(ResUNet3D(1, 5, "resnet18"), path)  # resnet18 has layer1.1 etc.
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_pretrained_encoder(ResUNet3D(1, 5, "resnet10", **SMALL), path)  # other widths
    junk = tmp_path / "junk.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, junk)
    with pytest.raises(CheckpointError, match="no tensor matches"):
        load_pretrained_encoder(ResUNet3D(1, 5, "resnet10"), junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained_encoder(ResUNet3D(1, 5, "resnet10"), tmp_path / "missing.pth")


def test_medseg_checkpoint_encoder_loads(tmp_path):
    torch.manual_seed(3)
    donor = ResUNet3D(1, 3, "resnet18", **SMALL)
    ckpt = Checkpoint(task="segmentation", model={"out_channels": 3}, state_dict=donor.state_dict())
    path = save_checkpoint(ckpt, tmp_path / "donor.pt")
    model = ResUNet3D(1, 7, "resnet18", **SMALL)  # other number of classes: the encoder still fits
    report = load_pretrained_encoder(model, path)
    assert report.loaded == len(model.encoder.state_dict())
    assert report.skipped == len(donor.state_dict()) - report.loaded  # the donor's decoder
    assert torch.equal(model.encoder.conv1.weight, donor.encoder.conv1.weight)


def test_non_finite_pretrained_weights_are_refused(tmp_path):
    path, donor = _medicalnet_file(tmp_path, "resnet10")
    raw = torch.load(path, weights_only=True)
    first = next(k for k, v in raw["state_dict"].items() if v.is_floating_point())
    raw["state_dict"][first][..., 0] = float("nan")
    torch.save(raw, path)
    model = ResUNet3D(1, 5, "resnet10")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"pretrained weights are not finite \(" + first.replace(".", r"\.")):
        load_pretrained_encoder(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded

import pytest
import torch

from medseg.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medseg.errors import CheckpointError


def test_checkpoint_roundtrip_weights_only(tmp_path):
    net = torch.nn.Conv3d(1, 2, 3)
    ck = Checkpoint(
        task="segmentation",
        model={"name": "conv"},
        state_dict=net.state_dict(),
        labels={1: "liver"},
        preprocessing={"modality": "CT", "spacing_mm": [1.5, 1.5, 2.0]},
    )
    p = save_checkpoint(ck, tmp_path / "best.pt")
    back = load_checkpoint(p, expected_task="segmentation")
    assert back.labels == {1: "liver"}
    assert torch.equal(back.state_dict["weight"], net.weight)
    assert back.versions["torch"] == torch.__version__
    with pytest.raises(CheckpointError, match="'denoising' checkpoint is needed"):
        load_checkpoint(p, expected_task="denoising")


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    raw = tmp_path / "raw.pt"
    torch.save({"conv.weight": torch.zeros(1)}, raw)
    with pytest.raises(CheckpointError, match="not a medseg checkpoint"):
        load_checkpoint(raw)


def test_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"format": 1, "state_dict": {}, "x": Evil()}, p)
    with pytest.raises(CheckpointError):
        load_checkpoint(p)

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


def test_unsafe_pickle_refusal_is_medsegs_own_sentence(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"format": 1, "state_dict": {}, "x": Evil()}, p)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(p)
    msg = str(info.value)
    assert str(p) in msg and "refused" in msg and "only loads weights" in msg and "system" in msg
    assert "Re-running" not in msg and "weights_only set to False" not in msg


def test_non_finite_weights_are_refused_at_load(tmp_path):
    net = torch.nn.Conv3d(1, 2, 3)
    sd = net.state_dict()
    sd["bias"] = torch.tensor([float("nan"), 1.0])
    p = save_checkpoint(Checkpoint(task="segmentation", model={"name": "conv"}, state_dict=sd), tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan\.pt: the weights are not finite \(bias: 1 of 2 values"):
        load_checkpoint(p)
    sd["bias"] = torch.tensor([float("inf"), 1.0])
    sd["weight"][0, 0, 0, 0, 0] = float("-inf")
    p = save_checkpoint(Checkpoint(task="segmentation", model={"name": "conv"}, state_dict=sd), tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match=r"\(weight: 1 of 54 values"):
        load_checkpoint(p)


def test_remove_partial_files_after_a_killed_save(tmp_path):
    from medseg.io.atomic import remove_partial_files

    ck = tmp_path / "checkpoints"
    ck.mkdir()
    (ck / ".last.pt.abc123.part.pt").write_bytes(b"half")
    (ck / "last.pt").write_bytes(b"whole")
    (ck / "notes.part.txt").write_bytes(b"not ours")
    removed = remove_partial_files(ck)
    assert [p.name for p in removed] == [".last.pt.abc123.part.pt"]
    assert sorted(p.name for p in ck.iterdir()) == ["last.pt", "notes.part.txt"]
    assert remove_partial_files(tmp_path / "none") == []


def test_remove_partial_files_of_named_targets_only(tmp_path):
    """With ``targets`` only those files' temporaries go: a folder shared with other writers
    keeps theirs (names with glob characters are taken literally)."""
    from medseg.io.atomic import remove_partial_files

    names = {"a.json": ".a.json.x1y2.part.json", "b.json": ".b.json.z3w4.part.json", "c[1].csv": ".c[1].csv.q5r6.part.csv"}
    for stale in names.values():
        (tmp_path / stale).write_text("half")
    (tmp_path / ".c1.csv.s7t8.part.csv").write_text("another file: c1.csv")
    removed = remove_partial_files(tmp_path, targets=["a.json", "c[1].csv"])
    assert sorted(p.name for p in removed) == sorted([names["a.json"], names["c[1].csv"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["b.json"], ".c1.csv.s7t8.part.csv"])

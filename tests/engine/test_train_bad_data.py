"""Training on bad data stops before the first epoch with one clear message; a checkpoint save
killed mid-write leaves nothing behind after --resume."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import yaml

from medseg.cli import main
from medseg.engine import train
from medseg.io import Volume, read_volume, write_nifti

SMOKE = Path(__file__).resolve().parents[2] / "workflows" / "smoke.yaml"


def _cli(*args: str) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, buf.getvalue()


def test_train_cli_lists_bad_cases_without_traceback(tmp_path, sample):
    label = read_volume(sample("ct_small_seg"))
    shifted = label.affine.copy()
    shifted[:3, 3] += [0, 0, 30.0]
    write_nifti(Volume(np.asarray(label.array), shifted), tmp_path / "shifted_seg.nii.gz")
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"] = {
        "training": [
            {"image": "sample:ct_small", "label": str(tmp_path / "shifted_seg.nii.gz"), "name": "shifted"},
            {"image": "sample:ct_small", "label": "sample:ct_small_seg", "name": "good"},
        ],
        "validation": [], "val_fraction": 0.0, "labels": {"liver": 5, "ghost": 250}, "unmapped_labels": "background",
    }
    raw["output"]["dir"] = str(tmp_path / "runs")
    wf = tmp_path / "bad.yaml"
    wf.write_text(yaml.safe_dump(raw))
    code, text = _cli("train", str(wf), "--device", "cpu")
    assert code == 1
    flat = " ".join(text.split())
    assert "training data check failed: 1 of 2 case(s) cannot be used, 1 class(es) never labelled" in flat
    assert "training case 'shifted'" in flat and "30 mm apart" in flat and "'ghost' (label value 250)" in flat
    assert "Traceback" not in text and "applying transform" not in text
    assert not list((tmp_path / "runs").rglob("*.pt"))  # nothing trained


def test_resume_removes_a_killed_saves_temp_file(tmp_path):
    over = [f"output.dir={tmp_path}", "training.epochs=2", "training.steps_per_epoch=1", "training.val_every=2",
            "training.stop_after_epoch=1", "optim.warmup_epochs=0", "training.torch_threads=2"]
    run = train(SMOKE, over, device="cpu")
    stale = run / "checkpoints" / ".last.pt.k1ll3d.part.pt"
    stale.write_bytes(b"half a checkpoint")
    train(SMOKE, over[:-3] + ["optim.warmup_epochs=0", "training.torch_threads=2"], resume=True, device="cpu")
    assert not stale.exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]

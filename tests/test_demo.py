"""The README demo end to end (`medseg demo`), with a one-epoch training run."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from medseg.cli import app
    from medseg.demo import run_demo

    out = tmp_path / "demo"
    # the demo's workflow, trained for 2 steps only (the real demo trains for a few minutes)
    res = run_demo(out, train_overrides=("training.epochs=1", "training.steps_per_epoch=2"), progress=False)
    assert res.checkpoint.is_file() and res.run_dir.is_dir() and not res.missing
    # the CLI on the same folder, reusing that checkpoint: prints where everything is
    r = CliRunner().invoke(
        app, ["demo", "--out", str(out), "--checkpoint", str(res.checkpoint), "--no-progress"], catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    assert "Where everything is" in r.output and "report.html" in r.output and "missing:" not in r.output

    manifest = json.loads((out / "segmentations" / "segment.json").read_text())
    status = {s["source"].split("/dicom/")[-1]: s["status"] for s in manifest["series"]}
    assert status == {
        "patient_A/CT_abdomen": "done",
        "patient_B/study_2/CT_3mm": "done",
        "patient_B/study_2/scout": "skipped",
        "patient_C/MR": "skipped",
        "patient_C/report": "skipped",
    }
    done = [s for s in manifest["series"] if s["status"] == "done"]
    for s in done:
        d = out / "segmentations" / s["stem"]
        assert {p.name for p in d.iterdir()} == {"labels.nii.gz", "seg.dcm", "volumes.csv", "qa.png", "done.json"}

    ev = out / "evaluation"
    html = (ev / "report.html").read_text()
    assert "liver" in html
    rows = [line.split(",") for line in (ev / "metrics.csv").read_text().splitlines()]
    header = rows[0]
    assert len(rows) - 1 == 2 * 4  # 2 series × 4 organs
    # the reference was remapped to the trained classes and put on each series' grid
    from medseg.io import read_nifti

    for s in done:
        gt = read_nifti(ev / "gt" / f"{s['stem']}.nii.gz")
        pred = read_nifti(ev / "pred" / f"{s['stem']}.nii.gz")
        assert gt.same_grid(pred) and set(np.unique(gt.array)) <= {0, 1, 2, 3, 4}
        assert (gt.array == 1).sum() > 1000  # liver present in both scans
    assert "dice" in header

"""`medseg demo --enhance` end to end on the bundled data, with tiny training budgets."""

from __future__ import annotations

import csv

import numpy as np
import pytest


@pytest.mark.slow
def test_enhance_demo_reports_dice_at_full_low_and_enhanced(tmp_path):
    from typer.testing import CliRunner

    from medseg.cli import app
    from medseg.demo_enhance import CONDITIONS, run_enhance_demo
    from medseg.io import read_nifti
    from medseg.io.dicom import read_dicom_series

    out = tmp_path / "demo"
    res = run_enhance_demo(
        out,
        seg_overrides=("training.epochs=1", "training.steps_per_epoch=2"),
        enhance_overrides=("training.epochs=1", "training.steps_per_epoch=2", "training.val_every=1",
                           "training.val_max_slices=2", "simulation.doses_per_case=1", "simulation.views=120",
                           "model.generator.options.features=8"),
        progress=False,
    )
    assert res.seg_checkpoint.is_file() and res.enhance_checkpoint.is_file()
    # the three inputs: the held-out series, its simulated 10 % dose copy, the enhanced copy
    images = {c: np.asarray(read_dicom_series(res.dicom_dir / c).array, dtype=np.float32) for c in CONDITIONS}
    assert images["low_dose"].shape == images["full_dose"].shape == images["enhanced"].shape
    assert np.std(images["low_dose"] - images["full_dose"]) > 10  # 10 % dose: tens of HU of inserted noise
    assert not np.array_equal(images["enhanced"], images["low_dose"])
    assert set(res.image_metrics) == {"low_dose", "enhanced"}

    # the Dice table: one row per organ of the model, one column per condition, equal to the
    # evaluation's own metrics.csv
    with open(res.csv) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["organ"] for r in rows] == ["liver", "spleen", "kidneys", "stomach"]
    with open(res.evaluation_dir / "metrics.csv") as fh:
        ev = {(r["case"], r["name"]): float(r["dice"]) for r in csv.DictReader(fh)}
    for r in rows:
        for c in CONDITIONS:
            assert float(r[f"dice_{c}"]) == pytest.approx(ev[(c, r["organ"])], abs=1e-4)
            assert 0.0 <= float(r[f"dice_{c}"]) <= 1.0
    # each condition's prediction is its own segmentation, scored against the same reference
    gts = [read_nifti(res.evaluation_dir / "gt" / f"{c}.nii.gz").array for c in CONDITIONS]
    assert all(np.array_equal(gts[0], g) for g in gts[1:]) and (gts[0] == 1).sum() > 1000
    page = res.report_html.read_text()
    assert "Dice per organ" in page and "enhance_panel.png" in page and "qa.png" in page

    # the CLI on the same folder, reusing both checkpoints
    r = CliRunner().invoke(app, ["demo", "--enhance", "--out", str(out), "--seg-model", str(res.seg_checkpoint),
                                 "--enhance-model", str(res.enhance_checkpoint), "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "Dice per organ" in r.output and "liver" in r.output and "report" in r.output

"""`evaluate`: negative prediction labels and labels absent everywhere are reported, not silent."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np

from medseg.io import Volume, read_volume, write_nifti
from medseg.report import evaluate_folders


def test_negative_labels_and_absent_label_are_reported(tmp_path, sample, caplog):
    gt = read_volume(sample("ct_small_seg"))
    liver = (np.asarray(gt.array) == 5).astype(np.int16) * 5
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    write_nifti(Volume(liver, gt.affine), tmp_path / "gt" / "case1.nii.gz")
    pred = liver.copy()
    pred[:3, :3, :3] = -1  # 27 voxels of a negative "label"
    write_nifti(Volume(pred, gt.affine), tmp_path / "pred" / "case1.nii.gz")
    with caplog.at_level(logging.WARNING, logger="medseg.report"):
        res = evaluate_folders(tmp_path / "gt", tmp_path / "pred", tmp_path / "out", labels={5: "liver", 9: "ghost"})
    assert res.ok
    summary = json.loads(res.summary_json.read_text())
    neg = [w for w in summary["warnings"] if "negative" in w]
    assert len(neg) == 1 and "pred/case1.nii.gz: 27 voxel(s) with negative label values (e.g. -1)" in neg[0]
    absent = [w for w in summary["warnings"] if "absent" in w]
    assert len(absent) == 1 and absent[0].startswith("label 9 (ghost) is absent from ground truth and prediction in all 1")
    assert summary["per_label"]["ghost"]["absent"] is True and summary["per_label"]["liver"]["absent"] is False
    assert summary["per_label"]["ghost"]["dice"]["mean"] == 1.0  # the convention is kept
    rows = {r["name"]: r for r in csv.DictReader(res.metrics_csv.open())}
    assert rows["ghost"]["absent"] == "true" and rows["ghost"]["dice"] == "1.0"
    assert rows["liver"]["absent"] == "false" and float(rows["liver"]["dice"]) == 1.0
    page = res.report_html.read_text()
    assert "ghost (9) <b class='bad'>absent</b>" in page and "27 voxel(s) with negative label values" in page
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "27 voxel(s) with negative label values" in logged and "label 9 (ghost) is absent" in logged

"""evaluate_folders / medseg evaluate end to end on the bundled TotalSegmentator CT labels."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from medseg.errors import InputError
from medseg.io import Volume, read_volume, write_volume
from medseg.metrics import evaluate_case
from medseg.report import CSV_COLUMNS, evaluate_folders, parse_label_names, resample_nearest

ORGANS = {5: "liver", 1: "spleen", 2: "kidney_right", 3: "kidney_left"}


def _erode_labels(a: np.ndarray) -> np.ndarray:
    """Remove each label's boundary voxels (a typical under-segmentation)."""
    out = np.zeros_like(a)
    for k in np.unique(a[a > 0]):
        out[ndimage.binary_erosion(a == k)] = k
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, sample):
    """gt/ (4 cases), pred/ (3 of them + one without GT), img/ — all real CT + labels."""
    root = tmp_path_factory.mktemp("eval")
    gt_vol = read_volume(sample("ct_small_seg"))
    img = read_volume(sample("ct_small"))
    a = np.asarray(gt_vol.array)
    a = np.where(np.isin(a, list(ORGANS)), a, 0).astype(np.uint8)
    preds = {
        "case0": np.roll(a, 1, axis=0),  # one-voxel shift (3 mm)
        "case1": _erode_labels(a),
        "case2": np.where(a == 2, 0, _erode_labels(a)).astype(np.uint8),  # right kidney missed
    }
    for d in ("gt", "pred", "img"):
        (root / d).mkdir()
    for case in ("case0", "case1", "case2", "case3"):
        write_volume(gt_vol.with_array(a), root / "gt" / f"{case}.nii.gz")
        write_volume(img, root / "img" / f"{case}.nii.gz")
    for case, p in preds.items():
        write_volume(gt_vol.with_array(p), root / "pred" / f"{case}.nii.gz")
    write_volume(gt_vol.with_array(a), root / "pred" / "extra.nii.gz")
    return {"root": root, "gt": a, "preds": preds, "spacing": gt_vol.spacing, "affine": gt_vol.affine}


@pytest.fixture(scope="module")
def result(dataset, tmp_path_factory):
    r = dataset["root"]
    return evaluate_folders(r / "gt", r / "pred", tmp_path_factory.mktemp("out"), labels=ORGANS, images=r / "img", nsd_tolerance_mm=2.0)


def test_metrics_csv(result, dataset):
    with open(result.metrics_csv, newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS == (
        "case", "label", "name", "dice", "iou", "hd", "hd95", "assd", "nsd", "volume_gt_ml", "volume_pred_ml", "absent")
    body = rows[1:]
    assert [(r[0], r[2]) for r in body] == [(c, n) for c in ("case0", "case1", "case2") for n in ORGANS.values()]
    # values are those of evaluate_case on the arrays, written at full precision
    for case, pred in dataset["preds"].items():
        want = evaluate_case(dataset["gt"], pred, dataset["spacing"], ORGANS, nsd_tolerance_mm=2.0)
        got = [r for r in body if r[0] == case]
        for w, g in zip(want, got):
            assert int(g[1]) == w["label"]
            for i, key in enumerate(CSV_COLUMNS[3:-1], start=3):
                assert float(g[i]) == w[key] or (math.isinf(w[key]) and g[i] == "inf"), (case, key)
    missed = next(r for r in body if r[0] == "case2" and r[2] == "kidney_right")
    assert missed[3:9] == ["0.0", "0.0", "inf", "inf", "inf", "0.0"] and missed[10] == "0.0"
    shifted = next(r for r in body if r[0] == "case0" and r[2] == "liver")
    assert float(shifted[5]) == pytest.approx(3.0)  # HD of a one-voxel shift at 3 mm


def test_summary_json(result):
    s = json.loads(result.summary_json.read_text())
    assert s["cases"] == {"total": 4, "evaluated": 3, "missing": ["case3"], "failed": {}, "unmatched_predictions": ["extra"]}
    assert s["labels"] == {"5": "liver", "1": "spleen", "2": "kidney_right", "3": "kidney_left"}
    kid = s["per_label"]["kidney_right"]
    assert (kid["cases"], kid["empty_pred"], kid["empty_gt"], kid["empty_both"], kid["missing"]) == (3, 1, 0, 0, 1)
    # inf distances are counted, not averaged; Dice 0 of the missed kidney is averaged
    assert kid["hd"]["inf"] == 1 and kid["hd"]["count"] == 2
    dices = [r["dice"] for r in result.rows if r["name"] == "kidney_right"]
    assert kid["dice"]["mean"] == pytest.approx(np.mean(dices)) and kid["dice"]["count"] == 3
    assert kid["dice"]["std"] == pytest.approx(np.std(dices))
    assert kid["dice"]["median"] == pytest.approx(np.median(dices))
    q1, q3 = np.percentile(dices, [25, 75])
    assert kid["dice"]["iqr"] == pytest.approx(q3 - q1)
    liver = s["per_label"]["liver"]
    assert liver["hd"]["inf"] == 0 and liver["hd"]["count"] == 3
    assert not result.ok and result.missing == ["case3"]


def test_report_html(result):
    page = result.report_html.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "http://" not in page and "https://" not in page  # self-contained
    for text in ("Summary", "Distributions", "Worst cases", "case3", "extra", "kidney_right", "1 inf", "Definitions"):
        assert text in page, text
    n_png = page.count("data:image/png;base64,")
    # 6 metric plots + a slice for each label's 3 worst cases (the missed kidney included)
    assert n_png == 6 + 3 * len(ORGANS)


def test_geometry_mismatch_names_the_case_and_resample_fixes_it(dataset, tmp_path):
    r = dataset["root"]
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    a = dataset["gt"]
    write_volume(Volume(a, dataset["affine"]), gt_dir / "flip.nii.gz")
    # the same labels stored flipped along i (another orientation, same world positions)
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = a.shape[0] - 1
    write_volume(Volume(a[::-1].copy(), dataset["affine"] @ flip), pred_dir / "flip.nii.gz")
    write_volume(Volume(a, dataset["affine"]), gt_dir / "small.nii.gz")
    write_volume(Volume(a[:-2].copy(), dataset["affine"]), pred_dir / "small.nii.gz")
    res = evaluate_folders(gt_dir, pred_dir, tmp_path / "out", labels=ORGANS)
    assert set(res.failed) == {"flip", "small"} and not res.rows
    assert "case 'flip'" in res.failed["flip"] and "--resample" in res.failed["flip"]
    assert "shape (122, 101, 30)" in res.failed["small"] and "(120, 101, 30)" in res.failed["small"]
    res = evaluate_folders(gt_dir, pred_dir, tmp_path / "out2", labels=ORGANS, resample=True)
    assert res.ok
    flip_rows = [x for x in res.rows if x["case"] == "flip"]
    assert all(x["dice"] == 1.0 and x["hd"] == 0.0 for x in flip_rows)  # exact after resampling
    small = [x for x in res.rows if x["case"] == "small"]
    assert all(x["volume_pred_ml"] <= x["volume_gt_ml"] for x in small)
    assert r.exists()


def test_resample_nearest_is_exact_on_integer_shifts(dataset):
    a = dataset["gt"]
    moved = np.eye(4)
    moved[0, 3] = 2.0  # moving grid starts 2 voxels further along i
    ref = Volume(a, np.eye(4))
    mov = Volume(a[2:].copy(), moved)
    out = resample_nearest(mov, ref)
    assert np.array_equal(out[2:], a[2:]) and not out[:2].any()


def test_two_files_and_default_labels(dataset, tmp_path):
    r = dataset["root"]
    res = evaluate_folders(r / "gt" / "case1.nii.gz", r / "pred" / "case1.nii.gz", tmp_path)
    assert res.ok and [x["case"] for x in res.rows] == ["case1"] * 4
    assert [x["name"] for x in res.rows] == ["label_1", "label_2", "label_3", "label_5"]
    with pytest.raises(InputError, match="two files or two folders"):
        evaluate_folders(r / "gt", r / "pred" / "case1.nii.gz", tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        evaluate_folders(r / "nope", r / "pred", tmp_path)


def test_parse_label_names(tmp_path):
    assert parse_label_names("1=liver, 2=spleen") == {1: "liver", 2: "spleen"}
    assert parse_label_names("3") == {3: "label_3"}
    assert parse_label_names(None) is None and parse_label_names("") is None
    (tmp_path / "l.json").write_text('{"0": "background", "1": "liver"}')
    assert parse_label_names(str(tmp_path / "l.json")) == {1: "liver"}
    for bad in ("x=liver", "0=bg", "1=a,1=b", "1=a,2=a"):
        with pytest.raises(InputError):
            parse_label_names(bad)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "medseg", "evaluate", *map(str, args)], capture_output=True, text=True)


def test_cli_end_to_end(dataset, tmp_path):
    r = dataset["root"]
    # all predictions present -> exit 0; two worker processes give the same CSV as one
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    for case in ("case0", "case1", "case2"):
        (gt_dir / f"{case}.nii.gz").write_bytes((r / "gt" / f"{case}.nii.gz").read_bytes())
    p = _cli(gt_dir, r / "pred", "--out", tmp_path / "o1", "--labels", "5=liver,2=kidney_right", "--nsd-tolerance", "3", "--workers", "2")
    assert p.returncode == 0, p.stderr
    assert "kidney_right" in p.stdout and "metrics.csv" in p.stdout
    csv1 = (tmp_path / "o1" / "metrics.csv").read_text()
    res = evaluate_folders(gt_dir, r / "pred", tmp_path / "o2", labels={5: "liver", 2: "kidney_right"}, nsd_tolerance_mm=3.0)
    assert csv1 == res.metrics_csv.read_text()
    assert (tmp_path / "o1" / "report.html").stat().st_size > 10_000
    # a missing prediction: reports written, exit 1, the case named
    p = _cli(r / "gt", r / "pred", "--out", tmp_path / "o3")
    assert p.returncode == 1 and "case3" in p.stderr
    assert json.loads((tmp_path / "o3" / "summary.json").read_text())["cases"]["missing"] == ["case3"]
    # bad input: clear error, exit 1, no traceback
    p = _cli(r / "gt", r / "pred", "--out", tmp_path / "o4", "--labels", "liver")
    assert p.returncode == 1 and "--labels" in p.stderr and "Traceback" not in p.stderr


def test_dicom_seg_prediction_against_nifti_ground_truth(sample, tmp_path):
    """A DICOM SEG prediction (written from the DICOM series) scored against NIfTI labels that
    hold the same grid in another axis order: decoded onto the GT grid, values exact."""
    from medseg.io import load_volume
    from medseg.io.seg import write_dicom_seg

    series = load_volume(sample("ct_dicom"))
    gt_vol = read_volume(sample("ct_dicom_seg"))
    a = np.asarray(gt_vol.array)
    a = np.where(np.isin(a, [1, 5]), a, 0).astype(np.uint8)
    pred = _erode_labels(a)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    write_volume(gt_vol.with_array(a), tmp_path / "gt" / "ct.nii.gz")
    on_series = resample_nearest(Volume(pred, gt_vol.affine), series)
    write_dicom_seg(on_series, series, {5: "liver", 1: "spleen"}, tmp_path / "pred" / "ct.dcm")
    res = evaluate_folders(tmp_path / "gt", tmp_path / "pred", tmp_path / "out")
    assert res.ok, res.failed
    assert res.labels == {1: "spleen", 5: "liver"}  # names from the SEG's segments
    want = evaluate_case(a, pred, gt_vol.spacing)
    assert [{k: v for k, v in r.items() if k not in ("case", "name")} for r in res.rows] == [
        {k: v for k, v in r.items() if k != "name"} for r in want
    ]


def _sagittal_affine() -> np.ndarray:
    """A sagittal acquisition: voxel i runs A→P (0.5 mm), j runs S→I (0.7 mm), k runs L→R (4 mm
    slices), rotated 10° about the slice normal: ``io_orientation`` = (A, S, R) axes."""
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    aff = np.eye(4)
    aff[:3, 0] = 0.5 * np.array([0.0, c, s])  # i: anterior (tilted 10° about R-L)
    aff[:3, 1] = 0.7 * np.array([0.0, -s, c])  # j: superior
    aff[:3, 2] = 4.0 * np.array([1.0, 0.0, 0.0])  # k: right
    return aff


def test_ras_view_spacing_follows_the_inverse_permutation():
    from medseg.io.orientation import to_ras_view

    aff = _sagittal_affine()
    arr = np.zeros((30, 20, 10))
    view, spacing = to_ras_view(arr, aff)
    assert view.shape == (10, 30, 20)  # R from k, A from i, S from j
    np.testing.assert_allclose(spacing, [4.0, 0.5, 0.7])


def test_report_and_qa_panels_have_the_true_aspect_on_a_sagittal_series(monkeypatch):
    """The report's axial panel of a sagittal series is drawn at pixel height/width = A/R spacing
    (0.5/4), the QA picture's panels likewise (axial A/R, coronal S/R)."""
    from matplotlib.axes import Axes

    from medseg.inference.outputs import qa_panels
    from medseg.report.html import slice_image

    aff = _sagittal_affine()
    gt = np.zeros((30, 20, 10), np.uint8)
    gt[10:20, 5:15, 3:7] = 1
    pred = np.roll(gt, 2, axis=0)
    aspects = []
    real = Axes.imshow
    monkeypatch.setattr(Axes, "imshow", lambda self, *a, **k: (aspects.append(k.get("aspect")), real(self, *a, **k))[1])
    image = Volume(np.random.default_rng(0).normal(size=gt.shape).astype(np.float32), aff, {"modality": "MR"})
    assert slice_image(image, gt, pred, aff, "case").startswith("data:image/png")
    assert aspects and aspects[0] == pytest.approx(0.5 / 4.0)
    panels, present, _ = qa_panels(image, gt, {1: "lesion"})
    assert present == [1]
    assert [a for _, _, a in panels] == pytest.approx([0.5 / 4.0] * 3 + [0.7 / 4.0])

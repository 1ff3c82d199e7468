"""Denoising report on a real CT slice: CSV rows with units and data range, HTML, PNG panel."""

import csv

import numpy as np
import pytest
from PIL import Image

from medseg.data.noise import add_ct_dose_noise
from medseg.enhance_baselines import gaussian_denoise
from medseg.io import load_volume
from medseg.metrics.image import psnr
from medseg.report.denoise import CSV_COLUMNS, score_denoised, summarize_denoise, write_denoise_panel, write_denoise_report
from medseg.sample_data import path as sample_path

WINDOW = (-1024.0, 3071.0)


@pytest.fixture(scope="module")
def case():
    vol = load_volume(sample_path("ct_dicom"))
    clean = vol.array[96:352, 96:352, 9:11].astype(np.float64)
    noisy = add_ct_dose_noise(clean, vol.spacing, np.random.default_rng(0), dose_fraction=0.25)
    return noisy, gaussian_denoise(noisy), clean


def test_rows_summary_csv_html_and_panel(case, tmp_path):
    noisy, denoised, clean = case
    rows = [
        score_denoised("ct_dicom", "ct_dose", 0.25, "dose fraction", m, img, clean, window=WINDOW, units="HU", seed=s, seconds_per_slice=0.01)
        for s in (0, 1) for m, img in (("noisy", noisy), ("gaussian", denoised))
    ]
    assert rows[1].psnr_db == pytest.approx(psnr(denoised, clean, window=WINDOW))
    assert rows[0].rmse == pytest.approx(float(np.sqrt(np.mean((np.clip(noisy, *WINDOW) - clean) ** 2))), rel=1e-6)
    assert rows[0].psnr_db != rows[1].psnr_db and 0 < rows[1].ssim < 1
    assert rows[0].data_range == 4095.0 and rows[0].window == "-1024..3071 HU"

    summary = summarize_denoise(rows)
    assert [(s["method"], s["n"]) for s in summary] == [("noisy", 2), ("gaussian", 2)]
    assert summary[1]["psnr_db"] == pytest.approx(rows[1].psnr_db) and summary[1]["psnr_db_std"] == 0.0

    panel = write_denoise_panel(tmp_path / "panels" / "ct.png", noisy[:, :, 0], {"gaussian": denoised[:, :, 0]}, clean[:, :, 0],
                                window=(-160, 240), title="ct_dicom · dose fraction 0.25")
    img = np.asarray(Image.open(panel).convert("L"))
    assert img.shape[1] > 1.3 * img.shape[0]  # three columns side by side over two rows
    assert img.std() > 20  # not blank

    paths = write_denoise_report(rows, tmp_path, panels={"ct_dicom": panel}, protocol="window −1024..3071 HU")
    with open(paths["csv"], newline="") as f:
        read = list(csv.DictReader(f))
    assert tuple(read[0]) == CSV_COLUMNS and len(read) == 4
    assert read[1]["method"] == "gaussian" and float(read[1]["psnr_db"]) == pytest.approx(rows[1].psnr_db)
    assert read[0]["level_units"] == "dose fraction" and read[0]["data_range"] == "4095.0"
    page = paths["html"].read_text()
    assert "src='panels/ct.png'" in page and "window −1024..3071 HU" in page and "gaussian" in page

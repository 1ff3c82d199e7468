"""Paired real low-dose data (Mayo/AAPM layout) built from real DICOM: the bundled 20-slice CT
series as the full dose and a simulated quarter-dose copy written as a derived DICOM series by
medseg's writer as the low dose. Pairing is by slice position; mismatches are clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg.ct.low_dose import simulate_low_dose
from medseg.data.ldct_pairs import PairedCase, check_paired_cases, find_paired_cases, orient_ras, read_pair
from medseg.errors import DataError
from medseg.io.derived import write_derived_series
from medseg.io.dicom import read_dicom_series


@pytest.fixture(scope="module")
def pair_root(tmp_path_factory, sample) -> Path:
    """``root/patient01/{full_dose,quarter_dose}`` from the bundled series (5 slices, to keep it quick)."""
    root = tmp_path_factory.mktemp("ldct")
    full_dir = root / "patient01" / "full_dose"
    full_dir.mkdir(parents=True)
    files = sorted(Path(sample("ct_dicom")).iterdir())
    for f in files:
        shutil.copy(f, full_dir / f.name)
    source = read_dicom_series(full_dir)
    low = simulate_low_dose(source.array.astype(np.float32)[:, :, :], source.spacing[:2], dose_fraction=0.25, views=180, seed=3)
    write_derived_series(source.with_array(low), source, root / "patient01" / "quarter_dose", description="simulated quarter dose")
    return root


def test_pairs_match_by_position_and_carry_the_low_dose_noise(pair_root):
    (case,) = find_paired_cases(pair_root, "full_dose", "quarter_dose")
    assert case.name == "patient01"
    full, low = read_pair(case)
    src = orient_ras(read_dicom_series(case.full_dose))
    assert full.array.shape == low.array.shape == src.array.shape
    np.testing.assert_allclose(full.affine, low.affine)
    np.testing.assert_array_equal(full.array, src.array.astype(np.float32))
    diff = low.array - full.array
    body = full.array > -200
    # slice k of one is slice k of the other: the difference is noise around 0 HU, not anatomy
    assert abs(float(diff[body].mean())) < 5 and 5 < float(diff[body].std()) < 300
    check_paired_cases(pair_root, "full_dose", "quarter_dose", 0.05)  # no problem found


def test_low_dose_slices_without_a_full_dose_partner_are_named(pair_root, tmp_path):
    bad = tmp_path / "root" / "p2"
    shutil.copytree(pair_root / "patient01", bad)
    full_files = sorted((bad / "full_dose").iterdir(), key=lambda f: float(read_dicom_series_z(f)))
    for f in full_files[:2]:  # the full-dose series now starts 2 slices later
        f.unlink()
    with pytest.raises(DataError, match=r"p2 .*2 low-dose slice\(s\) have no full-dose slice at their position"):
        read_pair(PairedCase("p2", bad / "full_dose", bad / "quarter_dose"))
    with pytest.raises(DataError, match="1 patient"):
        check_paired_cases(tmp_path / "root", "full_dose", "quarter_dose", 0.05)


def test_layout_errors_name_the_folder(pair_root, tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        find_paired_cases(tmp_path / "missing")
    (tmp_path / "r" / "p1" / "full_dose").mkdir(parents=True)
    with pytest.raises(DataError, match="p1: no low_dose/ folder"):
        find_paired_cases(tmp_path / "r", "full_dose", "low_dose")
    (cases,) = [find_paired_cases(pair_root, "full_dose", "quarter_dose")]
    assert len(cases) == 1


def test_a_gan_workflow_trains_on_paired_data(pair_root, tmp_path):
    from medseg.checkpoint import load_checkpoint
    from medseg.engine import train

    cfg = {
        "name": "paired", "task": "gan", "data": {"paired": {"root": str(pair_root)}},
        "model": {"generator": {"options": {"channels": 4, "n_blocks": 1, "growth": 4, "layers_per_block": 1}},
                  "critic": {"channels": 4, "n_layers": 2}},
        "optim": {"n_critic": 1},
        "training": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 1, "patches_per_case": 2, "patch_size": [32, 32],
                     "torch_threads": 2},
        "output": {"dir": str(tmp_path), "tensorboard": False},
    }
    run = train(cfg, device="cpu")
    assert load_checkpoint(run / "checkpoints" / "last.pt", expected_task="gan").model["name"] == "rdb_generator"


def read_dicom_series_z(path: Path) -> float:
    import pydicom

    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])

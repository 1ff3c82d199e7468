"""`medseg simulate-low-dose` end to end (subprocess): NIfTI input, DICOM input with a derived
series, dose 1 = identity, resume, clear errors without a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np


def run(*args):
    r = subprocess.run([sys.executable, "-m", "medseg", *map(str, args)], capture_output=True, text=True)
    r.stderr = " ".join(r.stderr.split())
    r.stdout = " ".join(r.stdout.split())
    return r


def test_nifti_input_dose_one_is_identity_and_rerun_skips(tmp_path, sample):
    from medseg.io import load_volume

    src = sample("ct_small")
    r = run("simulate-low-dose", src, tmp_path / "out", "--dose", "1", "--views", "40")
    assert r.returncode == 0, r.stderr
    out = load_volume(tmp_path / "out" / "example_ct_sm_dose100.nii.gz")
    ref = load_volume(src)
    assert np.array_equal(out.array, ref.array.astype(np.float32)) and np.allclose(out.affine, ref.affine)
    r = run("simulate-low-dose", src, tmp_path / "out", "--dose", "1", "--views", "40")
    assert r.returncode == 0 and "already done" in r.stdout


def test_dicom_input_writes_nifti_and_a_derived_series(tmp_path, sample):
    from medseg.io import load_volume

    files = sorted(p for p in sample("ct_dicom").iterdir() if p.is_file())[8:10]
    (tmp_path / "dcm").mkdir()
    for p in files:
        shutil.copy(p, tmp_path / "dcm" / p.name)
    r = run("simulate-low-dose", tmp_path / "dcm", tmp_path / "out", "--dose", "0.25", "--views", "60", "--seed", "3")
    assert r.returncode == 0, r.stderr
    (nii,) = (tmp_path / "out").glob("*_dose25.nii.gz")
    (ddir,) = (tmp_path / "out").glob("*_dose25_dicom")
    sim, src, derived = load_volume(nii), load_volume(tmp_path / "dcm"), load_volume(ddir)
    assert sim.shape == src.shape == derived.shape == (512, 512, 2)
    noise = sim.array - src.array
    assert 5.0 < float(noise[200:300, 200:300].std()) < 2000.0  # noise was added
    assert np.abs(derived.array - sim.array).max() <= 0.5 + 1e-3  # int16 HU in the DICOM
    assert derived.meta["series_instance_uid"] != src.meta["series_instance_uid"]
    meta = json.loads(next((tmp_path / "out").glob("*_dose25.json")).read_text())
    assert meta["parameters"]["dose_fraction"] == 0.25 and meta["parameters"]["views"] == 60


def test_errors_are_one_line_without_traceback(tmp_path, sample):
    r = run("simulate-low-dose", tmp_path / "missing", tmp_path / "out")
    assert r.returncode == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr
    r = run("simulate-low-dose", sample("mr_small"), tmp_path / "out")
    assert r.returncode == 1 and "do not look like CT in HU" in r.stderr
    r = run("simulate-low-dose", sample("ct_small"), tmp_path / "out", "--geometry", "cone", "--views", "8")
    assert r.returncode == 1 and "parallel" in r.stderr and "Traceback" not in r.stderr

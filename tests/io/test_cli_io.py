"""`medseg info` and `medseg convert` end to end (subprocess, as a user runs them)."""

from __future__ import annotations

import json
import subprocess
import sys

from dicom_factory import write_series


def run(*args):
    r = subprocess.run([sys.executable, "-m", "medseg", *map(str, args)], capture_output=True, text=True)
    r.stderr = " ".join(r.stderr.split())  # rich wraps long lines at the terminal width
    return r


def test_info_table_without_patient_data(tmp_path, mni_ct):
    write_series(tmp_path / "d", mni_ct, description="AX brain", localizer=True)
    (tmp_path / "d" / "junk.bin").write_bytes(b"\x00" * 10)
    r = run("info", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "AX brain" in out and "40×48×20" in out and "2×2×2" in out and "RAS" in out and "21" in out
    assert "another geometry" in out and "skipped 1 file" in out
    for secret in ("Doe", "Jane", "PID-SECRET-42", "19700101"):
        assert secret not in out and secret not in r.stderr
    j = run("info", tmp_path / "d", "--json")
    data = json.loads(j.stdout)
    assert data["series"][0]["shape"] == [40, 48, 20] and data["skipped"][0]["path"] == "junk.bin"


def test_info_on_nothing_useful_exits_1(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert run("info", tmp_path).returncode == 1
    r = run("info", tmp_path / "missing")
    assert r.returncode == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_convert_cli(tmp_path, mni_ct):
    write_series(tmp_path / "d", mni_ct, drop_slices=(4,))
    r = run("convert", tmp_path / "d", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    index = json.loads((tmp_path / "out" / "series.json").read_text())
    (entry,) = index["series"]
    assert (tmp_path / "out" / entry["output"]).is_file()
    assert "missing slice" in r.stderr  # warnings are shown, not only stored
    assert "Doe" not in r.stdout + r.stderr


def test_convert_cli_exit_1_when_a_series_fails(tmp_path, mni_ct):
    from medseg.io import Volume

    shifted = mni_ct.affine.copy()
    shifted[0, 3] += 50
    write_series(tmp_path / "d", mni_ct, series_uid="1.2.3.4", seed=1)
    write_series(tmp_path / "d", Volume(mni_ct.array, shifted), series_uid="1.2.3.4", seed=2)
    r = run("convert", tmp_path / "d", tmp_path / "out")
    assert r.returncode == 1 and "failed" in r.stderr and "Traceback" not in r.stderr
    assert json.loads((tmp_path / "out" / "series.json").read_text())["series"][0]["error"]

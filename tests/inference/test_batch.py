"""segment_batch / medseg segment on real DICOM trees: outputs, SEG vs NIfTI, failures, resume, shards."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from inference_factory import corrupt_j2k_series

from medseg.demo import write_ct_series
from medseg.inference import BatchOptions, InferenceOptions, parse_shard, segment_batch
from medseg.inference.batch import DONE_MARKER, discover_series, shard_of
from medseg.inference.discovery import MANIFEST_FIELDS
from medseg.io import read_nifti, read_volume
from medseg.io.dicom import read_dicom_series

# no window overlap: the fewest forward passes (these tests check plumbing, not accuracy)
FAST = BatchOptions(inference=InferenceOptions(device="cpu", overlap=0.0), progress=False)


@pytest.fixture(scope="module")
def dicom_tree(tmp_path_factory, sample) -> Path:
    """A PACS-export-like tree: 2 good CT series (one nested), 1 corrupt CT, an MR, an SR."""
    import pydicom.data

    root = tmp_path_factory.mktemp("tree")
    shutil.copytree(sample("ct_dicom"), root / "patient_A" / "CT_abdomen")
    write_ct_series(read_volume(sample("ct_small")), root / "patient_B" / "study" / "CT_3mm",
                    series_description="Abdomen 3mm", series_number=2)
    corrupt_j2k_series(sample("ct_dicom"), root / "patient_C" / "CT_broken")
    for sub, name in (("patient_B/study/MR", "MR_small.dcm"), ("patient_B/report", "test-SR.dcm")):
        (root / sub).mkdir(parents=True)
        shutil.copy(pydicom.data.get_testdata_file(name), root / sub / name)
    return root


@pytest.fixture(scope="module")
def batch(dicom_tree, trained_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg")
    return segment_batch(dicom_tree, out, [trained_ckpt], FAST)


def seg_on_grid(seg, affine_ras: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Decode a highdicom Segmentation onto a grid by each frame's ImagePositionPatient (LPS)."""
    from medseg.io.orientation import ras_to_lps_affine

    inv = np.linalg.inv(ras_to_lps_affine(affine_ras))
    value_of = {int(d.SegmentNumber): int(str(d.TrackingID).split()[-1]) for d in seg.SegmentSequence}
    out = np.zeros(shape, dtype=np.uint8)
    pixels = seg.pixel_array.reshape(-1, shape[1], shape[0])
    for frame, group in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        pos = np.array([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient] + [1.0])
        i, j, k = (inv @ pos)[:3]
        assert abs(i) < 1e-3 and abs(j) < 1e-3 and abs(k - round(k)) < 1e-3
        ident = group if "SegmentIdentificationSequence" in group else seg.SharedFunctionalGroupsSequence[0]
        number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[:, :, int(round(k))][frame.T > 0] = value_of[number]
    return out


def _by_source(result, part: str):
    (rec,) = [r for r in result.records if part in r.source]
    return rec


def test_every_series_is_reported(batch):
    assert not batch.ok and batch.n_done == 2 and batch.n_failed == 1 and batch.n_skipped == 2
    broken = _by_source(batch, "CT_broken")
    assert broken.status == "failed" and "cannot decode pixel data" in broken.reason
    mr = _by_source(batch, "MR")
    assert mr.status == "skipped" and "modality MR" in mr.reason
    sr = _by_source(batch, "report")
    assert sr.status == "skipped" and "not an image" in sr.reason
    manifest = json.loads(batch.manifest_path.read_text())
    assert manifest["counts"] == {"done": 2, "skipped": 2, "failed": 1, "pending": 0}
    assert manifest["labels"] == {"1": "liver"} and manifest["finished"]
    rows = list(csv.DictReader(batch.manifest_path.with_suffix(".csv").open()))
    assert sorted(r["status"] for r in rows) == ["done", "done", "failed", "skipped", "skipped"]
    # a manifest row: every field but the in-memory series (its headers), outputs copied
    done = next(r for r in batch.records if r.status == "done")
    assert done.series is not None
    row = done.to_dict()
    assert "series" not in row and row["outputs"] == done.outputs and row["outputs"] is not done.outputs
    assert set(row) == set(MANIFEST_FIELDS) | {"outputs", "label_uncertainty"}


@pytest.mark.parametrize("part", ["CT_abdomen", "CT_3mm"])
def test_seg_matches_nifti_voxel_by_voxel_on_the_original_grid(batch, part):
    import highdicom as hd

    rec = _by_source(batch, part)
    assert rec.status == "done"
    d = batch.out_dir / rec.stem
    assert set(rec.outputs) == {"labels", "dicom_seg", "volumes", "qa"}
    source = read_dicom_series(rec.series)
    labels = read_nifti(d / "labels.nii.gz")
    assert labels.shape == source.shape
    np.testing.assert_allclose(labels.affine, source.affine, atol=1e-4)
    assert (labels.array == 1).any() and (labels.array == 0).any()

    seg = hd.seg.segread(d / "seg.dcm")
    assert seg.SeriesDescription.startswith("medseg")
    (desc,) = seg.SegmentSequence
    assert desc.SegmentLabel == "liver"
    np.testing.assert_array_equal(seg_on_grid(seg, source.affine, source.shape), labels.array)

    rows = list(csv.DictReader((d / "volumes.csv").open()))
    voxel_ml = abs(np.linalg.det(source.affine[:3, :3])) / 1000
    mask = labels.array == 1
    assert rows[0]["name"] == "liver" and int(rows[0]["voxels"]) == int(mask.sum())
    assert float(rows[0]["volume_ml"]) == pytest.approx(mask.sum() * voxel_ml, rel=1e-4)
    assert float(rows[0]["mean_intensity"]) == pytest.approx(source.array[mask].mean(), abs=1e-2)
    assert (d / "qa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = json.loads((d / DONE_MARKER).read_text())
    assert done["outputs"] == rec.outputs and done["model_fingerprints"]


def _label_and_seg_bytes(res) -> dict[str, tuple[bytes, bytes]]:
    """Per done series: the label map's voxels and the SEG's pixel data, as bytes."""
    import highdicom as hd

    out = {}
    for rec in (r for r in res.records if r.status == "done"):
        d = res.out_dir / rec.stem
        labels = read_nifti(d / "labels.nii.gz").array
        out[rec.stem] = (labels.tobytes(order="F"), bytes(hd.seg.segread(d / "seg.dcm").PixelData))
    return out


@pytest.mark.parametrize("kw", [{"workers": 1}, pytest.param({"jobs": 2}, marks=pytest.mark.slow),
                                pytest.param({"jobs": 2, "workers": 1}, marks=pytest.mark.slow)])
def test_outputs_do_not_depend_on_the_process_settings(batch, dicom_tree, trained_ckpt, tmp_path, kw):
    """Background processes (workers) and shard processes (jobs) give byte-identical label maps,
    SEG pixel data and volume tables, the same statuses and reasons, as the one-process batch."""
    opts = BatchOptions(inference=FAST.inference, progress=False, **kw)
    res = segment_batch(dicom_tree, tmp_path / "other", [trained_ckpt], opts)
    assert [(r.stem, r.status, r.reason, r.n_slices, r.modality) for r in res.records] == [
        (r.stem, r.status, r.reason, r.n_slices, r.modality) for r in batch.records]
    ours, ref = _label_and_seg_bytes(res), _label_and_seg_bytes(batch)
    assert len(ours) == 2 and ours == ref
    for rec in (r for r in res.records if r.status == "done"):
        assert rec.outputs == _by_source(batch, rec.source).outputs and rec.seconds > 0
        assert (res.out_dir / rec.stem / "volumes.csv").read_text() == (batch.out_dir / rec.stem / "volumes.csv").read_text()
    if "jobs" in kw:  # the merged manifest, and each job's own
        manifest = json.loads((res.out_dir / "segment.json").read_text())
        assert manifest["counts"] == {"done": 2, "skipped": 2, "failed": 1, "pending": 0}
        assert (res.out_dir / "segment.shard-1-of-2.json").is_file()


def test_writers_side_by_side_write_what_they_write_one_after_the_other(batch, dicom_tree, trained_ckpt, tmp_path, monkeypatch):
    """The SEG writer's thread beside the others (`write_outputs(concurrent=True)`, the default)
    changes no file: label maps, SEG pixel data, volume tables and QA pictures are the bytes of
    writers run one after the other."""
    import functools

    from medseg.inference import stages, writers

    monkeypatch.setattr(stages, "write_outputs", functools.partial(writers.write_outputs, concurrent=False))
    res = segment_batch(dicom_tree, tmp_path / "sequential", [trained_ckpt], FAST)
    assert _label_and_seg_bytes(res) == _label_and_seg_bytes(batch)
    for rec in (r for r in res.records if r.status == "done"):
        ref = batch.out_dir / _by_source(batch, rec.source).stem
        assert rec.outputs == _by_source(batch, rec.source).outputs
        for name in ("volumes.csv", "qa.png"):
            assert (res.out_dir / rec.stem / name).read_bytes() == (ref / name).read_bytes(), name


def test_work_before_the_rest_runs_beside_the_python_bound_writers(tmp_path, monkeypatch):
    """`write_outputs(before_rest=...)`: the Python-bound group (the SEG's) has started when the
    work runs, this thread's writers see its result, and its error is raised only after the
    other group finished (nothing left half-running). One after the other, it runs first."""
    import threading

    from medseg.inference import writers

    seg_started, seg_may_end = threading.Event(), threading.Event()
    order: list[str] = []

    def seg(ctx):
        seg_started.set()
        assert seg_may_end.wait(10)
        order.append("seg")
        return "seg.dcm"

    def csv_writer(ctx):
        order.append(f"csv:{ctx.stats}")
        seg_may_end.set()  # the SEG ends after this thread's writers: the order below is fixed
        return "volumes.csv"

    monkeypatch.setitem(writers.WRITERS, "toy", [("volumes", csv_writer), ("dicom_seg", seg)])

    def work():
        assert seg_started.wait(10)  # the side group is running already
        order.append("work")
        ctx.stats.append("scores")

    ctx = writers.OutputContext(None, None, None, [], None, tmp_path)  # the toy writers read none of it
    assert writers.write_outputs(ctx, "toy", before_rest=work) == {"volumes": "volumes.csv", "dicom_seg": "seg.dcm"}
    assert order == ["work", "csv:['scores']", "seg"]

    # one after the other: the work first, then every writer in order
    order.clear()
    ctx.stats.clear()
    assert writers.write_outputs(ctx, "toy", concurrent=False, before_rest=lambda: order.append("work"))
    assert order == ["work", "csv:[]", "seg"]

    # the work fails: the SEG still finishes, then the work's error comes out
    seg_started.clear()
    seg_may_end.clear()
    order.clear()

    def failing():
        assert seg_started.wait(10)
        seg_may_end.set()
        raise RuntimeError("no scores")

    with pytest.raises(RuntimeError, match="no scores"):
        writers.write_outputs(ctx, "toy", before_rest=failing)
    assert order == ["seg"]


def test_thread_count_is_recorded_and_a_resume_with_another_keeps_the_series(batch, dicom_tree, trained_ckpt, tmp_path, caplog):
    """On CPU the network's thread count is part of its arithmetic: the manifest and every done
    marker record it; a re-run with another count keeps the finished series and says so."""
    import shutil

    import torch

    manifest = json.loads((batch.out_dir / "segment.json").read_text())
    assert manifest["torch_threads"] == torch.get_num_threads()
    out = tmp_path / "again"
    shutil.copytree(batch.out_dir, out)
    done = [r for r in batch.records if r.status == "done"]
    for rec in done:
        marker = out / rec.stem / "done.json"
        info = json.loads(marker.read_text())
        assert info["torch_threads"] == torch.get_num_threads()
        marker.write_text(json.dumps(info | {"torch_threads": 97}))
    with caplog.at_level("INFO", logger="medseg.inference.manifest"):
        res = segment_batch(dicom_tree, out, [trained_ckpt], BatchOptions(inference=FAST.inference, progress=False))
    again = [r for r in res.records if r.status == "done"]
    assert [r.stem for r in again] == [r.stem for r in done] and all(r.previous_run for r in again)
    assert any("97 torch thread(s) are kept" in m for m in caplog.messages)


def test_unguarded_main_script(tmp_path):
    """Which main modules a spawned worker would run again (their top-level code)."""
    import importlib.machinery
    import types

    from medseg.inference.processes import unguarded_main_script

    def main_of(name: str, text: str | None, spec: bool = False) -> types.ModuleType:
        mod = types.ModuleType("__main__")
        if text is not None:
            path = tmp_path / name
            path.write_text(text)
            mod.__file__ = str(path)
            mod.__spec__ = importlib.machinery.ModuleSpec("pkg.tool", None, origin=str(path)) if spec else None
        return mod

    body = "from medseg.inference import segment_batch\nsegment_batch('in', 'out', ['m.pt'])\n"
    assert unguarded_main_script(main_of("plain.py", body)) == str(tmp_path / "plain.py")
    assert unguarded_main_script(main_of("guarded.py", "if __name__ == '__main__':\n    " + body.replace("\n", "\n    "))) is None
    assert unguarded_main_script(main_of("tool.py", body, spec=True)) == str(tmp_path / "tool.py")  # python -m pkg.tool
    assert unguarded_main_script(main_of("medseg", 'import sys\nif __name__ == "__main__":\n    sys.exit(0)\n')) is None  # console script
    assert unguarded_main_script(main_of("-", None)) is None  # interactive / notebook: nothing to run again
    assert unguarded_main_script() is None  # pytest's own entry point has the guard


def test_unguarded_script_gets_one_process_or_a_clear_error(dicom_tree, trained_ckpt, tmp_path, monkeypatch):
    """From a script without a __main__ guard, the default batch stays in this process; asking
    for jobs or workers explicitly is an error that names the script, before anything is written."""
    from medseg.errors import InputError
    from medseg.inference import batch as batch_module

    monkeypatch.setattr(batch_module, "unguarded_main_script", lambda: "/home/me/segment_all.py")
    monkeypatch.setattr(batch_module, "default_workers", lambda device: 1)  # what a 4+-core box picks
    import medseg.inference.processes as processes

    def no_processes(*args, **kwargs):
        raise AssertionError("background processes started from an unguarded script")

    monkeypatch.setattr(processes.cf, "ProcessPoolExecutor", no_processes)
    res = segment_batch(dicom_tree, tmp_path / "default", [trained_ckpt], FAST)
    assert res.n_done == 2 and res.n_failed == 1  # the corrupt series, as in the one-process batch
    for kw in ({"jobs": 2}, {"workers": 1}):
        with pytest.raises(InputError, match=r"segment_all\.py .*__main__"):
            segment_batch(dicom_tree, tmp_path / "asked", [trained_ckpt], BatchOptions(inference=FAST.inference, progress=False, **kw))
        assert not (tmp_path / "asked").exists()


def test_default_workers_follow_the_cpu_count(monkeypatch):
    import torch

    from medseg.inference import processes

    for cpus, dev, expected in ((2, "cpu", 0), (3, "cuda", 0), (4, "cpu", 1), (8, "cpu", 1), (8, "cuda", 2)):
        monkeypatch.setattr(processes.os, "cpu_count", lambda c=cpus: c)
        assert processes.default_workers(torch.device(dev)) == expected, (cpus, dev)


def test_cli_rerun_skips_done_series_and_exits_1_on_failure(batch, dicom_tree, trained_ckpt):
    from typer.testing import CliRunner

    from medseg.cli import app

    before = {p: p.stat().st_mtime_ns for p in batch.out_dir.rglob("labels.nii.gz")}
    r = CliRunner().invoke(
        app, ["segment", str(dicom_tree), str(batch.out_dir), "--model", str(trained_ckpt), "--device", "cpu", "--overlap", "0", "--no-progress"]
    )
    assert r.exit_code == 1, r.output
    assert "2 done, 2 skipped, 1 failed" in r.output and "previous run" in r.output
    assert {p: p.stat().st_mtime_ns for p in batch.out_dir.rglob("labels.nii.gz")} == before


def test_a_failing_writer_fails_its_series_only(tmp_path, sample, trained_ckpt, monkeypatch):
    """A writer that fails (disk full) fails its series with the reason; the files written before
    it are complete, no marker, no temp file; a re-run redoes the series."""
    import medseg.io.seg as seg_module

    tree = tmp_path / "in"
    shutil.copytree(sample("ct_dicom"), tree / "ct")

    def seg_fails(*a, **k):
        raise OSError("disk full (test)")

    monkeypatch.setattr(seg_module, "write_dicom_seg", seg_fails)
    failed = segment_batch(tree, tmp_path / "out", [trained_ckpt], FAST)
    (rec,) = failed.records
    assert rec.status == "failed" and "disk full (test)" in rec.reason and not failed.ok
    d = failed.out_dir / rec.stem
    # the SEG runs beside the other writers (medseg.inference.writers): theirs are complete files
    assert sorted(p.name for p in d.iterdir()) == ["labels.nii.gz", "qa.png", "volumes.csv"]
    read_nifti(d / "labels.nii.gz")
    monkeypatch.undo()
    again = segment_batch(tree, tmp_path / "out", [trained_ckpt], FAST)
    assert again.ok and again.records[0].outputs == {"labels": "labels.nii.gz", "dicom_seg": "seg.dcm", "volumes": "volumes.csv", "qa": "qa.png"}


def test_resume_after_an_interruption(tmp_path, sample, trained_ckpt, monkeypatch):
    """Interrupted while writing the 2nd series: its outputs exist but it is not done; a re-run
    skips the 1st and redoes the 2nd."""
    import medseg.inference.outputs as outputs

    vol = read_volume(sample("ct_small"))
    tree = tmp_path / "in"
    for n in range(2):
        write_ct_series(vol, tree / f"p{n}" / "ct", series_description=f"copy {n}", series_number=n + 1)
    out = tmp_path / "out"
    real = outputs.write_qa_png
    calls = []

    def interrupt_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(outputs, "write_qa_png", interrupt_on_second)
    with pytest.raises(KeyboardInterrupt):
        segment_batch(tree, out, [trained_ckpt], FAST)
    manifest = json.loads((out / "segment.json").read_text())
    assert manifest["counts"]["done"] == 1 and manifest["counts"]["pending"] == 1
    half = [d for d in out.iterdir() if d.is_dir() and not (d / DONE_MARKER).exists() and any(d.iterdir())]
    assert len(half) == 1 and (half[0] / "labels.nii.gz").exists()

    monkeypatch.setattr(outputs, "write_qa_png", real)
    again = segment_batch(tree, out, [trained_ckpt], FAST)
    assert again.ok and again.n_done == 2
    assert sum(r.previous_run for r in again.records) == 1
    assert all((out / r.stem / DONE_MARKER).exists() for r in again.records)
    only_one = BatchOptions(inference=FAST.inference, progress=False, overwrite=True, series_regex="COPY 1$")
    redo = segment_batch(tree, out, [trained_ckpt], only_one)
    assert [(r.series_description, r.status, r.previous_run) for r in redo.records] == [
        ("copy 0", "skipped", False), ("copy 1", "done", False)]


def test_interrupted_while_writing_a_marker_the_manifest_does_not_count_the_series(tmp_path, sample, trained_ckpt, monkeypatch):
    """Ctrl-C inside the 1st series' done marker write: the record already said "done", but no
    marker exists, so the manifest written on the way out counts it pending (it agrees with the
    markers), and a re-run redoes it."""
    import medseg.inference.batch as batch_mod

    vol = read_volume(sample("ct_small"))
    tree = tmp_path / "in"
    for n in range(2):
        write_ct_series(vol, tree / f"p{n}", series_description=f"copy {n}", series_number=n + 1)
    out = tmp_path / "out"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_mod, "write_done_marker", interrupted)
    with pytest.raises(KeyboardInterrupt):
        segment_batch(tree, out, [trained_ckpt], FAST)
    manifest = json.loads((out / "segment.json").read_text())
    assert not list(out.glob(f"*/{DONE_MARKER}"))
    assert manifest["counts"]["done"] == 0 and manifest["counts"]["pending"] == 2
    monkeypatch.undo()
    again = segment_batch(tree, out, [trained_ckpt], FAST)
    assert again.ok and again.n_done == 2 and not any(r.previous_run for r in again.records)


def test_records_agree_with_the_markers_on_disk(batch, trained_ckpt, tmp_path):
    """What a job process finished but had not recorded (it was stopped between its marker and
    its shard manifest) counts as done, with the marker's outputs and uncertainty; a record
    said done whose marker is gone goes back to pending."""
    from dataclasses import replace as copy_record

    from medseg.inference.manifest import agree_with_markers
    from medseg.inference.model import load_models

    models = load_models([trained_ckpt], "cpu")
    out = tmp_path / "out"
    shutil.copytree(batch.out_dir, out)
    done = [r for r in batch.records if r.status == "done"]
    assert len(done) == 2
    unrecorded = [copy_record(r, status="pending", outputs={}, uncertainty=None, label_uncertainty={}) for r in done]
    agree_with_markers(unrecorded, out, models)
    assert [(r.status, r.outputs, r.uncertainty, r.label_uncertainty) for r in unrecorded] == [
        ("done", r.outputs, r.uncertainty, r.label_uncertainty) for r in done]

    (out / done[0].stem / DONE_MARKER).unlink()
    claimed = [copy_record(r) for r in done]
    agree_with_markers(claimed, out, models)
    assert [r.status for r in claimed] == ["pending", "done"]
    failed = [copy_record(r, status="failed", reason="x") for r in done]
    agree_with_markers(failed, out, models)
    assert [r.status for r in failed] == ["failed", "failed"]


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


def _running(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "Z" not in state.split()[1]


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default (see `test_ctrl_c_stops_the_jobs`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _segment_until_first_series(tree: Path, out: Path, ckpt: Path, extra: list[str], **popen: object) -> tuple[subprocess.Popen, set[int]]:
    """Start `medseg segment` (one thread per process) and return once its first series is
    done (or it ended, or 120 s passed), with the child processes seen meanwhile."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "medseg", "segment", str(tree), str(out), "-m", str(ckpt),
         "--device", "cpu", "--overlap", "0", "--no-progress", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=_default_sigint, **popen,
    )
    deadline = time.monotonic() + 300  # a shared 2-core machine: starting jobs can take a while
    children: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        children |= _children(proc.pid)
        if any(out.glob(f"*/{DONE_MARKER}")):
            break
        time.sleep(0.02)
    return proc, children


def _assert_gone(children: set[int], message: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_running(c) for c in children):
        time.sleep(0.1)
    assert not any(_running(c) for c in children), message


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param("jobs", marks=pytest.mark.slow)])
def test_resume_after_sigkill(tmp_path, sample, trained_ckpt, workers):
    """Kill -9 a real `medseg segment` mid-batch: no half-written outputs; a re-run finishes;
    worker and job processes do not outlive the killed batch."""
    vol = read_volume(sample("ct_small"))
    tree = tmp_path / "in"
    for n in range(4):
        write_ct_series(vol, tree / f"p{n}", series_description=f"copy {n}", series_number=n + 1)
    out = tmp_path / "out"
    proc, children = _segment_until_first_series(
        tree, out, trained_ckpt, ["--jobs", "2"] if workers == "jobs" else ["--workers", str(workers)])
    killed_mid_batch = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if workers:
        assert children, "no worker process was started"
        _assert_gone(children, "worker processes outlived the killed batch")
    done_before = {p.parent.name for p in out.glob(f"*/{DONE_MARKER}")}
    assert done_before, "no series finished before the kill"
    for d in (p for p in out.iterdir() if p.is_dir()):
        for f in d.glob("labels.nii.gz"):
            read_nifti(f)  # complete files only: atomic writes
        if (d / DONE_MARKER).exists():
            info = json.loads((d / DONE_MARKER).read_text())
            assert all((d / name).is_file() for name in info["outputs"].values())

    result = segment_batch(tree, out, [trained_ckpt], FAST)
    assert result.ok and result.n_done == 4
    assert {r.stem for r in result.records if r.previous_run} == done_before
    if killed_mid_batch:
        assert len(done_before) < 4
    assert not list(out.rglob("*.part*")), "temp files of the killed run were not cleaned up"


def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--workers", "1"], ["--jobs", "2"]], ids=["workers", "jobs"])
@pytest.mark.parametrize("moment", ["children_started", "children_plus_4s"])
def test_sigkill_leaves_no_orphans_and_no_late_writes(tmp_path, sample, trained_ckpt, extra, moment):
    """Kill -9 of `medseg segment` while its background or job processes work (as soon as they
    exist, or a few seconds later): they die with it, nothing is written afterwards, and a
    re-run finishes with a manifest that agrees with the done markers."""
    vol = read_volume(sample("ct_small"))
    tree = tmp_path / "in"
    for n in range(4):
        write_ct_series(vol, tree / f"p{n}", series_description=f"copy {n}", series_number=n + 1)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "medseg", "segment", str(tree), str(out), "-m", str(trained_ckpt),
         "--device", "cpu", "--overlap", "0", "--no-progress", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    children: set[int] = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not children:
        children |= _children(proc.pid)
        time.sleep(0.02)
    if moment == "children_plus_4s":
        end = time.monotonic() + 4
        while time.monotonic() < end and proc.poll() is None:
            children |= _children(proc.pid)
            time.sleep(0.02)
    assert children and proc.poll() is None, "the batch ended before its processes could be seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _assert_gone(children, "background processes outlived the killed batch")
    before = _tree_state(out)
    time.sleep(3)
    assert _tree_state(out) == before, "files were written after the batch was killed"

    result = segment_batch(tree, out, [trained_ckpt], FAST)
    assert result.ok and result.n_done == 4
    manifest = json.loads(result.manifest_path.read_text())
    assert {r["stem"] for r in manifest["series"] if r["status"] == "done"} == {p.parent.name for p in out.glob(f"*/{DONE_MARKER}")}
    assert not list(out.rglob("*.part*"))


@pytest.mark.slow
def test_ctrl_c_stops_the_jobs(tmp_path, sample, trained_ckpt):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during
    `medseg segment --jobs 2`: exit code 130, the job process is gone, finished series are
    complete, and a re-run finishes the batch.

    The batch starts with SIGINT at its default disposition, as under a terminal: a test run
    launched in the background of a non-interactive shell (``nohup … &``) has SIGINT ignored,
    its children inherit that, and Python then installs no KeyboardInterrupt handler."""
    vol = read_volume(sample("ct_small"))
    tree = tmp_path / "in"
    n_series = 6
    for n in range(n_series):
        write_ct_series(vol, tree / f"p{n}", series_description=f"copy {n}", series_number=n + 1)
    out = tmp_path / "out"
    proc, children = _segment_until_first_series(tree, out, trained_ckpt, ["--jobs", "2"], start_new_session=True)
    assert proc.poll() is None, "the batch ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert children, "no job process was started"
    _assert_gone(children, "job processes outlived the interrupted batch")
    manifest = json.loads((out / "segment.json").read_text())
    done_before = {p.parent.name for p in out.glob(f"*/{DONE_MARKER}")}
    assert 1 <= manifest["counts"]["done"] == len(done_before) < n_series
    for d in done_before:
        info = json.loads((out / d / DONE_MARKER).read_text())
        assert all((out / d / name).is_file() for name in info["outputs"].values())
        read_nifti(out / d / "labels.nii.gz")

    result = segment_batch(tree, out, [trained_ckpt], FAST)
    assert result.ok and result.n_done == n_series
    assert {r.stem for r in result.records if r.previous_run} == done_before


def test_shards_cover_every_series_exactly_once(tmp_path, sample, trained_ckpt):
    vol = read_volume(sample("ct_small"))
    src = tmp_path / "in"
    from medseg.io import Volume, write_nifti

    for n in range(7):
        crop = Volume(vol.array[n * 8 : n * 8 + 48, 20:80, :], vol.affine, {})
        write_nifti(crop, src / f"sub{n % 2}" / f"case{n}.nii.gz")
    write_ct_series(vol, src / "dicom" / "ct", series_description="dicom one", series_number=9)
    records, _ = discover_series(src)
    assert len(records) == 8
    out = tmp_path / "out"
    seen: list[str] = []
    for i in (1, 2, 3):
        opts = BatchOptions(inference=FAST.inference, progress=False, qa_png=False, dicom_seg=False, shard=(i, 3))
        res = segment_batch(src, out, [trained_ckpt], opts)
        assert res.manifest_path.name == f"segment.shard-{i}-of-3.json"
        assert all(shard_of(r.key, 3) == i for r in res.records)
        seen += [r.stem for r in res.records if r.status == "done"]
    assert sorted(seen) == sorted(r.stem for r in records)  # every series once, none twice
    assert parse_shard("2/3") == (2, 3)
    from medseg.errors import InputError

    for bad in ("0/3", "4/3", "x"):
        with pytest.raises(InputError):
            parse_shard(bad)


def test_a_shard_removes_only_its_own_stale_manifest_temp_files(dicom_tree, trained_ckpt, tmp_path):
    """Shards share OUTDIR: at start a run removes the temporary files its own manifest left
    behind, never another shard's (which that shard may be about to rename into place: the
    race that once left `segment.shard-1-of-2.json` missing under `--jobs 2`)."""
    from dataclasses import replace

    out = tmp_path / "out"
    out.mkdir()
    own = [out / ".segment.shard-1-of-2.json.abc123.part", out / ".segment.shard-1-of-2.csv.abc123.part"]
    others = [out / ".segment.shard-2-of-2.json.def456.part", out / ".segment.json.ghi789.part",
              out / ".segment.shard-2-of-2.csv.def456.part"]
    for p in own + others:
        p.write_text("{}")
    res = segment_batch(dicom_tree, out, [trained_ckpt], replace(FAST, shard=(1, 2)))
    assert (out / "segment.shard-1-of-2.json").is_file() and res.records
    assert not any(p.exists() for p in own)
    assert all(p.exists() for p in others)

"""Batch inference over a DICOM folder tree, an image file, or a folder of image files.

The pipeline (nnU-Net's ``predict_from_raw_data`` shape, `medseg.inference.processes`):
background processes read and preprocess the next series (at most ``workers`` ahead); this
process runs the network; another ``workers`` processes resample each result onto its
series' original grid and write the outputs (at most ``workers`` series waiting there).
``workers=0`` runs the same stages here, one after the other. The outputs are the same
whatever the setting: every stage's arithmetic is fixed (torch's thread count is set once
per process, never changed while it works).

What `segment_batch` guarantees:

- **The model is loaded once** and shared by every series.
- **One failed series never stops the batch**: its error goes into the manifest and the loop
  goes on. The result (and the CLI's exit code 1) says that something failed.
- **Resumable**: every output is written atomically (temp file + rename) and a series is
  *done* only when this process writes its marker ``<series>/done.json``, last, after all its
  outputs. At the start, every series' status is rebuilt from the markers; finished ones
  (outputs present, same checkpoints) are skipped unless ``overwrite``. Temp files left by a
  killed run are removed.
- **No orphans**: background processes die with this one (`processes.die_with_parent`), so
  nothing is written after it is gone.
- **Sharding** (``shard=(i, n)``, 1-based): a series belongs to shard
  ``sha1(series UID or file path) mod n == i - 1``, stable across runs and machines, so n runs
  started with ``1/n … n/n`` cover every series exactly once; each writes its own manifest
  (``segment.shard-i-of-n.json``). ``jobs=n`` starts those n runs as processes and merges
  their manifests into ``segment.json``.

Layout of OUTDIR (segmentation; image tasks write ``image.nii.gz`` and ``dicom/``)::

    segment.json / segment.csv        manifest: every series, done / skipped / failed + reason
    <series_stem>/labels.nii.gz       label map on the series' original grid
    <series_stem>/seg.dcm             DICOM SEG referencing the source series (DICOM input)
    <series_stem>/rtstruct.dcm        DICOM RTSTRUCT (DICOM input, with ``rtstruct``)
    <series_stem>/volumes.csv         per label: voxels, mL, mean/std intensity (+ uncertainty)
    <series_stem>/qa.png              3 axial + 1 coronal slice with the labels overlaid
    <series_stem>/probabilities.nii.gz / uncertainty.nii.gz   optional, float32
    <series_stem>/done.json           completion marker (written last)
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing
import os
import re
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from medseg.errors import InputError, MedsegError
from medseg.inference.discovery import SeriesRecord, discover_series, parse_shard, select_series, shard_of
from medseg.inference.manifest import (agree_with_markers, manifest_files, manifest_name, read_manifest_rows, resume_from_markers,
                                      write_manifest)
from medseg.io.atomic import remove_partial_files
from medseg.inference.model import LoadedModel, load_models
from medseg.inference.options import BatchOptions
from medseg.inference.processes import default_workers, die_with_parent, is_worker_death, stage_executor, unguarded_main_script
from medseg.inference.series import DONE_MARKER, apply_record_fields, now_utc, prepare_series_dir, write_done_marker
from medseg.inference.stages import ShippedVolume, export_stage, read_stage
from medseg.progress import ProgressBars

__all__ = ["DONE_MARKER", "BatchOptions", "BatchResult", "SeriesRecord", "discover_series", "parse_shard",
           "segment_batch", "shard_of"]

log = logging.getLogger(__name__)

_STAGE_NAMES = {"preprocess": "preprocessing", "infer": "network", "resample": "original grid", "postprocess": "post-processing"}


@dataclass
class BatchResult:
    """Outcome of `segment_batch`."""

    out_dir: Path
    manifest_path: Path
    records: list[SeriesRecord]
    unreadable_files: list[dict[str, str]] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.records)

    @property
    def n_done(self) -> int:
        return self.count("done")

    @property
    def n_failed(self) -> int:
        return self.count("failed")

    @property
    def n_skipped(self) -> int:
        return self.count("skipped")

    @property
    def ok(self) -> bool:
        """True when no series failed (skipped series are not failures)."""
        return self.n_failed == 0


def failure_reason(exc: BaseException) -> str:
    """The manifest's one-line reason for a failed series."""
    if isinstance(exc, MedsegError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory; use a coarser --spacing, no --probabilities, or fewer models"
    if is_worker_death(exc):
        return "a background process died (killed, or out of memory?); re-run to retry this series"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    log.debug("%s", "".join(traceback.format_exception(exc)))
    return f"{type(exc).__name__}: {first}"[:500]


def segment_batch(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_paths: list[str | os.PathLike[str]] | None = None,
    options: BatchOptions | None = None,
    models: list[LoadedModel] | None = None,
) -> BatchResult:
    """Apply checkpoint(s) to every series under `input_path`, into `out_dir` (module docstring).

    Segmentation checkpoints write label outputs; image-to-image ones (denoising, GAN) write
    images (`medseg.inference.writers`).

    Args:
        input_path: a DICOM folder tree, a NIfTI/NRRD/MHA file, or a folder of such files
            (both kinds may be mixed in one tree).
        out_dir: output folder (created); one sub-folder per series + the manifest.
        model_paths: checkpoint(s); several segmentation checkpoints are ensembled (same labels).
        options: filters, outputs, resume/shard behaviour, processes and `InferenceOptions`.
        models: already loaded models (instead of `model_paths`, e.g. from the napari plugin).

    Returns:
        A `BatchResult`; ``result.ok`` is False when any series failed.

    Raises:
        CheckpointError: unusable checkpoints (labels disagree, mixed tasks...).
        InputError: missing input, nothing to process, bad filter or option; background or
            job processes asked for from a script without an ``if __name__ == "__main__":``
            guard (by default such a script runs in one process).
    """
    options = options or BatchOptions()
    out_dir = Path(out_dir)
    _check_options(options)
    script = unguarded_main_script()  # a script that spawned processes would run again
    if (options.jobs > 1 or options.workers) and script is not None:
        raise InputError(
            f"{script} calls medseg without an `if __name__ == \"__main__\":` guard; background processes "
            "would run the script again. Put the call under that guard, or use workers=0 and jobs=1."
        )
    import torch

    if options.threads:
        torch.set_num_threads(int(options.threads))  # once, before any work
    # on CPU the thread count is part of the arithmetic (oneDNN/MKL split sums by it): recorded
    # in the manifest and each done marker, and job processes get this same count
    threads = torch.get_num_threads()
    if models is None:
        models = load_models(list(model_paths or []), options.inference.device)
    model_mod = models[0].modality
    if options.modalities and model_mod and model_mod not in {m.upper() for m in options.modalities}:
        raise InputError(
            f"--modality {','.join(options.modalities)} asked for, but {models[0].path.name} was trained on "
            f"{model_mod} images; use a model trained on that modality"
        )

    records, unreadable = discover_series(input_path, progress=options.progress)
    records = select_series(records, options, models)
    out_dir.mkdir(parents=True, exist_ok=True)
    # stale temporary files of this run's own manifest only: shards may share OUTDIR, and a
    # shard starting up must not delete the file another shard is about to rename into place
    remove_partial_files(out_dir, targets=manifest_files(options.shard))
    header = {
        "input": str(Path(input_path).resolve()),
        "out_dir": str(out_dir.resolve()),
        "started": now_utc(),
        "task": models[0].task,
        "shard": list(options.shard) if options.shard else None,
        "models": [{"path": str(m.path), "fingerprint": m.fingerprint, "modality": m.modality} for m in models],
        "labels": {str(k): v for k, v in models[0].labels.items()},
        "options": _options_dict(options),
        "torch_threads": threads,
    }
    todo = resume_from_markers(records, out_dir, models, options.overwrite, threads)
    if len(todo) < sum(r.status != "skipped" for r in records):
        log.info("%d series already done (previous run); %d to process", sum(r.previous_run for r in records), len(todo))
    manifest = write_manifest(out_dir, records, header, unreadable, options.shard)

    n_jobs = max(1, min(options.jobs, len(todo)))
    n_workers = options.workers if options.workers is not None else default_workers(models[0].device)
    n_workers = max(0, min(int(n_workers), len(todo) - 1))
    if (n_jobs > 1 or n_workers) and script is not None:  # defaults only (asked for: the error above)
        log.info("%s has no `if __name__ == \"__main__\":` guard: processing in this process only", script)
        n_jobs, n_workers = 1, 0
    try:
        with ProgressBars(options.progress, len(todo)) as bars:
            if n_jobs > 1:
                try:
                    _run_jobs(input_path, out_dir, models, options, n_jobs, todo, bars)
                finally:  # interrupted too: what the jobs finished is done
                    rows: dict[str, dict[str, Any]] = {}
                    for i in range(1, n_jobs + 1):
                        rows |= read_manifest_rows(out_dir / manifest_name((i, n_jobs)))
                    _merge_job_rows(todo, rows)
            else:
                def finished(rec: SeriesRecord) -> None:
                    write_manifest(out_dir, records, header, unreadable, options.shard)
                    bars.item_finished()

                run_pipeline(todo, models, options, out_dir, n_workers, finished, bars)
    finally:  # interrupted too: the manifest says what the markers say
        agree_with_markers(todo, out_dir, models)
        header["finished"] = now_utc()
        write_manifest(out_dir, records, header, unreadable, options.shard)
    return BatchResult(out_dir=out_dir, manifest_path=manifest, records=records, unreadable_files=unreadable)


def _check_options(options: BatchOptions) -> None:
    if options.series_regex:
        try:
            re.compile(options.series_regex)
        except re.error as exc:
            raise InputError(f"--series-regex {options.series_regex!r} is not a valid regular expression ({exc})") from exc
    if options.seg_type not in ("binary", "labelmap"):
        raise InputError(f"--seg-type {options.seg_type!r}: expected binary or labelmap")
    if options.jobs < 1:
        raise InputError(f"--jobs {options.jobs}: expected 1 or more")
    if options.jobs > 1 and options.shard is not None:
        raise InputError("--jobs N runs shards 1/N … N/N itself; use either --jobs or --shard, not both")


def run_pipeline(
    todo: list[SeriesRecord],
    models: list[LoadedModel],
    options: BatchOptions,
    out_dir: Path,
    workers: int,
    finished: Any,
    bars: ProgressBars,
) -> None:
    """Read → network → export for every series of `todo`, in order (see the module docstring).

    `finished(record)` is called, in order, after each series is done or failed (its marker
    written); an interruption (Ctrl-C) leaves the series in flight pending.
    """
    import torch

    light = [m.without_network() for m in models]  # what the background stages need
    task = models[0].task
    threads = torch.get_num_threads()  # the network's, set once by segment_batch
    ahead = workers  # series read ahead of the network (0: read when its turn comes)
    with stage_executor(workers) as readers, stage_executor(workers) as exporters:
        reads: dict[int, cf.Future] = {}
        exports: deque[tuple[SeriesRecord, cf.Future, float]] = deque()

        def read(i: int) -> cf.Future:
            if i not in reads:
                reads[i] = readers.submit(read_stage, todo[i], light, options)
            return reads[i]

        def collect(max_waiting: int) -> None:
            # in order; wait while more than `max_waiting` are being written (bounds memory)
            while exports and (exports[0][1].done() or len(exports) > max_waiting):
                rec, fut, t0 = exports.popleft()
                try:
                    result = fut.result()
                    rec.uncertainty = result.get("uncertainty")
                    rec.label_uncertainty = dict(result.get("label_uncertainty") or {})
                    rec.status, rec.reason, rec.outputs = "done", "", dict(result["outputs"])
                    rec.seconds = round(time.perf_counter() - t0, 3)
                    write_done_marker(out_dir / rec.stem, rec, models, result, threads)
                except Exception as exc:  # noqa: BLE001 - one bad series must not stop the batch
                    _fail(rec, exc, t0)
                finished(rec)

        for i, rec in enumerate(todo):
            bars.start_item(rec.stem)
            t0 = time.perf_counter()
            fut = read(i)
            for j in range(i + 1, min(i + 1 + ahead, len(todo))):
                read(j)
            try:
                got = fut.result()
                del reads[i]
                apply_record_fields(rec, got["fields"])
                series_dir = out_dir / rec.stem
                prepare_series_dir(series_dir)
                network_output = _run_network(task, got, models, options, bars)
                got["prepared"] = None
                bars.step("writing", 0, 1)
                sent = replace(rec, series=None)  # the export needs the row, not the scan's headers
                exports.append((rec, exporters.submit(export_stage, sent, got["volume"], network_output, light, options,
                                                      series_dir), t0))
                del got, network_output
            except Exception as exc:  # noqa: BLE001 - one bad series must not stop the batch
                reads.pop(i, None)
                _fail(rec, exc, t0)
                finished(rec)
            collect(max_waiting=max(1, workers))
        collect(max_waiting=0)


def _run_network(task: str, got: dict[str, Any], models: list[LoadedModel], options: BatchOptions, bars: ProgressBars) -> Any:
    def progress(stage: str, done: int, total: int) -> None:
        bars.step(_STAGE_NAMES.get(stage, stage), done, total)

    if task == "segmentation":
        from medseg.inference.predict import run_models

        return run_models(got["prepared"], models, options.inference, progress)
    from medseg.inference.image import predict_image

    return ShippedVolume(predict_image(got["volume"].unpack(), models[0], progress=progress, tta=options.inference.tta))


def _fail(rec: SeriesRecord, exc: BaseException, t0: float) -> None:
    rec.status, rec.reason = "failed", failure_reason(exc)
    rec.seconds = round(time.perf_counter() - t0, 3)
    log.warning("%s failed: %s", rec.stem, rec.reason)


# --------------------------------------------------------------------------------------------
# --jobs N: N independent shard processes


def _run_jobs(input_path: Any, out_dir: Path, models: list[LoadedModel], options: BatchOptions, n_jobs: int,
              todo: list[SeriesRecord], bars: ProgressBars) -> None:
    """Run shards 1/N … N/N of the batch as N processes; wait for them (Ctrl-C stops them)."""
    import torch

    ctx = multiprocessing.get_context("spawn")
    job_options = replace(options, jobs=1, progress=False, threads=options.threads or torch.get_num_threads())
    paths = [str(m.path) for m in models]
    procs = [ctx.Process(target=_job_main, name=f"medseg-job-{i}", daemon=False,
                         args=(os.getpid(), str(input_path), str(out_dir), paths, replace(job_options, shard=(i, n_jobs)),
                               logging.getLogger().getEffectiveLevel()))
             for i in range(1, n_jobs + 1)]
    log.info("%d jobs, each a shard of the batch in its own process", n_jobs)
    try:
        for p in procs:
            p.start()
        seen: set[str] = set()
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=0.25)
            now = {r.stem for r in todo if (out_dir / r.stem / DONE_MARKER).exists()} - seen
            if now:
                seen |= now
                bars.item_finished(len(now))
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()


def _job_main(parent_pid: int, input_path: str, out_dir: str, model_paths: list[str], options: BatchOptions,
              log_level: int) -> None:
    """A job process: one shard of the batch, from reading to writing (dies with its parent)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the jobs itself
    die_with_parent(parent_pid)
    logging.basicConfig(level=log_level, format="%(levelname)s %(message)s")
    from medseg.runtime import keep_freed_memory

    keep_freed_memory()
    segment_batch(input_path, out_dir, model_paths, options)


def _merge_job_rows(todo: list[SeriesRecord], rows: dict[str, dict[str, Any]]) -> None:
    """Copy the jobs' outcome of each series into this batch's records (the markers then decide
    "done": `agree_with_markers`)."""
    for rec in todo:
        row = rows.get(rec.key)
        if row is None:
            continue
        for name in ("status", "reason", "seconds", "n_slices", "modality", "warnings", "uncertainty", "label_uncertainty", "outputs"):
            if name in row:
                setattr(rec, name, row[name])


def _options_dict(options: BatchOptions) -> dict[str, Any]:
    d = asdict(options)
    return json.loads(json.dumps(d, default=str))

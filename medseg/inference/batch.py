"""Batch segmentation of a DICOM folder tree, an image file, or a folder of image files.

What `segment_batch` guarantees:

- **The model is loaded once** and shared by every series.
- **Pipelined** (``workers > 0``; automatic on machines with 4+ CPUs): worker processes read
  and preprocess the next series and resample, post-process and write the previous one
  (NIfTI, DICOM SEG, CSV, PNG) while this process runs the network on the current one; see
  `medseg.inference.workers` (processes, not threads: the GIL would stall the forward).
  On 2-3 CPU cores, where that cannot pay, ``jobs=2`` (automatic for 6+ series) segments two
  series at once instead, each whole in its own process with one core.
- **One failed series never stops the batch**: its error goes into the manifest and the loop
  goes on. The result (and `medseg segment`'s exit code 1) says that something failed.
- **Resumable**: every output is written atomically (temp file + rename) and a series is
  *done* only when its completion marker ``<series>/done.json`` is written, last, after all its
  outputs. A re-run skips series whose marker exists, whose outputs are all present and that
  were made by the same checkpoints; ``overwrite=True`` redoes them. Temp files left by a
  killed run are removed.
- **Sharding** (``shard=(i, n)``, 1-based): a series belongs to shard
  ``sha1(series UID or file path) mod n == i - 1``, stable across runs and machines, so n jobs
  started with ``1/n … n/n`` on the same input cover every series exactly once. Each shard
  writes its own manifest (``segment.shard-i-of-n.json``) so shards can share one OUTDIR.

Layout of OUTDIR::

    segment.json / segment.csv        manifest: every series, done / skipped / failed + reason
    <series_stem>/labels.nii.gz       label map on the series' original grid
    <series_stem>/seg.dcm             DICOM SEG referencing the source series (DICOM input)
    <series_stem>/volumes.csv         per label: voxels, mL, mean/std intensity
    <series_stem>/qa.png              3 axial + 1 coronal slice with the labels overlaid
    <series_stem>/probabilities.nii.gz  optional, float32 (X, Y, Z, C)
    <series_stem>/done.json           completion marker (written last)
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import time
import traceback
from collections.abc import Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medseg.errors import InputError, MedsegError
from medseg.inference.model import LoadedModel, load_models
from medseg.inference.predict import InferenceOptions
from medseg.inference.workers import default_jobs, default_workers, is_worker_death, unguarded_main_script
from medseg.io.atomic import write_json_atomic, write_text_atomic
from medseg.io.volume import Volume

log = logging.getLogger(__name__)

DONE_MARKER = "done.json"
MANIFEST_FIELDS = [
    "status", "stem", "kind", "modality", "series_description", "series_number", "n_slices",
    "seconds", "previous_run", "reason", "key", "source",
]


@dataclass(frozen=True)
class BatchOptions:
    """What to segment and which outputs to write (inference settings are in `inference`).

    Attributes:
        inference: how each series is segmented (`InferenceOptions`).
        modalities: keep only DICOM series of these modalities (e.g. ``("CT",)``); default: those
            the model was trained on (a CT model skips MR series, with the reason).
        series_regex: keep only series whose SeriesDescription matches (``re.search``, case-insensitive).
        min_slices: skip series with fewer slices (scouts, single key images).
        dicom_seg: write a DICOM SEG for DICOM input.
        qa_png: write the QA picture.
        overwrite: redo series that a previous run finished.
        shard: ``(i, n)``, 1 ≤ i ≤ n: process only this shard of the series.
        workers: worker processes that read/preprocess and post-process/write series while
            this process runs the network (0: everything here, one series after the other;
            None: `medseg.inference.workers.default_workers`, 0 below 4 CPUs). On a CPU device,
            torch here lends a thread to each worker while it works.
        jobs: series segmented at once on a CPU device, each from reading to writing in its
            own process with ``cores // jobs`` torch threads (the weights shared). More
            throughput than one series at a time where a worker cannot pay (2-3 cores);
            replaces `workers`. Ignored on a GPU. None: `medseg.inference.workers.default_jobs`
            (2 on 2-3 cores for 6+ series, unless `workers` is given; else 1).
        progress: show rich progress bars on stderr.
    """

    inference: InferenceOptions = field(default_factory=InferenceOptions)
    modalities: tuple[str, ...] | None = None
    series_regex: str | None = None
    min_slices: int = 1
    dicom_seg: bool = True
    qa_png: bool = True
    overwrite: bool = False
    shard: tuple[int, int] | None = None
    workers: int | None = None
    jobs: int | None = None
    progress: bool = True


@dataclass
class SeriesRecord:
    """One series of the batch and what happened to it (one manifest row)."""

    key: str
    stem: str
    kind: str  # "dicom" | "file"
    source: str
    modality: str = ""
    series_description: str = ""
    series_number: int | None = None
    n_slices: int | None = None
    status: str = "pending"  # "done" | "skipped" | "failed" | "pending"
    reason: str = ""
    previous_run: bool = False
    seconds: float | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    series: Any = field(default=None, repr=False, compare=False)  # DicomSeries, not serialised

    def to_dict(self) -> dict[str, Any]:
        # not dataclasses.asdict: it deep-copies `series` (every file's header) before it could
        # be dropped, 0.1 s per record of a 300-slice series, for each manifest update
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "series"}
        d["outputs"] = dict(self.outputs)
        return d


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


# --------------------------------------------------------------------------------------------
# discovery


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` → ``(2, 4)``; 1 ≤ i ≤ n.

    Raises:
        InputError: malformed text or i outside 1..n.
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise InputError(f"--shard {text!r}: expected i/N, e.g. 1/4 (shards are numbered 1..N)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise InputError(f"--shard {text!r}: i must be between 1 and N (got i={i}, N={n})")
    return i, n


def shard_of(key: str, n: int) -> int:
    """1-based shard of a series key (UID or path) among `n`: stable across runs and machines."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % n + 1


def _unique_stem(stem: str, used: set[str], key: str) -> str:
    if stem not in used:
        return stem
    from medseg.io.naming import short_uid_hash

    return f"{stem}_{short_uid_hash(key)}"


def discover_series(
    input_path: str | os.PathLike[str], progress: bool = False
) -> tuple[list[SeriesRecord], list[dict[str, str]]]:
    """Every series (DICOM) and image file under `input_path`, unfiltered.

    Returns:
        ``(records, unreadable_files)``: one pending record per series/file, and the files the
        DICOM scan could not use (``{"path", "reason"}``), image files excluded.

    Raises:
        InputError: the input does not exist, or holds neither DICOM nor image files.
    """
    from medseg.io.naming import sanitize_filename, series_stem
    from medseg.io.nifti import case_name, volume_suffix

    root = Path(input_path)
    if not root.exists():
        raise InputError(f"{root}: input not found (expected a DICOM folder, an image file or a folder of them)")
    records: list[SeriesRecord] = []
    used: set[str] = set()
    unreadable: list[dict[str, str]] = []

    def add_file(p: Path, key: str) -> None:
        stem = _unique_stem(sanitize_filename(case_name(p), fallback="image"), used, key)
        used.add(stem)
        records.append(SeriesRecord(key=key, stem=stem, kind="file", source=str(p)))

    if root.is_file() and volume_suffix(root):
        add_file(root, root.name)
        return records, unreadable

    scan_root = root if root.is_dir() else root.parent
    if root.is_dir():
        for p in sorted(q for q in root.rglob("*") if q.is_file() and volume_suffix(q)):
            add_file(p, p.relative_to(root).as_posix())

    from medseg.io.dicom import scan_dicom_folder

    scan = scan_dicom_folder(scan_root, progress=progress)
    series_list = list(scan.series)
    if root.is_file():  # one DICOM file: the series it belongs to
        series_list = [s for s in series_list if any(Path(f).resolve() == root.resolve() for f in s.files)]
    for s in series_list:
        stem = _unique_stem(series_stem(s.series_number, s.series_description, s.series_instance_uid), used, s.series_instance_uid)
        used.add(stem)
        shape = getattr(s, "shape", None)
        n_slices = shape[2] if shape else (len(s.files) if s.files else None)
        records.append(
            SeriesRecord(
                key=s.series_instance_uid,
                stem=stem,
                kind="dicom",
                source=str(Path(s.files[0]).parent) if s.files else str(scan_root),
                modality=str(s.modality or ""),
                series_description=str(s.series_description or ""),
                series_number=s.series_number,
                n_slices=int(n_slices) if n_slices is not None else None,
                series=s,
            )
        )
    for sk in scan.skipped:
        if volume_suffix(sk.path) is None:
            unreadable.append({"path": str(sk.path), "reason": str(sk.reason)})
    if not records:
        raise InputError(
            f"{root}: no DICOM image series and no NIfTI/NRRD/MHA files found"
            + (f" ({len(unreadable)} unreadable files, e.g. {unreadable[0]['path']}: {unreadable[0]['reason']})" if unreadable else "")
        )
    return records, unreadable


def select_series(records: list[SeriesRecord], options: BatchOptions, models: list[LoadedModel]) -> list[SeriesRecord]:
    """Apply shard, image/modality/description/slice filters; filtered series become "skipped".

    Returns the records of this shard (others are dropped; they belong to another job).
    """
    if options.shard is not None:
        i, n = options.shard
        records = [r for r in records if shard_of(r.key, n) == i]
    model_mod = models[0].modality if models else None
    wanted = tuple(m.upper() for m in options.modalities) if options.modalities else ((model_mod,) if model_mod else None)
    pattern = re.compile(options.series_regex, re.IGNORECASE) if options.series_regex else None
    for r in records:
        if r.kind != "dicom":
            continue
        s = r.series
        if s is not None and not getattr(s, "is_image", True):
            r.status, r.reason = "skipped", f"not an image series (modality {r.modality or '?'})"
        elif wanted and r.modality.upper() not in wanted:
            why = "the model segments" if not options.modalities else "--modality asks for"
            r.status, r.reason = "skipped", f"modality {r.modality or '?'}; {why} {'/'.join(wanted)}"
        elif pattern and not pattern.search(r.series_description):
            r.status, r.reason = "skipped", f"series description {r.series_description!r} does not match {options.series_regex!r}"
        elif r.n_slices is not None and r.n_slices < options.min_slices:
            r.status, r.reason = "skipped", f"{r.n_slices} slices < --min-slices {options.min_slices}"
    return records


# --------------------------------------------------------------------------------------------
# per-series work


def _load(record: SeriesRecord) -> Volume:
    if record.kind == "dicom":
        from medseg.io.dicom import read_dicom_series

        return read_dicom_series(record.series)
    from medseg.io.nifti import read_volume

    return read_volume(record.source)


def _clean_partial(series_dir: Path) -> None:
    """Remove temp files a killed run left behind (atomic writes never leave a half target)."""
    if series_dir.is_dir():
        for p in series_dir.glob(".*.part*"):
            with contextlib.suppress(OSError):
                p.unlink()


def is_done(series_dir: Path, models: list[LoadedModel]) -> dict[str, Any] | None:
    """The completion marker of a finished series made by the same checkpoints, else None."""
    marker = series_dir / DONE_MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    fps = sorted(m.fingerprint for m in models)
    if sorted(info.get("model_fingerprints", [])) != fps:
        log.info("%s: finished by other checkpoints; segmenting again", series_dir.name)
        return None
    if not all((series_dir / name).is_file() for name in info.get("outputs", {}).values()):
        return None
    return info


def prepare_series_dir(series_dir: Path) -> None:
    """Un-finish a series before (re)computing it: marker first, then stale temp files."""
    marker = series_dir / DONE_MARKER
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()  # from here on the series is not done until everything is rewritten
    series_dir.mkdir(parents=True, exist_ok=True)
    _clean_partial(series_dir)


def _core_to_spare() -> bool:
    """Whether this process may use more than one core now (torch's thread count follows the
    cores `segment_batch` gives it: 1 in each job of `--jobs 2` on 2 cores)."""
    import torch

    return torch.get_num_threads() > 1


def write_series_outputs(
    volume: Volume,
    seg: Volume,
    record: SeriesRecord,
    models: list[LoadedModel],
    series_dir: Path,
    options: BatchOptions,
    timings: dict[str, float] | None = None,
) -> dict[str, str]:
    """Write one segmented series' outputs (each atomically), then its completion marker.

    Returns:
        output kind → file name inside `series_dir`.
    """
    from medseg.inference.outputs import label_statistics, write_qa_png, write_volumes_csv
    from medseg.io.nifti import write_nifti

    timings = dict(timings or {})
    names = seg.meta["label_names"]
    outputs: dict[str, str] = {}
    t1 = time.perf_counter()
    stats: list[dict] = []

    def nifti() -> None:
        write_nifti(Volume(seg.array, seg.affine), series_dir / "labels.nii.gz")
        outputs["labels"] = "labels.nii.gz"

    def dicom_seg() -> None:
        from medseg import __version__
        from medseg.io.seg import write_dicom_seg

        write_dicom_seg(seg.array, volume, names, series_dir / "seg.dcm", algorithm_name="medseg", algorithm_version=__version__,
                        values=sorted(names))  # the model's output holds its (named) label values only: no count
        outputs["dicom_seg"] = "seg.dcm"

    def volumes() -> None:
        stats.extend(label_statistics(volume, seg.array, names))
        write_volumes_csv(stats, series_dir / "volumes.csv")
        outputs["volumes"] = "volumes.csv"

    def qa() -> None:
        title = f"{record.stem} — {', '.join(m.path.name for m in models)}"
        write_qa_png(volume, seg.array, names, series_dir / "qa.png", title=title)  # counts the values present (legend)
        outputs["qa"] = "qa.png"

    def probabilities() -> None:
        write_nifti(Volume(seg.meta["probabilities"], seg.affine), series_dir / "probabilities.nii.gz")
        outputs["probabilities"] = "probabilities.nii.gz"

    tasks = {"labels": nifti}  # output kind → its writer, in the order of `outputs`
    if options.dicom_seg and record.kind == "dicom":
        tasks["dicom_seg"] = dicom_seg
    tasks["volumes"] = volumes
    if options.qa_png:
        tasks["qa"] = qa
    if "probabilities" in seg.meta:
        tasks["probabilities"] = probabilities
    order = list(tasks)
    if len(tasks) > 1 and _core_to_spare():
        # the DICOM SEG here, the rest meanwhile in a thread: the SEG is pure-Python work
        # (highdicom/pydicom) that holds the GIL, while gzip (NIfTI), numpy (volumes) and
        # Pillow's PNG encoder mostly release it. 1.10 → 0.89 s for the writes of the
        # benchmark's 512×512×300 series (median of 16 paired runs, network stubbed out,
        # docs/benchmarks.md); off when the process has one core (a job of `--jobs 2`).
        import concurrent.futures as cf

        first = tasks.pop("dicom_seg", None) or tasks.pop(next(iter(tasks)))
        # leaving the pool waits for the thread: on an error here (or Ctrl-C) the other writes
        # end, each atomically, before the error goes on
        with cf.ThreadPoolExecutor(1, thread_name_prefix="medseg-write") as pool:
            rest = pool.submit(lambda: [task() for task in tasks.values()])
            first()
            rest.result()
    else:
        for task in tasks.values():
            task()
    outputs = {k: outputs[k] for k in order}  # the same order whichever thread finished first
    timings["write_s"] = round(time.perf_counter() - t1, 3)

    write_json_atomic(
        series_dir / DONE_MARKER,
        {
            "series": record.to_dict() | {"status": "done", "outputs": outputs},
            "outputs": outputs,
            "model_fingerprints": [m.fingerprint for m in models],
            "models": [str(m.path) for m in models],
            "labels": {str(k): v for k, v in names.items()},
            "volumes": stats,
            "timings": timings,
            "finished": _now(),
        },
    )
    return outputs


def segment_series(
    volume: Volume,
    record: SeriesRecord,
    models: list[LoadedModel],
    series_dir: Path,
    options: BatchOptions,
    progress: Any = None,
    before_window: Any = None,
) -> dict[str, str]:
    """Segment one loaded series and write its outputs, completion marker last, in this process.

    `before_window` is called before every forward pass (see `run_models`).

    Returns:
        output kind → file name inside `series_dir`.
    """
    from medseg.inference.predict import finish_segmentation, prepare_input, run_models

    prepare_series_dir(series_dir)
    _fill_record(record, volume)
    t0 = time.perf_counter()
    probs, affine = run_models(prepare_input(volume, models, options.inference, progress), models, options.inference,
                               progress, before_window)
    timings = {"segment_s": round(time.perf_counter() - t0, 3)}
    seg = finish_segmentation(volume, probs, affine, models, options.inference, progress)
    del probs
    return write_series_outputs(volume, seg, record, models, series_dir, options, timings)


def _fill_record(record: SeriesRecord, volume: Volume) -> None:
    if record.n_slices is None:
        record.n_slices = int(volume.shape[2])
    if not record.modality and volume.meta.get("modality"):
        record.modality = str(volume.meta["modality"])


# --------------------------------------------------------------------------------------------
# manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def manifest_name(shard: tuple[int, int] | None) -> str:
    """``segment.json``, or ``segment.shard-i-of-n.json`` for a shard (shards may share OUTDIR)."""
    return "segment.json" if shard is None else f"segment.shard-{shard[0]}-of-{shard[1]}.json"


def write_manifest(
    out_dir: Path,
    records: list[SeriesRecord],
    header: dict[str, Any],
    unreadable: list[dict[str, str]],
    shard: tuple[int, int] | None,
) -> Path:
    """Write the JSON manifest and its CSV twin atomically; returns the JSON path."""
    counts = {s: sum(r.status == s for r in records) for s in ("done", "skipped", "failed", "pending")}
    path = out_dir / manifest_name(shard)
    write_json_atomic(
        path,
        {**header, "updated": _now(), "counts": counts, "series": [r.to_dict() for r in records],
         "unreadable_files": unreadable},
    )
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in records:
        w.writerow(r.to_dict())
    write_text_atomic(path.with_suffix(".csv"), buf.getvalue())
    return path


# --------------------------------------------------------------------------------------------
# progress


class _Progress:
    """Two rich bars (series; steps within the current series) or nothing."""

    STAGES = {"preprocess": "preprocessing", "infer": "sliding window", "resample": "original grid", "postprocess": "post-processing"}

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled and total > 0
        self._p = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._p = Progress(
                TextColumn("{task.description}", justify="left"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._series = self._p.add_task("series", total=total)
            self._step = self._p.add_task("", total=1, visible=False)

    def __enter__(self) -> _Progress:
        if self._p:
            self._p.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._p:
            self._p.update(self._step, visible=False)
            self._p.stop()

    def start_series(self, name: str) -> None:
        if self._p:
            from medseg.terminal import literal

            self._name = literal(name)  # rich reads descriptions as markup
            self._p.update(self._step, description=f"  {self._name}: reading", completed=0, total=1, visible=True)

    def step(self, stage: str, done: int, total: int) -> None:
        if self._p:
            self._p.update(
                self._step, description=f"  {self._name}: {self.STAGES.get(stage, stage)}", completed=done, total=max(total, 1)
            )

    def series_finished(self) -> None:
        if self._p:
            self._p.advance(self._series)


# --------------------------------------------------------------------------------------------
# the batch


def segment_batch(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_paths: list[str | os.PathLike[str]] | None = None,
    options: BatchOptions | None = None,
    models: list[LoadedModel] | None = None,
) -> BatchResult:
    """Segment every series under `input_path` into `out_dir` (see the module docstring).

    Args:
        input_path: a DICOM folder tree, a NIfTI/NRRD/MHA file, or a folder of such files
            (both kinds may be mixed in one tree).
        out_dir: output folder (created); one sub-folder per series + the manifest.
        model_paths: checkpoint(s); several are ensembled (same labels required).
        options: filters, outputs, resume/shard behaviour and `InferenceOptions`.
        models: already loaded models (instead of `model_paths`, e.g. from the napari plugin).

    Returns:
        A `BatchResult`; ``result.ok`` is False when any series failed.

    Raises:
        CheckpointError: unusable checkpoints (wrong task, labels disagree...).
        InputError: missing input, nothing to segment, bad filter; worker or job processes
            asked for from a script without an ``if __name__ == "__main__":`` guard (by
            default such a script is segmented in one process).
    """
    options = options or BatchOptions()
    out_dir = Path(out_dir)
    script = unguarded_main_script()  # a script that spawned worker/job processes would run again
    if ((options.jobs or 1) > 1 or options.workers) and script is not None:
        raise InputError(
            f"{script} calls medseg without an `if __name__ == \"__main__\":` guard; worker and job processes "
            "would run the script again. Put the call under that guard, or use workers=0 and jobs=1."
        )
    if models is None:
        models = load_models(list(model_paths or []), options.inference.device)
    if options.series_regex:
        try:
            re.compile(options.series_regex)
        except re.error as exc:
            raise InputError(f"--series-regex {options.series_regex!r} is not a valid regular expression ({exc})") from exc
    model_mod = models[0].modality
    if options.modalities and model_mod and model_mod not in {m.upper() for m in options.modalities}:
        raise InputError(
            f"--modality {','.join(options.modalities)} asked for, but {models[0].path.name} was trained on "
            f"{model_mod} images; use a model trained on that modality"
        )

    records, unreadable = discover_series(input_path, progress=options.progress)
    records = select_series(records, options, models)
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in out_dir.glob(".segment*.part*"):
        with contextlib.suppress(OSError):
            p.unlink()
    header = {
        "input": str(Path(input_path).resolve()),
        "out_dir": str(out_dir.resolve()),
        "started": _now(),
        "shard": list(options.shard) if options.shard else None,
        "models": [{"path": str(m.path), "fingerprint": m.fingerprint, "modality": m.modality} for m in models],
        "labels": {str(k): v for k, v in models[0].labels.items()},
        "options": _options_dict(options),
    }

    # resume: series finished by a previous run with the same checkpoints
    todo: list[SeriesRecord] = []
    for r in records:
        if r.status != "pending":
            continue
        info = None if options.overwrite else is_done(out_dir / r.stem, models)
        if info is not None:
            r.status, r.previous_run = "done", True
            r.outputs = dict(info.get("outputs", {}))
            r.seconds = info.get("series", {}).get("seconds")
            r.n_slices = r.n_slices or info.get("series", {}).get("n_slices")
        else:
            todo.append(r)
    if len(todo) < sum(r.status != "skipped" for r in records):
        log.info("%d series already done (previous run); %d to segment", len(records) - len(todo), len(todo))
    manifest = write_manifest(out_dir, records, header, unreadable, options.shard)

    device = getattr(models[0], "device", None)
    on_cpu = all(getattr(m.device, "type", "cpu") == "cpu" for m in models)
    if options.jobs is not None:
        n_jobs = options.jobs
    else:  # asking for workers means one network process
        n_jobs = 1 if options.workers is not None else default_jobs(device, len(todo))
    if n_jobs > 1 and not on_cpu:
        log.warning("--jobs %d ignored: jobs share CPU cores; on a GPU, worker processes (--workers) do the CPU work", n_jobs)
    n_jobs = max(1, min(int(n_jobs), len(todo))) if on_cpu else 1
    n_workers = options.workers if options.workers is not None else default_workers(device)
    n_workers = max(0, min(int(n_workers), len(todo) - 1 if len(todo) > 1 else 0))
    if (n_jobs > 1 or n_workers) and script is not None:  # defaults only (asked for: the error above)
        log.info("%s has no `if __name__ == \"__main__\":` guard: segmenting in this process only "
                 "(worker processes would run the script again)", script)
        n_jobs, n_workers = 1, 0
    if n_jobs > 1:
        if options.workers:
            log.info("--jobs %d: each job reads and writes its own series; --workers %d not used", n_jobs, options.workers)
        n_workers = 0
        log.info("%d series at a time, each in its own process", n_jobs)
    elif n_workers:
        log.info("%d worker process(es) read, post-process and write series beside the network", n_workers)

    def fail(rec: SeriesRecord, exc: BaseException) -> None:
        rec.status = "failed"
        if isinstance(exc, MedsegError):
            rec.reason = str(exc)
        elif isinstance(exc, MemoryError):
            rec.reason = "out of memory; use a coarser --spacing, no --probabilities, or fewer models"
        elif is_worker_death(exc):
            rec.reason = "the worker process died (killed, or out of memory?); re-run to retry this series"
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            rec.reason = f"{type(exc).__name__}: {first}"[:500]
            log.debug("%s", "".join(traceback.format_exception(exc)))
        log.warning("%s failed: %s", rec.stem, rec.reason)

    def finished(rec: SeriesRecord, t0: float, bars: _Progress, outputs: dict[str, str] | None = None,
                 exc: BaseException | None = None) -> None:
        if exc is None:
            rec.outputs, rec.status, rec.reason = dict(outputs or {}), "done", ""
        else:
            fail(rec, exc)
        rec.seconds = round(time.perf_counter() - t0, 3)
        write_manifest(out_dir, records, header, unreadable, options.shard)
        bars.series_finished()

    in_flight: list[tuple[SeriesRecord, cf.Future, float]] = []  # outputs being written by workers
    try:
        with _Progress(options.progress, len(todo)) as bars:
            if n_jobs > 1:
                _run_jobs(todo, models, options, out_dir, bars, finished, n_jobs, in_flight)
            elif n_workers == 0:
                _run_here(todo, models, options, out_dir, bars, finished)
            else:
                _run_with_workers(todo, models, options, out_dir, bars, finished, n_workers, in_flight)
    finally:
        for rec, fut, _t0 in in_flight:  # interrupted: series whose writing did finish are done
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                res = fut.result()
                rec.status, rec.outputs = "done", (res[0] if isinstance(res, tuple) else res)  # jobs: (outputs, fields)
        header["finished"] = _now()
        write_manifest(out_dir, records, header, unreadable, options.shard)
    return BatchResult(out_dir=out_dir, manifest_path=manifest, records=records, unreadable_files=unreadable)


def _run_here(todo: Iterable[SeriesRecord], models: list[LoadedModel], options: BatchOptions, out_dir: Path,
              bars: _Progress, finished: Any, before_window: Any = None, busy: Any = None) -> None:
    """One series after the other, all in this process (counted in `busy` while segmenting one)."""
    from medseg.inference.workers import busy_while

    for rec in todo:
        bars.start_series(rec.stem)
        t0 = time.perf_counter()
        try:
            with busy_while(busy):
                volume = _load(rec)
                outputs = segment_series(volume, rec, models, out_dir / rec.stem, options, bars.step, before_window)
        except Exception as exc:  # noqa: BLE001 - one bad series must not stop the batch
            finished(rec, t0, bars, exc=exc)
        else:
            finished(rec, t0, bars, outputs)
        finally:
            volume = None  # noqa: F841


def _run_with_workers(todo: list[SeriesRecord], models: list[LoadedModel], options: BatchOptions, out_dir: Path,
                      bars: _Progress, finished: Any, n_workers: int, in_flight: list) -> None:
    """The network here, everything else in `n_workers` worker processes.

    The first series is segmented here from start to end while the workers start (importing
    torch, MONAI and medseg takes them ~2 s) and read the next ones. Series n ≥ 1 go to lane
    (n - 1) mod W; per lane, tasks run in submission order: prepare(n+W) is queued when the
    forward of n starts, after finish(n-W), so both run during that forward and the next series
    is ready when it ends; a worker holds at most three series (finishing, prepared, next).
    """
    import torch

    from medseg.inference.predict import run_models
    from medseg.inference.workers import Lane, ThreadLender, busy_counter, drop_series, finish_series, prepare_series

    threads_before = torch.get_num_threads()
    on_cpu = all(getattr(m.device, "type", "cpu") == "cpu" for m in models)
    busy = busy_counter()
    # on a CPU device, torch here gets the cores the workers leave free, window by window
    lend = ThreadLender(busy, threads_before) if on_cpu and threads_before > 1 else None
    lanes = [Lane(models, options, busy) for _ in range(n_workers)]
    lane = lambda n: lanes[(n - 1) % n_workers]  # noqa: E731
    prepared_futs: dict[int, cf.Future] = {}

    def collect(block_over: int) -> None:
        # in order; wait while more than `block_over` are in flight (bounds memory)
        while in_flight and (in_flight[0][1].done() or len(in_flight) > block_over):
            rec, fut, t0 = in_flight[0]
            try:
                outputs = fut.result()
            except Exception as exc:  # noqa: BLE001
                finished(rec, t0, bars, exc=exc)
            else:
                finished(rec, t0, bars, outputs)
            in_flight.pop(0)

    try:
        for n in range(1, min(n_workers, len(todo) - 1) + 1):
            prepared_futs[n] = lane(n).submit(prepare_series, todo[n])
        _run_here(todo[:1], models, options, out_dir, bars, finished, lend)  # series 0, here
        for n in range(1, len(todo)):
            rec = todo[n]
            bars.start_series(rec.stem)
            t0 = time.perf_counter()
            prepared = None
            fut = prepared_futs.pop(n)
            if n + n_workers < len(todo):  # the next read of this lane runs during this forward
                prepared_futs[n + n_workers] = lane(n + n_workers).submit(prepare_series, todo[n + n_workers])
            try:
                try:
                    prepared, fields = fut.result()
                except BrokenProcessPool:
                    # the worker died, maybe over another series: this one gets a fresh worker once
                    prepared, fields = lane(n).submit(prepare_series, rec).result()
                rec.n_slices, rec.modality = fields["n_slices"], fields["modality"] or rec.modality
                series_dir = out_dir / rec.stem
                prepare_series_dir(series_dir)
                probs, affine = run_models(prepared, models, options.inference, progress=bars.step, before_window=lend)
                prepared = None
                timings = {"segment_s": round(time.perf_counter() - t0, 3)}
                bars.step("writing", 0, 1)
                in_flight.append((rec, lane(n).submit(finish_series, rec, probs, affine, series_dir, timings), t0))
                del probs
            except Exception as exc:  # noqa: BLE001 - one bad series must not stop the batch
                if prepared is not None:
                    lane(n).submit(drop_series, rec.key)
                finished(rec, t0, bars, exc=exc)
            collect(block_over=n_workers)
        collect(block_over=0)
    finally:
        for fut in prepared_futs.values():
            fut.cancel()
        for ln in lanes:
            ln.shutdown()
        torch.set_num_threads(threads_before)


def _run_jobs(todo: list[SeriesRecord], models: list[LoadedModel], options: BatchOptions, out_dir: Path,
              bars: _Progress, finished: Any, n_jobs: int, in_flight: list) -> None:
    """`n_jobs` series at once: one here, the others each whole in a job process (`run_series`).

    This process is one of the jobs, so the batch starts at once while the job processes start
    (importing torch, MONAI and medseg takes each ~2-3 s of a core). A dispatcher thread (it
    only waits, so it does not stall the forward here) hands each job process the next waiting
    series as soon as it is free; a process holds one series at a time. Torch threads follow
    `CoreShare` everywhere: ``cores // busy jobs``. Interrupted (Ctrl-C): the job processes
    are stopped at once; their writes are atomic and a series is done only once its marker
    is written.
    """
    import threading

    import torch

    from medseg.inference.workers import CoreShare, Lane, busy_counter, run_series

    busy = busy_counter()
    cores = torch.get_num_threads()
    share = CoreShare(busy, cores)
    lanes = [Lane(models, options, busy, job_cores=cores) for _ in range(n_jobs - 1)]
    waiting = list(todo)
    lock = threading.RLock()  # waiting, in_flight, the records and the manifest (finished)
    stop = threading.Event()
    crashed: list[BaseException] = []

    def next_series() -> SeriesRecord | None:
        with lock:
            return None if stop.is_set() or not waiting else waiting.pop(0)

    def dispatch() -> None:
        running: dict[cf.Future, tuple[SeriesRecord, Lane, float]] = {}
        try:
            while True:
                for lane in lanes:
                    if all(held is not lane for _, held, _ in running.values()) and (rec := next_series()) is not None:
                        t0 = time.perf_counter()
                        fut = lane.submit(run_series, rec, out_dir / rec.stem)
                        running[fut] = (rec, lane, t0)
                        with lock:
                            in_flight.append((rec, fut, t0))
                if not running:
                    return
                done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    rec, _lane, t0 = running.pop(fut)
                    with lock:
                        in_flight[:] = [entry for entry in in_flight if entry[1] is not fut]
                        if stop.is_set():
                            continue  # interrupted: segment_batch records what finished
                        try:
                            outputs, fields = fut.result()
                        except Exception as exc:  # noqa: BLE001 - one bad series must not stop the batch
                            finished(rec, t0, bars, exc=exc)
                        else:
                            rec.n_slices, rec.modality = fields["n_slices"], fields["modality"] or rec.modality
                            finished(rec, t0, bars, outputs)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            crashed.append(exc)

    def finished_here(*args: Any, **kwargs: Any) -> None:
        with lock:
            finished(*args, **kwargs)

    dispatcher = threading.Thread(target=dispatch, name="medseg-jobs", daemon=True)
    dispatcher.start()
    try:
        _run_here(iter(next_series, None), models, options, out_dir, bars, finished_here, share, busy)
        dispatcher.join()
        if crashed:
            raise crashed[0]
    finally:
        if dispatcher.is_alive():  # interrupted here
            stop.set()
            for lane in lanes:
                lane.terminate()
            dispatcher.join(timeout=10)
        for lane in lanes:
            lane.shutdown()
        torch.set_num_threads(cores)


def _options_dict(options: BatchOptions) -> dict[str, Any]:
    d = asdict(options)
    d["inference"] = asdict(options.inference)
    return json.loads(json.dumps(d, default=str))


def iter_records(result: BatchResult, status: str | None = None) -> Iterator[SeriesRecord]:
    """Records of a batch, optionally only those with `status`."""
    return (r for r in result.records if status is None or r.status == status)

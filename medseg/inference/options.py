"""How a volume is segmented or enhanced (`InferenceOptions`), and the settings resolved from
those options and a checkpoint's defaults, once for every caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medseg.errors import InputError

if TYPE_CHECKING:
    from medseg.inference.model import LoadedModel

#: the values `InferenceOptions.precision` accepts
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class InferenceOptions:
    """How to segment a volume. ``None`` means "the checkpoint's default".

    Attributes:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:N]"``; used when models
            are loaded by `segment_batch` (a `LoadedModel` already sits on its device).
        roi_size: sliding-window patch size in voxels (default: the checkpoint's).
        overlap: fraction of overlap between windows, 0 ≤ overlap < 1 (default: the checkpoint's).
        sw_batch_size: windows per forward pass (default: the checkpoint's).
        precision: arithmetic of the forward pass: ``"fp32"``; ``"fp16"`` (float16 autocast,
            CUDA only); ``"bf16"`` (bfloat16 autocast; fast on CPUs with native bf16, e.g.
            AVX512-BF16/AMX, at a small Dice change, see docs/benchmarks.md); ``"auto"``
            (fp16 on CUDA, fp32 on CPU).
        tta: flip test-time augmentation (4 forward passes per model: identity + a flip per axis).
        largest_component: keep only the largest connected component of each label.
        largest_component_labels: restrict that to these label values (None = all labels); leave
            out labels made of several structures (e.g. "kidneys" = left + right).
        fill_holes: fill enclosed holes of each label.
        probabilities: also return per-class probabilities on the original grid
            (``result.meta["probabilities"]``, float32 ``(X, Y, Z, C)``).
        uncertainty: also return the voxel-wise uncertainty map on the original grid
            (``result.meta["uncertainty"]``, float32) and per-label scores.
        spacing_mm: override the plan's target spacing (coarser = less memory and faster, at some
            cost in accuracy; a model trained at another spacing sees different anatomy scale).
        max_memory_gb: refuse series whose estimated peak memory exceeds this (default: 90 % of
            the memory available when the series starts).
        check_modality: refuse a volume whose ``meta["modality"]`` differs from the model's.
    """

    device: str = "auto"
    roi_size: tuple[int, ...] | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    precision: str = "auto"
    tta: bool = False
    largest_component: bool = False
    largest_component_labels: tuple[int, ...] | None = None
    fill_holes: bool = False
    probabilities: bool = False
    uncertainty: bool = False
    spacing_mm: tuple[float, float, float] | None = None
    max_memory_gb: float | None = None
    check_modality: bool = True


@dataclass(frozen=True)
class WindowSettings:
    """Sliding-window settings of one model under some options (`window_settings`)."""

    roi_size: tuple[int, ...]
    overlap: float
    sw_batch_size: int


def window_settings(model: LoadedModel, options: InferenceOptions) -> WindowSettings:
    """The window size, overlap and batch `model` runs with: the options', else the checkpoint's.

    Raises:
        InputError: overlap outside [0, 1).
    """
    roi = tuple(int(r) for r in (options.roi_size or model.inference.get("roi_size") or (96, 96, 96)))
    overlap = float(options.overlap if options.overlap is not None else model.inference.get("overlap", 0.25))
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap {overlap}: expected 0 ≤ overlap < 1")
    sw_bs = int(options.sw_batch_size or model.inference.get("sw_batch_size", 1))
    return WindowSettings(roi, overlap, max(1, sw_bs))


def autocast_dtype(precision: str, device_type: str) -> Any:
    """The autocast dtype of a `precision` setting on a device type (None: plain float32).

    Raises:
        InputError: an unknown precision, or fp16 asked for on a CPU.
    """
    import torch

    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if p == "auto":
        p = "fp16" if device_type == "cuda" else "fp32"
    if p == "fp16" and device_type != "cuda":
        raise InputError("precision fp16 needs a CUDA device; use bf16 or fp32 on a CPU")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[p]


@dataclass(frozen=True)
class BatchOptions:
    """What to process and which outputs to write (inference settings are in `inference`).

    Attributes:
        inference: how each series is segmented or enhanced (`InferenceOptions`).
        modalities: keep only DICOM series of these modalities (e.g. ``("CT",)``); default: those
            the model was trained on (a CT model skips MR series, with the reason).
        series_regex: keep only series whose SeriesDescription matches (``re.search``, case-insensitive).
        min_slices: skip series with fewer slices (scouts, single key images).
        dicom_seg: segmentation: write a DICOM SEG for DICOM input.
        seg_type: ``"binary"`` (one frame per segment and slice, the most widely read) or
            ``"labelmap"`` (highdicom's LABELMAP SEG: one frame per slice, much smaller).
        rtstruct: segmentation: also write a DICOM RTSTRUCT for DICOM input.
        derived_series: image tasks: write a derived DICOM series for DICOM input.
        qa_png: segmentation: write the QA picture.
        overwrite: redo series that a previous run finished.
        shard: ``(i, n)``, 1 ≤ i ≤ n: process only this shard of the series.
        workers: background processes that read and preprocess series ahead of the network, and
            as many that resample and write finished ones (0: all in this process, one series
            after the other; None: `medseg.inference.processes.default_workers`). The outputs
            do not depend on it.
        jobs: independent shard processes (``jobs=N`` runs shards 1/N … N/N at once, each a
            whole pipeline with ``workers`` of its own, and merges their manifests); 1: none.
            Each job runs the network with ``threads`` torch threads (the same as one job: the
            outputs do not depend on the number of jobs).
        threads: torch threads of the process that runs the network, set once (None: torch's
            default). Background processes use one thread each. On CPU this count is part of
            the network's arithmetic (oneDNN and MKL split their sums by it), so it is recorded
            in the manifest (``torch_threads``) and each series' ``done.json``.
        progress: show rich progress bars on stderr.
    """

    inference: InferenceOptions = field(default_factory=InferenceOptions)
    modalities: tuple[str, ...] | None = None
    series_regex: str | None = None
    min_slices: int = 1
    dicom_seg: bool = True
    seg_type: str = "binary"
    rtstruct: bool = False
    derived_series: bool = True
    qa_png: bool = True
    overwrite: bool = False
    shard: tuple[int, int] | None = None
    workers: int | None = None
    jobs: int = 1
    threads: int | None = None
    progress: bool = True

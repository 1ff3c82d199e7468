"""The output stage of the batch: a few writers per checkpoint task, each writing one file.

`WRITERS[task]` lists ``(output kind, writer)`` in the order they run. A writer takes an
`OutputContext` and returns the file name it wrote inside the series folder, or None when it
does not apply (e.g. a DICOM SEG for NIfTI input). Segmentation writes labels (NIfTI, DICOM
SEG, RTSTRUCT, volumes CSV, QA picture, probabilities, uncertainty map); image-to-image tasks
(denoising, low-dose CT GANs) write an image (NIfTI on the original grid, a derived DICOM
series for DICOM input). A new task adds its entry here and nothing else in the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.inference.discovery import SeriesRecord
from medseg.io.volume import Volume

if TYPE_CHECKING:
    from medseg.inference.model import LoadedModel
    from medseg.inference.options import BatchOptions


@dataclass
class OutputContext:
    """Everything a writer may need for one series.

    Attributes:
        volume: the source image as read (its meta references the DICOM files).
        result: the label map (segmentation) or the output image (image tasks), on `volume`'s grid.
        record: the series' manifest row (no `series` object: it stayed with the batch).
        models: the checkpoints (plans and labels; no network).
        options: the batch options.
        series_dir: the series' output folder.
        stats: filled by the volumes writer (label statistics), returned to the batch.
    """

    volume: Volume
    result: Volume
    record: SeriesRecord
    models: list[LoadedModel]
    options: BatchOptions
    series_dir: Path
    stats: list[dict[str, Any]] = field(default_factory=list)


Writer = Callable[[OutputContext], "str | None"]


def _labels_nifti(ctx: OutputContext) -> str:
    from medseg.io.nifti import write_nifti

    write_nifti(Volume(ctx.result.array, ctx.result.affine), ctx.series_dir / "labels.nii.gz")
    return "labels.nii.gz"


def _dicom_seg(ctx: OutputContext) -> str | None:
    if not (ctx.options.dicom_seg and ctx.record.kind == "dicom"):
        return None
    from medseg import __version__
    from medseg.io.seg import write_dicom_seg

    names = ctx.result.meta["label_names"]
    # the model's output holds its (named) label values only: no need to count them
    write_dicom_seg(ctx.result.array, ctx.volume, names, ctx.series_dir / "seg.dcm", algorithm_name="medseg",
                    algorithm_version=__version__, values=sorted(names), seg_type=ctx.options.seg_type)
    return "seg.dcm"


def _rtstruct(ctx: OutputContext) -> str | None:
    if not (ctx.options.rtstruct and ctx.record.kind == "dicom"):
        return None
    from medseg.io.rtstruct import write_rtstruct

    write_rtstruct(ctx.result, ctx.volume, ctx.result.meta["label_names"], ctx.series_dir / "rtstruct.dcm")
    return "rtstruct.dcm"


def _volumes_csv(ctx: OutputContext) -> str:
    from medseg.inference.outputs import label_statistics, write_volumes_csv

    ctx.stats = label_statistics(ctx.volume, ctx.result.array, ctx.result.meta["label_names"])
    scores = ctx.result.meta.get("uncertainty_scores") or {}
    for row in ctx.stats:
        if row["name"] in scores:
            row["uncertainty"] = scores[row["name"]]
    write_volumes_csv(ctx.stats, ctx.series_dir / "volumes.csv")
    return "volumes.csv"


def _qa_png(ctx: OutputContext) -> str | None:
    if not ctx.options.qa_png:
        return None
    from medseg.inference.outputs import write_qa_png

    title = f"{ctx.record.stem} — {', '.join(m.path.name for m in ctx.models)}"
    write_qa_png(ctx.volume, ctx.result.array, ctx.result.meta["label_names"], ctx.series_dir / "qa.png", title=title)
    return "qa.png"


def _probabilities(ctx: OutputContext) -> str | None:
    if "probabilities" not in ctx.result.meta:
        return None
    from medseg.io.nifti import write_nifti

    write_nifti(Volume(ctx.result.meta["probabilities"], ctx.result.affine), ctx.series_dir / "probabilities.nii.gz")
    return "probabilities.nii.gz"


def _uncertainty_map(ctx: OutputContext) -> str | None:
    if ctx.result.meta.get("uncertainty") is None:
        return None
    from medseg.io.nifti import write_nifti

    write_nifti(Volume(ctx.result.meta["uncertainty"], ctx.result.affine), ctx.series_dir / "uncertainty.nii.gz")
    return "uncertainty.nii.gz"


def _image_nifti(ctx: OutputContext) -> str:
    from medseg.io.nifti import write_nifti

    write_nifti(Volume(ctx.result.array, ctx.result.affine, {}), ctx.series_dir / "image.nii.gz")
    return "image.nii.gz"


def _derived_series(ctx: OutputContext) -> str | None:
    if not (ctx.options.derived_series and ctx.record.kind == "dicom"):
        return None
    from medseg.io.derived import write_derived_series

    m = ctx.models[0]
    write_derived_series(ctx.result, ctx.volume, ctx.series_dir / "dicom", description=f"medseg {m.task}, model {m.fingerprint}")
    return "dicom"


SEGMENTATION_WRITERS: list[tuple[str, Writer]] = [
    ("labels", _labels_nifti),
    ("dicom_seg", _dicom_seg),
    ("rtstruct", _rtstruct),
    ("volumes", _volumes_csv),
    ("qa", _qa_png),
    ("probabilities", _probabilities),
    ("uncertainty", _uncertainty_map),
]
IMAGE_WRITERS: list[tuple[str, Writer]] = [("image", _image_nifti), ("dicom_series", _derived_series)]

#: checkpoint task → its writers, in the order they run
WRITERS: dict[str, list[tuple[str, Writer]]] = {
    "segmentation": SEGMENTATION_WRITERS,
    "denoising": IMAGE_WRITERS,
    "gan": IMAGE_WRITERS,
}

#: writers that are pure Python (highdicom/pydicom building and encoding datasets) and so hold
#: the GIL nearly all the time; the others spend most of theirs in zlib, NumPy or Pillow, which
#: release it. `write_outputs` runs the two groups side by side.
PYTHON_BOUND = frozenset({"dicom_seg", "rtstruct", "dicom_series"})


def _run_writers(ctx: OutputContext, writers: list[tuple[str, Writer]]) -> dict[str, BaseException | str | None]:
    done: dict[str, BaseException | str | None] = {}
    for kind, writer in writers:
        try:
            done[kind] = writer(ctx)
        except BaseException as exc:  # noqa: BLE001 - re-raised by write_outputs, in writing order
            done[kind] = exc
            break
    return done


def write_outputs(
    ctx: OutputContext,
    task: str,
    *,
    concurrent: bool = True,
    before_rest: Callable[[], object] | None = None,
) -> dict[str, str]:
    """Run the writers of `task` on one series (each writes its own file, atomically).

    With `concurrent`, the Python-bound writers (`PYTHON_BOUND`: the DICOM SEG, RTSTRUCT and
    derived series) run in one thread beside the others in this thread: after the network
    there is a core free, and the NIfTI/CSV/PNG writers mostly run outside the GIL, so they
    finish under the SEG's time instead of after it. The files do not depend on it (each
    writer reads the same inputs and writes its own file; tests compare both ways).

    `before_rest` (optional) runs in this thread before the writers of this thread, and with
    `concurrent` after the Python-bound ones have started: work that only those writers need
    (segmentation: the uncertainty scores of the volumes CSV and the uncertainty map), which
    then runs beside the DICOM SEG instead of before it. No Python-bound writer may need it.

    Returns:
        output kind → file (or folder) name inside the series folder, in `WRITERS` order.

    Raises:
        `before_rest`'s error, or the first writer's error in `WRITERS` order, after every
        writer of the other group has finished (nothing is left half-running).
    """
    writers = WRITERS[task]
    side = [w for w in writers if w[0] in PYTHON_BOUND]
    here = [w for w in writers if w[0] not in PYTHON_BOUND]
    if concurrent and side and here:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medseg-writer") as pool:
            future = pool.submit(_run_writers, ctx, side)
            try:
                if before_rest is not None:
                    before_rest()
            except BaseException:
                future.result()  # the side writers finish (their own errors are secondary)
                raise
            done = _run_writers(ctx, here)
            done |= future.result()
    else:
        if before_rest is not None:
            before_rest()
        done = _run_writers(ctx, writers)
    outputs: dict[str, str] = {}
    for kind, _ in writers:
        if kind not in done:
            continue
        value = done[kind]
        if isinstance(value, BaseException):
            raise value
        if value is not None:
            outputs[kind] = value
    return outputs

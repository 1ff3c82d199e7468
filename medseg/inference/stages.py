"""The work of the pipeline's background stages, one function per stage (see `medseg.inference.processes`).

- `read_stage`: read a series and preprocess it for the network (segmentation checks the
  volume against the models and preprocesses once per plan).
- `export_stage`: bring the network's result onto the series' original grid
  (segmentation: resample probabilities, argmax, post-process) and run the task's writers.

Both run in background processes (or in the batch's own process with ``workers=0``) and take
everything as arguments: no per-process state. Large arrays travel between processes as torch
tensors, which torch's pickler places in shared memory instead of copying them through a pipe.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.inference.discovery import SeriesRecord
from medseg.inference.series import load_series, record_fields
from medseg.inference.writers import OutputContext, write_outputs
from medseg.io.volume import Volume

if TYPE_CHECKING:
    from medseg.inference.model import LoadedModel
    from medseg.inference.options import BatchOptions


class ShippedVolume:
    """A `Volume` packed to travel between processes (`unpack` gives it back, same strides)."""

    def __init__(self, volume: Volume) -> None:
        import torch

        array = np.asarray(volume.array)
        try:
            self.array: Any = torch.from_numpy(array) if array.flags.writeable else array
        except (TypeError, ValueError):  # a dtype or stride torch does not take: a plain copy
            self.array = array
        self.affine, self.meta = volume.affine, volume.meta

    def unpack(self) -> Volume:
        array = self.array.numpy() if hasattr(self.array, "numpy") and not isinstance(self.array, np.ndarray) else self.array
        return Volume(array, self.affine, self.meta)


def read_stage(record: SeriesRecord, models: list[LoadedModel], options: BatchOptions) -> dict[str, Any]:
    """Read `record`'s series and prepare it for the network.

    Returns:
        ``{"volume": ShippedVolume, "prepared": PreparedInput | None, "fields": record_fields,
        "read_s": seconds}``.

    Raises:
        MedsegError: unreadable series, or one the models cannot process (dimensions,
            modality, memory).
    """
    t0 = time.perf_counter()
    volume = load_series(record)
    fields = record_fields(volume)
    prepared = None
    if models[0].task == "segmentation":
        from medseg.inference.predict import prepare_input

        prepared = prepare_input(volume, models, options.inference)
    else:
        from medseg.inference.predict import check_image_volume

        check_image_volume(volume)
    return {"volume": ShippedVolume(volume), "prepared": prepared, "fields": fields,
            "read_s": round(time.perf_counter() - t0, 3)}


def export_stage(
    record: SeriesRecord,
    volume: ShippedVolume,
    network_output: Any,
    models: list[LoadedModel],
    options: BatchOptions,
    series_dir: Path,
) -> dict[str, Any]:
    """Put the network's result for one series on its original grid and write its outputs.

    Args:
        network_output: segmentation: the `NetworkResult` of `run_models`; image
            tasks: the output image (a `ShippedVolume` on the source grid).

    Returns:
        ``{"outputs": kind → file name, "volumes": label statistics, "uncertainty": the series'
        score, "label_uncertainty": label name → score, "uncertainty_labels": their records,
        "timings": {...}}`` (the completion marker is the batch's to write).
    """
    t0 = time.perf_counter()
    source = volume.unpack()
    task = models[0].task
    before_rest = None
    if task == "segmentation":
        from medseg.inference.predict import add_uncertainty, labels_from_network

        result = labels_from_network(source, network_output, models, options.inference)
        # the uncertainty scores feed the volumes CSV and the manifest only: they run beside
        # the DICOM SEG (the export's longest writer), which needs the labels alone
        before_rest = lambda: add_uncertainty(result, network_output, models, options.inference)  # noqa: E731
    else:
        result = network_output.unpack()
    t1 = time.perf_counter()
    ctx = OutputContext(source, result, record, models, options, series_dir)
    outputs = write_outputs(ctx, task, before_rest=before_rest)
    return {
        "outputs": outputs,
        "volumes": ctx.stats,
        "uncertainty": result.meta.get("uncertainty_series"),
        "label_uncertainty": dict(result.meta.get("uncertainty_scores") or {}),
        "uncertainty_labels": dict(result.meta.get("uncertainty_labels") or {}),
        "timings": {"to_grid_s": round(t1 - t0, 3), "write_s": round(time.perf_counter() - t1, 3)},
    }

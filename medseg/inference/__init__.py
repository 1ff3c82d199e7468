"""Inference: apply trained checkpoints to volumes, one at a time or as a resumable batch.

- `load_models` — checkpoints → `LoadedModel` (network + labels + preprocessing plan + task), once.
- `segment_volume` — one `Volume` → label `Volume` on the same grid (sliding window, flip TTA,
  ensembling, largest component / hole filling), see `medseg.inference.predict`.
- `segment_batch` — a DICOM tree / image files → per series the outputs of the checkpoint's
  task (labels: NIfTI, DICOM SEG, RTSTRUCT, volumes CSV, QA PNG; images: NIfTI, derived DICOM
  series) and a manifest, resumable and shardable, see `medseg.inference.batch`.
- `export_model` — TorchScript / ONNX (+ int8) export, see `medseg.inference.export`.
"""

from medseg.device import resolve_device
from medseg.inference.batch import BatchResult, segment_batch
from medseg.inference.discovery import SeriesRecord, parse_shard
from medseg.inference.model import LoadedModel, load_model, load_models
from medseg.inference.options import BatchOptions, InferenceOptions
from medseg.inference.predict import segment_volume

__all__ = [
    "BatchOptions",
    "BatchResult",
    "InferenceOptions",
    "LoadedModel",
    "SeriesRecord",
    "load_model",
    "load_models",
    "parse_shard",
    "resolve_device",
    "segment_batch",
    "segment_volume",
]

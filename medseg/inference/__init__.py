"""Inference: segment volumes with trained checkpoints, one at a time or as a resumable batch.

- `load_models` — checkpoints → `LoadedModel` (network + labels + preprocessing plan), once.
- `segment_volume` — one `Volume` → label `Volume` on the same grid (sliding window, flip TTA,
  ensembling, largest component / hole filling), see `medseg.inference.predict`.
- `segment_batch` — a DICOM tree / image files → NIfTI + DICOM SEG + volumes CSV + QA PNG per
  series and a manifest, resumable and shardable, see `medseg.inference.batch`.
- `export_model` — TorchScript / ONNX (+ int8) export, see `medseg.inference.export`.
"""

from medseg.inference.batch import BatchOptions, BatchResult, SeriesRecord, parse_shard, segment_batch
from medseg.inference.model import LoadedModel, load_model, load_models, resolve_device
from medseg.inference.predict import InferenceOptions, segment_volume

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

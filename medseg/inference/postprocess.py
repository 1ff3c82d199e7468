"""Post-processing of label maps for inference: see `medseg.postprocess` (shared with the engine's validation)."""

from medseg.postprocess import fill_holes, keep_largest_component

__all__ = ["fill_holes", "keep_largest_component"]

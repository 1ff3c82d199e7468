"""Import, ahead of time, every module that segmentation and enhancement import lazily.

The library imports torch, MONAI and its model code inside the functions that need them, so the
CLI starts fast and `import medseg` stays light. A long-lived GUI process pays for that when the
first run starts: importing torch and MONAI (and what MONAI pulls in: matplotlib, scikit-learn)
from a worker thread holds the GIL for long stretches (loading extension modules, unmarshalling
and executing large modules), and the GUI thread cannot run meanwhile. A GUI calls
`preload_inference` on its own thread at a moment the user expects a wait (opening the widget),
so a later run in a worker imports nothing.

`tests/inference/test_preload.py` checks, in a fresh interpreter, that segmentation (TTA,
uncertainty, post-processing) and image-to-image inference import no module after this.
"""

from __future__ import annotations

import importlib

#: What `load_model`, `segment_volume` and `predict_image` import inside their functions.
INFERENCE_MODULES = (
    "torch",
    "torch.nn.functional",
    "torch.utils.serialization",  # torch.load's lazily imported config
    "scipy.ndimage",
    "cc3d",  # medseg.postprocess: largest component
    "fastremap",  # medseg.postprocess
    "fill_voids",  # medseg.postprocess: hole filling
    "nibabel.orientations",
    "monai.data",
    "monai.inferers",
    "monai.transforms",
    "medseg.checkpoint",
    "medseg.config.schema",
    "medseg.data.datasets",
    "medseg.data.transforms",
    "medseg.models",
    "medseg.models.gan",
    "medseg.models.image_nets",
    "medseg.postprocess",
    "medseg.inference.exported",
    "medseg.inference.image",
    "medseg.inference.uncertainty",
)


def preload_inference() -> None:
    """Import `INFERENCE_MODULES` now (idempotent; a no-op once imported)."""
    for name in INFERENCE_MODULES:
        importlib.import_module(name)

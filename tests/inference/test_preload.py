"""`preload_inference` leaves nothing for inference to import (a GUI's worker then imports nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# In a fresh interpreter: preload, then build a segmentation and a denoising checkpoint, load them
# and run both inference paths with every option that imports something of its own.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from medseg import sample_data  # the test's own data, not the inference path
    from medseg.inference.preload import preload_inference
    preload_inference()
    before = set(sys.modules)

    import numpy as np
    from medseg.checkpoint import Checkpoint, save_checkpoint
    from medseg.inference import InferenceOptions, load_model, segment_volume
    from medseg.inference.image import predict_image
    from medseg.io import read_volume
    from medseg.models import build_model
    import torch

    out = Path(sys.argv[1])
    seg_cfg = {"encoder": "resnet10", "encoder_channels": [8, 16, 32, 64], "decoder_channels": [32, 16, 16, 8, 8],
               "aspp_channels": 8, "out_channels": 2}
    plan = {"modality": "CT", "spacing_mm": [6.0, 6.0, 6.0], "orientation": "RAS",
            "intensity": {"kind": "ct_window", "hu_min": -200.0, "hu_max": 300.0}}
    save_checkpoint(Checkpoint(task="segmentation", model=seg_cfg, state_dict=build_model(seg_cfg).state_dict(),
                               labels={1: "liver"}, preprocessing=plan,
                               inference={"roi_size": [32, 32, 32], "overlap": 0.25, "sw_batch_size": 1}), out / "seg.pt")
    den_cfg = {"name": "unet_denoiser", "spatial_dims": 2, "in_channels": 3, "features": [8, 8, 16, 16, 32, 8]}
    den_plan = {"modality": "CT", "spacing_mm": None, "orientation": "RAS",
                "intensity": {"kind": "hu_linear", "hu_min": -1024.0, "hu_max": 3071.0}}
    save_checkpoint(Checkpoint(task="denoising", model=den_cfg, state_dict=build_model(den_cfg).state_dict(),
                               preprocessing=den_plan, inference={"spatial_dims": 2, "context_slices": 1, "roi_size": None,
                                                                  "overlap": 0.25}), out / "den.pt")
    ct = read_volume(sample_data.path("ct_small"))
    seg = segment_volume(ct, [load_model(out / "seg.pt", "cpu")],
                         InferenceOptions(device="cpu", tta=True, uncertainty=True, largest_component=True, fill_holes=True))
    den = predict_image(ct, load_model(out / "den.pt", "cpu"))
    assert seg.meta["uncertainty"].shape == ct.shape and den.shape == ct.shape
    print(json.dumps(sorted(set(sys.modules) - before)))
    """
)


def test_after_preload_segmentation_and_enhancement_import_nothing(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    imported_late = json.loads(run.stdout.strip().splitlines()[-1])
    assert imported_late == [], f"imported after preload_inference: {imported_late}"

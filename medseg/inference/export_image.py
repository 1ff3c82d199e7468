"""Export an image-to-image checkpoint (denoiser, low-dose CT generator) to TorchScript / ONNX,
optionally int8, and measure an export against the float checkpoint.

2-D models only (axial slices, ``(B, 2k+1, H, W)`` → ``(B, 1, H, W)``): the exported graph keeps
the batch and both in-plane sizes dynamic, so one file restores slices of any size, as the
checkpoint does (`medseg.inference.image.predict_image` feeds whole slices).

int8: what exists for conv nets on a CPU, honestly:

- PyTorch's ``torch.ao.quantization.quantize_dynamic`` quantises ``Linear``/``LSTM`` only, so a
  conv generator would come back unchanged; its static (calibrated) eager/FX quantisation
  needs QuantStub rewiring of the network, and its successor (PT2E) needs ``torch.export``
  plus backend configs: none of that is a drop-in for these networks.
- ONNX Runtime's dynamic quantisation (used here, as for segmentation in
  `medseg.inference.export`) stores ``Conv`` weights as int8 and quantises activations per
  tensor at run time (``ConvInteger``); ``ConvTranspose`` stays float. No calibration data.

Whether that is faster, and what it costs in PSNR, depends on the network and the CPU:
`compare_image_export` measures both on a real volume (see docs/benchmarks.md).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.inference.exported import quantize_onnx_int8, save_torchscript
from medseg.inference.loaded_model import LoadedModel

__all__ = ["compare_image_export", "export_image_network"]


def export_image_network(model: LoadedModel, out_path: Path, fmt: str, quantize: str | None, opset: int, ckpt: Path) -> dict[str, Any]:
    """Write `model`'s 2-D image network to `out_path`; returns the sidecar's model-specific entries.

    Raises:
        InputError: a 3-D image model, int8 with TorchScript, or an export failure.
    """
    import torch

    from medseg.io.atomic import atomic_path

    inf = model.inference
    if int(inf.get("spatial_dims", 2)) != 2:
        raise InputError(f"{ckpt}: export of 3-D image models is not supported (only 2-D / 2.5-D slice models)")
    if quantize and fmt != "onnx":
        raise InputError(
            "int8 quantization is available with --format onnx (ONNX Runtime dynamic quantization: Conv → ConvInteger); "
            "PyTorch's dynamic quantization covers Linear/LSTM only, so a quantized TorchScript generator would be the float model"
        )
    k = int(inf.get("context_slices", 0))
    net = model.network.eval()
    example = torch.zeros((1, 2 * k + 1, 64, 64), dtype=torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        if fmt == "torchscript":
            save_torchscript(net, example, out_path, ckpt)
        else:
            float_path = out_path.with_name(out_path.name + ".float.onnx") if quantize else out_path
            axes = {0: "batch", 2: "height", 3: "width"}
            try:
                with atomic_path(float_path, suffix=".onnx") as tmp:
                    torch.onnx.export(net, (example,), str(tmp), input_names=["image"], output_names=["output"], opset_version=opset,
                                      dynamic_axes={"image": axes, "output": axes}, dynamo=False)
            except Exception as exc:
                raise InputError(f"{ckpt}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
            if quantize:
                quantize_onnx_int8(float_path, out_path)
    return {"inference": {**inf, "roi_size": None}, "input_shape": ["batch", 2 * k + 1, "height", "width"]}


def compare_image_export(
    checkpoint: str | os.PathLike[str], exported: str | os.PathLike[str], low_dose: Any, reference: Any | None = None,
    repeats: int = 1, window_hu: tuple[float, float] = (-1024.0, 3071.0),
) -> dict[str, Any]:
    """Enhance `low_dose` with the float checkpoint and with an export; time both and compare.

    Args:
        low_dose: the input `Volume` (HU).
        reference: the full-dose `Volume` (HU) for PSNR against the truth; None = only the
            export's agreement with the float model.
        window_hu: PSNR data range (clip to it; ``L = hi − lo``).

    Returns:
        ``{"float_s", "exported_s", "speedup", "max_abs_diff_hu", "psnr_vs_float_db"}`` and, with
        a reference, ``"psnr_float_db"``, ``"psnr_exported_db"``, ``"psnr_change_db"``; times are
        the best of `repeats` whole `predict_image` runs after a warm-up.
    """
    from medseg.inference.exported import load_exported
    from medseg.inference.image import predict_image
    from medseg.inference.model import load_model
    from medseg.metrics.image import psnr

    def timed(m: LoadedModel) -> tuple[float, np.ndarray]:
        predict_image(low_dose, m, device="cpu")  # warm-up: lazy initialisation is not the model's speed
        best, out = float("inf"), None
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            out = predict_image(low_dose, m, device="cpu").array
            best = min(best, time.perf_counter() - t0)
        return best, out  # type: ignore[return-value]

    t_float, y_float = timed(load_model(checkpoint, "cpu"))
    t_exp, y_exp = timed(load_exported(exported, "cpu"))
    res: dict[str, Any] = {
        "float_s": round(t_float, 3), "exported_s": round(t_exp, 3), "speedup": round(t_float / t_exp, 3) if t_exp else None,
        "max_abs_diff_hu": float(np.abs(y_exp - y_float).max()), "psnr_vs_float_db": psnr(y_exp, y_float, window=window_hu),
    }
    if reference is not None:
        ref = np.asarray(reference.array, dtype=np.float32)
        res["psnr_float_db"] = psnr(y_float, ref, window=window_hu)
        res["psnr_exported_db"] = psnr(y_exp, ref, window=window_hu)
        res["psnr_change_db"] = res["psnr_exported_db"] - res["psnr_float_db"]
    return res

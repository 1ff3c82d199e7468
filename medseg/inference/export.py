"""Export a checkpoint to TorchScript or ONNX (optionally int8) and load it back.

Segmentation networks here; image-to-image ones (denoising, low-dose CT GAN) in
`medseg.inference.export_image`.

An exported file ``model.onnx`` / ``model.ts`` comes with a sidecar ``model.onnx.json`` holding
what the checkpoint carried besides the weights (labels, preprocessing plan, sliding-window
defaults), so `medseg segment --model model.onnx` works exactly like with the ``.pt``.

int8: ONNX Runtime's *dynamic* quantization (weights int8 ahead of time, activations quantized
per tensor at run time; ``Conv`` → ``ConvInteger``). No calibration data is needed. PyTorch's
own dynamic quantization covers only ``Linear``/``LSTM`` layers, i.e. nothing of a 3-D conv
net, so int8 is offered for ONNX only. Use `compare_with_float` (``medseg export --check``) to
measure its speed and Dice change on real data before relying on it.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.inference.exported import quantize_onnx_int8, save_torchscript, sidecar_path
from medseg.inference.loaded_model import LoadedModel
from medseg.inference.model import load_model
from medseg.metrics import dice as dice_score
from medseg.io.atomic import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".ts", "onnx": ".onnx"}


def export_model(
    checkpoint: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    fmt: str = "torchscript",
    quantize: str | None = None,
    roi_size: tuple[int, int, int] | None = None,
    opset: int = 17,
) -> Path:
    """Export a checkpoint's network (segmentation; or a 2-D image model, see `medseg.inference.export_image`).

    Args:
        checkpoint: a medseg checkpoint (``.pt``).
        out_path: target file (default: next to the checkpoint, ``.ts`` / ``.onnx``,
            ``-int8.onnx`` when quantized).
        fmt: ``"torchscript"`` (traced at the window size) or ``"onnx"`` (dynamic batch and
            spatial axes).
        quantize: None or ``"int8"`` (ONNX only, dynamic quantization for CPU inference).
        roi_size: window size for tracing (default: the checkpoint's ``roi_size``).
        opset: ONNX opset.

    Returns:
        The exported file; its sidecar ``<file>.json`` is written next to it.

    Raises:
        CheckpointError: not a readable checkpoint.
        InputError: unknown format, int8 asked for TorchScript, or an export failure.
    """
    import torch

    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise InputError(f"unknown quantization {quantize!r}; only 'int8' is supported")
    if quantize and fmt != "onnx":
        raise InputError(
            "int8 quantization is available with --format onnx (ONNX Runtime dynamic quantization "
            "turns 3-D convolutions into ConvInteger); PyTorch's dynamic quantization does not cover "
            "Conv3d layers, so a quantized TorchScript file would be the float model"
        )
    model = load_model(checkpoint, "cpu")
    ckpt = Path(checkpoint)
    if out_path is None:
        out_path = ckpt.with_name(ckpt.stem + ("-int8" if quantize else "") + SUFFIX[fmt])
    out_path = Path(out_path)
    if model.task != "segmentation":  # image-to-image (denoising, gan): medseg.inference.export_image
        from medseg.inference.export_image import export_image_network

        entries = export_image_network(model, out_path, fmt, quantize, opset, ckpt)
        write_json_atomic(sidecar_path(out_path), {
            "format": fmt, "quantize": quantize, "task": model.task, "labels": {}, "preprocessing": model.plan,
            **entries, "source_checkpoint": str(ckpt), "source_fingerprint": model.fingerprint, "metrics": model.metrics,
        })
        return out_path
    roi = tuple(int(r) for r in (roi_size or model.inference["roi_size"]))
    net = _trace_safe(model.network.eval())
    # Exported graphs have a fixed input shape (the window; the checkpoint's windows per batch):
    # static shapes let ONNX Runtime / TorchScript plan once. Loaders pad or split other batches.
    batch = int(model.inference.get("sw_batch_size", 1))
    example = torch.zeros((batch, 1, *roi), dtype=torch.float32)

    with torch.no_grad():
        if fmt == "torchscript":
            save_torchscript(net, example, out_path, ckpt)
        else:
            _export_onnx(net, example, out_path, quantize, opset, ckpt)

    write_json_atomic(
        sidecar_path(out_path),
        {
            "format": fmt,
            "quantize": quantize,
            "task": "segmentation",
            "labels": {str(k): v for k, v in model.labels.items()},
            "preprocessing": model.plan,
            "inference": {**model.inference, "roi_size": list(roi), "sw_batch_size": batch},
            "input_shape": [batch, 1, *roi],
            "source_checkpoint": str(ckpt),
            "source_fingerprint": model.fingerprint,
            "metrics": model.metrics,
        },
    )
    return out_path


def _shortcut_a(x: Any, planes: int, stride: Any, spatial_dims: int = 3) -> Any:
    """MONAI ResNet's shortcut "A" (stride, then zero channels) without ``.data``/``torch.zeros``.

    MONAI builds the zero channels with ``torch.zeros(out.size(0), ...)`` and concatenates
    ``out.data``: tracing (TorchScript, ONNX) records ``.data`` as a constant, so the exported
    shortcut returned the example input's features for every input. ``F.pad`` traces correctly.
    """
    import torch.nn.functional as F

    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial_dims]
    out = pool(x, kernel_size=1, stride=stride)
    return F.pad(out, (0, 0) * spatial_dims + (0, planes - out.shape[1]))


def _trace_safe(net: Any) -> Any:
    """A copy of `net` whose MONAI ResNet shortcut-"A" blocks trace correctly (see `_shortcut_a`)."""
    import copy
    import functools

    net = copy.deepcopy(net)
    for module in net.modules():
        ds = getattr(module, "downsample", None)
        if isinstance(ds, functools.partial) and getattr(ds.func, "__name__", "") == "_downsample_basic_block":
            module.downsample = functools.partial(_shortcut_a, **ds.keywords)
    return net


def _export_onnx(net: Any, example: Any, out_path: Path, quantize: str | None, opset: int, ckpt: Path) -> None:
    """torch.onnx (TorchScript-based exporter, fixed input shape), then optional int8."""
    import torch

    float_path = out_path.with_name(out_path.name + ".float.onnx") if quantize else out_path
    with warnings.catch_warnings(), atomic_path(float_path, suffix=".onnx") as tmp:
        # instance norm uses each input's statistics at inference too: the warning is expected
        warnings.filterwarnings("ignore", message=".*instance_norm.*train=True.*")
        warnings.filterwarnings("ignore", message="Constant folding")
        # the size checks traced as constants are right: the export has a fixed input shape
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter: no onnxscript needed
        try:
            torch.onnx.export(
                net, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                opset_version=opset, dynamo=False,
            )
        except Exception as exc:
            raise InputError(f"{ckpt}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
    if quantize:
        quantize_onnx_int8(float_path, out_path)


def compare_with_float(
    checkpoint: str | os.PathLike[str],
    exported: str | os.PathLike[str],
    volume: Any,
    repeats: int = 1,
) -> dict[str, Any]:
    """Segment `volume` with the float checkpoint and with an exported model; time both, compare.

    Returns:
        ``{"float_s", "exported_s", "speedup", "dice": {label name: Dice of exported vs float},
        "mean_dice", "voxel_agreement"}``; times are the best of `repeats` whole `segment_volume` runs.
    """
    from medseg.inference.predict import InferenceOptions, segment_volume

    from medseg.inference.exported import load_exported

    ref = load_model(checkpoint, "cpu")
    exp = load_exported(exported, "cpu")
    opts = InferenceOptions(device="cpu")

    def timed(m: LoadedModel) -> tuple[float, np.ndarray]:
        segment_volume(volume, [m], opts)  # warm-up: lazy initialisation is not the model's speed
        best, out = float("inf"), None
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            out = segment_volume(volume, [m], opts).array
            best = min(best, time.perf_counter() - t0)
        return best, out  # type: ignore[return-value]

    t_float, lab_float = timed(ref)
    t_exp, lab_exp = timed(exp)
    dice = {}
    for value, name in ref.labels.items():
        dice[name] = dice_score(lab_float == value, lab_exp == value)
    vals = [d for d in dice.values() if d == d]
    return {
        "float_s": round(t_float, 3),
        "exported_s": round(t_exp, 3),
        "speedup": round(t_float / t_exp, 3) if t_exp else None,
        "dice": dice,
        "mean_dice": float(np.mean(vals)) if vals else float("nan"),
        "voxel_agreement": float((lab_float == lab_exp).mean()),
    }

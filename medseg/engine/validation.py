"""Validation: sliding-window inference on whole volumes, metrics on each case's native grid.

The prediction is made on the preprocessed grid (RAS, workflow spacing), its class
probabilities are resampled by world coordinates onto the label's original grid by the
resampler `medseg segment` uses (`medseg.resample.labels_on_grid`), and Dice/HD95 (all of
`medseg.metrics.evaluate_case`) are computed there: validation scores exactly the label map
`segment` would write, and the numbers are those a user would measure on the original scan.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from torch import nn

from medseg.metrics import evaluate_case
from medseg.postprocess import keep_largest_component
from medseg.resample import labels_on_grid


def predict_native(
    model: nn.Module, image: MetaTensor, native_affine: np.ndarray, native_shape: tuple[int, ...], roi_size: list[int],
    overlap: float, sw_batch_size: int, device: torch.device, autocast_dtype: torch.dtype | None,
) -> np.ndarray:
    """Label map (argmax) on the native grid for one preprocessed image ``(C, X, Y, Z)``.

    ``autocast_dtype``: the forward pass's autocast dtype (training's precision); None = fp32.
    """
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with torch.no_grad(), autocast:
        logits = sliding_window_inference(
            image[None].to(device), roi_size=roi_size, sw_batch_size=sw_batch_size, predictor=model, overlap=overlap, mode="gaussian"
        )
    if isinstance(logits, MetaTensor):
        logits = logits.as_tensor()
    probs = torch.softmax(logits.float(), dim=1)[0].cpu()
    labels, _ = labels_on_grid(probs, np.asarray(image.affine, dtype=np.float64), np.asarray(native_affine, dtype=np.float64),
                               tuple(int(n) for n in native_shape), list(range(probs.shape[0])))
    return np.ascontiguousarray(labels, dtype=np.uint8)


def validate(
    model: nn.Module, dataset: Any, class_names: dict[int, str], roi_size: list[int], overlap: float,
    sw_batch_size: int, device: torch.device, autocast_dtype: torch.dtype | None, largest_component: list[int] | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """Evaluate `model` on every case of `dataset` (items of `validation_transforms`).

    ``autocast_dtype``: autocast dtype of the forward passes (None = fp32).
    ``largest_component``: classes reduced to their largest connected component before scoring
    (the post-processing of `medseg.inference.postprocess`, as ``medseg segment`` applies it).

    Returns:
        ``(mean_dice, rows)``: the mean Dice over (case, label) pairs whose label is present in the
        ground truth (absent labels would score 1 or 0 on false positives alone), and one row per
        case and label (`evaluate_case`'s keys plus ``case`` and ``present``).
    """
    was_training = model.training
    model.eval()
    rows: list[dict[str, Any]] = []
    try:
        for i in range(len(dataset)):
            item = dataset[i]
            gt = np.asarray(item["label_native"])
            affine = np.asarray(item["native_affine"])
            pred = predict_native(model, item["image"], affine, gt.shape, roi_size, overlap, sw_batch_size, device, autocast_dtype)
            if largest_component:
                pred = keep_largest_component(pred, list(largest_component))
            spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
            for row in evaluate_case(gt, pred, spacing, labels=class_names):
                row["case"] = item.get("name", str(i))
                row["present"] = row["volume_gt_ml"] > 0
                rows.append(row)
    finally:
        model.train(was_training)
    present = [r["dice"] for r in rows if r["present"]]
    return (float(np.mean(present)) if present else math.nan), rows


def per_label_summary(rows: list[dict[str, Any]], class_names: dict[int, str]) -> dict[str, float]:
    """``{"dice_<name>": mean, "hd95_<name>": mean}`` over cases where the label is present (nan if none)."""
    out: dict[str, float] = {}
    for label, name in class_names.items():
        sel = [r for r in rows if r["label"] == label and r["present"]]
        out[f"dice_{name}"] = float(np.mean([r["dice"] for r in sel])) if sel else math.nan
        out[f"hd95_{name}"] = float(np.mean([r["hd95"] for r in sel])) if sel else math.nan
    return out

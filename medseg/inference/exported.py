"""Loading a model exported by `medseg export` (``.onnx`` / ``.ts`` + its sidecar JSON) as a
`LoadedModel`, so `medseg segment --model model.onnx` works exactly like with the ``.pt``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from medseg.device import resolve_device
from medseg.errors import CheckpointError
from medseg.inference.loaded_model import LoadedModel, file_fingerprint


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` → ``model.onnx.json`` (labels, plan, inference defaults)."""
    return Path(f"{path}.json")


class FixedBatchNetwork:
    """Run a fixed-batch network on any batch: zero-pad a smaller batch, split a larger one."""

    def __init__(self, fn: Any, batch: int) -> None:
        self.fn, self.batch = fn, int(batch)

    def __call__(self, x: Any) -> Any:
        import torch

        n = x.shape[0]
        outs = []
        for start in range(0, n, self.batch):
            part = x[start : start + self.batch]
            k = part.shape[0]
            if k < self.batch:
                part = torch.cat([part, part.new_zeros((self.batch - k, *part.shape[1:]))])
            outs.append(self.fn(part)[:k])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def eval(self) -> FixedBatchNetwork:
        return self

    def to(self, *args: Any, **kwargs: Any) -> FixedBatchNetwork:
        return self


class OnnxNetwork(FixedBatchNetwork):
    """An ONNX Runtime session behind the ``network(x) -> logits`` call inference uses."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        # a dynamic batch axis (image models) takes any batch at once; a fixed one is padded/split
        self.dynamic_batch = not isinstance(inp.shape[0], int)
        super().__init__(self._run, 1 if self.dynamic_batch else inp.shape[0])

    def __call__(self, x: Any) -> Any:
        return self._run(x) if self.dynamic_batch else super().__call__(x)

    def _run(self, x: Any) -> Any:
        import torch

        out = self.session.run(None, {self.input_name: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out)



def save_torchscript(net: Any, example: Any, out_path: Path, ckpt: Path) -> None:
    """Trace `net` on `example`, freeze it and save it to `out_path` (atomically): the
    TorchScript step of both exporters (segmentation and image-to-image).

    Raises:
        InputError: tracing failed (named with `ckpt`).
    """
    import torch

    from medseg.errors import InputError
    from medseg.io.atomic import atomic_path

    # torch ≥ 2.9 marks TorchScript deprecated; it still is what C++/Triton/DJL deployments load
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            traced = torch.jit.freeze(torch.jit.trace(net, example, check_trace=False))
        except Exception as exc:
            raise InputError(f"{ckpt}: TorchScript tracing failed ({type(exc).__name__}: {exc})") from exc
        with atomic_path(out_path, suffix=".ts") as tmp:
            torch.jit.save(traced, str(tmp))


def quantize_onnx_int8(float_path: Path, out_path: Path) -> None:
    """ONNX Runtime dynamic int8 quantisation of `float_path` into `out_path` (atomically); the
    float file is removed afterwards, whether it worked or not (it was only an intermediate)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from medseg.io.atomic import atomic_path

    try:
        with atomic_path(out_path, suffix=".onnx") as qtmp:
            quantize_dynamic(str(float_path), str(qtmp), weight_type=QuantType.QInt8)
    finally:
        float_path.unlink(missing_ok=True)


def load_exported(path: str | os.PathLike[str], device: Any = "cpu") -> LoadedModel:
    """Load an exported ``.onnx`` / ``.ts`` file with its sidecar JSON as a `LoadedModel`.

    ONNX models run on the CPU (ONNX Runtime); TorchScript on `device`.

    Raises:
        CheckpointError: file or sidecar missing/unreadable.
    """
    import torch

    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: exported model not found")
    try:
        info = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: its sidecar {side.name} (labels, preprocessing) is missing or unreadable; "
            "re-export with medseg export"
        ) from exc
    task = info.get("task")
    if task not in ("segmentation", "denoising", "gan"):
        raise CheckpointError(f"{path}: exported {task!r} model; expected a segmentation or image-to-image (denoising, gan) model")
    if path.suffix == ".onnx":
        dev = torch.device("cpu")
        network: Any = OnnxNetwork(path)
    else:
        dev = device if isinstance(device, torch.device) else resolve_device(str(device))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                traced = torch.jit.load(str(path), map_location=dev).eval()
            batch = info.get("input_shape", [1])[0]
            network = FixedBatchNetwork(traced, batch) if isinstance(batch, int) else traced  # image models: any batch
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot load as TorchScript ({type(exc).__name__}: {exc})") from exc
    return LoadedModel(
        path=path,
        network=network,
        labels={int(k): v for k, v in sorted(info["labels"].items(), key=lambda kv: int(kv[0]))},
        plan=dict(info["preprocessing"]),
        inference=dict(info["inference"]),
        device=dev,
        fingerprint=file_fingerprint(path),
        metrics=dict(info.get("metrics") or {}),
        task=str(task),
    )

"""`medseg export CKPT --format torchscript|onnx [--quantize int8]` (see `medseg.inference.export`)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        checkpoint: Path = typer.Argument(..., help="Segmentation checkpoint (.pt)."),
        fmt: str = typer.Option("torchscript", "--format", "-f", help="torchscript | onnx."),
        quantize: str = typer.Option(None, help="int8: ONNX Runtime dynamic quantization for CPU (onnx only)."),
        out: Path = typer.Option(None, "--out", "-o", help="Output file (default: next to the checkpoint)."),
        check: Path = typer.Option(
            None, help="Image (NIfTI/NRRD/MHA or DICOM folder) to compare the export with the float model on: time + Dice."
        ),
    ) -> None:
        """Export a segmentation checkpoint for deployment; `medseg segment --model` accepts the result.

        A sidecar OUT.json carries the labels and preprocessing plan.
        """
        from rich.console import Console
        from rich.table import Table

        from medseg.inference.export import compare_with_float, export_model
        from medseg.terminal import literal

        path = export_model(checkpoint, out, fmt=fmt.lower(), quantize=quantize)
        console = Console()
        console.print(f"exported {literal(checkpoint)} → {literal(path)} (+ {literal(path.name)}.json)", highlight=False)
        if check is not None:
            from medseg.io import load_volume

            res = compare_with_float(checkpoint, path, load_volume(check))
            table = Table(title=f"{literal(path.name)} vs float checkpoint on {literal(check.name)}")
            table.add_column("label")
            table.add_column("Dice vs float", justify="right")
            for name, d in res["dice"].items():
                table.add_row(literal(name), f"{d:.4f}")
            console.print(table)
            console.print(
                f"segment_volume time: float {res['float_s']:.2f} s, exported {res['exported_s']:.2f} s "
                f"(×{res['speedup']:.2f}); mean Dice vs float {res['mean_dice']:.4f}, "
                f"voxel agreement {100 * res['voxel_agreement']:.2f} %"
            )

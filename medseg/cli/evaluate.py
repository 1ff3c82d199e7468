"""`medseg evaluate GT PRED --out DIR`: Dice, IoU, HD, HD95, ASSD, NSD → CSV, JSON, HTML."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        gt: Path = typer.Argument(..., help="Ground-truth label file, or folder of them (NIfTI/NRRD/MHA, DICOM)."),
        pred: Path = typer.Argument(..., help="Prediction file or folder; matched to GT by file name without suffix. DICOM SEG .dcm accepted."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder for metrics.csv, summary.json, report.html."),
        labels: Optional[str] = typer.Option(None, "--labels", help="Labels to evaluate and their names: '1=liver,2=spleen' or a JSON file {\"1\": \"liver\"}. Default: all labels present."),
        images: Optional[Path] = typer.Option(None, "--images", help="Image file/folder (same case names): draw the worst cases' slices with contours."),
        nsd_tolerance: float = typer.Option(1.0, "--nsd-tolerance", help="Tolerance τ of the normalised surface Dice, in mm."),
        resample: bool = typer.Option(False, "--resample", help="Resample predictions on another grid onto the GT grid (nearest neighbour) instead of failing them."),
        workers: int = typer.Option(1, "--workers", "-j", min=1, help="Cases scored in parallel (processes)."),
        worst: int = typer.Option(3, "--worst", min=0, help="Worst cases per label shown in report.html."),
    ) -> None:
        """Score predictions against ground truth and write metrics.csv, summary.json, report.html.

        Exit code 0 when every ground-truth case had a prediction and was scored; 1 when a case was missing or failed (the reports are still written and list them) or on bad input.
        """
        from rich.console import Console
        from rich.table import Table

        from medseg.report import evaluate_folders, parse_label_names
        from medseg.terminal import literal

        result = evaluate_folders(
            gt, pred, out, labels=parse_label_names(labels), images=images, nsd_tolerance_mm=nsd_tolerance,
            resample=resample, workers=workers, worst_cases=worst, progress=True,
        )
        console = Console()
        table = Table(title=f"{result.summary['cases']['evaluated']} of {result.summary['cases']['total']} case(s) scored (mean over finite values)")
        table.add_column("label")
        for key in ("dice", "iou", "hd", "hd95", "assd", "nsd"):
            table.add_column(key, justify="right")
        table.add_column("inf", justify="right")
        for name, s in result.summary["per_label"].items():
            cells = ["–" if s[k]["mean"] is None else f"{s[k]['mean']:.3f}" for k in ("dice", "iou", "hd", "hd95", "assd", "nsd")]
            table.add_row(literal(name), *cells, str(s["hd"]["inf"]))
        console.print(table)
        console.print(f"wrote {literal(result.metrics_csv)}, {literal(result.summary_json)}, {literal(result.report_html)}", highlight=False)
        err = Console(stderr=True)
        for case in result.missing:
            err.print(f"[yellow]missing prediction:[/] {literal(case)}", highlight=False)
        for case, msg in result.failed.items():
            err.print(f"[bold red]failed:[/] {literal(case)}: {literal(msg)}", highlight=False)
        if not result.ok:
            err.print(
                f"[bold red]error:[/] {len(result.missing)} missing and {len(result.failed)} failed case(s); "
                f"see {literal(result.report_html)}", highlight=False,
            )
            raise typer.Exit(1)

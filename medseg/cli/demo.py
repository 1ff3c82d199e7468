"""`medseg demo --out DIR`: the README demo (see `medseg.demo`)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("demo_output"), "--out", "-o", help="Output folder."),
        checkpoint: Path = typer.Option(None, help="Skip training; segment with this checkpoint."),
        epochs: int = typer.Option(None, min=1, help="Training epochs (default: the demo's few-minute run)."),
        device: str = typer.Option("cpu", help="cpu | auto | cuda."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
    ) -> None:
        """Train briefly on the bundled CT, batch-segment a DICOM tree (NIfTI + DICOM SEG + volumes +
        QA PNG) and write an evaluation report against the reference labels."""
        import logging
        import time

        from rich.console import Console
        from rich.table import Table

        from medseg.demo import DEMO_OVERRIDES, run_demo

        console = Console()
        # the training engine reports each epoch at INFO; show it without -v
        eng = logging.getLogger("medseg.engine")
        if eng.getEffectiveLevel() > logging.INFO:
            eng.setLevel(logging.INFO)
        overrides = list(DEMO_OVERRIDES)
        if epochs:
            overrides = [o for o in overrides if not o.startswith("training.epochs=")] + [f"training.epochs={epochs}"]
        console.rule("[bold]medseg demo")
        t0 = time.perf_counter()
        res = run_demo(out, checkpoint=checkpoint, train_overrides=tuple(overrides), device=device, progress=progress)
        total = time.perf_counter() - t0

        from medseg.terminal import literal

        table = Table(title="DICOM tree → batch segmentation", show_lines=False)
        for col in ("series folder", "status", "outputs / reason"):
            table.add_column(col, overflow="fold")
        for s in res.summary.get("series", []):
            detail = s["reason"] or ", ".join(s["outputs"].values())
            table.add_row(literal(s["source"]), literal(s["status"]), literal(detail))
        console.print(table)
        ev = res.summary.get("evaluation") or {}
        rows = ev.get("rows") or []
        if rows:
            t = Table(title="Evaluation against the reference labels (TotalSegmentator)")
            for col in ("case", "label", "Dice", "HD95 mm", "volume GT mL", "volume pred mL"):
                t.add_column(col, justify="right" if col not in ("case", "label") else "left")
            for r in rows:
                t.add_row(
                    literal(r.get("case")), literal(r.get("name")), _f(r.get("dice")), _f(r.get("hd95"), 1),
                    _f(r.get("volume_gt_ml"), 1), _f(r.get("volume_pred_ml"), 1),
                )
            console.print(t)
        console.print("[bold]Where everything is[/]")
        items = [
            ("trained run", res.run_dir),
            ("checkpoint", res.checkpoint),
            ("DICOM input tree", res.dicom_dir),
            ("segmentations (one folder per series)", res.segment_dir),
            ("batch manifest", res.manifest),
            ("evaluation report", res.report_html),
        ]
        for name, path in items:
            if path is not None:
                console.print(f"  {name:40s} {literal(path)}", highlight=False)
        console.print(
            "  timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in res.timings_s.items()) + f"; total {total:.0f} s"
        )
        for m in res.missing:
            console.print(f"[yellow]missing:[/] {literal(m)}", highlight=False)


def _f(v, digits: int = 3) -> str:
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return "-"

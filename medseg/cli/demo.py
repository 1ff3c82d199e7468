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
        enhance: bool = typer.Option(
            False, "--enhance",
            help="Instead: the low-dose chain. Simulate the held-out CT series at --dose, enhance it (RED-CNN), "
                 "segment full dose, low dose and enhanced, report the Dice of each organ for all three.",
        ),
        seg_model: Path = typer.Option(None, "--seg-model", help="--enhance: segmentation checkpoint (default: train the demo's)."),
        enhance_model: Path = typer.Option(None, "--enhance-model", help="--enhance: enhancement checkpoint (default: train a RED-CNN briefly)."),
        dose: float = typer.Option(0.1, "--dose", min=0.01, max=0.99, help="--enhance: simulated dose fraction."),
        enhance_epochs: int = typer.Option(None, "--enhance-epochs", min=1, help="--enhance: epochs of the enhancer's training."),
    ) -> None:
        """Train briefly on the bundled CT, batch-segment a DICOM tree (NIfTI + DICOM SEG + volumes +
        QA PNG) and write an evaluation report against the reference labels. With --enhance: the
        low-dose chain (simulate → enhance → segment, Dice at full dose, low dose and enhanced)."""
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
        if enhance:
            _enhance_demo(console, out, seg_model or checkpoint, enhance_model, dose, tuple(overrides), enhance_epochs, device, progress)
            return
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


def _enhance_demo(console, out: Path, seg_model, enhance_model, dose: float, seg_overrides: tuple[str, ...],
                  enhance_epochs, device: str, progress: bool) -> None:
    import time

    from rich.table import Table

    from medseg.demo_enhance import CONDITIONS, ENHANCE_OVERRIDES, run_enhance_demo
    from medseg.terminal import literal

    enh_overrides = list(ENHANCE_OVERRIDES)
    if enhance_epochs:
        enh_overrides = [o for o in enh_overrides if not o.startswith("training.epochs=")] + [f"training.epochs={enhance_epochs}"]
    console.rule(f"[bold]medseg demo --enhance (dose {dose:g})")
    t0 = time.perf_counter()
    res = run_enhance_demo(out, seg_model=seg_model, enhance_model=enhance_model, dose=dose, seg_overrides=seg_overrides,
                           enhance_overrides=tuple(enh_overrides), device=device, progress=progress)
    total = time.perf_counter() - t0
    table = Table(title=f"Dice per organ: full dose, {100 * dose:g} % dose, {100 * dose:g} % dose enhanced")
    table.add_column("organ")
    for c in CONDITIONS:
        table.add_column(c.replace("_", " "), justify="right")
    for organ, d in res.dice.items():
        table.add_row(literal(organ), *(_f(d.get(c)) for c in CONDITIONS))
    console.print(table)
    for name, path in (("segmentation checkpoint", res.seg_checkpoint), ("enhancement checkpoint", res.enhance_checkpoint),
                       ("input series (DICOM)", res.dicom_dir), ("Dice table", res.csv), ("report", res.report_html)):
        console.print(f"  {name:28s} {literal(path)}", highlight=False)
    console.print("  timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in res.timings_s.items()) + f"; total {total:.0f} s")


def _f(v, digits: int = 3) -> str:
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return "-"

"""`medseg segment INPUT OUTDIR --model CKPT`: batch segmentation (see `medseg.inference.batch`)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("segment")
    def segment_cmd(
        input_path: Path = typer.Argument(..., help="DICOM folder tree, NIfTI/NRRD/MHA file, or a folder of them."),
        out_dir: Path = typer.Argument(..., help="Output folder: one sub-folder per series + segment.json/csv."),
        model: list[Path] = typer.Option(..., "--model", "-m", help="Checkpoint (.pt); repeat to ensemble several."),
        device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
        overlap: float = typer.Option(None, min=0.0, max=0.95, help="Sliding-window overlap (default: checkpoint's)."),
        sw_batch_size: int = typer.Option(None, min=1, help="Windows per forward pass (default: checkpoint's)."),
        tta: bool = typer.Option(False, "--tta", help="Flip test-time augmentation (4× slower)."),
        largest_component: bool = typer.Option(False, "--largest-component", help="Keep the largest component of each label."),
        lcc_labels: str = typer.Option(
            None, help="With --largest-component: only these label values, comma-separated (e.g. 1,2,4; not paired organs)."
        ),
        fill_holes: bool = typer.Option(False, "--fill-holes", help="Fill enclosed holes of each label."),
        probabilities: bool = typer.Option(False, "--probabilities", help="Also write per-class probabilities (large)."),
        spacing: tuple[float, float, float] = typer.Option(
            None, help="Override the model's target spacing in mm (X Y Z); coarser needs less memory."
        ),
        modality: list[str] = typer.Option(None, help="Only DICOM series of this modality (repeatable) (default: the model's)."),
        series_regex: str = typer.Option(None, help="Only series whose SeriesDescription matches (case-insensitive)."),
        min_slices: int = typer.Option(1, min=1, help="Skip series with fewer slices."),
        dicom_seg: bool = typer.Option(True, "--dicom-seg/--no-dicom-seg", help="Write DICOM SEG for DICOM input."),
        seg_type: str = typer.Option("binary", help="binary | labelmap: DICOM SEG type (labelmap: one frame per slice, much smaller)."),
        rtstruct: bool = typer.Option(False, "--rtstruct", help="Also write a DICOM RTSTRUCT for DICOM input."),
        uncertainty: bool = typer.Option(False, "--uncertainty", help="Write the uncertainty map (NIfTI); scores go to the manifest."),
        qa: bool = typer.Option(True, "--qa/--no-qa", help="Write the QA PNG."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Redo series finished by a previous run."),
        shard: str = typer.Option(None, help="i/N: process only shard i of N (1-based, stable by series UID)."),
        precision: str = typer.Option(
            "auto", help="auto | fp32 | fp16 | bf16 (auto: fp16 on CUDA, fp32 on CPU; bf16 is fast on CPUs with native bf16)."
        ),
        threads: int = typer.Option(None, min=1, help="CPU threads for torch (default: torch's)."),
        workers: int = typer.Option(
            None, min=0,
            help="Background processes that read/preprocess series ahead of the network, and as many that "
            "resample and write them (default: 0 below 4 CPUs, else 1; 2 with a GPU and 8+ CPUs). Outputs do not depend on it.",
        ),
        jobs: int = typer.Option(
            1, min=1, help="Run the batch as N independent shard processes (shards 1/N … N/N), manifests merged.",
        ),
        max_memory_gb: float = typer.Option(None, help="Refuse series estimated to need more memory (default: 90% of free)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
    ) -> None:
        """Segment every series under INPUT: NIfTI + DICOM SEG + volumes CSV + QA PNG per series.

        Resumable: re-running the same command skips finished series. Exit code 1 when any
        series failed (the others are still written; see OUTDIR/segment.json).
        """
        from medseg.inference import BatchOptions, InferenceOptions, parse_shard, segment_batch

        inf = InferenceOptions(
            device=device,
            overlap=overlap,
            sw_batch_size=sw_batch_size,
            precision=precision,
            tta=tta,
            largest_component=largest_component,
            largest_component_labels=_int_list(lcc_labels) if lcc_labels else None,
            fill_holes=fill_holes,
            probabilities=probabilities,
            uncertainty=uncertainty,
            spacing_mm=tuple(spacing) if spacing else None,
            max_memory_gb=max_memory_gb,
        )
        opts = BatchOptions(
            inference=inf,
            modalities=tuple(modality) if modality else None,
            series_regex=series_regex,
            min_slices=min_slices,
            dicom_seg=dicom_seg,
            seg_type=seg_type,
            rtstruct=rtstruct,
            qa_png=qa,
            overwrite=overwrite,
            shard=parse_shard(shard) if shard else None,
            workers=workers,
            jobs=jobs,
            threads=threads,
            progress=progress,
        )
        result = segment_batch(input_path, out_dir, model, opts)

        print_batch_result(result, f"medseg segment → {out_dir}")


def print_batch_result(result: object, title: str) -> None:
    """The batch's table (values from files printed literally) and its exit code 1 on any failure."""
    from rich.console import Console
    from rich.table import Table

    from medseg.terminal import literal

    console = Console()
    table = Table(title=literal(title), show_lines=False)
    for col in ("series", "modality", "slices", "status", "s", "detail"):
        table.add_column(col, overflow="fold")
    colour = {"done": "green", "skipped": "yellow", "failed": "bold red", "pending": "dim"}
    for r in result.records:  # type: ignore[attr-defined]
        detail = r.reason or ("previous run" if r.previous_run else ", ".join(r.outputs.values()))
        if r.warnings:
            detail += " (warnings: " + "; ".join(r.warnings) + ")"
        table.add_row(
            literal(r.stem), literal(r.modality or "-"), str(r.n_slices or "-"), f"[{colour.get(r.status, '')}]{r.status}[/]",
            f"{r.seconds:.1f}" if r.seconds is not None else "-", literal(detail),
        )
    console.print(table)
    from medseg.io.dicom import is_damaged

    damaged = [u for u in result.unreadable_files if is_damaged(u["reason"])]  # type: ignore[attr-defined]
    err = Console(stderr=True)
    for u in damaged[:20]:  # damaged files by name; every skipped file is in the manifest
        err.print(f"[yellow]unreadable:[/] {literal(u['path'])}: {literal(u['reason'])}", highlight=False)
    if len(damaged) > 20:
        err.print(f"[yellow]unreadable:[/] … and {len(damaged) - 20} more (see the manifest)", highlight=False)
    console.print(
        f"{result.n_done} done, {result.n_skipped} skipped, {result.n_failed} failed"  # type: ignore[attr-defined]
        + (f", {len(result.unreadable_files)} unreadable files" if result.unreadable_files else "")  # type: ignore[attr-defined]
        + f" — manifest: {literal(result.manifest_path)}",  # type: ignore[attr-defined]
        highlight=False,
    )
    if not result.ok:  # type: ignore[attr-defined]
        raise typer.Exit(code=1)


def _int_list(text: str) -> tuple[int, ...]:
    from medseg.errors import InputError

    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise InputError(f"--lcc-labels {text!r}: expected comma-separated label values, e.g. 1,2,4") from None

"""`medseg convert INPUT OUTDIR`: DICOM tree / NIfTI / NRRD / MHA → one NIfTI per series + series.json."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert_cmd(
        input_path: Path = typer.Argument(..., metavar="INPUT", help="DICOM folder tree, DICOM file, or NIfTI/NRRD/MHA file."),
        out_dir: Path = typer.Argument(..., metavar="OUTDIR", help="Output folder (created): <series>.nii.gz files and series.json."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Pixel decoding threads per series (default: automatic)."),
        processes: int = typer.Option(0, "--processes", min=0, help="Worker processes for large JPEG 2000/JPEG-LS/JPEG series, whose decoders hold the GIL (helps on idle multi-core machines). 0 = none."),
    ) -> None:
        """Write one NIfTI per image series found in INPUT, and OUTDIR/series.json describing
        each series (output file, modality, shape, spacing, orientation, warnings, error) and
        each skipped file. One bad series never stops the others; exit code 1 if any failed.
        """
        from rich.console import Console

        from medseg.io.convert import SERIES_JSON, convert_to_nifti
        from medseg.terminal import literal

        result = convert_to_nifti(input_path, out_dir, progress=True, threads=threads, processes=processes)
        console = Console()
        err = Console(stderr=True)
        for e in result.index["series"]:
            uid = e["series_instance_uid"] or ""
            if e["output"]:
                shape = "×".join(str(v) for v in e["shape"])
                console.print(f"[green]wrote[/] {literal(e['output'])} ({literal(e['modality'] or 'volume')}, {shape})", highlight=False)
            elif e["error"]:
                err.print(f"[bold red]failed:[/] {literal(e['error'])}", highlight=False)
            else:
                console.print(f"[dim]not converted (no image):[/] series {literal(uid)} ({literal(e['modality'] or '?')})", highlight=False)
            for w in e["warnings"] if e["output"] else []:
                err.print(f"  [yellow]warning:[/] {literal(w)}", highlight=False)
        truncated = [k for k in result.index["skipped"] if k.get("damaged")]
        for k in truncated:  # damaged files are named; the other skips (non-DICOM...) are in series.json
            err.print(f"  [yellow]unreadable:[/] {literal(k['path'])}: {literal(k['reason'])}", highlight=False)
        if result.index["skipped"]:
            console.print(f"{len(result.index['skipped'])} file(s) skipped (reasons in {SERIES_JSON})", highlight=False)
        console.print(
            f"{result.n_converted} series converted, {result.n_failed} failed → {literal(result.out_dir / SERIES_JSON)}", highlight=False
        )
        if result.n_converted == 0 and result.n_failed == 0:
            err.print(f"[bold red]error:[/] no image series found in {literal(input_path)}", highlight=False)
            raise typer.Exit(1)
        if not result.ok:
            raise typer.Exit(1)

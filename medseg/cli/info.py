"""`medseg info PATH`: table of the DICOM series / volume found (no patient names or IDs)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info_cmd(
        path: Path = typer.Argument(..., help="DICOM folder tree, DICOM file, or NIfTI/NRRD/MHA file."),
        as_json: bool = typer.Option(False, "--json", help="Print the series as JSON instead of a table."),
        show_skipped: bool = typer.Option(False, "--skipped", help="Also list every skipped file and why."),
    ) -> None:
        """List the image series found under PATH: modality, description, shape, spacing,
        orientation, file count and warnings. Reads headers only. Never prints patient data.
        """
        from rich.console import Console
        from rich.table import Table

        from medseg.io.convert import describe_input
        from medseg.terminal import literal

        desc = describe_input(path, progress=False)
        if as_json:
            # json.dumps escapes control characters itself (ensure_ascii)
            typer.echo(json.dumps({"series": [s.as_json() for s in desc.series], "skipped": desc.skipped}, indent=2))
            return
        console = Console()
        n_img = sum(s.is_image for s in desc.series)
        title = f"{literal(path)}: {n_img} image series" + (
            f", {len(desc.series) - n_img} other object(s)" if len(desc.series) > n_img else ""
        ) + (f", {len(desc.skipped)} file(s) skipped" if desc.skipped else "")
        table = Table(title=title)
        for col, kw in [
            ("#", {"justify": "right", "no_wrap": True}),
            ("mod.", {"no_wrap": True}),
            ("description", {"overflow": "fold"}),
            ("shape", {"overflow": "fold"}),
            ("spacing mm", {"no_wrap": True}),
            ("orient", {"no_wrap": True}),
            ("files", {"justify": "right", "no_wrap": True}),
            ("warn", {"justify": "right", "no_wrap": True}),
        ]:
            table.add_column(col, **kw)
        notes = []
        for n, s in enumerate(desc.series, start=1):
            if s.error:
                shape = "[red]unreadable[/]"
            elif s.shape:
                shape = "×".join(str(v) for v in s.shape)
            else:
                shape = f"[dim]{literal(s.kind or 'not an image')}[/]"
            spacing = "×".join(f"{v:.3g}" for v in s.spacing) if s.spacing else ""
            table.add_row(
                "" if s.series_number is None else str(s.series_number),
                literal(s.modality or ""),
                literal(s.description),
                shape,
                spacing,
                literal(s.orientation or ""),
                str(s.n_files),
                f"[yellow]{len(s.warnings)}[/]" if s.warnings else "",
            )
            num = "-" if s.series_number is None else str(s.series_number)
            if s.error:
                notes.append(f"[red]error[/] series #{num} {literal(repr(s.description))}: {literal(s.error)}")
            for w in s.warnings:
                notes.append(f"[yellow]warning[/] series #{num} {literal(repr(s.description))}: {literal(w)}")
        console.print(table)
        for note in notes:
            console.print(note, highlight=False)
        if desc.skipped:
            if show_skipped:
                for k in desc.skipped:
                    console.print(f"[dim]skipped[/] {literal(k['path'])}: {literal(k['reason'])}", highlight=False)
            else:
                from medseg.io.dicom import is_damaged

                for k in desc.skipped:  # damaged files by name; the rest (non-DICOM...) counted
                    if is_damaged(k["reason"]):
                        console.print(f"[yellow]unreadable[/] {literal(k['path'])}: {literal(k['reason'])}", highlight=False)
                reasons: dict[str, int] = {}
                for k in desc.skipped:
                    key = k["reason"].split(":")[0].split("(")[0].strip()
                    reasons[key] = reasons.get(key, 0) + 1
                summary = ", ".join(f"{n}× {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
                console.print(f"skipped {len(desc.skipped)} file(s): {literal(summary)} (--skipped lists them)", highlight=False)
        if n_img == 0:
            raise typer.Exit(1)

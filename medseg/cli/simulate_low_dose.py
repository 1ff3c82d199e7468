"""`medseg simulate-low-dose INPUT OUTDIR --dose 0.25`: simulated lower-dose CT (noise insertion)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("simulate-low-dose")
    def simulate_low_dose_cmd(
        input_path: Path = typer.Argument(..., metavar="INPUT", help="CT as NIfTI/NRRD/MHA file, folder of such files, or DICOM folder/file."),
        out_dir: Path = typer.Argument(..., metavar="OUTDIR", help="Output folder (created): <case>_dose<pct>.nii.gz (+ _dicom/ for DICOM input) and .json."),
        dose: float = typer.Option(0.25, "--dose", min=0.0, max=1.0, help="Dose fraction to simulate, in (0, 1] (0.25 = quarter dose)."),
        photons_per_ray: Optional[float] = typer.Option(None, "--photons-per-ray", help="Unattenuated photons per ray and view at normal dose (I0); default: from a normal-dose fluence of 1.1e9 photons/mm² per rotation, the detector bin width, the slice spacing and the views (see medseg.ct.low_dose)."),
        views: Optional[int] = typer.Option(None, "--views", min=1, help="Projection angles (default 720 parallel / 1440 fan)."),
        detector_pixels: Optional[int] = typer.Option(None, "--detector-pixels", min=2, help="Detector bins (default: cover the image, one pixel wide)."),
        electronic_noise: float = typer.Option(0.0, "--electronic-noise", min=0.0, help="Electronic noise std in photons of one simulated ray (default 0: see medseg.ct.low_dose)."),
        geometry: str = typer.Option("parallel", "--geometry", help="'parallel' or 'fan' (equi-angular detector)."),
        fbp_filter: str = typer.Option("hann", "--filter", help="FBP window of the inserted noise: hann (default, soft-tissue-kernel-like), hamming, cosine, shepp-logan, ram-lak (sharpest, most noise)."),
        seed: int = typer.Option(0, "--seed", help="Random seed (the noise of slice k depends only on seed and k)."),
        series_uid: Optional[str] = typer.Option(None, "--series-uid", help="DICOM input: only this SeriesInstanceUID."),
        no_dicom: bool = typer.Option(False, "--no-dicom", help="DICOM input: write NIfTI only, no derived DICOM series."),
        device: Optional[str] = typer.Option(None, "--device", help="torch device, e.g. cuda (default CPU)."),
    ) -> None:
        """Simulate a lower-dose scan of each CT in INPUT: the extra quantum and electronic noise
        of the lower dose is inserted in the projection domain (forward projection, noise of
        the extra variance only, FBP), so --dose 1 returns the input unchanged. Re-running
        skips cases already done with the same parameters.
        """
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from medseg.ct.low_dose_io import LowDoseParams, simulate_low_dose_inputs
        from medseg.errors import ConfigError
        from medseg.terminal import literal

        if not dose > 0:
            raise ConfigError(f"--dose must be in (0, 1], got {dose}")
        params = LowDoseParams(dose_fraction=dose, photons_per_ray=photons_per_ray, views=views,
                               detector_pixels=detector_pixels, electronic_noise_std=electronic_noise,
                               geometry=geometry, filter=fbp_filter, seed=seed)
        console, err = Console(), Console(stderr=True)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("slices"),
                      TimeRemainingColumn(), console=err, transient=True) as bar:
            tasks: dict[str, int] = {}

            def progress(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(literal(name), total=total)
                bar.update(tasks[name], completed=done)

            results = simulate_low_dose_inputs(input_path, out_dir, params, series_uid=series_uid,
                                               write_dicom=not no_dicom, device=device, progress=progress)
        failed = 0
        for r in results:
            if r.error:
                failed += 1
                err.print(f"[bold red]failed:[/] {literal(r.source)}: {literal(r.error)}", highlight=False)
                continue
            verb = "already done" if r.skipped else "wrote"
            extra = f" and {literal(r.dicom_dir)}" if r.dicom_dir else ""
            console.print(f"[green]{verb}[/] {literal(r.nifti)}{extra}", highlight=False)
            for w in r.warnings:
                err.print(f"  [yellow]warning:[/] {literal(w)}", highlight=False)
        console.print(f"{len(results) - failed} case(s) simulated at dose {dose:g}, {failed} failed → {literal(out_dir)}")
        if failed:
            raise typer.Exit(1)

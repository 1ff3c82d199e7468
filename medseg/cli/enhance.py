"""`medseg enhance INPUT OUTDIR --model CKPT`: apply an image-to-image checkpoint (denoising,
low-dose CT GAN) to every series, on the batch runner of `medseg segment` (`medseg.inference.batch`)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("enhance")
    def enhance_cmd(
        input_path: Path = typer.Argument(..., help="DICOM folder tree, NIfTI/NRRD/MHA file, or a folder of them."),
        out_dir: Path = typer.Argument(..., help="Output folder: one sub-folder per series + segment.json/csv."),
        model: Path = typer.Option(..., "--model", "-m", help="Image-to-image checkpoint (.pt, task denoising or gan)."),
        device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
        tta: bool = typer.Option(False, "--tta", help="Mean over mirrored copies (in-plane flips for 2-D models; 4× slower)."),
        modality: list[str] = typer.Option(None, help="Only DICOM series of this modality (repeatable) (default: the model's)."),
        series_regex: str = typer.Option(None, help="Only series whose SeriesDescription matches (case-insensitive)."),
        min_slices: int = typer.Option(1, min=1, help="Skip series with fewer slices."),
        dicom: bool = typer.Option(True, "--dicom/--no-dicom", help="Write a derived DICOM series for DICOM input."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Redo series finished by a previous run."),
        shard: str = typer.Option(None, help="i/N: process only shard i of N (1-based, stable by series UID)."),
        threads: int = typer.Option(None, min=1, help="CPU threads for torch (default: torch's)."),
        workers: int = typer.Option(None, min=0, help="Background processes per stage (see medseg segment --help)."),
        jobs: int = typer.Option(1, min=1, help="Run the batch as N independent shard processes."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
    ) -> None:
        """Enhance every series under INPUT: NIfTI image on the original grid + derived DICOM series.

        Resumable like `medseg segment`; exit code 1 when any series failed.
        """
        from medseg.cli.segment import print_batch_result
        from medseg.errors import CheckpointError
        from medseg.inference import BatchOptions, InferenceOptions, load_models, parse_shard, segment_batch

        models = load_models([model], device)
        if models[0].task == "segmentation":
            raise CheckpointError(f"{model}: a segmentation checkpoint; use `medseg segment` for it")
        opts = BatchOptions(
            inference=InferenceOptions(device=device, tta=tta),
            modalities=tuple(modality) if modality else None,
            series_regex=series_regex,
            min_slices=min_slices,
            derived_series=dicom,
            overwrite=overwrite,
            shard=parse_shard(shard) if shard else None,
            workers=workers,
            jobs=jobs,
            threads=threads,
            progress=progress,
        )
        result = segment_batch(input_path, out_dir, [model], opts, models=models)
        print_batch_result(result, f"medseg enhance → {out_dir}")

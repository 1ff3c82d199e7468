"""`medseg version`: versions of medseg and the libraries it relies on (for bug reports)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("version")
    def version_cmd() -> None:
        """Print medseg's version and those of its key libraries, and the compute devices."""
        from importlib.metadata import PackageNotFoundError, version

        from medseg import __version__

        typer.echo(f"medseg {__version__}")
        for dist in ("torch", "monai", "pydicom", "highdicom", "nibabel", "SimpleITK", "numpy"):
            try:
                typer.echo(f"{dist} {version(dist)}")
            except PackageNotFoundError:
                typer.echo(f"{dist} (not installed)")
        try:
            import torch

            cuda = torch.cuda.is_available()
            typer.echo(f"cuda: {'yes, ' + torch.cuda.get_device_name(0) if cuda else 'no'}")
        except ImportError:
            pass

"""`medseg train WORKFLOW.yaml`: train a workflow of any task (`medseg.engine.train`)."""

from __future__ import annotations

from pathlib import Path

import typer


def _help_config(value: bool) -> None:
    if value:
        from medseg.config import describe_config

        typer.echo(describe_config())
        raise typer.Exit()


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        workflow: Path = typer.Argument(..., help="Workflow YAML (see workflows/)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run exactly where checkpoints/last.pt left it."),
        device: str = typer.Option("auto", "--device", help="auto (CUDA if available), cpu or cuda."),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a config value, e.g. --set training.epochs=5 (repeatable; value parsed as YAML)."
        ),
        nproc: int = typer.Option(1, "--nproc", min=1, help="Train with N processes (DistributedDataParallel; gloo on CPU, NCCL on GPU)."),
        help_config: bool = typer.Option(
            False, "--help-config", callback=_help_config, is_eager=True, help="List every workflow option of every task with its default and exit."
        ),
    ) -> None:
        """Train a model (segmentation or denoising, by the workflow's task:) from a YAML workflow; writes checkpoints, logs and metrics to the run folder.

        Also runs under torchrun: `torchrun --nproc_per_node=N -m medseg train WORKFLOW.yaml`.
        """
        from medseg.engine import train

        run_dir = train(workflow, overrides=list(set_), resume=resume, device=device, nproc=nproc)
        if _is_main():
            from medseg.terminal import printable

            typer.echo(f"run folder: {printable(run_dir)}")
            typer.echo(f"best checkpoint: {printable(run_dir / 'checkpoints' / 'best.pt')}")


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"

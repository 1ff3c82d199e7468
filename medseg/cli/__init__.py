"""The `medseg` command line.

Each verb lives in its own module in this package (``medseg/cli/<verb>.py``) that defines
``register(app: typer.Typer) -> None``; modules are discovered automatically, so adding a verb
touches no other file. Verb modules import heavy libraries (torch, MONAI) inside the command
function, so ``medseg --help`` stays fast. Each verb parses its input and calls one library
function; no logic lives here.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
import traceback

import typer
from rich.console import Console
from rich.logging import RichHandler

from medseg import __version__
from medseg.errors import MedsegError

app = typer.Typer(
    name="medseg",
    help="CT/MRI segmentation and image enhancement with first-class DICOM support.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err_console = Console(stderr=True)
_state = {"verbose": 0}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging; -v also shows tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version."),
) -> None:
    """CT/MRI segmentation and image enhancement with first-class DICOM support."""
    _state["verbose"] = verbose
    # a CLI process segments/trains and exits: keeping freed memory mapped avoids re-faulting
    # every large block (see medseg/runtime.py)
    from medseg.runtime import keep_freed_memory

    keep_freed_memory()
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = RichHandler(console=err_console, show_path=verbose > 1, rich_tracebacks=False)
    handler.addFilter(_printable_record)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    # pydicom logs every decoder failure as an ERROR with a traceback; medseg reports the
    # slice itself (a missing slice, named), so pydicom's own records show only with -v
    logging.getLogger("pydicom").setLevel(logging.CRITICAL if verbose == 0 else logging.NOTSET)


def _printable_record(record: logging.LogRecord) -> bool:
    """Log records quote file names and tag values: escape their control characters."""
    from medseg.terminal import printable

    try:
        record.msg, record.args = printable(record.getMessage()), None
    except Exception:  # noqa: BLE001 - a malformed record is logging's to report, not ours
        pass
    return True


def _register_verbs() -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_verbs()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `medseg` console script.

    Exit codes: 0 success, 1 failure (a `MedsegError`, or a batch with failed items),
    2 bad usage (typer/click's own handling), 130 interrupted.
    """
    try:
        app(args=argv, prog_name="medseg")  # standalone mode: usage errors exit 2 by themselves
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/] (re-run the same command to continue)")
        sys.exit(130)
    except MedsegError as exc:
        if _state["verbose"]:
            err_console.print(traceback.format_exc(), markup=False, highlight=False)
        from medseg.terminal import literal_lines

        err_console.print(f"[bold red]error:[/] {literal_lines(exc)}", highlight=False)
        sys.exit(1)

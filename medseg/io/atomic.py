"""Atomic file writes: write to a temporary file beside the target, then `os.replace`.

A reader (or a resumed batch) therefore sees either the old file, or the complete new one,
never a half-written file, even if the process is killed mid-write.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# mkstemp creates 0600 files; finished outputs should get the usual 0666 & ~umask instead.
# The umask is read once here, at import, because os.umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `target`; move it onto `target` when the block succeeds.

    Args:
        target: final file path. Its parent folder is created if needed.
        suffix: suffix of the temporary file (defaults to the target's full suffix, so that
            libraries choosing a format by extension, e.g. nibabel's ``.nii.gz``, still work).

    The temporary file is removed if the block raises.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def remove_partial_files(folder: str | os.PathLike[str], targets: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files `atomic_path` left in `folder` when a process was killed.

    A kill between the temp file's creation and its ``os.replace`` leaves
    ``.<name>.<random>.part<suffix>`` behind (e.g. ``checkpoints/.last.pt.x1y2.part.pt``).
    Call this when a run (re)starts in a folder no other process writes to at that moment, or
    give ``targets``: then only the temporaries of those file names go, and other processes may
    be writing their own files in `folder` (a temporary another one is about to move into place
    must not be deleted under it).

    Returns:
        The files removed (none when the folder does not exist).
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    patterns = [".*.part*"] if targets is None else [f".{glob.escape(name)}.*.part*" for name in targets]
    removed = []
    for p in sorted({p for pattern in patterns for p in root.glob(pattern)}):
        if p.is_file() and ".part" in p.name:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `target` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 `text` to `target` atomically and return the path."""
    return write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Write `obj` as JSON to `target` atomically (inf/nan written as JSON-compatible strings)."""

    def _default(o: Any) -> Any:
        import numpy as np

        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return write_text_atomic(target, json.dumps(obj, indent=indent, default=_default) + "\n")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder next to `target`; it becomes `target` when the block succeeds.

    For outputs made of many files (a DICOM series): an interrupted write leaves no half
    folder under the target's name, only a hidden ``.<name>.part-*`` folder that is removed
    when the block raises. An existing `target` is replaced: it is renamed aside, the new
    folder renamed in, then the old one deleted (a reader sees the old or the new series).

    Args:
        target: the final folder. Its parent is created if needed.
    """
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.part-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

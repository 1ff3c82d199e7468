"""Safe file names derived from DICOM tags.

Tag text (SeriesDescription, PatientName, ...) is attacker- and typo-controlled: it may hold
path separators, '..', control characters, or be empty. Never use it as a path as is.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_filename(text: str | None, max_len: int = 64, fallback: str = "unnamed") -> str:
    """Return a file-name-safe version of `text` (ASCII letters, digits, '.', '_', '-').

    Accents are folded to ASCII, runs of other characters become one '_', leading dots and
    underscores are stripped (no hidden files, no '..'), and the result is cut to `max_len`.
    Returns `fallback` when nothing usable remains.
    """
    if text is None:
        return fallback
    text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    text = _UNSAFE.sub("_", text).strip("._-")
    text = text[:max_len].rstrip("._-")
    return text or fallback


def short_uid_hash(uid: str, n: int = 8) -> str:
    """A short, stable hex digest of a DICOM UID (distinguishes series with equal descriptions)."""
    return hashlib.sha1(uid.encode("ascii", "ignore")).hexdigest()[:n]


def series_stem(series_number: int | str | None, description: str | None, series_uid: str) -> str:
    """File stem for a series' outputs: ``S<number>_<description>_<uid-hash>``.

    Example: ``series_stem(3, "AX T1 +C/fs", "1.2.3")`` → ``'S003_AX_T1_C_fs_7b52009b'``.
    """
    try:
        num = f"S{int(series_number):03d}" if series_number not in (None, "") else "S-"
    except (TypeError, ValueError):
        num = "S-"
    return f"{num}_{sanitize_filename(description, max_len=40, fallback='series')}_{short_uid_hash(series_uid)}"

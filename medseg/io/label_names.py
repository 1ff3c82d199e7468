"""Label names from a labels JSON file (value → structure name) and where to find one.

Two layouts are accepted: medseg/TotalSegmentator style ``{"1": "spleen", "2": "kidney_right"}``
and nnU-Net's ``dataset.json`` (``{"labels": {"background": 0, "spleen": 1}}``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from medseg.errors import InputError

#: File names looked for next to a label file, in this order (then any ``labels*.json``).
LABEL_FILE_NAMES = ("labels.json", "dataset.json")


def read_label_names(path: str | os.PathLike[str]) -> dict[int, str]:
    """Read a labels JSON file.

    Args:
        path: ``{"<value>": "<name>"}`` or an nnU-Net ``dataset.json`` with a ``labels`` entry.

    Returns:
        ``{value: name}`` without the background (0).

    Raises:
        InputError: unreadable JSON, or neither layout.
    """
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{p}: cannot read labels JSON ({exc})") from exc
    if isinstance(raw, dict) and isinstance(raw.get("labels"), dict):
        out: dict[int, str] = {}
        for name, value in raw["labels"].items():  # nnU-Net: name → value (or list of values)
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, int) and v > 0:
                    out[v] = str(name)
        if out:
            return dict(sorted(out.items()))
    if isinstance(raw, dict):
        try:
            out = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            out = {}
        if out:
            return {k: v for k, v in sorted(out.items()) if k > 0}
    raise InputError(f'{p}: expected {{"<value>": "<name>"}} or a dataset.json with "labels", found neither')


def find_label_names(label_file: str | os.PathLike[str]) -> tuple[dict[int, str], Path] | None:
    """Label names for a label map file from a labels JSON in the same folder, if there is one.

    Looks for ``<stem>.json``, ``labels.json``, ``dataset.json`` and then any ``labels*.json``
    (alphabetically) next to `label_file`; files that are not labels JSON are skipped.

    Returns:
        ``(names, json_path)`` or None.
    """
    from medseg.io.nifti import case_name

    p = Path(label_file)
    folder = p if p.is_dir() else p.parent
    candidates = [folder / f"{case_name(p)}.json", *(folder / n for n in LABEL_FILE_NAMES), *sorted(folder.glob("labels*.json"))]
    for c in candidates:
        if c.is_file():
            try:
                return read_label_names(c), c
            except InputError:
                continue
    return None

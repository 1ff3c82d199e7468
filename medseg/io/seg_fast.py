"""The DICOM SEG writer's speed-ups that use private highdicom/pydicom APIs, and only those.

`medseg.io.seg.write_dicom_seg` uses this module only where `tested_versions()` says the
installed highdicom and pydicom are those it was tested with; otherwise (or with
``fast=False``) it builds highdicom's public `Segmentation` and saves it with pydicom's own
writer, the reference: tests/io/test_seg.py checks both give the same file. Nothing here
changes either library for other callers (no function is replaced).

1. `build_segmentation`: a subclass of highdicom's `Segmentation` that skips the lookup tables
   the constructor builds for reading frames back (``_build_luts``, private), which a SEG that
   is only saved never uses. A highdicom whose constructor needs them (AttributeError) gets
   its own class.
2. `pre_encode_sequence`: faster writing of DICOM datasets with long, repetitive sequences (a
   SEG's per-frame groups); it places a raw element in the dataset (``Dataset._dict``, private).

A BINARY DICOM SEG of a 300-slice CT with 4 segments has ~1200 frames, and each frame has its
own Per-Frame Functional Groups item (source image reference, derivation codes, plane
position, dimension index, segment number): ~24 000 data elements. pydicom's writer encodes
them one by one through its generic path (ambiguous-VR checks, charset lookups, a buffer per
element): about half of `write_dicom_seg`'s time on a big series (docs/benchmarks.md).

Most of those elements repeat the same value in every frame (SOP Class UID, codes, segment
numbers), the rest take one of a few hundred values (one per source slice). `pre_encode_sequence`
encodes each distinct leaf element once **with pydicom's own `write_data_element`** and
assembles items and sequences from those bytes; an item object that highdicom puts in several
frames is encoded once. It then
hands the sequence to pydicom as a raw element, which pydicom writes as it is
(``Dataset.set_original_encoding`` exists for this). The
bytes are those pydicom writes itself (tests compare whole files); anything unusual (an
ambiguous VR, a character set inside an item, another transfer syntax) makes it leave the
dataset untouched, so pydicom writes it the usual way.

Written here because it measured faster than pydicom's generic path (docs/benchmarks.md); it
encodes nothing by hand but tags, VR ``SQ`` and lengths of sequences and items.
"""

from __future__ import annotations

import functools
import logging
import struct
from typing import Any

log = logging.getLogger(__name__)

#: (highdicom, pydicom) major.minor versions this module was tested with
TESTED = {("0.28", "3.0")}


def tested_versions() -> bool:
    """True when the installed highdicom and pydicom are versions this module was tested with."""
    try:
        import highdicom
        import pydicom
    except ImportError:  # pragma: no cover
        return False
    mm = lambda v: ".".join(str(v).split(".")[:2])  # noqa: E731
    return (mm(highdicom.__version__), mm(pydicom.__version__)) in TESTED


@functools.lru_cache(maxsize=1)
def _write_only_segmentation_class() -> type:
    """highdicom's `Segmentation` without the lookup tables it builds for reading frames back
    (they are not part of the file; tests compare the saved files of both classes)."""
    import highdicom as hd

    class WriteOnlySegmentation(hd.seg.Segmentation):
        def _build_luts(self) -> None:
            pass

        # highdicom pickles (and copies) its lookup tables' database: there is none here
        def __getstate__(self) -> dict[str, Any]:
            return self.__dict__.copy()

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)

    return WriteOnlySegmentation


def build_segmentation(arguments: dict[str, Any]) -> Any:
    """A SEG object from highdicom's `Segmentation` arguments, without its read-back lookup tables."""
    import highdicom as hd

    try:
        return _write_only_segmentation_class()(**arguments)
    except AttributeError as exc:  # a highdicom whose constructor reads its lookup tables
        log.debug("DICOM SEG without lookup tables failed (%s); building highdicom's own", exc)
        return hd.seg.Segmentation(**arguments)

_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_UNDEFINED = 0xFFFFFFFF


class _Unusual(Exception):
    """Something the fast path does not handle: leave it to pydicom."""


def _value_key(value: Any) -> Any:
    """A hashable key that determines the element's encoding (None: do not cache)."""
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, (int, float)) or value is None:
        # DS/IS keep their original string, which str() returns and the writer uses
        return (type(value).__name__, str(value))
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        keys = tuple(_value_key(v) for v in value)
        return None if any(k is None for k in keys) else ("multi", keys)
    return None


def _element_bytes(elem: Any, encodings: Any) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


def _dataset_bytes(ds: Any, encodings: Any, cache: dict) -> bytes:
    parts = []
    if "SpecificCharacterSet" in ds:
        raise _Unusual("character set inside an item")
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written (pydicom's rule)
        elem = ds[tag]
        vr = elem.VR
        if vr is None or len(vr) != 2:
            raise _Unusual(f"ambiguous VR {vr} of {tag}")
        if vr == "SQ":
            value = _items_bytes(elem.value, encodings, cache)
            head = struct.pack("<HH", tag.group, tag.element) + b"SQ\0\0"
            if elem.is_undefined_length:
                parts += [head, struct.pack("<I", _UNDEFINED), value, _SEQ_END]
            else:
                parts += [head, struct.pack("<I", len(value)), value]
            continue
        key = _value_key(elem.value)
        if key is None:
            parts.append(_element_bytes(elem, encodings))
            continue
        key = (int(tag), vr, key)
        data = cache.get(key)
        if data is None:
            data = cache[key] = _element_bytes(elem, encodings)
        parts.append(data)
    return b"".join(parts)


def _items_bytes(items: Any, encodings: Any, cache: dict) -> bytes:
    parts = []
    for item in items:
        # highdicom puts the same item object in many frames (a source image's reference and
        # plane position in each of its segments' frames, one derivation code in all): each
        # object is encoded once. Keyed by identity: every item lives in the dataset, which
        # does not change while it is encoded.
        key = ("item", id(item))
        data = cache.get(key)
        if data is None:
            body = _dataset_bytes(item, encodings, cache)
            if getattr(item, "is_undefined_length_sequence_item", False):
                data = b"".join((_ITEM, struct.pack("<I", _UNDEFINED), body, _ITEM_END))
            else:
                data = b"".join((_ITEM, struct.pack("<I", len(body)), body))
            cache[key] = data
        parts.append(data)
    return b"".join(parts)


def pre_encode_sequence(ds: Any, keyword: str) -> bool:
    """Replace ``ds.<keyword>`` (a sequence) by its encoded bytes, for a faster ``save_as``.

    Only for explicit VR little endian datasets (``ds.file_meta.TransferSyntaxUID``) whose
    other top-level elements have no ambiguous VR. The dataset must not be changed afterwards
    except by saving it (the sequence reads back from the bytes if accessed).

    Returns:
        True when the sequence was replaced; False when the dataset was left as it was.
    """
    from pydicom.charset import convert_encodings, default_encoding
    from pydicom.dataelem import RawDataElement
    from pydicom.filewriter import correct_ambiguous_vr_element
    from pydicom.tag import Tag
    from pydicom.uid import ExplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian or keyword not in ds:
        return False
    tag = Tag(keyword)
    for t in ds.keys():
        if t != tag and not ds.get_item(t).is_raw:
            elem = ds[t]
            if elem.VR is None or len(elem.VR) != 2:
                # what pydicom's generic path does to each top-level element (e.g. Pixel Data
                # "OB or OW" → OB for 1-bit frames), which the raw path would skip
                correct_ambiguous_vr_element(elem, ds, True)
                if elem.VR is None or len(elem.VR) != 2:
                    return False
    charset = ds.get("SpecificCharacterSet")
    encodings = convert_encodings(charset.value if hasattr(charset, "value") else charset) if charset else [default_encoding]
    elem = ds[tag]
    try:
        value = _items_bytes(elem.value, encodings, {})
    except _Unusual:
        return False
    length = _UNDEFINED if elem.is_undefined_length else len(value)
    ds._dict[tag] = RawDataElement(tag, "SQ", length, value, 0, False, True)
    # "original encoding" = the one it is saved in: pydicom then writes raw elements as they are
    ds.set_original_encoding(False, True, encodings if charset else default_encoding)
    return True

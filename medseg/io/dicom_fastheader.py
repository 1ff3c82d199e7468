"""A minimal DICOM header reader for the few tags a series scan needs (speed only).

pydicom builds a full Dataset of every element of a header. Scanning a
PACS export needs ~30 top-level tags per file, so this module walks the element headers of
the common encodings (Part 10 files, Explicit or Implicit VR Little Endian, including every
compressed transfer syntax) with `struct`, decodes only the wanted values, and stops at the
pixel data (figures in docs/benchmarks.md). It returns a tiny `FlatHeader` that offers the few
Dataset-like accessors `medseg.io.dicom` uses, so the rest of the scan is the same code.

Anything unusual (no preamble, big endian, deflate, functional groups of Enhanced images, a
character set other than ASCII/Latin-1/UTF-8, a malformed element) returns None and the
caller falls back to pydicom: this reader never has to be right about edge cases, only to
agree with pydicom where it answers (``tests/io/test_dicom_fastheader.py`` checks that on
every pydicom test file and on generated series).
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

_EXPLICIT_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
_UNDEFINED = 0xFFFFFFFF

#: tag → (keyword, VR) of the top-level elements the scan reads.
WANTED: dict[int, tuple[str, str]] = {
    0x00020002: ("MediaStorageSOPClassUID", "UI"),
    0x00020003: ("MediaStorageSOPInstanceUID", "UI"),
    0x00020010: ("TransferSyntaxUID", "UI"),
    0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080008: ("ImageType", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080060: ("Modality", "CS"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00180050: ("SliceThickness", "DS"),
    0x00180088: ("SpacingBetweenSlices", "DS"),
    0x00181120: ("GantryDetectorTilt", "DS"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200011: ("SeriesNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00200052: ("FrameOfReferenceUID", "UI"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280006: ("PlanarConfiguration", "US"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
}
#: Top-level tags whose presence sends the file to pydicom (structures this reader skips).
FALLBACK_TAGS = {
    0x52009229,  # SharedFunctionalGroupsSequence (Enhanced multi-frame)
    0x52009230,  # PerFrameFunctionalGroupsSequence
    0x00041220,  # DirectoryRecordSequence (DICOMDIR)
}
_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_IMPLICIT_LE = "1.2.840.10008.1.2"
_FALLBACK_SYNTAXES = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflate
_CHUNK = 1 << 14  # most headers are 2–12 KB; the reader grows the buffer when needed

_TAG_VR_LEN = struct.Struct("<HH2sH")
_LONG_LEN = struct.Struct("<I")
_IMPLICIT = struct.Struct("<HHI")


class FlatHeader:
    """The wanted top-level values of one file, with Dataset-like `get` / `in`."""

    def __init__(self, values: dict[str, Any], meta: dict[str, Any], implicit: bool) -> None:
        self._values = values
        self.file_meta = _Meta(meta)
        self.original_encoding = (implicit, True)

    def get(self, keyword: str, default: Any = None) -> Any:
        return self._values.get(keyword, default)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self._values


class _Meta:
    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def get(self, keyword: str, default: Any = None) -> Any:
        return self._values.get(keyword, default)


class _NeedsPydicom(Exception):
    pass


class _Reader:
    """Sequential access to a file through a growing in-memory buffer."""

    def __init__(self, fp: BinaryIO) -> None:
        self.fp = fp
        fp.seek(0)
        self.buf = fp.read(_CHUNK)
        self.eof = len(self.buf) < _CHUNK

    def fill(self, end: int) -> None:
        """Read until the buffer holds `end` bytes or the file ends."""
        while len(self.buf) < end and not self.eof:
            want = max(_CHUNK, end - len(self.buf))
            more = self.fp.read(want)
            self.buf += more
            self.eof = len(more) < want

    def ensure(self, end: int) -> None:
        self.fill(end)
        if len(self.buf) < end:
            raise _NeedsPydicom("short read")


def _decode(raw: bytes, vr: str, encoding: str) -> Any:
    if vr == "US":
        if len(raw) < 2:
            return None
        return struct.unpack_from("<H", raw)[0]
    text = raw.decode(encoding if vr in ("LO", "SH", "LT", "ST", "PN", "UC", "UT") else "latin-1")
    text = text.rstrip("\x00 ")
    if vr == "UI":
        return text.strip("\x00 ")
    parts = [p.strip() for p in text.split("\\")]
    if vr in ("DS", "IS", "CS") and len(parts) > 1:
        return parts
    return parts[0] if vr in ("DS", "IS", "CS") else text.strip()


def _skip_undefined_item_or_sequence(r: _Reader, pos: int, implicit: bool, until: int) -> int:
    """Walk elements from `pos` until the delimiter tag `until`; return the position after it."""
    while True:
        r.ensure(pos + 8)
        group, elem = struct.unpack_from("<HH", r.buf, pos)
        tag = (group << 16) | elem
        if tag in (_ITEM, _ITEM_END, _SEQ_END):
            (length,) = struct.unpack_from("<I", r.buf, pos + 4)
            pos += 8
            if tag == until:
                return pos
            if tag == _ITEM:
                pos = _skip_undefined_item_or_sequence(r, pos, implicit, _ITEM_END) if length == _UNDEFINED else pos + length
                continue
            raise _NeedsPydicom("unexpected delimiter")
        pos, _vr, length, value_pos = _element_header(r, pos, implicit)
        if length == _UNDEFINED:
            pos = _skip_undefined_item_or_sequence(r, value_pos, implicit, _SEQ_END)
        else:
            pos = value_pos + length


def _element_header(r: _Reader, pos: int, implicit: bool) -> tuple[int, bytes, int, int]:
    """(element start, VR or b'', value length, value position) of the element at `pos`."""
    if implicit:
        r.ensure(pos + 8)
        _g, _e, length = _IMPLICIT.unpack_from(r.buf, pos)
        return pos, b"", length, pos + 8
    r.ensure(pos + 8)
    _g, _e, vr, short = _TAG_VR_LEN.unpack_from(r.buf, pos)
    if vr in _EXPLICIT_LONG_VRS:
        r.ensure(pos + 12)
        (length,) = _LONG_LEN.unpack_from(r.buf, pos + 8)
        return pos, vr, length, pos + 12
    if not (vr.isalpha() and vr.isupper()):
        raise _NeedsPydicom("not explicit VR")
    return pos, vr, short, pos + 8


def read_flat_header(fp: BinaryIO) -> FlatHeader | None:
    """Parse the wanted tags of a Part 10 file; leave `fp` on the pixel data tag (or at EOF).

    Returns None (fp position undefined) when pydicom must handle the file.
    """
    try:
        return _read(fp)
    except (_NeedsPydicom, struct.error, UnicodeDecodeError, IndexError, ValueError):
        return None


def _read(fp: BinaryIO) -> FlatHeader | None:
    r = _Reader(fp)
    if len(r.buf) < 132 or r.buf[128:132] != b"DICM":
        return None
    meta: dict[str, Any] = {}
    pos = 132
    while True:  # File Meta group 0002: always Explicit VR Little Endian
        r.ensure(pos + 8)
        group = struct.unpack_from("<H", r.buf, pos)[0]
        if group != 0x0002:
            break
        start, vr, length, value_pos = _element_header(r, pos, False)
        if length == _UNDEFINED:
            return None
        tag = (group << 16) | struct.unpack_from("<H", r.buf, pos + 2)[0]
        if tag in WANTED:
            r.ensure(value_pos + length)
            meta[WANTED[tag][0]] = _decode(r.buf[value_pos : value_pos + length], WANTED[tag][1], "latin-1")
        pos = value_pos + length
    ts = meta.get("TransferSyntaxUID") or ""
    if not ts or ts in _FALLBACK_SYNTAXES:
        return None
    implicit = ts == _IMPLICIT_LE
    values: dict[str, Any] = {}
    encoding = "latin-1"
    buf = r.buf
    unpack_tag_vr_len = _TAG_VR_LEN.unpack_from
    unpack_implicit = _IMPLICIT.unpack_from
    unpack_long = _LONG_LEN.unpack_from
    long_vrs = _EXPLICIT_LONG_VRS
    while True:
        if pos + 12 > len(buf):
            r.fill(pos + 12)
            buf = r.buf
            if pos >= len(buf):  # clean end of file: no pixel data
                fp.seek(pos)
                break
            if pos + 8 > len(buf):
                raise _NeedsPydicom("trailing bytes")
        # element header (inlined: this loop runs ~150 times per file)
        if implicit:
            group, elem, length = unpack_implicit(buf, pos)
            vr = b""
            value_pos = pos + 8
        else:
            group, elem, vr, length = unpack_tag_vr_len(buf, pos)
            if vr in long_vrs:
                if pos + 12 > len(buf):
                    raise _NeedsPydicom("short")
                (length,) = unpack_long(buf, pos + 8)
                value_pos = pos + 12
            elif vr.isalpha() and vr.isupper():
                value_pos = pos + 8
            else:
                raise _NeedsPydicom("not explicit VR")
        tag = (group << 16) | elem
        if tag >= 0x7FE00008:
            if tag in _PIXEL_TAGS or tag > 0x7FE00010:
                fp.seek(pos)
                break
        if tag in FALLBACK_TAGS:
            return None
        if length == _UNDEFINED:
            pos = _skip_undefined_item_or_sequence(r, value_pos, implicit, _SEQ_END)
            buf = r.buf
            continue
        want = WANTED.get(tag)
        if want is not None:
            if value_pos + length > len(buf):
                r.ensure(value_pos + length)
                buf = r.buf
            raw = buf[value_pos : value_pos + length]
            if vr and vr in (b"UN", b"OB", b"OW", b"SQ"):
                raise _NeedsPydicom("odd VR for a wanted tag")
            value = _decode(raw, want[1], encoding)
            if want[0] == "SpecificCharacterSet":
                if isinstance(value, list):
                    if len([v for v in value if v]) > 1:
                        return None  # code extensions (ISO 2022): pydicom's job
                    value = value[0] if value else ""
                if value not in _CHARSETS:
                    return None
                encoding = _CHARSETS[value]
            values[want[0]] = value
        pos = value_pos + length
    if implicit:
        meta.setdefault("TransferSyntaxUID", ts)
    return FlatHeader(values, meta, implicit)

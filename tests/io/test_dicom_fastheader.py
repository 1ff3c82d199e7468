"""The fast header reader agrees with pydicom wherever it answers (else it declines)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from dicom_factory import PYDICOM_TEST_FILES, write_enhanced_ct, write_series

from medseg.io.dicom import DicomFileHeader, SkippedFile, read_dicom_header
from medseg.io.dicom_fastheader import read_flat_header


def assert_same_header(fast, slow) -> None:
    assert type(fast) is type(slow), (fast, slow)
    if isinstance(slow, SkippedFile):
        assert fast.reason == slow.reason
        return
    assert isinstance(slow, DicomFileHeader)
    for f in dataclasses.fields(DicomFileHeader):
        a, b = getattr(fast, f.name), getattr(slow, f.name)
        if f.name == "frames":
            assert len(a) == len(b)
            for fa, fb in zip(a, b):
                for g in dataclasses.fields(fa):
                    va, vb = getattr(fa, g.name), getattr(fb, g.name)
                    if isinstance(vb, np.ndarray) or isinstance(va, np.ndarray):
                        np.testing.assert_allclose(va, vb)
                    else:
                        assert va == vb, (fast.path, g.name, va, vb)
        else:
            assert a == b, (fast.path, f.name, a, b)


def _all_pydicom_files():
    return sorted(p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file())


def test_agrees_with_pydicom_on_every_pydicom_test_file():
    answered = 0
    for p in _all_pydicom_files():
        with open(p, "rb") as fp:
            answered += read_flat_header(fp) is not None
        assert_same_header(read_dicom_header(p, fast=True), read_dicom_header(p, fast=False))
    assert answered > 40  # the fast path really runs on most of them


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "big", "rle", "jpegls"])
def test_agrees_on_written_series(tmp_path, mni_ct, syntax):
    paths = write_series(tmp_path, mni_ct, transfer_syntax=syntax, localizer=True)
    for n, p in enumerate(paths):
        with open(p, "rb") as fp:
            flat = read_flat_header(fp)
        is_localizer = n == len(paths) - 1  # always written Explicit VR Little Endian
        assert (flat is None) == (syntax == "big" and not is_localizer)  # big endian goes to pydicom
        assert_same_header(read_dicom_header(p, fast=True), read_dicom_header(p, fast=False))


def test_declines_enhanced_and_agrees_on_bundled_ct(tmp_path, mni_ct, sample):
    p = write_enhanced_ct(tmp_path / "e.dcm", mni_ct)
    with open(p, "rb") as fp:
        assert read_flat_header(fp) is None
    for p in sorted(sample("ct_dicom").iterdir())[:5]:
        with open(p, "rb") as fp:
            assert read_flat_header(fp) is not None
        assert_same_header(read_dicom_header(p, fast=True), read_dicom_header(p, fast=False))

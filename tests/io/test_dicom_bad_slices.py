"""One rule for unusable slices: an undecodable / invalid slice is a missing slice, interpolated
from its neighbours with a warning naming the file; more than 10 % missing fails the series."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_factory import write_series

from medseg.errors import DicomError
from medseg.io.dicom import MAX_MISSING_SLICE_FRACTION, read_dicom_series, scan_dicom_folder


def _by_k(paths, mni_ct):
    """Files of a written series indexed by the slice k they hold (names are shuffled)."""
    out = {}
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out[mni_ct.shape[2] - int(ds.InstanceNumber)] = p  # write_series: InstanceNumber = nk - k
    return out


def _expected_gap(array, k):
    return np.rint(0.5 * array[:, :, k - 1].astype(np.float32) + 0.5 * array[:, :, k + 1].astype(np.float32))


@pytest.fixture
def series(tmp_path, mni_ct):
    paths = write_series(tmp_path / "s", mni_ct)
    return tmp_path / "s", _by_k(paths, mni_ct)


def _set(path, **tags):
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize(("slope", "why"), [(0, "RescaleSlope is 0"), ("1e30", "RescaleSlope 1e+30 is implausible for CT")])
def test_invalid_rescale_is_a_missing_slice(series, mni_ct, slope, why):
    folder, files = series
    _set(files[7], RescaleSlope=slope)
    vol = read_dicom_series(folder)
    clean = mni_ct.array  # the reader's (i, j, k) order is the written volume's
    np.testing.assert_array_equal(vol.array[:, :, 7], _expected_gap(clean, 7))
    np.testing.assert_array_equal(np.delete(vol.array, 7, axis=2), np.delete(clean, 7, axis=2))
    assert vol.array.dtype == np.int16  # the invalid slope does not turn the volume into float
    assert vol.meta["source_frames"][7] is None
    (w,) = [w for w in vol.meta["warnings"] if "interpolated" in w]
    assert files[7].name in w and why in w


def test_truncated_pixel_data_is_named_and_interpolated(series, mni_ct):
    folder, files = series
    data = files[5].read_bytes()
    files[5].write_bytes(data[: len(data) - 700])
    scan = scan_dicom_folder(folder)
    (skipped,) = scan.skipped
    assert skipped.path == files[5] and skipped.reason.startswith("truncated") and skipped.series_instance_uid
    (s,) = scan.image_series
    assert any(files[5].name in w and "unreadable" in w for w in s.warnings)
    vol = read_dicom_series(s)
    np.testing.assert_array_equal(vol.array[:, :, 5], _expected_gap(mni_ct.array, 5))


def test_header_truncation_is_reported_as_truncated(series):
    folder, files = series
    for n, cut in ((3, 200), (9, 1000)):
        files[n].write_bytes(files[n].read_bytes()[:cut])
    reasons = {k.path: k.reason for k in scan_dicom_folder(folder).skipped}
    assert reasons[files[3]].startswith("truncated: the file ends after 200 bytes, inside its header")
    assert reasons[files[9]].startswith("truncated") and "1000 bytes" in reasons[files[9]]



def test_a_cut_just_before_the_pixel_data_names_the_size(series):
    """A file that ends right before its Pixel Data element: the reason names the size, as a cut
    inside the header does (where the header ends varies with the lengths of the random UIDs,
    so `test_header_truncation_is_reported_as_truncated`'s 1000-byte cut lands in either)."""
    folder, files = series
    data = files[4].read_bytes()
    tag = data.find(b"\xe0\x7f\x10\x00")  # Pixel Data (7FE0,0010), explicit VR little endian
    assert tag > 0
    files[4].write_bytes(data[:tag])
    reasons = {k.path: k.reason for k in scan_dicom_folder(folder).skipped}
    assert reasons[files[4]] == f"truncated: the file ends after {tag} bytes, before its pixel data"

def test_more_than_the_share_missing_fails_the_series(series, mni_ct):
    folder, files = series
    n_bad = int(MAX_MISSING_SLICE_FRACTION * mni_ct.shape[2]) + 1  # 3 of 20
    for k in (4, 10, 15)[:n_bad]:
        _set(files[k], RescaleSlope=0)
    with pytest.raises(DicomError, match=r"3 of 20 slice\(s\) cannot be used, more than the 10 % medseg interpolates") as info:
        read_dicom_series(folder)
    assert all(files[k].name in str(info.value) for k in (4, 10, 15))

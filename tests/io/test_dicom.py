"""DICOM discovery and reading on real data.

Series are written from a real volume (MNI152 T1 crop, see `dicom_factory`) in many variants
and read back; every test compares voxel by voxel in world coordinates with that volume.
pydicom's bundled files and the bundled TotalSegmentator CT series cover real-world headers.
"""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import PYDICOM_TEST_FILES, assert_same_world, rotation, write_enhanced_ct, write_series

from medseg.errors import DicomError, InputError
from medseg.io import Volume, load_volume
from medseg.io.dicom import read_dicom_series, scan_dicom_folder
from medseg.io.orientation import affine_from_itk


def sitk_read_series(folder) -> Volume:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    return Volume(arr, affine_from_itk(img.GetOrigin(), img.GetSpacing(), img.GetDirection()))


def test_clean_series_matches_source_and_simpleitk(tmp_path, mni_ct):
    write_series(tmp_path, mni_ct)
    scan = scan_dicom_folder(tmp_path)
    assert scan.skipped == []
    (series,) = scan.series
    assert series.is_image and series.n_files == 20 and series.shape == (40, 48, 20)
    assert series.modality == "CT" and series.series_number == 3 and series.series_description == "AX CT test"
    assert series.warnings == []
    np.testing.assert_allclose(series.spacing, (2.0, 2.0, 2.0), atol=1e-6)
    # files sorted along the slice normal (their InstanceNumbers run the other way)
    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in series.files]
    assert z == sorted(z)

    vol = read_dicom_series(series)
    assert vol.array.dtype == np.int16
    np.testing.assert_allclose(vol.affine, mni_ct.affine, atol=1e-5)
    assert_same_world(vol, mni_ct)
    assert vol.meta["modality"] == "CT" and vol.meta["series_instance_uid"] == series.series_instance_uid
    assert vol.meta["source_files"] == [str(p) for p in series.files]
    assert [f[0] for f in vol.meta["source_frames"]] == list(range(20))
    assert "Doe" not in repr(vol.meta) and "PID-SECRET" not in repr(vol.meta)

    ref = sitk_read_series(tmp_path)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-4)
    np.testing.assert_array_equal(vol.array, ref.array)


@pytest.mark.parametrize("syntax", ["implicit", "big", "rle", "jpegls", "j2k"])
def test_transfer_syntaxes(tmp_path, mni_ct, syntax):
    write_series(tmp_path, mni_ct, transfer_syntax=syntax)
    vol = read_dicom_series(tmp_path)
    assert vol.meta["warnings"] == []
    assert_same_world(vol, mni_ct)


def test_oblique_series_keeps_world_geometry(tmp_path, mni_ct):
    oblique = Volume(mni_ct.array, rotation("x", 20) @ rotation("z", -15) @ mni_ct.affine)
    write_series(tmp_path, oblique)
    vol = read_dicom_series(tmp_path)
    np.testing.assert_allclose(vol.affine, oblique.affine, atol=1e-4)
    assert_same_world(vol, oblique)
    ref = sitk_read_series(tmp_path)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-4)
    np.testing.assert_array_equal(vol.array, ref.array)


def test_feet_first_series(tmp_path, mni_ct):
    """Feet-first supine axial: IOP (-1,0,0, 0,1,0), normal towards the feet; same anatomy."""
    _, nj, nk = mni_ct.shape
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    flip[1, 3], flip[2, 3] = nj - 1, nk - 1
    ff = Volume(mni_ct.array[:, ::-1, ::-1].copy(), mni_ct.affine @ flip)
    write_series(tmp_path, ff)
    iop = pydicom.dcmread(next(tmp_path.iterdir()), stop_before_pixels=True).ImageOrientationPatient
    assert [float(v) for v in iop] == [-1, 0, 0, 0, 1, 0]
    vol = read_dicom_series(tmp_path)
    assert vol.orientation == "RPI"
    assert_same_world(vol, mni_ct)
    assert_same_world(vol, ff)


def test_two_interleaved_series_in_one_folder(tmp_path, mni_ct):
    other = Volume((mni_ct.array // 2).astype(np.int16), rotation("y", 10) @ mni_ct.affine)
    write_series(tmp_path, mni_ct, series_number=3, description="first", seed=1)
    write_series(tmp_path, other, series_number=4, description="second", seed=2)
    scan = scan_dicom_folder(tmp_path)
    assert [s.series_description for s in scan.series] == ["first", "second"]
    assert all(s.n_files == 20 and not s.warnings for s in scan.series)
    assert_same_world(read_dicom_series(scan.series[0]), mni_ct)
    assert_same_world(read_dicom_series(scan.series[1]), other)
    with pytest.raises(DicomError, match="2 image series"):
        read_dicom_series(tmp_path)
    uid = scan.series[1].series_instance_uid
    assert_same_world(load_volume(tmp_path, series_uid=uid), other)
    with pytest.raises(DicomError, match="no series with SeriesInstanceUID"):
        load_volume(tmp_path, series_uid="1.2.3.4")


def test_localizer_in_series_is_ignored(tmp_path, mni_ct):
    write_series(tmp_path, mni_ct, localizer=True)
    (series,) = scan_dicom_folder(tmp_path).series
    assert series.n_files == 21 and len(series.files) == 20
    assert len(series.ignored) == 1 and "localizer" in series.ignored[0].reason
    assert any("another geometry" in w for w in series.warnings)
    assert_same_world(read_dicom_series(series), mni_ct)


def test_duplicate_slice_removed_with_warning(tmp_path, mni_ct):
    write_series(tmp_path, mni_ct, duplicate_slices=(5,))
    (series,) = scan_dicom_folder(tmp_path).series
    assert series.n_files == 21 and series.shape == (40, 48, 20)
    assert any("duplicate" in w for w in series.warnings)
    assert [s.reason for s in series.ignored] == ["duplicate slice position: ignored"]
    assert_same_world(read_dicom_series(series), mni_ct)


def test_missing_slice_filled_on_exact_grid_with_warning(tmp_path, mni_ct):
    write_series(tmp_path, mni_ct, drop_slices=(7,))
    (series,) = scan_dicom_folder(tmp_path).series
    assert series.n_files == 19
    (warning,) = series.warnings
    assert "1 missing slice" in warning and "interpolation" in warning
    vol = read_dicom_series(series)
    # never a silently stretched grid: same 2 mm spacing and extent as the source
    np.testing.assert_allclose(vol.affine, mni_ct.affine, atol=1e-5)
    keep = [k for k in range(20) if k != 7]
    np.testing.assert_array_equal(vol.array[:, :, keep], mni_ct.array[:, :, keep])
    expected = np.rint((mni_ct.array[:, :, 6].astype(np.float32) + mni_ct.array[:, :, 8]) / 2)
    np.testing.assert_array_equal(vol.array[:, :, 7], expected)
    assert vol.meta["source_frames"][7] is None


def test_gantry_tilt_gives_sheared_exact_affine(tmp_path, mni_ct):
    tilted_affine = mni_ct.affine.copy()
    tilted_affine[1, 2] = 2.0 * np.tan(np.deg2rad(12))  # each slice shifted along y: tilt 12°
    tilted = Volume(mni_ct.array, tilted_affine)
    write_series(tmp_path, tilted)
    (series,) = scan_dicom_folder(tmp_path).series
    assert any("gantry tilt of 12.00°" in w for w in series.warnings)
    vol = read_dicom_series(series)
    np.testing.assert_allclose(vol.affine, tilted_affine, atol=1e-4)
    assert_same_world(vol, tilted)


def test_enhanced_ct_multiframe_with_per_frame_rescale(tmp_path, mni_ct):
    path = write_enhanced_ct(tmp_path / "enhanced.dcm", mni_ct)
    (series,) = scan_dicom_folder(tmp_path).series
    assert series.files == [path] and series.shape == (40, 48, 20)
    vol = read_dicom_series(series)
    assert vol.array.dtype == np.int32  # 16-bit unsigned stored + intercept -2048 needs int32
    assert vol.meta["source_files"] == [str(path)]
    assert sorted(f[1] for f in vol.meta["source_frames"]) == list(range(20))
    assert_same_world(vol, mni_ct)


def test_bad_files_are_skipped_with_reasons_and_non_images_ignored(tmp_path, mni_ct):
    paths = write_series(tmp_path / "ct", mni_ct)
    junk = tmp_path / "notes.txt"
    junk.write_text("not a dicom file\n")
    (tmp_path / "empty").write_bytes(b"")
    data = paths[3].read_bytes()
    (tmp_path / "ct" / "truncated").write_bytes(data[: len(data) - 1000])
    (tmp_path / "ct" / "DICOMDIR").write_bytes(data[:2000])
    shutil.copy(PYDICOM_TEST_FILES / "rtstruct.dcm", tmp_path / "rs")
    shutil.copy(PYDICOM_TEST_FILES / "test-SR.dcm", tmp_path / "sr")
    shutil.copy(PYDICOM_TEST_FILES / "liver_1frame.dcm", tmp_path / "seg")

    scan = scan_dicom_folder(tmp_path)
    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert reasons["notes.txt"].startswith("not a DICOM file")
    assert reasons["empty"] == "empty file"
    assert reasons["truncated"].startswith("truncated")
    assert reasons["DICOMDIR"].startswith("DICOMDIR")
    kinds = sorted(s.sop_class for s in scan.series if not s.is_image)
    assert kinds == ["RTSTRUCT", "SEG", "SR"]
    assert len(scan.image_series) == 1
    assert_same_world(read_dicom_series(tmp_path), mni_ct)


def test_unused_high_bits_are_masked_like_pydicom(tmp_path, mni_ct):
    """12-bit data whose 4 unused high bits hold garbage (old overlay planes)."""
    paths = write_series(tmp_path, mni_ct, shuffle_names=False)
    for p in paths:
        ds = pydicom.dcmread(p)
        raw = np.frombuffer(ds.PixelData, np.uint16) | np.uint16(0xA000)
        ds.PixelData = raw.tobytes()
        ds.save_as(p)
    vol = read_dicom_series(tmp_path, threads=1)
    assert_same_world(vol, mni_ct)
    first = pydicom.dcmread(vol.meta["source_files"][0])
    np.testing.assert_array_equal(vol.array[:, :, 0], (first.pixel_array.astype(np.int32) - 1024).T)


def test_parallel_and_serial_decoding_agree(tmp_path, mni_ct):
    write_series(tmp_path, mni_ct, transfer_syntax="rle")
    (series,) = scan_dicom_folder(tmp_path).series
    a = read_dicom_series(series, threads=1)
    b = read_dicom_series(series, threads=4)
    np.testing.assert_array_equal(a.array, b.array)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_padded.dcm",
    ],
)
def test_pydicom_mr_small_variants(tmp_path, name):
    shutil.copy(PYDICOM_TEST_FILES / name, tmp_path / "image")
    vol = read_dicom_series(tmp_path)
    ref = pydicom.dcmread(PYDICOM_TEST_FILES / "MR_small.dcm")
    assert vol.shape == (64, 64, 1) and vol.meta["modality"] == "MR"
    np.testing.assert_array_equal(vol.array[:, :, 0], ref.pixel_array.T)
    ipp = np.array([float(v) for v in ref.ImagePositionPatient])
    np.testing.assert_allclose(vol.affine[:3, 3], ipp * [-1, -1, 1], atol=1e-4)


def test_pydicom_ct_small_rescale_and_geometry(tmp_path):
    shutil.copy(PYDICOM_TEST_FILES / "CT_small.dcm", tmp_path)
    vol = load_volume(tmp_path / "CT_small.dcm")
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.array[:, :, 0], expected.T)
    img = sitk.ReadImage(str(PYDICOM_TEST_FILES / "CT_small.dcm"))
    for ijk in [(0, 0, 0), (127, 5, 0), (64, 100, 0)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(vol.world_coordinates(np.array([ijk]))[0], lps * [-1, -1, 1], atol=1e-3)


def test_pydicom_dicomdir_tree_is_scanned_directly():
    root = PYDICOM_TEST_FILES / "dicomdirtests"
    scan = scan_dicom_folder(root)
    assert any(s.path.name == "DICOMDIR" and s.reason.startswith("DICOMDIR") for s in scan.skipped)
    mr = [s for s in scan.image_series if s.modality == "MR"]
    assert len(mr) >= 3
    for s in mr:
        vol = read_dicom_series(s)
        assert vol.shape == s.shape
        # every kept file's IPP maps to voxel (0, 0, k) of the volume
        for k, p in enumerate(vol.meta["source_files"]):
            ipp = np.array([float(v) for v in pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient])
            np.testing.assert_allclose(vol.world_coordinates(np.array([[0, 0, k]]))[0], ipp * [-1, -1, 1], atol=1e-3)


def test_bundled_jpeg2000_ct_matches_simpleitk_and_label_grid(sample):
    folder = sample("ct_dicom")
    (series,) = scan_dicom_folder(folder).series
    assert series.shape == (512, 512, 20)
    assert any("no SeriesInstanceUID" in w for w in series.warnings)  # anonymised export
    vol = read_dicom_series(series)
    assert vol.array.dtype == np.int16 and vol.array.min() == -1024
    ref = sitk_read_series(folder)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-4)
    np.testing.assert_array_equal(vol.array, ref.array)
    labels = load_volume(sample("ct_dicom_seg"))
    # the TotalSegmentator labels were made on this series: same voxel centres
    m = np.linalg.inv(vol.affine) @ labels.affine
    assert np.allclose(m[:3, :3], np.rint(m[:3, :3]), atol=1e-4) and np.allclose(m[:3, 3], np.rint(m[:3, 3]), atol=1e-3)


def test_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_dicom_series(tmp_path / "missing")
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(DicomError, match="no DICOM image series found.*a.txt: not a DICOM file"):
        read_dicom_series(tmp_path)


def test_worker_processes_decode_jpeg_family(tmp_path, mni_ct, monkeypatch):
    import medseg.io.dicom_pixels as px

    monkeypatch.setattr(px, "MIN_PIXELS_FOR_PROCESSES", 0)
    write_series(tmp_path, mni_ct, transfer_syntax="jpegls")
    vol = read_dicom_series(tmp_path, processes=2)
    assert_same_world(vol, mni_ct)

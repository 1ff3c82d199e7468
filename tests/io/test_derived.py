"""Derived DICOM series written beside the bundled real CT series (20 slices 512×512, JPEG 2000)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medseg import sample_data
from medseg.errors import GeometryError
from medseg.io import Volume
from medseg.io.derived import choose_rescale, write_derived_series
from medseg.io.dicom import read_dicom_series, scan_dicom_folder

PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-4711"


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory) -> Path:
    """The bundled CT with the UIDs and patient data its anonymisation blanked (pixels as they are)."""
    out = tmp_path_factory.mktemp("ct_uids")
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for f in sorted(sample_data.path("ct_dicom").iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.SeriesNumber = PATIENT_NAME, PATIENT_ID, 3
        ds.save_as(out / f.name)
    return out


def _series(folder: Path):
    (s,) = scan_dicom_folder(folder).image_series
    return s


def test_round_trip_of_the_source_image_keeps_geometry_values_and_study(ct_series, tmp_path, caplog):
    series = _series(ct_series)
    source = read_dicom_series(series)
    out = tmp_path / "derived"
    with caplog.at_level(logging.DEBUG):
        files = write_derived_series(source, series, out, description="medseg test copy", series_number=77)
    assert len(files) == 20 and all(f.is_file() and f.parent == out for f in files)
    assert sorted(p.name for p in out.iterdir()) == sorted(f.name for f in files)  # nothing else, no temp folder left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert PATIENT_NAME not in caplog.text and PATIENT_ID not in caplog.text

    back = read_dicom_series(out)
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-4)
    assert back.array.dtype.kind == "i" and np.array_equal(back.array, source.array)  # slope 1 intercept -1024 kept
    assert back.meta["series_instance_uid"] != source.meta["series_instance_uid"]
    assert back.meta["study_instance_uid"] == source.meta["study_instance_uid"]
    assert back.meta["frame_of_reference_uid"] == source.meta["frame_of_reference_uid"]
    assert back.meta["series_description"] == "medseg test copy" and back.meta["series_number"] == 77

    src_sops = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in series.files}
    sops, series_uids = set(), set()
    for n, f in enumerate(files):
        ds = pydicom.dcmread(f)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.DerivationDescription == "medseg test copy"
        assert ds.PatientName == PATIENT_NAME  # same patient, only not in logs
        assert ds.InstanceNumber == n + 1 and ds.pixel_array.dtype == np.int16
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == -1024.0
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in src_sops
        assert not any(el.tag.is_private for el in ds)
        sops.add(ds.SOPInstanceUID)
        series_uids.add(ds.SeriesInstanceUID)
    assert len(sops) == 20 and not sops & src_sops and len(series_uids) == 1


def test_float_image_within_rescale_rounding_and_out_of_range_values_get_a_slope(ct_series, tmp_path):
    series = _series(ct_series)
    source = read_dicom_series(series)
    rng = np.random.default_rng(0)
    smooth = source.array.astype(np.float32) + rng.uniform(-0.5, 0.5, source.shape).astype(np.float32)
    files = write_derived_series(source.with_array(smooth), source, tmp_path / "float", description="denoised")
    back = read_dicom_series(tmp_path / "float")
    assert np.abs(back.array - smooth).max() <= 0.5 + 1e-3  # HU kept integral: slope 1
    assert pydicom.dcmread(files[0]).SeriesNumber == 2003  # the source's 3 + 2000

    wide = source.array.astype(np.float64) * 40.0 + 0.25  # beyond int16 with slope 1
    write_derived_series(source.with_array(wide), series, tmp_path / "wide", description="wide")
    ds = pydicom.dcmread(next((tmp_path / "wide").iterdir()))
    slope = float(ds.RescaleSlope)
    assert slope > 1.0
    back = read_dicom_series(tmp_path / "wide")
    assert np.abs(back.array - wide).max() <= slope / 2 + 1e-6 * np.abs(wide).max()


def test_blank_uids_of_an_anonymised_export_get_the_seg_writers_stand_ins(tmp_path):
    series = _series(sample_data.path("ct_dicom"))
    source = read_dicom_series(series)
    assert source.meta["study_instance_uid"] == ""  # the bundled export has none
    write_derived_series(source, source, tmp_path / "d", description="copy")
    back = read_dicom_series(tmp_path / "d")
    from medseg.io.dicom import derived_uid

    uid = source.meta["series_instance_uid"]
    assert back.meta["study_instance_uid"] == derived_uid(f"study|{uid}")
    assert back.meta["frame_of_reference_uid"] == source.meta["frame_of_reference_uid"]  # this one is there
    assert np.array_equal(back.array, source.array)


def test_interrupted_write_leaves_the_old_series_and_no_half_one(ct_series, tmp_path, monkeypatch):
    import medseg.io.derived as derived

    series = _series(ct_series)
    source = read_dicom_series(series)
    out = tmp_path / "derived"
    write_derived_series(source, series, out, description="first")
    first = sorted(p.read_bytes() for p in out.iterdir())
    calls = [0]
    original = derived._encode_slice

    def failing(*args):
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(derived, "_encode_slice", failing)
    with pytest.raises(KeyboardInterrupt):
        write_derived_series(source, series, out, description="second")
    assert sorted(p.read_bytes() for p in out.iterdir()) == first
    assert [p.name for p in tmp_path.iterdir()] == ["derived"]  # the temporary folder is gone
    monkeypatch.setattr(derived, "_encode_slice", original)
    write_derived_series(source, series, out, description="second")  # a re-run replaces it
    assert read_dicom_series(out).meta["series_description"] == "second"


def test_image_off_the_source_grid_is_refused(ct_series, tmp_path):
    series = _series(ct_series)
    source = read_dicom_series(series)
    with pytest.raises(GeometryError, match="not on the grid"):
        write_derived_series(Volume(source.array[:, :, :10].copy(), source.affine), series, tmp_path / "x", description="x")
    assert not (tmp_path / "x").exists()


def test_choose_rescale():
    assert choose_rescale(np.array([-1024.0, 3071.0]), (1.0, -1024.0)) == (1.0, -1024.0)
    slope, intercept = choose_rescale(np.array([0.0, 1e6]), (1.0, 0.0))
    stored = np.rint((np.array([0.0, 1e6]) - intercept) / slope)
    assert stored.min() >= -32768 and stored.max() <= 32767 and slope < 1e6 / 65000


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "CT_small.dcm"])
def test_implicit_and_big_endian_sources_are_written_explicit_little_endian(name, tmp_path):
    import shutil

    from pydicom.data import get_testdata_file

    src_dir = tmp_path / "src"
    src_dir.mkdir()
    shutil.copy(get_testdata_file(name), src_dir / name)
    series = _series(src_dir)
    source = read_dicom_series(series)
    (f,) = write_derived_series(source, series, tmp_path / "out", description="copy")
    ds = pydicom.dcmread(f)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.PatientName == pydicom.dcmread(series.files[0]).PatientName
    back = read_dicom_series(tmp_path / "out")
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-4)
    assert np.array_equal(back.array, source.array)


def test_oblique_series_with_a_missing_slice(mni_ct, tmp_path):
    """Oblique planes keep their geometry; the slice read_dicom_series interpolated is left out."""
    from dicom_factory import rotation, write_series

    oblique = Volume(mni_ct.array, rotation("x", 20) @ rotation("z", -15) @ mni_ct.affine)
    write_series(tmp_path / "src", oblique, drop_slices=(7,))
    series = _series(tmp_path / "src")
    source = read_dicom_series(series)
    assert source.meta["source_frames"][7] is None  # filled by interpolation
    image = source.with_array(source.array.astype(np.float32) + 10.0)
    files = write_derived_series(image, series, tmp_path / "out", description="plus ten")
    assert len(files) == oblique.shape[2] - 1
    back = read_dicom_series(tmp_path / "out")
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-4)
    real = [k for k in range(oblique.shape[2]) if k != 7]
    assert np.array_equal(back.array[:, :, real], source.array[:, :, real] + 10)
    by_uid = {str(h.SOPInstanceUID): h for h in (pydicom.dcmread(p, stop_before_pixels=True) for p in series.files)}
    for f in files:  # each file keeps its source image's plane
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        src = by_uid[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert [float(v) for v in ds.ImagePositionPatient] == [float(v) for v in src.ImagePositionPatient]
        assert [float(v) for v in ds.ImageOrientationPatient] == [float(v) for v in src.ImageOrientationPatient]


def test_enhanced_ct_source_gives_one_multi_frame_derived_image(mni_ct, tmp_path):
    """Shuffled frames with per-frame rescales in; one frame per slice, in slice order, out."""
    from dicom_factory import write_enhanced_ct

    (tmp_path / "enh").mkdir()
    write_enhanced_ct(tmp_path / "enh" / "ct.dcm", mni_ct)
    series = _series(tmp_path / "enh")
    source = read_dicom_series(series)
    smooth = source.array.astype(np.float32) - 0.25
    (f,) = write_derived_series(source.with_array(smooth), series, tmp_path / "out", description="enhanced copy")
    ds = pydicom.dcmread(f)
    assert int(ds.NumberOfFrames) == mni_ct.shape[2] and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.SOPClassUID == pydicom.dcmread(series.files[0], stop_before_pixels=True).SOPClassUID
    assert ds.StudyInstanceUID == series.study_instance_uid and ds.SeriesInstanceUID != series.series_instance_uid
    assert all("PixelValueTransformationSequence" not in g for g in ds.PerFrameFunctionalGroupsSequence)
    back = read_dicom_series(tmp_path / "out")
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-4)
    assert back.meta["source_frames"] == [[0, k] for k in range(mni_ct.shape[2])]  # slice order now
    assert np.abs(back.array - smooth).max() <= 0.5 + 1e-6

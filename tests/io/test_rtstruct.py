"""RTSTRUCT on the bundled real CT series (20 slices 512×512) with its TotalSegmentator labels."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from skimage.draw import polygon

from medseg import sample_data
from medseg.errors import DicomError, GeometryError
from medseg.io import Volume, load_volume
from medseg.io.dicom import read_dicom_series, scan_dicom_folder
from medseg.io.orientation import LPS_TO_RAS
from medseg.io.rtstruct import RTSTRUCT_SOP_CLASS, slice_contours, write_rtstruct

ORGANS = {1: "spleen", 5: "liver", 6: "stomach"}


@pytest.fixture(scope="module")
def series():
    (s,) = scan_dicom_folder(sample_data.path("ct_dicom")).image_series
    return s


@pytest.fixture(scope="module")
def organs() -> Volume:
    """spleen, liver, stomach of the bundled labels (a LAS NIfTI: the series' grid, rows flipped)."""
    labels = load_volume(sample_data.path("ct_dicom_seg"))
    return labels.with_array(np.where(np.isin(labels.array, list(ORGANS)), labels.array, 0).astype(np.uint8))


def _rasterise(ds, grid: Volume) -> dict[str, np.ndarray]:
    """Each ROI's contours filled onto `grid` (even–odd rule within a slice)."""
    inv = np.linalg.inv(grid.affine)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros(grid.shape, dtype=bool)
        for c in roi.ContourSequence:
            assert c.ContourGeometricType == "CLOSED_PLANAR"
            lps = np.asarray(c.ContourData, dtype=np.float64).reshape(-1, 3)
            assert len(lps) == int(c.NumberOfContourPoints)
            ras = lps @ LPS_TO_RAS[:3, :3].T
            ijk = ras @ inv[:3, :3].T + inv[:3, 3]
            k = np.rint(ijk[:, 2])
            assert np.allclose(ijk[:, 2], k[0], atol=1e-3)  # planar, on a slice
            rr, cc = polygon(ijk[:, 0], ijk[:, 1], shape=grid.shape[:2])
            plane = np.zeros(grid.shape[:2], dtype=bool)
            plane[rr, cc] = True
            mask[:, :, int(k[0])] ^= plane
        out[names[int(roi.ReferencedROINumber)]] = mask
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_rtstruct_contours_rasterise_back_to_the_labels(series, organs, tmp_path):
    path = write_rtstruct(organs, series, sample_data.totalsegmentator_labels(), tmp_path / "rt.dcm", colors={5: (200, 10, 20)})
    assert path == tmp_path / "rt.dcm" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == RTSTRUCT_SOP_CLASS and ds.Modality == "RTSTRUCT"
    assert [str(r.ROIName) for r in ds.StructureSetROISequence] == ["spleen", "liver", "stomach"]
    colours = {int(c.ReferencedROINumber): [int(v) for v in c.ROIDisplayColor] for c in ds.ROIContourSequence}
    assert colours[2] == [200, 10, 20] and len({tuple(v) for v in colours.values()}) == 3
    assert {str(o.RTROIInterpretedType) for o in ds.RTROIObservationsSequence} == {"ORGAN"}

    # references: the series' frame of reference, study, series and every image
    (for_item,) = ds.ReferencedFrameOfReferenceSequence
    assert for_item.FrameOfReferenceUID == series.frame_of_reference_uid
    (study_item,) = for_item.RTReferencedStudySequence
    (series_item,) = study_item.RTReferencedSeriesSequence
    assert series_item.SeriesInstanceUID == series.series_instance_uid
    sop_of_file = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID): f for f in series.files}
    assert {str(i.ReferencedSOPInstanceUID) for i in series_item.ContourImageSequence} == set(sop_of_file)
    assert all(str(r.ReferencedFrameOfReferenceUID) == series.frame_of_reference_uid for r in ds.StructureSetROISequence)

    # each contour references the image whose plane it lies on
    for roi in ds.ROIContourSequence:
        for c in roi.ContourSequence:
            f = sop_of_file[str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            ipp = np.asarray(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient, dtype=float)
            normal = np.cross(*np.asarray(pydicom.dcmread(f, stop_before_pixels=True).ImageOrientationPatient, dtype=float).reshape(2, 3))
            points = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
            assert np.abs((points - ipp) @ normal).max() < 1e-3

    # contours filled on the NIfTI's own (LAS) grid give the labels back
    masks = _rasterise(ds, organs)
    for value, name in ORGANS.items():
        d = _dice(masks[name], organs.array == value)
        assert d >= 0.95, (name, d)
        assert d > 0.999  # marching squares through pixel-edge midpoints: exact but for saddle pixels


def test_volume_source_and_series_source_give_the_same_contours(series, organs, tmp_path):
    a = pydicom.dcmread(write_rtstruct(organs, series, ORGANS, tmp_path / "a.dcm"))
    b = pydicom.dcmread(write_rtstruct(organs, read_dicom_series(series), ORGANS, tmp_path / "b.dcm"))
    for ra, rb in zip(a.ROIContourSequence, b.ROIContourSequence):
        assert [list(c.ContourData) for c in ra.ContourSequence] == [list(c.ContourData) for c in rb.ContourSequence]
        assert [c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in ra.ContourSequence] == [
            c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in rb.ContourSequence
        ]


def test_holes_are_inner_contours_even_odd(organs):
    liver = organs.array[:, :, 10] == 5
    from scipy import ndimage

    ring = liver & ~ndimage.binary_erosion(liver, iterations=6)
    ring[0:3, 0:3] = True  # touching the image edge
    contours = slice_contours(ring)
    assert len(contours) >= 3
    plane = np.zeros(ring.shape, dtype=bool)
    for c in contours:
        rr, cc = polygon(c[:, 0], c[:, 1], shape=ring.shape)
        filled = np.zeros(ring.shape, dtype=bool)
        filled[rr, cc] = True
        plane ^= filled
    assert np.array_equal(plane, ring)


def test_labels_off_the_source_grid_or_empty_are_refused(series, organs, tmp_path):
    with pytest.raises(GeometryError, match="not on the grid"):
        write_rtstruct(Volume(organs.array[:, :, :10].copy(), organs.affine), series, ORGANS, tmp_path / "x.dcm")
    with pytest.raises(DicomError, match="empty"):
        write_rtstruct(organs.with_array(np.zeros_like(organs.array)), series, ORGANS, tmp_path / "y.dcm")
    assert list(tmp_path.iterdir()) == []


def test_contour_data_element_writes_what_pydicom_writes_for_a_float_list():
    from pydicom.filebase import DicomBytesIO

    from medseg.io.rtstruct import contour_data_element

    rng = np.random.default_rng(0)
    points = np.round(rng.uniform(-600, 600, (500, 3)), 4)
    points[0] = [0.0, -0.0, 1e-5]  # signed zero and a value that rounds to zero
    encoded = []
    for fast in (True, False):
        ds = pydicom.Dataset()
        if fast:
            ds["ContourData"] = contour_data_element(points)
        else:
            ds.ContourData = [float(v) + 0.0 for v in np.round(points.ravel(), 4)]
        buffer = DicomBytesIO()
        pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
        encoded.append(buffer.getvalue())
    assert encoded[0] == encoded[1]
    buffer.seek(0)
    back = pydicom.dcmread(buffer, force=True)
    assert all(len(str(v)) <= 16 for v in back.ContourData)
    np.testing.assert_allclose(np.asarray(back.ContourData, dtype=float).reshape(-1, 3), points, atol=1e-4)


def test_oblique_series_with_a_gap_and_an_enhanced_ct(mni_ct, tmp_path, caplog):
    """Tilted planes, an interpolated slice (no source image: left out) and frame references."""
    from dicom_factory import rotation, write_enhanced_ct, write_series

    oblique = Volume(mni_ct.array, rotation("x", 20) @ rotation("z", -15) @ mni_ct.affine)
    write_series(tmp_path / "src", oblique, drop_slices=(7,))
    (series,) = scan_dicom_folder(tmp_path / "src").image_series
    source = read_dicom_series(series)
    labels = source.with_array(((source.array > -700).astype(np.uint8) + (source.array > -300)).astype(np.uint8))
    ds = pydicom.dcmread(write_rtstruct(labels, source, {1: "head", 2: "dense"}, tmp_path / "rt.dcm"))
    assert "interpolated slices" in caplog.text
    masks = _rasterise(ds, source)
    real = [k for k in range(source.shape[2]) if k != 7]
    for value, name in ((1, "head"), (2, "dense")):
        assert not masks[name][:, :, 7].any()
        assert _dice(masks[name][:, :, real], labels.array[:, :, real] == value) > 0.99

    enhanced = tmp_path / "enh"
    enhanced.mkdir()
    write_enhanced_ct(enhanced / "ct.dcm", mni_ct)
    (series,) = scan_dicom_folder(enhanced).image_series
    source = read_dicom_series(series)
    labels = source.with_array((source.array > -300).astype(np.uint8))
    ds = pydicom.dcmread(write_rtstruct(labels, series, {1: "dense"}, tmp_path / "rt_enh.dcm"))
    refs = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].ContourImageSequence
    assert sorted(int(i.ReferencedFrameNumber) for i in refs) == list(range(1, source.shape[2] + 1))
    inv = np.linalg.inv(source.affine)
    for c in ds.ROIContourSequence[0].ContourSequence:
        lps = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
        k = int(np.rint((lps[0] @ LPS_TO_RAS[:3, :3].T) @ inv[:3, :3].T + inv[:3, 3])[2])
        assert int(c.ContourImageSequence[0].ReferencedFrameNumber) == source.meta["source_frames"][k][1] + 1
    masks = _rasterise(ds, source)
    assert _dice(masks["dense"], labels.array == 1) > 0.99

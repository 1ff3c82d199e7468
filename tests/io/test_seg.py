"""DICOM SEG round trip on the real bundled CT series with TotalSegmentator organ labels."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from dicom_factory import write_enhanced_ct, write_series

from medseg.errors import DicomError, GeometryError
from medseg.io import Volume, load_volume
from medseg.io.dicom import read_dicom_series
from medseg.io.seg import read_dicom_seg, write_dicom_seg

ORGANS = {1: "spleen", 5: "liver", 6: "stomach", 52: "aorta"}


def labels_on_grid(labels: Volume, image: Volume) -> np.ndarray:
    """Move a label volume onto `image`'s grid (same voxel centres, maybe flipped axes)."""
    m = np.rint(np.linalg.inv(labels.affine) @ image.affine).astype(int)  # image index → label index
    idx = np.indices(image.shape).reshape(3, -1)
    src = m[:3, :3] @ idx + m[:3, 3:4]
    return labels.array[tuple(src)].reshape(image.shape)


@pytest.fixture(scope="module")
def ct_and_organs(sample):
    ct = read_dicom_series(sample("ct_dicom"))
    all_labels = labels_on_grid(load_volume(sample("ct_dicom_seg")), ct)
    organs = np.where(np.isin(all_labels, list(ORGANS)), all_labels, 0).astype(np.uint8)
    assert set(np.unique(organs)) == {0, *ORGANS}  # the four organs are really there
    return ct, organs


def test_seg_round_trip_on_real_ct(tmp_path, ct_and_organs):
    ct, organs = ct_and_organs
    path = write_dicom_seg(organs, ct, ORGANS, tmp_path / "seg.dcm", algorithm_version="test")
    assert not list(tmp_path.glob(".*part*"))

    back = read_dicom_seg(path, ct)
    assert back.meta["label_names"] == ORGANS
    assert back.same_grid(ct)
    np.testing.assert_array_equal(back.array, organs)

    # what any highdicom user sees: segments, algorithm, references to the source images
    seg = hd.seg.segread(str(path))
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == list(ORGANS.values())
    assert seg.get_segment_description(1).algorithm_identification[0].AlgorithmVersion == "test"
    src_uids = {u[2] for u in seg.get_source_image_uids()}
    assert len(src_uids) == 20  # every slice with an organ is referenced
    assert seg.FrameOfReferenceUID == ct.meta["frame_of_reference_uid"]
    # highdicom's own volume of segment "liver" sits where medseg put it
    liver = seg.get_volume(segment_numbers=[2], combine_segments=True)
    assert np.count_nonzero(liver.array) == np.count_nonzero(organs == 5)
    hd_centre_lps = (liver.affine @ np.append(np.argwhere(liver.array).mean(0), 1))[:3]
    our_centre_ras = ct.world_coordinates(np.argwhere(organs == 5).mean(0)[None])[0]
    np.testing.assert_allclose(hd_centre_lps * [-1, -1, 1], our_centre_ras, atol=1e-3)


def test_seg_on_written_series_and_enhanced_ct(tmp_path, mni_ct):
    labels = (mni_ct.array > 200).astype(np.uint8) * 3
    write_series(tmp_path / "s", mni_ct)
    ct = read_dicom_series(tmp_path / "s")
    p = write_dicom_seg(labels, ct, {3: "bright"}, tmp_path / "s.dcm")
    np.testing.assert_array_equal(read_dicom_seg(p, ct).array, labels)

    (tmp_path / "e").mkdir()
    write_enhanced_ct(tmp_path / "e" / "enh.dcm", mni_ct)
    enh = read_dicom_series(tmp_path / "e")
    p = write_dicom_seg(labels, enh, {3: "bright"}, tmp_path / "e.dcm")
    back = read_dicom_seg(p, enh)
    np.testing.assert_array_equal(back.array, labels)


def test_empty_labels_and_errors(tmp_path, ct_and_organs, sample, caplog):
    ct, organs = ct_and_organs
    empty = np.zeros(ct.shape, np.uint8)
    with caplog.at_level("WARNING"):
        p = write_dicom_seg(empty, ct, ORGANS, tmp_path / "empty.dcm")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # an empty map is not a warning
    back = read_dicom_seg(p, ct)
    assert back.array.max() == 0 and back.meta["label_names"] == ORGANS
    assert hd.seg.segread(str(p)).NumberOfFrames == len(ORGANS)  # one empty frame per segment
    with pytest.raises(DicomError, match="nothing to write"):
        write_dicom_seg(empty, ct, {}, tmp_path / "none.dcm")
    with pytest.raises(GeometryError, match="does not match"):
        write_dicom_seg(organs[:, :, :5], ct, ORGANS, tmp_path / "bad.dcm")
    with pytest.raises(DicomError, match="DICOM source"):
        write_dicom_seg(np.zeros((122, 101, 30), np.uint8), load_volume(sample("ct_small")), ORGANS, tmp_path / "x.dcm")
    p = write_dicom_seg(organs, ct, ORGANS, tmp_path / "ok.dcm")
    other = Volume(np.zeros((512, 512, 20), np.int16), np.diag([0.5, 0.5, 2.0, 1.0]))
    with pytest.raises(GeometryError):
        read_dicom_seg(p, other)


def test_seg_with_known_label_values_is_the_same(tmp_path, ct_and_organs):
    """`values=` (the batch counts them once for SEG and QA) gives the same segments and frames."""
    ct, organs = ct_and_organs
    counted = read_dicom_seg(write_dicom_seg(organs, ct, ORGANS, tmp_path / "a.dcm"), ct)
    given = read_dicom_seg(write_dicom_seg(organs, ct, ORGANS, tmp_path / "b.dcm", values=[52, 6, 5, 1, 0]), ct)
    assert given.meta["label_names"] == counted.meta["label_names"] == ORGANS
    np.testing.assert_array_equal(given.array, counted.array)
    a, b = hd.seg.segread(str(tmp_path / "a.dcm")), hd.seg.segread(str(tmp_path / "b.dcm"))
    assert a.NumberOfFrames == b.NumberOfFrames and a.PixelData == b.PixelData
    # a superset of the values present (the batch passes the model's labels): absent ones are
    # empty segments, as when they are only named
    named = {**ORGANS, 7: "pancreas"}
    only_named = write_dicom_seg(organs, ct, named, tmp_path / "c.dcm")
    superset = write_dicom_seg(organs, ct, named, tmp_path / "d.dcm", values=sorted(named))
    assert _seg_elements(only_named) == _seg_elements(superset)


def _seg_elements(path) -> list[tuple[str, str]]:
    """Every element of a SEG file as (path, value), leaving out what differs on every write
    (its own UIDs, creation times, the tracking and dimension-organisation UIDs, and the file
    meta group's length, which follows the length of the random SOP instance UID)."""
    import pydicom

    fresh = {"SOPInstanceUID", "SeriesInstanceUID", "MediaStorageSOPInstanceUID", "InstanceCreationDate",
             "InstanceCreationTime", "ContentDate", "ContentTime", "SeriesDate", "SeriesTime", "TrackingUID",
             "DimensionOrganizationUID", "ContributionDateTime", "FileMetaInformationGroupLength"}
    out: list[tuple[str, str]] = []

    def walk(ds, where: str) -> None:
        for elem in ds:
            name = f"{where}/{elem.keyword or elem.tag}"
            if elem.VR == "SQ":
                for n, item in enumerate(elem.value):
                    walk(item, f"{name}[{n}]")
            elif not (elem.keyword in fresh and where.count("/") <= 2 and "Referenced" not in where and "Source" not in where):
                out.append((name, str(elem.value)))

    ds = pydicom.dcmread(path)
    walk(ds.file_meta, "meta")
    walk(ds, "")
    return out


@pytest.mark.parametrize("which", ["ct_dicom", "written"])
def test_seg_from_scan_headers_equals_seg_from_reread_headers(tmp_path, ct_and_organs, which):
    """The images after the first are described to highdicom by the scan's header values
    (no second pydicom parse): the SEG is the same, element by element, as with the files'
    own headers; on the real CT (blank UIDs filled in) and on a written series."""
    ct, organs = ct_and_organs
    if which == "written":
        write_series(tmp_path / "series", Volume(ct.array, ct.affine), transfer_syntax="implicit")
        ct = read_dicom_series(tmp_path / "series")
    assert len(ct.meta["source_headers"]) == len(ct.meta["source_files"]) == 20
    fast = write_dicom_seg(organs, ct, ORGANS, tmp_path / "fast.dcm")
    reread = Volume(ct.array, ct.affine, {k: v for k, v in ct.meta.items() if k != "source_headers"})
    slow = write_dicom_seg(organs, reread, ORGANS, tmp_path / "slow.dcm")
    a, b = _seg_elements(fast), _seg_elements(slow)
    assert len(a) > 20 * 4 * 5 and a == b  # 20 slices × 4 organs, each frame's groups


def test_fast_path_saves_highdicom_s_own_file(tmp_path, ct_and_organs, monkeypatch):
    """`medseg.io.seg_fast` (write-only subclass + pre-encoded frame groups) saves element for
    element and pixel for pixel what highdicom's public class saved by pydicom's writer saves;
    label values 1..N (copied without a lookup) and other values (looked up) both round-trip."""
    import medseg.io.seg_fast as seg_fast

    assert seg_fast.tested_versions()  # the installed versions are the tested ones: fast by default
    ct, organs = ct_and_organs
    consecutive = np.zeros_like(organs)
    for n, v in enumerate(ORGANS, start=1):
        consecutive[organs == v] = n
    names = {n: ORGANS[v] for n, v in enumerate(ORGANS, start=1)}
    for labels, label_names in ((organs, ORGANS), (consecutive, names)):
        for seg_type in ("binary", "labelmap"):
            fast = write_dicom_seg(labels, ct, label_names, tmp_path / "fast.dcm", seg_type=seg_type, fast=True)
            assert type(hd.seg.segread(str(fast))) is hd.seg.Segmentation
            np.testing.assert_array_equal(read_dicom_seg(fast, ct).array, labels)
            standard = write_dicom_seg(labels, ct, label_names, tmp_path / "standard.dcm", seg_type=seg_type, fast=False)
            assert _seg_elements(fast) == _seg_elements(standard)
            assert hd.seg.segread(str(fast)).PixelData == hd.seg.segread(str(standard)).PixelData

    # untested versions: the public path, same file
    monkeypatch.setattr(seg_fast, "TESTED", set())
    assert not seg_fast.tested_versions()
    called = []
    monkeypatch.setattr(seg_fast, "build_segmentation", lambda a: called.append(1))
    public = write_dicom_seg(organs, ct, ORGANS, tmp_path / "public.dcm")
    assert not called
    np.testing.assert_array_equal(read_dicom_seg(public, ct).array, organs)
    monkeypatch.undo()

    # a highdicom whose constructor needs its lookup tables: highdicom's own class is built
    class NeedsTables(hd.seg.Segmentation):
        def _build_luts(self) -> None:
            raise AttributeError("'Segmentation' object has no attribute '_db_con'")

    monkeypatch.setattr(seg_fast, "_write_only_segmentation_class", lambda: NeedsTables)
    fallback = write_dicom_seg(organs, ct, ORGANS, tmp_path / "fallback.dcm")
    np.testing.assert_array_equal(read_dicom_seg(fallback, ct).array, organs)


def test_labelmap_seg_reads_back_equal_and_is_smaller(tmp_path, ct_and_organs):
    """LABELMAP SEG (one frame per slice holding segment numbers): read back equal to the labels
    (values restored through the tracking IDs), several times smaller than BINARY."""
    from medseg.errors import InputError

    ct, organs = ct_and_organs
    binary = write_dicom_seg(organs, ct, ORGANS, tmp_path / "binary.dcm")
    labelmap = write_dicom_seg(organs, ct, ORGANS, tmp_path / "labelmap.dcm", seg_type="labelmap")
    seg = hd.seg.segread(str(labelmap))
    assert str(seg.SegmentationType) == "LABELMAP"
    back = read_dicom_seg(labelmap, ct)
    np.testing.assert_array_equal(back.array, organs)
    assert back.meta["label_names"] == ORGANS
    assert len(seg.PerFrameFunctionalGroupsSequence) < len(hd.seg.segread(str(binary)).PerFrameFunctionalGroupsSequence)
    with pytest.raises(InputError, match="seg_type"):
        write_dicom_seg(organs, ct, ORGANS, tmp_path / "x.dcm", seg_type="fractional")


def test_label_values_present_for_every_label_dtype():
    import numpy as np
    import pytest

    from medseg.errors import DicomError
    from medseg.io.seg import _label_values_present

    lab = np.zeros((6, 5, 4), np.uint16, order="F")
    lab[1, 1, 1], lab[2, 2, 2] = 300, 7
    assert _label_values_present(lab) == [7, 300]
    assert _label_values_present(lab.astype(np.int32)) == [7, 300]
    assert _label_values_present(lab > 0) == [1]
    assert _label_values_present(lab.astype(np.float32)) == [7, 300]
    with pytest.raises(DicomError, match="fractional"):
        _label_values_present(lab.astype(np.float32) + 0.5)
    with pytest.raises(DicomError, match=">= 0"):
        _label_values_present(-lab.astype(np.int32))


def test_pre_encoded_frame_groups_give_pydicom_s_own_bytes(tmp_path, ct_and_organs, monkeypatch):
    """The fast per-frame-groups path writes byte for byte what pydicom's writer writes."""
    import copy
    import io

    import medseg.io.seg_fast as seg_fast
    from medseg.io.seg_fast import pre_encode_sequence

    ct, organs = ct_and_organs
    built = []  # a copy of the dataset as highdicom made it, before pydicom's writer touched it
    monkeypatch.setattr(seg_fast, "pre_encode_sequence", lambda ds, kw: built.append(copy.deepcopy(ds)) and False)
    path = write_dicom_seg(organs, ct, ORGANS, tmp_path / "plain.dcm")
    (seg,) = built
    assert seg.get_item("PixelData").VR == "OB or OW"  # resolved by the fast path as pydicom does
    n_frames = len(seg.PerFrameFunctionalGroupsSequence)
    assert n_frames > 20  # several segments on many source images
    # items shared between frames (encoded once): a source image's plane position in each of
    # its segments' frames (deepcopy keeps the sharing)
    positions = {id(fg.PlanePositionSequence[0]) for fg in seg.PerFrameFunctionalGroupsSequence}
    assert len(positions) < n_frames
    assert pre_encode_sequence(seg, "PerFrameFunctionalGroupsSequence")
    assert seg.get_item("PerFrameFunctionalGroupsSequence").is_raw
    buf = io.BytesIO()
    seg.save_as(buf)
    assert buf.getvalue() == path.read_bytes()
    # and the file reads back as the same segmentation
    back = hd.seg.segread(io.BytesIO(buf.getvalue()))
    assert len(back.PerFrameFunctionalGroupsSequence) == n_frames


def test_pre_encoding_leaves_other_transfer_syntaxes_to_pydicom(ct_and_organs, tmp_path, monkeypatch):
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    import medseg.io.seg_fast as seg_fast
    from medseg.io.seg_fast import pre_encode_sequence

    ct, organs = ct_and_organs
    built = []
    monkeypatch.setattr(seg_fast, "pre_encode_sequence", lambda ds, kw: built.append(ds) and False)
    write_dicom_seg(organs, ct, ORGANS, tmp_path / "plain.dcm")
    seg = built[0]
    seg.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert not pre_encode_sequence(seg, "PerFrameFunctionalGroupsSequence")
    assert isinstance(seg.PerFrameFunctionalGroupsSequence, pydicom.Sequence)
    assert not pre_encode_sequence(seg, "NoSuchSequence")

"""Reader / writer round trips on the bundled real data: the geometry napari shows is the file's."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medseg import sample_data
from medseg.io import Volume, load_volume, read_volume, write_itk, write_nifti
from medseg.io.orientation import ras_to_lps_affine

pytestmark = pytest.mark.gui


def _world_lps(volume: Volume, ijk) -> np.ndarray:
    """LPS mm of voxel (i, j, k), reversed to napari's (z, y, x) world order."""
    lps = ras_to_lps_affine(volume.affine)
    return (lps[:3, :3] @ np.asarray(ijk, float) + lps[:3, 3])[::-1]


def _check_geometry(layer, volume: Volume) -> None:
    """Every corner voxel of the volume lands where its affine says, and carries its value."""
    from medseg.io.viewer import layer_geometry

    geo = layer_geometry(volume)
    to_display = np.asarray(geo.data.shape)
    assert layer.data.shape == geo.data.shape
    ni, nj, nk = volume.shape
    for ijk in [(0, 0, 0), (ni - 1, 0, 0), (0, nj - 1, 0), (0, 0, nk - 1), (ni - 1, nj - 1, nk - 1)]:
        world = _world_lps(volume, ijk)
        data_idx = np.rint(layer.world_to_data(world)).astype(int)
        assert np.all((data_idx >= 0) & (data_idx < to_display)), (ijk, data_idx)
        assert layer.data[tuple(data_idx)] == volume.array[ijk]
        np.testing.assert_allclose(layer.data_to_world(data_idx), world, atol=1e-3)
    np.testing.assert_allclose(sorted(layer.scale), sorted(volume.spacing), rtol=1e-6)
    np.testing.assert_allclose(layer.metadata["medseg_geometry"]["affine_ras"], volume.affine)


def test_dicom_folder_opens_one_named_layer_per_series_with_its_geometry(tmp_path):
    from napari.layers import Layer

    from napari_plugin._reader import napari_get_reader

    folder = sample_data.path("ct_dicom")
    reader = napari_get_reader(str(folder))
    assert reader is not None
    with pytest.warns(UserWarning, match="SeriesInstanceUID"):  # the anonymised sample has none: said
        layers = reader(str(folder))
    assert len(layers) == 1
    data, kw, kind = layers[0]
    assert kind == "image" and kw["name"].endswith("(CT)")
    assert kw["contrast_limits"] == (-160.0, 240.0)
    volume = load_volume(folder)
    layer = Layer.create(data, kw, kind)
    _check_geometry(layer, volume)
    # slice spacing from the positions (2 mm), scale = spacing, translate = first voxel centre
    assert layer.scale[0] == pytest.approx(2.0) and layer.scale[1] == pytest.approx(0.9765625)
    np.testing.assert_allclose(layer.translate, _world_lps(volume, (0, 0, 0)), atol=1e-4)

    # two series in one folder: two layers, named by their series
    two = tmp_path / "two"
    shutil.copytree(folder, two / "a")
    import pydicom

    for f in sorted((two / "a").iterdir())[:10]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SeriesDescription = "[b]first half[/b]"
        ds.SeriesNumber = 7
        ds.save_as(f)
    with pytest.warns(UserWarning):
        layers = reader(str(two))
    names = sorted(kw["name"] for _, kw, _ in layers)
    assert len(names) == 2 and any('S007 "[b]first half[/b]" (CT)' == n for n in names)  # printed literally


@pytest.mark.parametrize("sample", ["ct_small", "brain_mri"])
def test_nifti_and_nrrd_open_with_true_geometry(sample):
    from napari.layers import Layer

    from napari_plugin._reader import napari_get_reader

    path = sample_data.path(sample)
    (data, kw, kind), = napari_get_reader(str(path))(str(path))
    assert kind == "image"
    volume = read_volume(path)
    _check_geometry(Layer.create(data, kw, kind), volume)
    if sample == "ct_small":
        assert kw["contrast_limits"] == (-160.0, 240.0)  # HU without a modality tag: CT window
    else:
        lo, hi = kw["contrast_limits"]
        assert volume.array.min() <= lo < hi <= volume.array.max()


def test_label_file_opens_as_named_coloured_labels_and_writes_back_exactly(tmp_path):
    from napari.layers import Layer

    from napari_plugin._reader import napari_get_reader
    from napari_plugin._writer import write_labels_nifti

    path = sample_data.path("ct_small_seg")  # next to labels_total.json
    (data, kw, kind), = napari_get_reader(str(path))(str(path))
    assert kind == "labels"
    layer = Layer.create(data, kw, kind)
    volume = read_volume(path)
    _check_geometry(layer, volume)
    names = dict(zip(layer.features["index"], layer.features["name"]))
    assert names[5] == "liver" and names[1] == "spleen"
    assert layer.get_color(5) is not None and not np.allclose(layer.get_color(5), layer.get_color(1))

    out = write_labels_nifti(str(tmp_path / "back.nii.gz"), layer.data, {"name": layer.name, "metadata": layer.metadata})
    back = read_volume(out[0])
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-6)


def test_mha_round_trip_and_oblique_series_warns_and_keeps_its_rotation(tmp_path):
    from napari.layers import Layer

    from napari_plugin._reader import napari_get_reader

    ct = read_volume(sample_data.path("ct_small"))
    mha = write_itk(ct, tmp_path / "ct.mha")
    (data, kw, kind), = napari_get_reader(str(mha))(str(mha))
    _check_geometry(Layer.create(data, kw, kind), ct)

    angle = np.radians(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    oblique_affine = ct.affine.copy()
    oblique_affine[:3, :3] = rot @ ct.affine[:3, :3]
    oblique = write_nifti(Volume(ct.array, oblique_affine), tmp_path / "oblique.nii.gz")
    with pytest.warns(UserWarning, match="oblique"):
        (data, kw, kind), = napari_get_reader(str(oblique))(str(oblique))
    layer = Layer.create(data, kw, kind)
    assert "rotate" in kw and any("oblique" in w for w in layer.metadata["medseg_warnings"])
    _check_geometry(layer, read_volume(oblique))  # world positions through napari's rotation


def test_labels_drawn_for_a_dicom_image_inherit_its_geometry_and_export_as_seg(viewer, tmp_path):
    from medseg.io.seg import read_dicom_seg
    from napari.layers import Labels

    from napari_plugin._sample_data import ct_dicom
    from napari_plugin._widget import _add, install_geometry_hook
    from napari_plugin._writer import write_labels_dicom_seg, write_labels_nifti

    install_geometry_hook(viewer)
    with pytest.warns(UserWarning):
        image_data, _labels_data = ct_dicom()
    image = _add(viewer, image_data)
    drawn = viewer.add_layer(Labels(np.zeros(image.data.shape, np.uint8), name="drawn"))  # no geometry given
    np.testing.assert_allclose(drawn.scale, image.scale)
    np.testing.assert_allclose(drawn.translate, image.translate)
    volume = load_volume(sample_data.path("ct_dicom"))
    # paint one voxel at a world position: it lands on the image voxel there
    ijk = (300, 200, 12)
    world = _world_lps(volume, ijk)
    drawn.paint(drawn.world_to_data(world), 3, refresh=False)
    assert drawn.data[tuple(np.rint(image.world_to_data(world)).astype(int))] == 3

    meta = {"name": drawn.name, "metadata": drawn.metadata}
    nii = read_volume(write_labels_nifti(str(tmp_path / "drawn.nii.gz"), drawn.data, meta)[0])
    assert nii.same_grid(volume)
    assert nii.array[ijk] == 3 and int((nii.array > 0).sum()) == int((drawn.data > 0).sum())

    seg_path = write_labels_dicom_seg(str(tmp_path / "drawn.dcm"), drawn.data, meta)[0]
    seg = read_dicom_seg(seg_path, volume)
    np.testing.assert_array_equal(seg.array > 0, nii.array > 0)


def test_sample_dicom_labels_export_as_seg_exactly(tmp_path):
    from medseg.errors import DicomError
    from medseg.io.seg import read_dicom_seg

    from napari_plugin._sample_data import ct_dicom, ct_small
    from napari_plugin._writer import write_labels_dicom_seg

    with pytest.warns(UserWarning):
        _, (data, kw, _) = ct_dicom()
    volume = load_volume(sample_data.path("ct_dicom"))
    keep = np.isin(data, [5, 1])  # two organs keep the SEG small
    labels = np.where(keep, data, 0).astype(np.uint8)
    out = write_labels_dicom_seg(str(tmp_path / "seg.dcm"), labels, {"name": kw["name"], "metadata": kw["metadata"]})[0]
    seg = read_dicom_seg(out, volume)
    from medseg.io.viewer import volume_from_layer

    expected = volume_from_layer(labels, kw["metadata"]).array
    np.testing.assert_array_equal(seg.array, expected)
    assert int((expected == 5).sum()) > 1000

    _, (small, small_kw, _) = ct_small()
    with pytest.raises(DicomError, match="NIfTI"):
        write_labels_dicom_seg(str(tmp_path / "x.dcm"), small, {"name": "x", "metadata": small_kw["metadata"]})


def test_labelmap_seg_reads_back_equal_to_the_layer(tmp_path):
    from medseg.io.seg import read_dicom_seg
    from medseg.io.viewer import volume_from_layer

    from napari_plugin._sample_data import ct_dicom
    from napari_plugin._writer import write_labels_dicom_seg_labelmap

    with pytest.warns(UserWarning):
        _, (data, kw, _) = ct_dicom()
    labels = np.where(np.isin(data, [5, 1]), data, 0).astype(np.uint8)
    meta = {"name": kw["name"], "metadata": kw["metadata"]}
    out = write_labels_dicom_seg_labelmap(str(tmp_path / "lm.dcm"), labels, meta)[0]
    import pydicom

    assert str(pydicom.dcmread(out, stop_before_pixels=True).SegmentationType) == "LABELMAP"
    seg = read_dicom_seg(out, load_volume(sample_data.path("ct_dicom")))
    np.testing.assert_array_equal(seg.array, volume_from_layer(labels, kw["metadata"]).array)

"""NIfTI / NRRD reading and writing on real bundled volumes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import InputError
from medseg.io import Volume, case_name, read_volume, write_itk, write_nifti


def test_nifti_roundtrip_keeps_array_and_affine(sample, tmp_path):
    vol = read_volume(sample("ct_small"))
    assert vol.shape == (122, 101, 30)
    np.testing.assert_allclose(vol.spacing, (3.0, 3.0, 3.0), atol=1e-4)
    out = write_nifti(vol, tmp_path / "ct.nii.gz")
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    assert not list(tmp_path.glob(".*part*")), "temporary file left behind"


def test_nrrd_geometry_matches_simpleitk_world_coordinates(sample):
    """A voxel's RAS position from our affine equals SimpleITK's LPS physical point, sign-flipped."""
    path = sample("brain_mri")
    vol = read_volume(path)
    img = sitk.ReadImage(str(path))
    assert vol.shape == img.GetSize()
    for ijk in [(0, 0, 0), (10, 200, 3), (255, 255, 24)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
        ras = vol.world_coordinates(np.array([ijk]))[0]
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-4)
        assert vol.array[ijk] == sitk.GetArrayViewFromImage(img)[ijk[2], ijk[1], ijk[0]]


def test_itk_write_then_read_is_identity(sample, tmp_path):
    vol = read_volume(sample("brain_mri_seg"))
    back = read_volume(write_itk(vol, tmp_path / "label.nrrd"))
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    assert back.array.max() == 1


def test_nifti_and_itk_readers_agree_on_same_file(sample, tmp_path):
    vol = read_volume(sample("ct_small_seg"))
    mha = write_itk(vol, tmp_path / "seg.mha")
    via_itk = read_volume(mha)
    assert via_itk.same_grid(vol)
    np.testing.assert_array_equal(via_itk.array, vol.array)


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "missing.nii.gz")
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 definitely not a nifti")
    with pytest.raises(InputError, match="broken.nii.gz"):
        read_volume(bad)
    with pytest.raises(InputError, match="unknown image format"):
        read_volume(tmp_path / "x.png")


def test_case_name_strips_double_suffix():
    assert case_name("/a/b/liver_001.nii.gz") == "liver_001"
    assert case_name("brain.nrrd") == "brain"


def test_volume_orientation_and_spacing():
    aff = np.diag([-0.5, -0.5, 2.0, 1.0])
    v = Volume(np.zeros((4, 4, 4), np.int16), aff)
    assert v.orientation == "LPS"
    assert v.spacing == (0.5, 0.5, 2.0)


def test_atomic_outputs_get_normal_permissions(sample, tmp_path):
    import os
    import stat

    out = write_nifti(read_volume(sample("ct_small_seg")), tmp_path / "seg.nii.gz")
    mode = stat.S_IMODE(os.stat(out).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask

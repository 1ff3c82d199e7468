"""DICOM test series written from a real volume (nilearn's bundled MNI152 T1 template).

Imported by the tests in this folder (``from dicom_factory import ...``); fixtures that wrap
it are in ``conftest.py``.

`write_series(folder, volume, ...)` writes a single-frame series (or one Enhanced CT file)
with pydicom in the variant asked for: transfer syntax, shuffled names, oblique /
feet-first geometry (through the volume's affine), localizer, duplicate or missing slices,
junk files. Tests then read it back and compare voxel by voxel in world coordinates with the
volume it came from (`assert_same_world`).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from medseg.io import Volume
from medseg.io.orientation import ras_to_lps_affine

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"
PYDICOM_TEST_FILES = Path(__import__("pydicom").__file__).parent / "data" / "test_files"


def _mni_template() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def mni_ct_volume() -> Volume:
    """A real 40×48×20 CT-like int16 volume (HU-like: -1024 … ~500) at 2 mm, RAS affine.

    The MNI152 T1 (1 mm) is subsampled to 2 mm and cropped around the brain centre; its
    intensities are mapped to HU-like values so the series needs RescaleIntercept -1024.
    """
    import nibabel as nib

    img = nib.load(str(_mni_template()))
    arr = np.asarray(img.dataobj)[::2, ::2, ::2]  # 2 mm
    aff = img.affine.copy()
    aff[:3, :3] *= 2
    c = np.array(arr.shape) // 2
    lo = c - np.array([20, 24, 10])
    arr = arr[lo[0] : lo[0] + 40, lo[1] : lo[1] + 48, lo[2] : lo[2] + 20]
    aff[:3, 3] = aff[:3, :3] @ lo + aff[:3, 3]
    ct = (arr.astype(np.int16) * 6 - 1024).astype(np.int16)
    assert ct.std() > 50  # real anatomy, not a blank crop
    return Volume(ct, aff, {"source": "MNI152 T1 2 mm crop"})


def rotation(axis: str, degrees: float) -> np.ndarray:
    """4×4 rotation about a world axis (x, y or z)."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _base_dataset(sop_class: str, series_uid: str, study_uid: str, for_uid: str, **extra):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.PatientName = "Doe^Jane"  # tests check that `medseg info` never prints these
    ds.PatientID = "PID-SECRET-42"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Manufacturer = "medseg-tests"
    ds.Modality = extra.pop("Modality", "CT")
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def _geometry(volume: Volume) -> tuple[list[float], list[float], np.ndarray]:
    lps = ras_to_lps_affine(volume.affine)
    dx, dy = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    iop = list(np.concatenate([lps[:3, 0] / dx, lps[:3, 1] / dy]).round(8))
    return iop, [float(dy), float(dx)], lps


def _set_pixels(ds, plane: np.ndarray, stored_bits: int) -> None:
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = stored_bits
    ds.HighBit = stored_bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(plane.astype(np.uint16)).tobytes()


def write_series(
    folder: Path,
    volume: Volume,
    *,
    series_uid: str | None = None,
    series_number: int = 3,
    description: str = "AX CT test",
    transfer_syntax: str = "explicit",
    shuffle_names: bool = True,
    names: str = "uid",
    drop_slices: tuple[int, ...] = (),
    duplicate_slices: tuple[int, ...] = (),
    localizer: bool = False,
    stored_bits: int = 12,
    intercept: float = -1024.0,
    seed: int = 0,
) -> list[Path]:
    """Write `volume` (int16 HU-like) as one single-frame CT file per slice; return the paths.

    Args:
        transfer_syntax: 'explicit', 'implicit', 'big', 'rle', 'jpegls', 'j2k'.
        shuffle_names: file names unrelated to slice order (random digits, no extension).
        names: 'uid' (random numbers) or 'index' (IM0001… in reversed slice order).
        drop_slices / duplicate_slices: k indices to leave out / to write twice.
        localizer: also write a coronal localizer image in the same series.
    """
    from pydicom.uid import (
        ExplicitVRBigEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGLSLossless,
        RLELossless,
        generate_uid,
    )

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    series_uid = series_uid or generate_uid()
    study_uid, for_uid = generate_uid(), generate_uid()
    iop, spacing, lps = _geometry(volume)
    stored = (volume.array.astype(np.int32) - int(intercept)).astype(np.uint16)
    nk = volume.shape[2]
    ks = [k for k in range(nk) if k not in drop_slices] + list(duplicate_slices)
    paths = []
    for n, k in enumerate(ks):
        ds = _base_dataset(
            CT_IMAGE,
            series_uid,
            study_uid,
            for_uid,
            SeriesNumber=series_number,
            SeriesDescription=description,
            InstanceNumber=nk - k,  # deliberately opposite to the slice order
            ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
            ImagePositionPatient=[round(float(v), 6) for v in lps @ np.array([0, 0, k, 1.0])][:3],
            ImageOrientationPatient=iop,
            PixelSpacing=spacing,
            SliceThickness=float(np.linalg.norm(lps[:3, 2])),
            RescaleIntercept=intercept,
            RescaleSlope=1,
            RescaleType="HU",
        )
        _set_pixels(ds, stored[:, :, k].T, stored_bits)
        ts = transfer_syntax
        kwargs: dict = {"enforce_file_format": True}
        if ts == "implicit":
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            kwargs.update(implicit_vr=True, little_endian=True)
        elif ts == "big":
            ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype(">u2").tobytes()
            kwargs.update(implicit_vr=False, little_endian=False)
        elif ts in ("rle", "jpegls", "j2k"):
            ds.compress({"rle": RLELossless, "jpegls": JPEGLSLossless, "j2k": JPEG2000Lossless}[ts])
        if names == "index":
            name = f"IM{nk - k:04d}"
        else:
            name = str(rng.randrange(10**9, 10**10)) if shuffle_names else f"slice_{k:03d}.dcm"
        if n >= nk - len(drop_slices):
            name += "_dup"
        path = folder / name
        ds.save_as(path, **kwargs)
        paths.append(path)
    if localizer:
        # A coronal scout through the volume's centre, same series, other geometry.
        cor = (volume.array[:, volume.shape[1] // 2, :].astype(np.int32) - int(intercept)).astype(np.uint16)
        ds = _base_dataset(
            CT_IMAGE,
            series_uid,
            study_uid,
            for_uid,
            SeriesNumber=series_number,
            SeriesDescription=description,
            InstanceNumber=0,
            ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
            ImagePositionPatient=[float(v) for v in lps[:3, 3]],
            ImageOrientationPatient=[1, 0, 0, 0, 0, -1],
            PixelSpacing=[spacing[0], spacing[1]],
            RescaleIntercept=intercept,
            RescaleSlope=1,
        )
        _set_pixels(ds, cor.T, stored_bits)
        path = folder / f"{rng.randrange(10**9, 10**10)}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced_ct(path: Path, volume: Volume, *, shuffle_frames: bool = True, per_frame_rescale: bool = True) -> Path:
    """Write `volume` as one Enhanced CT multi-frame file (functional groups).

    Frames are stored in shuffled order; with `per_frame_rescale`, odd frames use another
    RescaleIntercept (per-frame PixelValueTransformationSequence) than even ones.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    iop, spacing, lps = _geometry(volume)
    nk = volume.shape[2]
    order = list(range(nk))
    if shuffle_frames:
        random.Random(1).shuffle(order)
    ds = _base_dataset(
        ENHANCED_CT_IMAGE,
        generate_uid(),
        generate_uid(),
        generate_uid(),
        SeriesNumber=7,
        SeriesDescription="Enhanced CT",
        InstanceNumber=1,
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL", "NONE"],
        NumberOfFrames=nk,
    )
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = spacing
    pm.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
    shared.PixelMeasuresSequence = Sequence([pm])
    po = Dataset()
    po.ImageOrientationPatient = iop
    shared.PlaneOrientationSequence = Sequence([po])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames, per_frame = [], []
    for n, k in enumerate(order):
        intercept = -1024.0 if (not per_frame_rescale or n % 2 == 0) else -2048.0
        fg = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [round(float(v), 6) for v in (lps @ np.array([0, 0, k, 1.0]))[:3]]
        fg.PlanePositionSequence = Sequence([pp])
        pvt = Dataset()
        pvt.RescaleIntercept = intercept
        pvt.RescaleSlope = 1
        pvt.RescaleType = "HU"
        fg.PixelValueTransformationSequence = Sequence([pvt])
        fc = Dataset()
        fc.InStackPositionNumber = k + 1
        fg.FrameContentSequence = Sequence([fc])
        per_frame.append(fg)
        frames.append((volume.array[:, :, k].astype(np.int32) - int(intercept)).astype(np.uint16).T)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    stack = np.stack(frames)
    ds.Rows, ds.Columns = stack.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(stack).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def assert_same_world(actual: Volume, expected: Volume, atol_mm: float = 1e-3) -> None:
    """Assert both volumes put the same value at every voxel centre in world (RAS) space.

    The grids may differ by axis order/flips (e.g. feet-first): the index mapping between
    them must be a signed permutation with integer offsets, and the arrays must agree
    through it.
    """
    m = np.linalg.inv(actual.affine) @ expected.affine  # expected index → actual index
    perm = np.rint(m[:3, :3])
    assert np.allclose(m[:3, :3], perm, atol=1e-4), f"grids are not aligned:\n{m.round(4)}"
    assert np.allclose(m[:3, 3], np.rint(m[:3, 3]), atol=atol_mm), f"grids are offset by a fraction of a voxel: {m[:3, 3]}"
    assert sorted(actual.shape) == sorted(expected.shape)
    idx = np.indices(expected.shape).reshape(3, -1)
    mapped = np.rint(perm @ idx + np.rint(m[:3, 3])[:, None]).astype(int)
    for d in range(3):
        assert mapped[d].min() >= 0 and mapped[d].max() < actual.shape[d], "expected grid extends beyond actual"
    np.testing.assert_array_equal(actual.array[tuple(mapped)], expected.array[tuple(idx)])

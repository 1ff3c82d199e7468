"""A corpus of corrupt and hostile DICOM trees built from the bundled real CT series, run
through `medseg info`, `medseg convert` (every variant) and `medseg segment` (a few).

Every variant holds a *control* series (3 real slices, untouched) and usually a damaged
*subject* series (12 real slices). The slices are the bundled TotalSegmentator CT's own files
(JPEG 2000), cropped to their central 128 × 128 pixels with the position moved accordingly so
the corpus stays fast; the subject is re-encoded as JPEG 2000 lossless, the control as native
little endian. For each variant: the exit code, no traceback without ``-v``, no raw escape
sequence or numpy repr on the terminal, the damaged file named where one is damaged, the
control's NIfTI identical to a clean run's, and the subject's outcome (identical / written with
a warning / failed with a reason naming the file / not an image).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.cli import main
from medseg.io import read_nifti
from medseg.terminal import printable

CROP = 128
SUBJECT_UID = "1.2.826.0.1.3680043.8.498.15001"
CONTROL_UID = "1.2.826.0.1.3680043.8.498.15002"


# ------------------------------------------------------------------------------ building


def _cropped(ds: pydicom.Dataset, size: int = CROP) -> pydicom.Dataset:
    """`ds` with its central `size`² pixels, native little endian, IPP moved to the crop."""
    arr = ds.pixel_array
    r0, c0 = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    crop = np.ascontiguousarray(arr[r0 : r0 + size, c0 : c0 + size])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient]) + c0 * dc * iop[:3] + r0 * dr * iop[3:]
    ds.ImagePositionPatient = [round(float(v), 4) for v in ipp]
    ds.Rows, ds.Columns = crop.shape
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.PixelData = crop.tobytes()
    return ds


def _by_position(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file()]
    return sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


@pytest.fixture(scope="module")
def parts(tmp_path_factory, sample) -> dict[str, Path]:
    """``subject/`` (12 JPEG 2000 slices) and ``control/`` (3 native slices) of real CT data."""
    root = tmp_path_factory.mktemp("corpus_parts")
    files = _by_position(sample("ct_dicom"))
    out = {"subject": root / "subject", "control": root / "control"}
    for folder in out.values():
        folder.mkdir()
    for n, src in enumerate(files[2:14]):
        ds = _cropped(pydicom.dcmread(src))
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = SUBJECT_UID, 7, "fuzz subject"
        ds.compress(pydicom.uid.JPEG2000Lossless)
        ds.save_as(out["subject"] / f"s{n:02d}.dcm", enforce_file_format=True)
    for n, src in enumerate(files[15:18]):
        ds = _cropped(pydicom.dcmread(src))
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = CONTROL_UID, 8, "fuzz control"
        ds.save_as(out["control"] / f"c{n}.dcm", enforce_file_format=True)
    return out


def _edit(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)


def _edit_all(folder: Path, **tags) -> None:
    for p in sorted(folder.glob("s*.dcm")):
        _edit(p, **tags)


def _flip(path: Path, start: int, n: int, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    data[start : start + n] = rng.integers(0, 256, len(data[start : start + n]), dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _cut(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:n])


def _offset_after(path: Path, tag: int) -> int:
    """Byte offset just after the element `tag` (explicit VR LE) in the file."""
    data = path.read_bytes()
    key = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
    at = data.index(key, 132)
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    return at + 8 + length


def _pixel_offset(path: Path) -> int:
    return path.read_bytes().rindex(b"\xe0\x7f\x10\x00")


@dataclass
class Variant:
    name: str
    build: Callable[[Path], None]  # gets the subject folder (inside the tree), changes the tree
    subject: str  # "same" | "written" | "failed" | "absent" | "any"
    named: list[str] = field(default_factory=list)  # text that must be shown (a damaged file's name...)
    convert_rc: int | None = None  # default: 1 when the subject fails, else 0


def _v(name, subject, named=(), rc=None):
    def deco(fn):
        VARIANTS.append(Variant(name, fn, subject, list(named), rc))
        return fn

    return deco


VARIANTS: list[Variant] = []
S3 = "s03.dcm"

_v("clean", "same")(lambda d: None)
_v("zero_length", "written", [S3])(lambda d: (d / S3).write_bytes(b""))
_v("truncated_at_100", "written", [S3])(lambda d: _cut(d / S3, 100))
_v("truncated_at_200", "written", [S3, "truncated"])(lambda d: _cut(d / S3, 200))
_v("truncated_at_1500", "written", [S3, "truncated"])(lambda d: _cut(d / S3, 1500))
_v("truncated_after_series_uid", "written", [S3, "truncated", "of this series is unreadable"])(
    lambda d: _cut(d / S3, _offset_after(d / S3, 0x0020000E) + 3))
_v("truncated_in_pixel_data", "written", [S3, "truncated"])(lambda d: _cut(d / S3, _pixel_offset(d / S3) + 400))
_v("truncated_last_bytes", "written", [S3, "truncated"])(lambda d: _cut(d / S3, (d / S3).stat().st_size - 10))
_v("two_truncated_files", "failed", ["s03.dcm", "s06.dcm", "more than the 10 %"])(
    lambda d: [_cut(d / n, _pixel_offset(d / n) + 100) for n in (S3, "s06.dcm")])
_v("header_bytes_flipped", "any")(lambda d: _flip(d / S3, 200, 64))
_v("meta_length_flipped", "any")(lambda d: _flip(d / S3, 140, 8, seed=3))
_v("pixel_bytes_flipped", "any")(lambda d: _flip(d / S3, _pixel_offset(d / S3) + 200, 400))
_v("j2k_slice_undecodable", "written", [S3, "interpolated"])(
    lambda d: _flip(d / S3, _pixel_offset(d / S3) + 40, (d / S3).stat().st_size - _pixel_offset(d / S3) - 60))
_v("two_j2k_slices_undecodable", "failed", [S3, "s07.dcm", "cannot be used"])(
    lambda d: [_flip(d / n, _pixel_offset(d / n) + 40, (d / n).stat().st_size - _pixel_offset(d / n) - 60) for n in (S3, "s07.dcm")])
_v("text_file", "same", ["notes.txt"])(lambda d: (d / "notes.txt").write_text("not DICOM\n"))
_v("random_binary", "same", ["blob.bin"])(lambda d: (d / "blob.bin").write_bytes(np.random.default_rng(1).bytes(4096)))
_v("dicm_marker_then_garbage", "same", ["fake.dcm"])(
    lambda d: (d / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(2).bytes(2000)))
_v("missing_slice", "written", ["missing slice"])(lambda d: (d / "s05.dcm").unlink())
_v("duplicate_slice", "same")(lambda d: shutil.copy(d / "s05.dcm", d / "s05_copy.dcm"))
_v("every_slice_twice", "same")(lambda d: [shutil.copy(p, p.with_name(p.stem + "_b.dcm")) for p in sorted(d.glob("s*.dcm"))])
_v("control_slice_in_subject_folder", "same")(
    lambda d: shutil.copy(d.parent / "control" / "c1.dcm", d / "c1_copy.dcm"))


@_v("another_series_in_the_folder", "same")
def _other_series(d):
    shutil.copy(d / "s05.dcm", d / "other.dcm")
    _edit(d / "other.dcm", SeriesInstanceUID="1.2.826.0.1.3680043.8.498.15003", SeriesNumber=9)


_v("inconsistent_pixel_spacing", "written", ["another geometry"])(lambda d: _edit(d / S3, PixelSpacing=[0.5, 0.5]))
_v("inconsistent_orientation", "written", ["another geometry"])(
    lambda d: _edit(d / S3, ImageOrientationPatient=[1, 0, 0, 0, 0, -1]))


@_v("inconsistent_rows", "written", ["another geometry"])
def _rows(d):
    ds = pydicom.dcmread(d / S3)
    arr = ds.pixel_array[:100]
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.Rows, ds.PixelData = 100, np.ascontiguousarray(arr).tobytes()
    ds.save_as(d / S3, enforce_file_format=True)


_v("degenerate_orientation", "failed", ["degenerate ImageOrientationPatient [1, 0, 0, 1, 0, 0]"])(
    lambda d: _edit_all(d, ImageOrientationPatient=[1, 0, 0, 1, 0, 0]))
_v("no_position_on_one_slice", "written")(lambda d: _edit(d / S3, ImagePositionPatient=None))


@_v("wrong_transfer_syntax_uid", "any")
def _wrong_ts(d):
    ds = pydicom.dcmread(d / S3)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.RLELossless  # the data are JPEG 2000
    ds.save_as(d / S3, enforce_file_format=True)


@_v("unknown_transfer_syntax_uid", "any")
def _unknown_ts(d):
    ds = pydicom.dcmread(d / S3)
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    ds.save_as(d / S3, enforce_file_format=True)


_v("huge_declared_size_one_slice", "written")(lambda d: _edit(d / S3, Rows=65535, Columns=65535))
_v("huge_declared_size_every_slice", "failed", ["65535×65535"])(lambda d: _edit_all(d, Rows=65535, Columns=65535))
_v("huge_number_of_frames", "any")(lambda d: _edit(d / S3, NumberOfFrames=100000))
_v("rescale_slope_zero", "written", [S3, "RescaleSlope is 0"])(lambda d: _edit(d / S3, RescaleSlope=0))
_v("rescale_slope_1e30", "written", [S3, "implausible for CT"])(lambda d: _edit(d / S3, RescaleSlope="1e30"))
_v("rescale_slope_zero_everywhere", "failed", ["RescaleSlope is 0", "12 of 12"])(lambda d: _edit_all(d, RescaleSlope=0))
_v("no_series_uid", "written", ["stand-in UID"])(lambda d: _edit_all(d, SeriesInstanceUID=None))
_v("description_markup_close", "same", ["[/]"])(lambda d: _edit_all(d, SeriesDescription="[/]"))
_v("modality_markup_close", "same", ["[/]"])(lambda d: _edit_all(d, Modality="[/]"))
_v("description_hyperlink", "same", ["[link=file:///etc/passwd]click[/link]"])(
    lambda d: _edit_all(d, SeriesDescription="[link=file:///etc/passwd]click[/link]"))
_v("description_ansi", "same", ["\\x1b[2J"])(lambda d: _edit_all(d, SeriesDescription="x\x1b[2J\x1b[31mred"))


@_v("markup_folder_and_file_names", "same", ["sub[/x] 999.dcm"])
def _markup_names(d):
    target = d.parent / "sub["
    target.mkdir()
    for p in sorted(d.glob("s*.dcm")):
        p.rename(target / f"x] {p.stem[1:]:0>3}.dcm")  # x] 000.dcm, x] 001.dcm ...
    (target / "x] 999.dcm").write_text("[bold]not DICOM[/]")  # skipped, so its path is printed


@_v("ansi_and_newline_in_file_names", "same", ["evil\\x1b[2J.dcm"])
def _ansi_names(d):
    (d / "evil\x1b[2J.dcm").write_text("not DICOM")
    (d / "cr\rlf\n.dcm").write_text("not DICOM")


@_v("unicode_names", "same")
def _unicode(d):
    target = d.parent / "Séries_検査" / "ünï"
    target.mkdir(parents=True)
    for p in sorted(d.glob("s*.dcm")):
        p.rename(target / f"切片_{p.name}")


@_v("deeply_nested", "same")
def _nested(d):
    target = d.parent / "a" / "b" / "c" / "d" / "e" / "f"
    target.mkdir(parents=True)
    for p in sorted(d.glob("s*.dcm")):
        p.rename(target / p.name)


@_v("symlink_loop_and_dangling_link", "same")
def _links(d):
    os.symlink(d.parent, d / "loop")
    os.symlink(d / "does_not_exist.dcm", d / "dangling.dcm")
    os.symlink(d / "s05.dcm", d / "link_to_s05.dcm")


_v("dicomdir_file", "same", ["DICOMDIR"])(lambda d: (d / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM"))
_v("structured_report_beside", "same")(
    lambda d: shutil.copy(pydicom.data.get_testdata_file("test-SR.dcm"), d / "report.dcm"))
_v("subject_removed", "absent")(lambda d: shutil.rmtree(d))
_v("reversed_instance_numbers", "same")(
    lambda d: [_edit(p, InstanceNumber=100 - n) for n, p in enumerate(sorted(d.glob("s*.dcm")))])


# ------------------------------------------------------------------------------ running


def run_cli(*args: str) -> tuple[int, str]:
    """`medseg ARGS` in this process: (exit code, stdout + stderr)."""
    buf = io.StringIO()
    code = 0
    old_columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "400"  # rich tables: no wrapped cells between us and the names
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(buf))
        stack.enter_context(contextlib.redirect_stderr(buf))
        stack.callback(lambda: os.environ.pop("COLUMNS") if old_columns is None else os.environ.update(COLUMNS=old_columns))
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return code, buf.getvalue()


def _squash(text: str) -> str:
    """Text without whitespace, so names that rich wrapped across lines still match."""
    return "".join(text.split())


def _tree(parts: dict[str, Path], root: Path, variant: Variant) -> Path:
    tree = root / variant.name
    shutil.copytree(parts["control"], tree / "control")
    shutil.copytree(parts["subject"], tree / "subject")
    variant.build(tree / "subject")
    return tree


def _outputs(out: Path) -> dict[str, dict]:
    index = json.loads((out / "series.json").read_text())
    return {e["series_instance_uid"]: e for e in index["series"]}, index


@pytest.fixture(scope="module")
def clean_run(parts, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    tree = _tree(parts, root, Variant("clean", lambda d: None, "same"))
    code, text = run_cli("convert", str(tree), str(root / "out"))
    assert code == 0, text
    entries, _ = _outputs(root / "out")
    return {uid: read_nifti(root / "out" / entries[uid]["output"]) for uid in (SUBJECT_UID, CONTROL_UID)}


def test_corpus_is_large_enough():
    assert len(VARIANTS) >= 40 and len({v.name for v in VARIANTS}) == len(VARIANTS)


def _same(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(a.array, b.array) and np.allclose(a.affine, b.affine, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_info_and_convert(variant, parts, clean_run, tmp_path):
    tree = _tree(parts, tmp_path, variant)
    info_rc, info_text = run_cli("info", "--skipped", str(tree))
    plain_rc, plain_text = run_cli("info", str(tree))  # damaged files are named without --skipped too
    assert plain_rc == 0 and "Traceback" not in plain_text and "\x1b" not in plain_text
    conv_rc, conv_text = run_cli("convert", str(tree), str(tmp_path / "out"))
    for text in (info_text, conv_text):
        assert "Traceback" not in text and "\x1b" not in text and "np.float64" not in text, text
        assert "MarkupError" not in text and "]8;" not in text  # no hyperlink escape
    assert "[dim]skipped[/]" not in info_text
    assert info_rc == 0, info_text  # the control series is always there

    entries, index = _outputs(tmp_path / "out")
    control = entries[CONTROL_UID]
    assert control["error"] is None and _same(read_nifti(tmp_path / "out" / control["output"]), clean_run[CONTROL_UID])

    subject = entries.get(SUBJECT_UID)
    if variant.name == "no_series_uid":  # a stand-in UID (warned), so look it up by size
        subject = next(e for uid, e in entries.items() if uid != CONTROL_UID and e["n_files"] == 12)
    expected_rc = variant.convert_rc if variant.convert_rc is not None else (1 if variant.subject == "failed" else 0)
    if variant.subject != "any":
        assert conv_rc == expected_rc, conv_text
    if variant.subject == "absent":
        assert subject is None
    elif variant.subject == "failed":
        assert subject is not None and subject["output"] is None and subject["error"], subject
    elif variant.subject in ("same", "written"):
        assert subject is not None and subject["output"], (subject, conv_text)
        vol = read_nifti(tmp_path / "out" / subject["output"])
        if variant.subject == "same":
            assert _same(vol, clean_run[SUBJECT_UID]), variant.name
        else:
            assert subject["warnings"], subject  # a repaired series always says why
    else:  # "any": whatever happens, it is reported and the control is intact (checked above)
        assert conv_rc in (0, 1)
        if subject is not None and subject["output"] is None:
            assert subject["error"]
    shown = _squash(info_text + conv_text + json.dumps(index, ensure_ascii=False))
    for text in variant.named:
        assert _squash(text) in shown, (text, info_text, conv_text)
    for k in index["skipped"]:
        if k["damaged"]:  # by name in the plain `info` and in `convert`'s output, as shown on a terminal
            name = _squash(printable(k["path"]).replace("\n", "\\x0a"))
            assert name in _squash(plain_text) and name in _squash(conv_text), k


SEGMENT_VARIANTS = ["clean", "truncated_at_1500", "j2k_slice_undecodable", "markup_folder_and_file_names", "description_hyperlink"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A real medseg checkpoint of the small ResUNet3D the inference tests use (untrained)."""
    import torch

    from medseg.checkpoint import Checkpoint, save_checkpoint
    from medseg.models import build_model

    cfg = {"encoder": "resnet10", "encoder_channels": [8, 16, 32, 64], "decoder_channels": [32, 16, 16, 8, 8],
           "aspp_channels": 8, "out_channels": 2}
    torch.manual_seed(0)
    plan = {"modality": "CT", "spacing_mm": [3.0, 3.0, 3.0], "orientation": "RAS",
            "intensity": {"kind": "ct_window", "hu_min": -200.0, "hu_max": 300.0}}
    return save_checkpoint(
        Checkpoint(task="segmentation", model=cfg, state_dict=build_model(cfg).state_dict(), labels={1: "liver"},
                   preprocessing=plan, inference={"roi_size": [32, 32, 32], "overlap": 0.0, "sw_batch_size": 1}),
        tmp_path_factory.mktemp("ckpt") / "tiny.pt",
    )


@pytest.fixture(scope="module")
def clean_segment(parts, tiny_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean_seg")
    tree = _tree(parts, root, Variant("clean", lambda d: None, "same"))
    code, text = run_cli("segment", str(tree), str(root / "out"), "-m", str(tiny_ckpt), "--device", "cpu",
                         "--no-qa", "--no-dicom-seg", "--no-progress")
    assert code == 0, text
    return _segment_labels(root / "out")


def _segment_labels(out: Path) -> dict[str, np.ndarray]:
    manifest = json.loads((out / "segment.json").read_text())
    done = {r["key"]: read_nifti(out / r["stem"] / "labels.nii.gz").array for r in manifest["series"] if r["status"] == "done"}
    return done, manifest


@pytest.mark.slow  # one full segment run per variant (importing MONAI dominates on a busy box)
@pytest.mark.parametrize("name", SEGMENT_VARIANTS)
def test_segment(name, parts, tiny_ckpt, clean_segment, tmp_path):
    variant = next(v for v in VARIANTS if v.name == name)
    tree = _tree(parts, tmp_path, variant)
    code, text = run_cli("segment", str(tree), str(tmp_path / "out"), "-m", str(tiny_ckpt), "--device", "cpu",
                         "--no-qa", "--no-dicom-seg", "--no-progress")
    assert "Traceback" not in text and "\x1b" not in text and "MarkupError" not in text, text
    assert code == 0, text
    labels, manifest = _segment_labels(tmp_path / "out")
    clean_labels, _ = clean_segment
    assert np.array_equal(labels[CONTROL_UID], clean_labels[CONTROL_UID])
    assert SUBJECT_UID in labels
    if variant.subject == "same":
        assert np.array_equal(labels[SUBJECT_UID], clean_labels[SUBJECT_UID])
    shown = _squash(text + json.dumps(manifest, ensure_ascii=False))
    for t in variant.named:
        if t not in ("interpolated",):  # per-series warnings reach the manifest with branch `inference`
            assert _squash(t) in shown, (t, text)


def test_error_printer_and_log_records_are_literal(tmp_path):
    """The top-level error printer and the log handler show hostile paths as typed."""
    hostile = tmp_path / "sub[" / "[link=file:///etc/passwd]click[/link] [/]\x1b[2J\rx"
    code, text = run_cli("info", str(hostile))
    assert code == 1 and "error:" in text and "Traceback" not in text and "\x1b" not in text and "\r" not in text
    assert "sub[/[link=file:/etc/passwd]click[/link][/]\\x1b[2J\\x0dx:nosuchfile" in _squash(text)  # Path folds "///"
    nifti = tmp_path / "holes\x1b[31m.nii.gz"
    from medseg.io import Volume, write_nifti

    arr = np.zeros((8, 8, 8), np.float32)
    arr[0, 0, 0] = np.nan
    write_nifti(Volume(arr, np.eye(4)), nifti)
    code, text = run_cli("convert", str(nifti), str(tmp_path / "out"))
    assert code == 0 and "\x1b" not in text and "holes\\x1b[31m.nii.gz" in _squash(text)
    assert "1 non-finite voxel(s)" in " ".join(text.split())

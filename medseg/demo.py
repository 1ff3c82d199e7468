"""The README demo (`make demo` → `medseg demo --out DIR`): train → batch-segment DICOM → SEG → report.

On the real data bundled in `medseg.sample_data` (TotalSegmentator example CT, CC BY 4.0):

1. **train** the abdominal-organ workflow briefly on CPU (`medseg.engine.train`, a few minutes);
2. **build a DICOM folder tree** as a PACS export would look: the TotalSegmentator example CT
   series, a second CT series (the 3 mm example CT written as DICOM) in a nested folder, and
   objects a batch must skip with a reason (an MR image, a 1-slice scout, a structured report);
3. **batch-segment** it with `medseg.inference.segment_batch` → per series NIfTI labels on the
   original grid, DICOM SEG, volumes CSV, QA PNG, and the manifest;
4. **evaluate** against the reference labels (TotalSegmentator's output shipped with the data,
   remapped to the trained classes) with `medseg.report.evaluate_folders` → HTML report;
5. print where everything is.

The bundled data hold two labelled CTs: the workflow trains on the 3 mm CT and validates on the
DICOM series, so the report scores one held-out scan (the DICOM series) and one training scan
(the 3 mm CT written as DICOM). After a few minutes of CPU training the liver is outlined; the
demo shows the pipeline end to end, not a finished model.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.io.volume import Volume

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
REPO_WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
#: The workflow the demo trains, and the overrides that make it a few-minute CPU run.
DEMO_WORKFLOW = "abdomen_ct_organs.yaml"
DEMO_OVERRIDES = ("training.epochs=20", "training.val_every=5")  # ~6 min on an idle 2-core CPU (docs/benchmarks.md)


@dataclass
class DemoResult:
    """Where the demo put everything."""

    out_dir: Path
    checkpoint: Path | None = None
    run_dir: Path | None = None
    dicom_dir: Path | None = None
    segment_dir: Path | None = None
    manifest: Path | None = None
    report_html: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# a DICOM tree from the bundled data


def write_ct_series(
    volume: Volume,
    folder: str | os.PathLike[str],
    *,
    series_description: str,
    series_number: int,
    study_uid: str | None = None,
    patient_id: str = "DEMO",
) -> list[Path]:
    """Write a CT `Volume` (HU) as a DICOM CT series, one uncompressed file per slice.

    Geometry comes from the volume's RAS affine (converted to DICOM's LPS), so reading the
    folder back with `medseg.io.dicom.read_dicom_series` gives the same grid. Patient fields
    are placeholders (no real identifiers exist in the bundled data).

    Returns:
        The written files, in slice order.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from medseg.io.orientation import ras_to_lps_affine

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = ras_to_lps_affine(volume.affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir = lps[:3, 0] / spacing[0]  # direction of increasing column index (i)
    col_dir = lps[:3, 1] / spacing[1]  # direction of increasing row index (j)
    hu = np.clip(np.rint(np.asarray(volume.array, dtype=np.float64)), -32768, 32767).astype(np.int16)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    files = []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Demo^Anonymous", patient_id, "", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "20240101", "120000", "", "", "1"
        ds.Modality, ds.Manufacturer = "CT", "medseg demo"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = series_description, series_number, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (j), column spacing (i)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.ascontiguousarray(hu[:, :, k].T).tobytes()
        path = folder / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def build_demo_dicom_tree(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Lay out a small PACS-export-like DICOM tree from the bundled data.

    ::

        root/patient_A/CT_abdomen/           TotalSegmentator example CT series (20 slices, JPEG 2000)
        root/patient_B/study_2/CT_3mm/       the 3 mm example CT written as a 30-slice series
        root/patient_B/study_2/scout/        pydicom's CT_small (one slice: skipped, --min-slices)
        root/patient_C/MR/                   pydicom's MR_small (skipped: a CT model)
        root/patient_C/report/               pydicom's test-SR (skipped: not an image)

    Returns:
        ``{"ct_dicom": folder, "ct_small": folder}``: the two series the demo evaluates.
    """
    import pydicom.data

    from medseg import sample_data
    from medseg.io import read_volume

    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    a = root / "patient_A" / "CT_abdomen"
    shutil.copytree(sample_data.path("ct_dicom"), a)
    b = root / "patient_B" / "study_2" / "CT_3mm"
    write_ct_series(read_volume(sample_data.path("ct_small")), b, series_description="Abdomen 3.0 mm", series_number=2)
    for sub, name in (("patient_B/study_2/scout", "CT_small.dcm"), ("patient_C/MR", "MR_small.dcm"), ("patient_C/report", "test-SR.dcm")):
        dst = root / sub
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(pydicom.data.get_testdata_file(name), dst / name)
    return {"ct_dicom": a, "ct_small": b}


# --------------------------------------------------------------------------------------------
# reference labels for the report


def class_map_from_checkpoint(ckpt_path: str | os.PathLike[str]) -> dict[int, int]:
    """TotalSegmentator label value → trained class, from the checkpoint's workflow config."""
    from medseg.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    labels = (ckpt.config.get("data") or {}).get("labels") or {}
    mapping: dict[int, int] = {}
    for cls, values in enumerate(labels.values(), start=1):
        for v in values if isinstance(values, list) else [values]:
            mapping[int(v)] = cls
    if not mapping:  # no workflow config: assume the label values are the classes
        mapping = {int(k): int(k) for k in ckpt.labels}
    return mapping


def single_structure_classes(ckpt_path: str | os.PathLike[str]) -> tuple[int, ...]:
    """Classes made of one structure (largest-component post-processing is safe for them).

    A class mapped from several label values (``kidneys: [2, 3]``) is several organs; keeping
    its largest component would delete one kidney.
    """
    mapping = class_map_from_checkpoint(ckpt_path)
    sources: dict[int, int] = {}
    for cls in mapping.values():
        sources[cls] = sources.get(cls, 0) + 1
    return tuple(sorted(c for c, n in sources.items() if n == 1))


def reference_on_grid(reference: Volume, target: Volume, value_to_class: dict[int, int]) -> Volume:
    """Remap reference label values to classes and put them on `target`'s grid.

    The bundled references share their series' physical grid but may store the voxels in
    another axis order (e.g. RAS NIfTI vs LPS DICOM); axis flips/permutations are undone
    exactly, anything else is resampled nearest-neighbour.
    """
    import nibabel as nib

    lut = np.zeros(int(reference.array.max(initial=0)) + 1, dtype=np.uint8)
    for v, c in value_to_class.items():
        if v < lut.size:
            lut[v] = c
    arr = lut[np.asarray(reference.array, dtype=np.int64)]
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(reference.affine), nib.orientations.io_orientation(target.affine)
    )
    moved = nib.orientations.apply_orientation(arr, ornt)
    moved_affine = reference.affine @ nib.orientations.inv_ornt_aff(ornt, arr.shape)
    if moved.shape == target.shape and np.allclose(moved_affine, target.affine, atol=1e-3):
        return Volume(np.ascontiguousarray(moved), target.affine.copy(), {"kind": "labels"})
    from scipy import ndimage

    m = np.linalg.inv(reference.affine) @ target.affine
    out = ndimage.affine_transform(arr, m[:3, :3], offset=m[:3, 3], output_shape=target.shape, order=0, mode="constant")
    return Volume(out.astype(np.uint8), target.affine.copy(), {"kind": "labels"})


# --------------------------------------------------------------------------------------------
# the demo


def _find_workflow(name: str) -> Path:
    for cand in (Path(name), REPO_WORKFLOWS / name, Path.cwd() / "workflows" / name):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"workflow {name!r} not found (looked in {REPO_WORKFLOWS} and ./workflows)")


def train_briefly(
    workflow: str, overrides: tuple[str, ...] | list[str], runs_dir: Path, device: str
) -> tuple[Path, Path]:
    """Train `workflow` (a path or a name in ``workflows/``) with `overrides` into `runs_dir`
    (its run folder replaced); returns ``(run_dir, checkpoint)``, the best checkpoint when the
    run validated, else the last."""
    try:
        from medseg.engine import train
    except ImportError as exc:
        raise RuntimeError(f"the training engine (medseg.engine) is not available: {exc}") from exc
    wf = _find_workflow(workflow)
    settings = [*overrides, f"output.dir={runs_dir}", "output.overwrite=true", "output.tensorboard=false"]
    log.info("training %s (%s) on %s", wf.name, " ".join(overrides), device)
    run_dir = Path(train(wf, settings, device=device))
    best = run_dir / "checkpoints" / "best.pt"
    return run_dir, best if best.is_file() else run_dir / "checkpoints" / "last.pt"


def demo_inference_options(checkpoint: Path, device: str) -> Any:
    """The demo's segmentation settings: largest component of single-structure classes, holes filled."""
    from medseg.inference import InferenceOptions

    return InferenceOptions(
        device=device, largest_component=True, largest_component_labels=single_structure_classes(checkpoint), fill_holes=True
    )


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    workflow: str = DEMO_WORKFLOW,
    train_overrides: tuple[str, ...] | list[str] = DEMO_OVERRIDES,
    device: str = "cpu",
    progress: bool = True,
) -> DemoResult:
    """Run the README demo into `out_dir` (see the module docstring) and say where things are.

    Args:
        out_dir: output folder (created; the demo's own sub-folders are replaced).
        checkpoint: skip training and segment with this checkpoint instead.
        workflow: workflow YAML to train (a path, or a name in the repository's ``workflows/``).
        train_overrides: ``key=value`` overrides of the workflow (the default keeps it to a few
            minutes on 2 CPU cores).
        device: ``"cpu"`` (default: reproducible timings), ``"auto"`` or ``"cuda"``.
        progress: progress bars on stderr.

    Returns:
        A `DemoResult`; ``missing`` lists any step that could not run because a part of medseg
        is not available (the demo then runs the remaining steps).
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult(out_dir=out)

    # 1. train briefly
    t0 = time.perf_counter()
    if checkpoint is None:
        res.run_dir, checkpoint = train_briefly(workflow, train_overrides, out / "runs", device)
    res.checkpoint = Path(checkpoint)
    res.timings_s["train"] = round(time.perf_counter() - t0, 1)

    # 2. a DICOM tree
    t0 = time.perf_counter()
    res.dicom_dir = out / "dicom"
    series = build_demo_dicom_tree(res.dicom_dir)
    res.timings_s["dicom_tree"] = round(time.perf_counter() - t0, 1)

    # 3. batch segmentation
    from medseg.inference import BatchOptions, segment_batch

    t0 = time.perf_counter()
    res.segment_dir = out / "segmentations"
    if res.segment_dir.exists():
        shutil.rmtree(res.segment_dir)
    try:
        import medseg.io.seg  # noqa: F401

        dicom_seg = True
    except ImportError:
        dicom_seg = False
        res.missing.append("medseg.io.seg (DICOM SEG writer): no seg.dcm written")
    options = BatchOptions(
        inference=demo_inference_options(res.checkpoint, device),
        min_slices=5,
        dicom_seg=dicom_seg,
        progress=progress,
    )
    batch = segment_batch(res.dicom_dir, res.segment_dir, [res.checkpoint], options)
    res.manifest = batch.manifest_path
    res.summary["series"] = [
        {"stem": r.stem, "source": str(Path(r.source).relative_to(res.dicom_dir)) if r.source.startswith(str(res.dicom_dir)) else r.source,
         "status": r.status, "reason": r.reason, "outputs": r.outputs}
        for r in batch.records
    ]
    res.timings_s["segment"] = round(time.perf_counter() - t0, 1)

    # 4. evaluation against the reference labels
    t0 = time.perf_counter()
    try:
        from medseg.report import evaluate_folders
    except ImportError as exc:
        res.missing.append(f"medseg.report.evaluate_folders (evaluation report): {exc}")
        evaluate_folders = None
    if evaluate_folders is not None:
        res.report_html, res.summary["evaluation"] = _evaluate(out, batch, series, res.checkpoint, progress, evaluate_folders)
    res.timings_s["evaluate"] = round(time.perf_counter() - t0, 1)
    return res


def _evaluate(out: Path, batch: Any, series: dict[str, Path], ckpt: Path, progress: bool, evaluate_folders: Any) -> tuple[Path, dict]:
    """Write GT / prediction / image folders matched by series stem, then B's report."""
    from medseg import sample_data
    from medseg.inference import load_model
    from medseg.io import read_volume, write_nifti
    from medseg.io.dicom import read_dicom_series

    ev = out / "evaluation"
    if ev.exists():
        shutil.rmtree(ev)
    refs = {"ct_dicom": sample_data.path("ct_dicom_seg"), "ct_small": sample_data.path("ct_small_seg")}
    value_to_class = class_map_from_checkpoint(ckpt)
    names = load_model(ckpt, "cpu").labels
    for key, folder in series.items():
        recs = [r for r in batch.records if r.status == "done" and Path(r.source) == folder]
        if not recs:
            continue
        rec = recs[0]
        image = read_dicom_series(folder)
        gt = reference_on_grid(read_volume(refs[key]), image, value_to_class)
        write_nifti(gt, ev / "gt" / f"{rec.stem}.nii.gz")
        write_nifti(image, ev / "images" / f"{rec.stem}.nii.gz")
        (ev / "pred").mkdir(parents=True, exist_ok=True)
        shutil.copy(batch.out_dir / rec.stem / "labels.nii.gz", ev / "pred" / f"{rec.stem}.nii.gz")
    result = evaluate_folders(ev / "gt", ev / "pred", ev, labels=names, images=ev / "images", progress=progress)
    summary = {"summary": result.summary, "rows": result.rows, "failed": result.failed, "missing": result.missing}
    return result.report_html, summary

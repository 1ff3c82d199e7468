"""Benchmark: medseg's RTSTRUCT writer vs rt-utils (``RTStructBuilder``) on the bundled real CT.

Data: the bundled CT series (`ct_dicom`, 20 slices 512×512, JPEG 2000) with its anonymised,
blank UIDs filled in (rt-utils references ``SOPInstanceUID`` as it finds it in the files), and
its TotalSegmentator label map (`ct_dicom_seg`, every label present on the series).

Measured, each writer once per repeat (the first call of each process also pays imports, so
a warm-up call runs first):
1. time to write the RTSTRUCT of all labels (medseg: `write_rtstruct` on the scanned
   `DicomSeries`; rt-utils: ``create_new(folder)`` + ``add_roi`` per label + ``save``, its
   defaults: contours approximated by OpenCV's CHAIN_APPROX_SIMPLE);
2. fidelity: each file read back with pydicom, its contours filled onto the series' grid
   (``skimage.draw.polygon``, even–odd within a slice) and compared with the labels: Dice per
   label (mean and minimum over labels) and the voxels that differ in total;
3. file size.

rt-utils is not a medseg dependency: install it (and OpenCV) for this benchmark only, e.g.
``pip install --target /tmp/rtbench rt-utils opencv-python-headless`` and run with
``PYTHONPATH=/tmp/rtbench:. .venv/bin/python benchmarks/bench_rtstruct.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _filled_copy(out: Path) -> Path:
    import pydicom
    from pydicom.uid import generate_uid

    from medseg import sample_data

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for f in sorted(sample_data.path("ct_dicom").iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.save_as(out / f.name)
    return out


def _labels_on(grid_affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    import nibabel as nib

    from medseg import sample_data
    from medseg.io import load_volume

    labels = load_volume(sample_data.path("ct_dicom_seg"))
    t = nib.orientations.ornt_transform(nib.orientations.io_orientation(labels.affine), nib.orientations.io_orientation(grid_affine))
    array = nib.orientations.apply_orientation(np.asarray(labels.array), t)
    assert array.shape == tuple(shape) and np.allclose(labels.affine @ nib.orientations.inv_ornt_aff(t, labels.shape), grid_affine, atol=1e-3)
    return array.astype(np.uint8)


def _fill(path: Path, grid_affine: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    import pydicom
    from skimage.draw import polygon

    from medseg.io.orientation import LPS_TO_RAS

    ds = pydicom.dcmread(path)
    inv = np.linalg.inv(grid_affine)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros(shape, dtype=bool)
        for c in roi.get("ContourSequence", []):
            lps = np.asarray(c.ContourData, dtype=np.float64).reshape(-1, 3)
            ijk = (lps @ LPS_TO_RAS[:3, :3].T) @ inv[:3, :3].T + inv[:3, 3]
            rr, cc = polygon(ijk[:, 0], ijk[:, 1], shape=shape[:2])
            plane = np.zeros(shape[:2], dtype=bool)
            plane[rr, cc] = True
            mask[:, :, int(np.rint(ijk[0, 2]))] ^= plane
        out[names[int(roi.ReferencedROINumber)]] = mask
    return out


def _fidelity(path: Path, labels: np.ndarray, names: dict[int, str], affine: np.ndarray) -> tuple[float, float, int]:
    masks = _fill(path, affine, labels.shape)
    dice, wrong = [], 0
    for v in sorted(int(x) for x in np.unique(labels) if x):
        truth = labels == v
        got = masks.get(names[v], np.zeros_like(truth))
        dice.append(2 * np.count_nonzero(truth & got) / (np.count_nonzero(truth) + np.count_nonzero(got)))
        wrong += int(np.count_nonzero(truth ^ got))
    return float(np.mean(dice)), float(np.min(dice)), wrong


def _write_rt_utils(folder: Path, labels: np.ndarray, names: dict[int, str], path: Path) -> None:
    from rt_utils import RTStructBuilder

    rt = RTStructBuilder.create_new(dicom_series_path=str(folder))
    for v in sorted(int(x) for x in np.unique(labels) if x):
        # rt-utils masks are (rows, columns, slices) in its own ascending-position order,
        # which for this series is read_dicom_series' slice order (checked below)
        rt.add_roi(mask=np.ascontiguousarray(np.transpose(labels == v, (1, 0, 2))), name=names[v])
    rt.save(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import pydicom
    from rt_utils import image_helper

    from medseg import sample_data
    from medseg.io import Volume
    from medseg.io.dicom import scan_dicom_folder
    from medseg.io.rtstruct import write_rtstruct

    names = sample_data.totalsegmentator_labels()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "ct").mkdir()
        folder = _filled_copy(tmp / "ct")
        (series,) = scan_dicom_folder(folder).image_series
        labels = _labels_on(series.affine, series.shape)
        # same slice order in both (rt-utils sorts by position along the normal as well)
        rt_order = [str(ds.SOPInstanceUID) for ds in image_helper.load_sorted_image_series(str(folder))]
        ours = [series.headers[fr.path].sop_instance_uid for fr in (series.frames[i] for i in series.geometry.order)]
        assert rt_order == ours, "rt-utils and medseg order the slices differently"
        n_labels = len([v for v in np.unique(labels) if v])
        times: dict[str, list[float]] = {"medseg": [], "rt-utils": []}
        paths = {"medseg": tmp / "medseg.dcm", "rt-utils": tmp / "rtutils.dcm"}
        for run in range(args.repeat + 1):  # run 0 warms up imports
            t = time.perf_counter()
            write_rtstruct(Volume(labels, series.affine), series, names, paths["medseg"])
            dt_medseg = time.perf_counter() - t
            t = time.perf_counter()
            _write_rt_utils(folder, labels, names, paths["rt-utils"])
            dt_rt = time.perf_counter() - t
            if run:
                times["medseg"].append(dt_medseg)
                times["rt-utils"].append(dt_rt)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), {platform.python_version()}, "
              f"pydicom {pydicom.__version__}")
        print(f"series: bundled CT 512×512×20, {n_labels} labels present; best of {args.repeat}")
        for name in ("medseg", "rt-utils"):
            mean_d, min_d, wrong = _fidelity(paths[name], labels, names, series.affine)
            print(f"{name:9s} write {min(times[name]):6.2f} s   size {paths[name].stat().st_size / 1e6:6.2f} MB   "
                  f"Dice mean {mean_d:.4f} min {min_d:.4f}   voxels differing {wrong}")
        print(f"ratio rt-utils / medseg write time: {min(times['rt-utils']) / min(times['medseg']):.2f}")


if __name__ == "__main__":
    main()

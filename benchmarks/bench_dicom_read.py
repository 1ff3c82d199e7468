"""Benchmark: reading a 300-slice 512×512 int16 CT series.

Data: the bundled real CT series (`ct_dicom`, 20 slices 512×512, Siemens headers) upsampled
along the slice normal by linear interpolation to 300 slices 0.5 mm apart, written once as single-frame
files (Explicit VR Little Endian, uncompressed, the real headers kept; ~158 MB) into a cache
folder (``$XDG_CACHE_HOME/medseg-bench`` or ``~/.cache/medseg-bench``). ``--syntax rle`` /
``jpegls`` / ``j2k`` write compressed variants instead.

Compared, all from the folder path to an array in memory (warm page cache, median of
``--repeat`` runs after one warm-up; ``--cold`` evicts the files from the page cache before
every timed run, as after a fresh PACS download):
- raw floor: open + read every file's bytes (no parsing, no decoding);
- medseg: ``read_dicom_series(folder)`` (header scan, grouping, sorting, parallel decode,
  rescale to int16 HU);
- SimpleITK: ``ImageSeriesReader`` with ``GetGDCMSeriesFileNames`` (GDCM sorts by position);
- MONAI: ``LoadImage(reader="PydicomReader")`` (and ``ITKReader`` when `itk` is installed).

Run: ``.venv/bin/python benchmarks/bench_dicom_read.py [--repeat N] [--threads T] [--syntax S]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

N_SLICES = 300


def cache_dir(syntax: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medseg-bench"
    return base / f"dicom_{N_SLICES}_{syntax}"


def build_series(folder: Path, syntax: str) -> Path:
    """Write the 300-slice series into `folder` once (a marker file says it is complete)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

    from medseg import sample_data
    from medseg.io.dicom import derived_uid, read_dicom_series, scan_dicom_folder

    marker = folder / ".complete"
    if marker.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    src_series = scan_dicom_folder(sample_data.path("ct_dicom")).series[0]
    src = read_dicom_series(src_series)
    stored = src.array.astype(np.float32) + 1024.0  # back to stored values (intercept -1024)
    n_src = stored.shape[2]
    t = np.linspace(0, n_src - 1, N_SLICES)
    template = pydicom.dcmread(src_series.files[0])
    z0 = float(template.ImagePositionPatient[2])  # the lowest slice (files are sorted)
    dz = 0.5  # thin-slice reconstruction; exact in the headers (no rounding of positions)
    series_uid = derived_uid(f"medseg-bench-{syntax}")
    for k, tk in enumerate(t):
        a = int(np.floor(tk))
        b = min(a + 1, n_src - 1)
        w = tk - a
        plane = np.rint((1 - w) * stored[:, :, a] + w * stored[:, :, b]).astype(np.uint16).T
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = derived_uid(f"{series_uid}.{k}")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = derived_uid(f"{series_uid}.study")
        ds.SeriesNumber = 2
        ds.InstanceNumber = N_SLICES - k
        ds.ImagePositionPatient = [template.ImagePositionPatient[0], template.ImagePositionPatient[1], round(z0 + k * dz, 4)]
        ds.SliceLocation = round(z0 + k * dz, 4)
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        ds["PixelData"].VR = "OW"
        if syntax != "explicit":
            ds.compress({"rle": RLELossless, "jpegls": JPEGLSLossless, "j2k": JPEG2000Lossless}[syntax])
        ds.save_as(folder / f"{derived_uid(str(k))[-12:]}", enforce_file_format=True)
    marker.write_text("ok\n")
    return folder


def raw_floor(folder: Path) -> np.ndarray:
    files = [p for p in folder.iterdir() if not p.name.startswith(".")]
    total = 0
    for p in files:
        with open(p, "rb") as f:
            total += len(f.read())
    return np.array([total])


def read_medseg(folder: Path, threads: int | None, processes: int = 0) -> np.ndarray:
    from medseg.io.dicom import read_dicom_series

    return read_dicom_series(folder, threads=threads, processes=processes).array


def read_sitk(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    return np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))


def read_monai(folder: Path, reader: str) -> np.ndarray:
    from monai.transforms import LoadImage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(LoadImage(reader=reader, image_only=True)(str(folder)))


def evict(folder: Path) -> None:
    """Drop the series' files from the page cache (POSIX_FADV_DONTNEED; no root needed)."""
    for p in folder.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timeit(fn, repeat: int, cold_folder: Path | None = None) -> tuple[float, object]:
    out = fn()  # warm-up (imports, thread pool, page cache)
    times = []
    for _ in range(repeat):
        if cold_folder is not None:
            evict(cold_folder)
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="medseg decoding threads (default: automatic)")
    parser.add_argument("--syntax", default="explicit", choices=["explicit", "rle", "jpegls", "j2k"])
    parser.add_argument("--processes", type=int, default=0, help="medseg worker processes for JPEG-family series")
    parser.add_argument("--skip-monai", action="store_true")
    parser.add_argument("--cold", action="store_true", help="evict the files from the page cache before every timed run")
    args = parser.parse_args()

    folder = cache_dir(args.syntax)
    t0 = time.perf_counter()
    build_series(folder, args.syntax)
    n_files = len([p for p in folder.iterdir() if not p.name.startswith(".")])
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    print(f"series: {folder} ({n_files} files, {size_mb:.0f} MB, {args.syntax}; ready in {time.perf_counter() - t0:.1f} s)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}")

    cold = folder if args.cold else None
    print(f"page cache: {'cold (files evicted before each run)' if cold else 'warm'}")
    results: dict[str, float] = {}
    t_raw, _ = timeit(lambda: raw_floor(folder), args.repeat, cold)
    results["raw floor (read bytes)"] = t_raw
    t_med, ours = timeit(lambda: read_medseg(folder, args.threads, args.processes), args.repeat, cold)
    results["medseg read_dicom_series"] = t_med
    t_itk, ref = timeit(lambda: read_sitk(folder), args.repeat, cold)
    results["SimpleITK ImageSeriesReader"] = t_itk
    same = np.array_equal(np.asarray(ours), np.asarray(ref))
    if not args.skip_monai:
        t_mon, mon = timeit(lambda: read_monai(folder, "PydicomReader"), max(1, args.repeat - 1), cold)
        results["MONAI LoadImage(PydicomReader)"] = t_mon
        try:
            import itk  # noqa: F401

            t_mitk, _ = timeit(lambda: read_monai(folder, "ITKReader"), max(1, args.repeat - 1), cold)
            results["MONAI LoadImage(ITKReader)"] = t_mitk
        except ImportError:
            print("(MONAI ITKReader skipped: the `itk` package is not installed)")

    width = max(len(k) for k in results)
    print(f"\n{'reader':<{width}}  {'time s':>8}  {'vs medseg':>9}")
    for name, t in results.items():
        print(f"{name:<{width}}  {t:8.3f}  {t / t_med:8.2f}×")
    print(f"\nmedseg is {t_itk / t_med:.2f}× faster than SimpleITK and {t_med / t_raw:.2f}× the raw floor")
    print(f"medseg array == SimpleITK array: {same} (shape {np.asarray(ours).shape}, dtype {np.asarray(ours).dtype})")


if __name__ == "__main__":
    main()

"""Decoding the pixel data of a DICOM slice stack, in parallel, with modality rescale.

Two paths:
- native (uncompressed) little/big endian data whose byte offset `scan_dicom_folder` found:
  read straight into the output array with one ``preadv`` per file (no dataset parsing, no
  intermediate copy), then fix byte order / unused high bits / rescale in place;
- everything else (JPEG, JPEG-LS, JPEG 2000, RLE, deflate, colour…): pydicom's
  ``pixels.pixel_array`` with its decoder plugins (pylibjpeg-openjpeg, pylibjpeg-libjpeg,
  pyjpegls, pylibjpeg-rle), which release the GIL while decoding.

Files are processed by a thread pool: reads, NumPy and the RLE decoder release the GIL. The
JPEG 2000 (openjpeg), JPEG-LS (CharLS) and JPEG (libjpeg) plugins hold it while decoding
(their Cython wrappers call the C decoder without ``nogil``; measured in docs/benchmarks.md),
so for large compressed series `decode_stack` can use worker processes instead.
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.errors import DicomError

if TYPE_CHECKING:
    from medseg.io.dicom import DicomFileHeader, DicomFrame, PixelLayout

#: Decoder package to install for each compressed transfer syntax family.
_DECODER_HINTS = {
    "1.2.840.10008.1.2.4.5": "pylibjpeg-libjpeg (JPEG baseline/extended/lossless)",
    "1.2.840.10008.1.2.4.7": "pylibjpeg-libjpeg (JPEG lossless)",
    "1.2.840.10008.1.2.4.8": "pyjpegls (JPEG-LS)",
    "1.2.840.10008.1.2.4.9": "pylibjpeg-openjpeg (JPEG 2000)",
    "1.2.840.10008.1.2.4.20": "pylibjpeg-openjpeg (HTJ2K)",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (RLE)",
}


#: Smallest stack (in pixels) decoded by worker processes when `processes` > 1.
MIN_PIXELS_FOR_PROCESSES = 64 * 512 * 512


def default_threads() -> int:
    """Decoding threads: I/O and decoders release the GIL, so a few per core pay off."""
    return max(2, min(16, 2 * (os.cpu_count() or 1)))


def stored_dtype(layout: PixelLayout) -> np.dtype:
    """NumPy dtype of the stored values (byte order native)."""
    if layout.bits_allocated <= 8:
        return np.dtype(np.int8 if layout.pixel_representation else np.uint8)
    if layout.bits_allocated <= 16:
        return np.dtype(np.int16 if layout.pixel_representation else np.uint16)
    if layout.bits_allocated <= 32:
        return np.dtype(np.int32 if layout.pixel_representation else np.uint32)
    return np.dtype(np.float64)


def _stored_range(layout: PixelLayout) -> tuple[int, int]:
    bits = min(layout.bits_stored, layout.bits_allocated)
    if layout.pixel_representation:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def output_dtype(frames: list[DicomFrame], headers: dict[Path, DicomFileHeader]) -> np.dtype:
    """The dtype of the rescaled stack.

    The stored dtype when there is no rescale; int16/int32 when slope is 1 and the
    intercepts are whole numbers and the range fits (CT in HU); float32 otherwise.
    """
    layouts = [headers[fr.path].pixels for fr in frames]
    if any(lay.samples_per_pixel > 1 or lay.bits_allocated > 32 for lay in layouts):  # type: ignore[union-attr]
        return stored_dtype(layouts[0])  # type: ignore[arg-type]
    slopes = {fr.slope for fr in frames}
    intercepts = {fr.intercept for fr in frames}
    dtypes = {stored_dtype(lay) for lay in layouts}  # type: ignore[arg-type]
    if slopes == {1.0} and intercepts == {0.0} and len(dtypes) == 1:
        return dtypes.pop()
    if slopes == {1.0} and all(float(i).is_integer() for i in intercepts):
        lo = min(_stored_range(lay)[0] for lay in layouts) + min(intercepts)  # type: ignore[arg-type]
        hi = max(_stored_range(lay)[1] for lay in layouts) + max(intercepts)  # type: ignore[arg-type]
        for dt in (np.int16, np.int32):
            info = np.iinfo(dt)
            if info.min <= lo and hi <= info.max:
                return np.dtype(dt)
    return np.dtype(np.float32)


def _native_fast_path(layout: PixelLayout) -> bool:
    return (
        layout.value_offset is not None
        and not layout.encapsulated
        and layout.samples_per_pixel == 1
        and layout.bits_allocated in (8, 16, 32)
        and layout.bits_stored <= layout.bits_allocated
    )


def _fix_stored(raw: np.ndarray, layout: PixelLayout) -> None:
    """In place: byte order, then unused high bits (as pydicom does: shift left, shift back)."""
    if layout.big_endian and raw.dtype.itemsize > 1:
        raw.byteswap(inplace=True)
    shift = layout.bits_allocated - layout.bits_stored
    if shift > 0:
        if raw.dtype.kind == "u":  # same result as pydicom's shift pair, in one pass
            np.bitwise_and(raw, raw.dtype.type((1 << layout.bits_stored) - 1), out=raw)
        else:  # sign-extend from the highest stored bit
            np.left_shift(raw, shift, out=raw)
            np.right_shift(raw, shift, out=raw)


def _read_native(path: Path, layout: PixelLayout, frame_indices: list[int | None]) -> np.ndarray:
    """Stored values of the requested frames of a native file (native byte order, fixed bits)."""
    dt = stored_dtype(layout)
    frame_values = layout.rows * layout.columns
    frame_bytes = frame_values * dt.itemsize
    out = np.empty((len(frame_indices), layout.rows, layout.columns), dtype=dt)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        for n, f in enumerate(frame_indices):
            offset = layout.value_offset + (f or 0) * frame_bytes  # type: ignore[operator]
            buf = memoryview(out[n]).cast("B")
            got = os.preadv(fd, [buf], offset) if hasattr(os, "preadv") else _pread_into(fd, buf, offset)
            if got != frame_bytes:
                raise DicomError(f"{path}: pixel data ended early ({got} of {frame_bytes} bytes read)")
    finally:
        os.close(fd)
    _fix_stored(out, layout)
    return out


def _pread_into(fd: int, buf: memoryview, offset: int) -> int:
    data = os.pread(fd, len(buf), offset)
    buf[: len(data)] = data
    return len(data)


def _read_with_pydicom(path: Path, layout: PixelLayout, frame_indices: list[int | None]) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(str(path))
    except Exception as exc:  # noqa: BLE001 - decoders raise many error types
        from pydicom.uid import UID

        ts = UID(layout.transfer_syntax)
        hint = next((h for prefix, h in _DECODER_HINTS.items() if ts.startswith(prefix)), None)
        advice = f"; make sure {hint} is installed" if hint else ""
        raise DicomError(f"{path}: cannot decode pixel data ({ts.name}): {type(exc).__name__}: {exc}{advice}") from exc
    if layout.n_frames == 1:
        arr = arr[None]
    if frame_indices != [None] and frame_indices != list(range(layout.n_frames)):
        arr = arr[[f or 0 for f in frame_indices]]
    return arr


def decode_frames(path: Path, layout: PixelLayout, frame_indices: list[int | None]) -> np.ndarray:
    """Decoded stored values (no rescale) of some frames of one file: ``(n, rows, cols[, s])``."""
    if _native_fast_path(layout):
        return _read_native(path, layout, frame_indices)
    return _read_with_pydicom(path, layout, frame_indices)


def _decode_task(path: Path, layout: PixelLayout, frame_indices: list[int | None]) -> np.ndarray:
    """Process-pool entry point (module level so it pickles by reference)."""
    return decode_frames(path, layout, frame_indices)


def _decode_task_safe(path: Path, layout: PixelLayout, frame_indices: list[int | None]) -> np.ndarray | Exception:
    """Like `_decode_task`, but returns the error instead of raising (one bad file is a gap)."""
    try:
        return decode_frames(path, layout, frame_indices)
    except Exception as exc:  # noqa: BLE001 - decoders raise many error types
        return DicomError(f"{path}: {type(exc).__name__}: {exc}") if not isinstance(exc, DicomError) else exc


def decode_stack(
    frames: list[DicomFrame],
    headers: dict[Path, DicomFileHeader],
    *,
    threads: int | None = None,
    processes: int = 0,
    failures: dict[int, str] | None = None,
) -> np.ndarray:
    """Decode and rescale `frames` (in that order) into one ``(n, rows, cols[, s])`` array.

    Args:
        frames: the frames to stack, in output order.
        headers: the file headers from the scan (pixel layout of each file).
        threads: worker threads (None: `default_threads`; 1: no pool). Native data and RLE
            scale with threads; the JPEG 2000 / JPEG-LS / JPEG decoders hold the GIL.
        processes: if > 1, big JPEG-family series (`MIN_PIXELS_FOR_PROCESSES`) are decoded by
            that many worker processes ("spawn": a calling script needs an
            ``if __name__ == "__main__":`` guard).
        failures: if given, a file that cannot be decoded (or a frame marked ``invalid``) is
            not an error: ``failures[slot] = reason`` for each of its output slots, which are
            left zero for the caller to fill (`medseg.io.dicom` interpolates them).

    Raises:
        DicomError: without `failures`: a file cannot be decoded or its size differs from
            the stack's.
    """
    first = headers[frames[0].path].pixels
    assert first is not None
    collect = failures is not None
    valid = [fr for fr in frames if not (collect and fr.invalid)]
    out_dtype = output_dtype(valid or frames, headers)
    shape: tuple[int, ...] = (len(frames), first.rows, first.columns)
    if first.samples_per_pixel > 1:
        shape += (first.samples_per_pixel,)
    out = (np.zeros if collect else np.empty)(shape, dtype=out_dtype)

    by_file: dict[Path, list[int]] = defaultdict(list)  # file → output slots, frames in order
    for slot, fr in enumerate(frames):
        if collect and fr.invalid:
            failures[slot] = fr.invalid  # type: ignore[index]
            continue
        by_file[fr.path].append(slot)

    def place(path: Path, arr: np.ndarray) -> None:
        if arr.shape[1:] != out.shape[1:]:
            raise DicomError(f"{path}: pixel matrix {arr.shape[1:]} differs from the stack's {out.shape[1:]}")
        for n, slot in enumerate(by_file[path]):
            fr = frames[slot]
            dest = out[slot]
            if out_dtype.kind == "f":
                np.multiply(arr[n], fr.slope, out=dest, casting="unsafe")
                if fr.intercept:
                    dest += np.float32(fr.intercept)
            else:
                dest[...] = arr[n]
                if fr.intercept:
                    dest += out_dtype.type(fr.intercept)

    def args(path: Path) -> tuple[Path, PixelLayout, list[int | None]]:
        layout = headers[path].pixels
        assert layout is not None
        return path, layout, [frames[s].frame_index for s in by_file[path]]

    def failed(path: Path, exc: BaseException) -> None:
        if not collect:
            raise exc
        text = str(exc)
        prefix = f"{path}: "
        reason = text[len(prefix):] if text.startswith(prefix) else f"{type(exc).__name__}: {text}"
        for slot in by_file[path]:
            failures[slot] = reason  # type: ignore[index]

    def work(path: Path) -> None:
        try:
            place(path, decode_frames(*args(path)))
        except Exception as exc:  # noqa: BLE001 - with `failures`, one bad slice is a missing slice
            failed(path, exc)

    paths = list(by_file)
    if not paths:
        return out
    # Worker processes cost a start-up (interpreter + imports): only worth it for big series in
    # codecs that hold the GIL (the JPEG family, 1.2.840.10008.1.2.4.x).
    gil_bound = any(headers[p].pixels.transfer_syntax.startswith("1.2.840.10008.1.2.4.") for p in paths)  # type: ignore[union-attr]
    n_pixels = len(frames) * first.rows * first.columns
    if processes > 1 and gil_bound and len(paths) >= 2 * processes and n_pixels >= MIN_PIXELS_FOR_PROCESSES:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        n_proc = min(processes, len(paths))
        with ProcessPoolExecutor(max_workers=n_proc, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [args(p) for p in paths]
            chunk = max(1, len(jobs) // (4 * n_proc))
            task = _decode_task_safe if collect else _decode_task
            for path, arr in zip(paths, pool.map(task, *zip(*jobs), chunksize=chunk)):
                if isinstance(arr, BaseException):
                    failed(path, arr)
                    continue
                try:
                    place(path, arr)
                except DicomError as exc:
                    failed(path, exc)
        return out
    n_threads = default_threads() if threads is None else max(1, int(threads))
    if n_threads == 1 or len(paths) == 1:
        for p in paths:
            work(p)
    else:
        with ThreadPoolExecutor(max_workers=min(n_threads, len(paths))) as pool:
            for _ in pool.map(work, paths):  # re-raises the first worker error
                pass
    return out

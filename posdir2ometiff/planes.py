"""Reading plane files: decode and hash each file once, probe a position's size and dtype, and
decode ahead of the writer in a few threads."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from posdir2ometiff.ahead import AHEAD_PER_THREAD, Ahead, map_ahead
from posdir2ometiff.errors import PlaneError
from posdir2ometiff.layout import PlaneKey, PositionLayout
from posdir2ometiff.png import decode_png

__all__ = ["AHEAD_PER_THREAD", "Decoded", "Probe", "planes_ahead", "probe", "read_ahead",
           "read_plane"]


def _read_file(path: Path) -> tuple[int, bytes]:
    """(mtime_ns, content) in four system calls (open, fstat, read, close).

    ``Path.stat()`` + ``read_bytes()`` make about ten; each gives the GIL away and waits to get
    it back, which the decoding threads do for every plane while the writing thread runs
    Python. The modification time comes from the same open file as the bytes."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        chunks = [os.read(fd, st.st_size + 1)]  # a byte more than fstat said: its end shows
        if len(chunks[0]) != st.st_size:  # a short read or a file still growing: read to EOF
            while buf := os.read(fd, 1 << 20):
                chunks.append(buf)
    finally:
        os.close(fd)
    return st.st_mtime_ns, b"".join(chunks) if len(chunks) > 1 else chunks[0]


def read_plane(path: Path) -> tuple[np.ndarray, int, str, int]:
    """Decode one plane file; return (pixels, size in bytes, SHA-1, mtime_ns).

    The file is read once: the same bytes are hashed (for the manifest) and decoded (PNG by
    :func:`~posdir2ometiff.png.decode_png`, libdeflate and a C unfilter, else imagecodecs'
    libpng; TIFF with tifffile).
    """
    try:
        mtime_ns, data = _read_file(path)
    except OSError as exc:
        raise PlaneError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    sha1 = hashlib.sha1(data).hexdigest()
    ext = path.suffix.lower()
    try:
        if ext == ".png":
            arr = decode_png(data)
        else:
            with tifffile.TiffFile(io.BytesIO(data)) as tf:
                if len(tf.pages) != 1:
                    raise PlaneError(f"{path}: has {len(tf.pages)} pages; one 2D plane expected")
                arr = tf.pages[0].asarray()
    except PlaneError:
        raise
    except Exception as exc:  # decoders raise many types; all mean "not a readable image"
        kind = "PNG" if ext == ".png" else "TIFF"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PlaneError(f"{path}: truncated or unreadable {kind} ({msg})") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise PlaneError(f"{path}: image of shape {arr.shape}; expected a 2D grey or RGB(A) plane")
    return arr, len(data), sha1, mtime_ns


@dataclass
class Probe:
    shape: tuple[int, int]
    dtype: np.dtype
    samples: list[int]
    #: The planes decoded while probing, handed to the writer so no file is decoded twice.
    cache: dict[PlaneKey, tuple[np.ndarray, int, str, int]]


def probe(layout: PositionLayout, threads: int = 1) -> Probe:
    """Size, dtype and samples per channel, from the first file of each channel (decoded in up
    to ``threads`` threads: this is the position's serial start, before any plane is written)."""
    shape: tuple[int, int] | None = None
    dtype: np.dtype | None = None
    samples: list[int] = []
    cache: dict[PlaneKey, tuple[np.ndarray, int, str, int]] = {}
    first: dict[int, PlaneKey] = {}
    for key in layout.plane_keys():
        if key in layout.files and key.c not in first:
            first[key.c] = key
    todo = [first[c] for c in range(layout.size_c) if c in first]
    decoded = map_ahead(lambda key: read_plane(layout.files[key]), todo,
                        max(1, min(threads, len(todo))), name="probe", ahead=len(todo))
    try:
        for c in range(layout.size_c):
            key = first.get(c)
            if key is None:
                # A channel other positions have but this one lacks entirely
                # (layout.unify_channels): all its planes are missing, written as grey zeros.
                samples.append(1)
                continue
            got, cache[key] = next(decoded)  # in channel order: errors come as a loop gives them
            assert got == key
            arr = cache[key][0]
            samples.append(1 if arr.ndim == 2 else arr.shape[2])
            if shape is None:
                shape, dtype = arr.shape[:2], arr.dtype
            elif arr.shape[:2] != shape or arr.dtype != dtype:
                raise PlaneError(
                    f"{layout.files[key]}: {arr.dtype} {arr.shape[1]}x{arr.shape[0]}, but other "
                    f"planes of {layout.name} are {dtype} {shape[1]}x{shape[0]}"
                )
    finally:
        decoded.close()
    assert shape is not None and dtype is not None
    return Probe(shape=shape, dtype=dtype, samples=samples, cache=cache)


Decoded = tuple[np.ndarray, int, str, int]


#: Decoded bytes allowed in flight ahead of the writer, and a cap in planes. Where decoding
#: outruns the writer (two threads on 512² planes), the queue stays full, so this is memory held
#: for the whole position: measured, 8 MiB (16 such planes) against 32 MiB (32), the same speed
#: (300 planes, 10 alternated runs: median 0.786 against 0.793 s) and a lower, steadier peak RSS
#: (138-141 against 134-150 MB; 3,000 planes 147-149 against 156-159 MB). (32 MiB let the first
#: planes decode while the OME-XML was built, which position.py no longer does.)
AHEAD_BYTES = 8 << 20
AHEAD_MAX_PLANES = 32


def planes_ahead(threads: int, plane_bytes: int) -> int:
    """How many planes to decode ahead: ``AHEAD_PER_THREAD × threads`` at least, more while
    they fit in :data:`AHEAD_BYTES` (at most :data:`AHEAD_MAX_PLANES`). Small planes then keep
    the decoding threads busy through the writer's pauses (its OME-XML, a slow write) for a few
    MB; a 2048² plane keeps the minimum. Never a whole position."""
    if threads <= 1:
        return 1
    fits = AHEAD_BYTES // max(1, plane_bytes)
    return max(AHEAD_PER_THREAD * threads, min(AHEAD_MAX_PLANES, fits))


def read_ahead(
    keys: Iterable[PlaneKey],
    fetch: Callable[[PlaneKey], Decoded | None],
    threads: int = 1,
    ahead: int | None = None,
) -> Ahead[PlaneKey, Decoded | None]:
    """``(key, fetch(key))`` for every key, in order, ``fetch`` running ahead in ``threads`` threads.

    Decoding (libdeflate and the C unfilter, or libpng) releases the GIL, so a few threads
    decode while the caller compresses and writes. Decoding starts at once; at most ``ahead`` planes (default ``AHEAD_PER_THREAD ×
    threads``, see :func:`planes_ahead`) are in flight, never a whole position. With one thread
    nothing is decoded ahead. Closing the iterator (the writer failed) cancels what has not
    started.
    """
    return map_ahead(fetch, keys, threads, name="decode", ahead=ahead)

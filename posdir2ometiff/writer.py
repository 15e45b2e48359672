"""Streaming OME-TIFF writer: planes in, a tiled pyramidal OME-TIFF out, one plane in memory at a time.

Why these choices:

* **Streaming.** Planes come from an iterator and each is written (with its pyramid levels) before
  the next is read, so memory is one plane plus its smaller levels, whatever the number of
  timepoints.
* **Tiles** (default 512) let viewers (OMERO.iviewer, QuPath) read a region without decoding a
  whole plane; a tile larger than the plane is shrunk to the plane (rounded up to 16, as TIFF
  requires) so small planes do not carry padding.
* **Pyramid** levels go into SubIFDs of each plane with NewSubfileType=1, each level 2× smaller in
  X and Y (2×2 mean, dtype kept; odd edges replicated), as the OME-TIFF pyramid specification
  says; Bio-Formats then reports them as resolutions of one series.
* **BigTIFF** only when the uncompressed size (all planes and levels) could pass 3.5 GB: classic
  TIFF is limited to 4 GB and is readable by more (older) software; compression can only shrink
  the data, so the uncompressed estimate is a safe upper bound.
* **Compression** default zstd level 1 (see :data:`DEFAULT_COMPRESSION`): measured on the lab's
  16-bit images (benchmarks/bench_compression.py) it writes ~2.7× faster and reads ~1.8× faster
  than zlib (level 1 with predictor) for ~6 % more bytes (0.64 vs 0.61 of raw), and Bio-Formats
  7.3.1 (the reader inside OMERO) reads it pixel-exactly (tests/test_bioformats.py). With zlib the
  converter would spend as long compressing as decoding the PNGs; with zstd it is ~1/3 of that.
* The file is written under a temporary name and renamed only when complete, so a crash or a bad
  plane never leaves a truncated ``<position>.ome.tiff`` behind. The temporary name is unique per
  attempt (``<name>.<random>.partial``): a position retried on another machine of a cluster while
  a lost worker may still be writing never shares its file.
* **Threads.** With ``threads`` > 1 the pyramid levels and zstd tiles of the next planes are
  computed and compressed in that many threads (numpy and imagecodecs release the GIL) while
  this thread writes, in order, a few planes ahead; the bytes are the same as with one thread.
  For zlib/lzw (with a predictor) tifffile compresses a plane's tiles with that many workers.
  The caller decodes planes ahead in its own threads.
* The SHA-1 of the output is computed from the bytes as they are written
  (:class:`~posdir2ometiff.hashfile.HashingFile`), not by reading the finished file back: by a
  helper thread, or by this one when the position is converted in one thread.
"""

from __future__ import annotations

import functools
import logging
import math
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile

from posdir2ometiff.ahead import map_ahead
from posdir2ometiff.atomic import commit_temporary, write_error
from posdir2ometiff.hashfile import HashingFile

logger = logging.getLogger(__name__)

#: Choices for ``--compression`` → (tifffile compression, compressionargs, predictor).
COMPRESSIONS: dict[str, tuple[str | None, dict, bool]] = {
    "zstd": ("zstd", {"level": 1}, False),
    "zlib": ("zlib", {"level": 1}, True),
    "lzw": ("lzw", {}, True),
    "none": (None, {}, False),
}
DEFAULT_COMPRESSION = "zstd"
DEFAULT_TILE = 512
#: Above this many uncompressed bytes we write BigTIFF (classic TIFF stops at 4 GiB).
BIGTIFF_THRESHOLD = int(3.5e9)


class WriterError(ValueError):
    """The writer was given options or planes it cannot write."""


def pyramid_levels(size_y: int, size_x: int, tile: int, pyramid: str | int = "auto") -> int:
    """Number of resolution levels including full resolution.

    ``auto``: halve until the level fits in one tile (2048² with tile 512 → 3 levels: 2048, 1024,
    512; 512² → 1, no SubIFDs). ``none`` → 1. An integer N → N levels (N-1 sub-resolutions),
    capped so that no level is smaller than one pixel.
    """
    if pyramid in ("none", 0, "0"):
        return 1
    biggest = max(size_x, size_y)
    if pyramid == "auto":
        levels = 1
        while biggest > tile:
            biggest = math.ceil(biggest / 2)
            levels += 1
        return levels
    try:
        n = int(pyramid)
    except (TypeError, ValueError):
        raise WriterError(f"--pyramid must be auto, none or a number, not {pyramid!r}") from None
    if n < 1:
        raise WriterError(f"--pyramid must be at least 1, not {n}")
    return max(1, min(n, int(math.log2(max(biggest, 1))) + 1))


def downsample2(plane: np.ndarray) -> np.ndarray:
    """2×2 mean of a 2D plane, same dtype (integers rounded half up); odd edges replicated."""
    h, w = plane.shape
    if h % 2 or w % 2:
        plane = np.pad(plane, ((0, h % 2), (0, w % 2)), mode="edge")
    if plane.dtype.kind in "ui":
        acc = plane.astype(np.uint32 if plane.dtype.kind == "u" else np.int64)
        s = acc[0::2, 0::2] + acc[1::2, 0::2] + acc[0::2, 1::2] + acc[1::2, 1::2]
        return ((s + 2) // 4).astype(plane.dtype)
    acc = plane.astype(np.float64)
    s = acc[0::2, 0::2] + acc[1::2, 0::2] + acc[0::2, 1::2] + acc[1::2, 1::2]
    return (s / 4).astype(plane.dtype)


def compress_threads(threads: int, shape: tuple[int, int], tile: int,
                     pyramid: str | int = "auto") -> int:
    """Threads to compress tiles with when ``threads`` threads also decode the planes.

    A plane that is a single tile of a single level (a 512² camera plane at tile 512) takes
    about 1 ms of zstd, a sixth of its PNG decoding: up to three decoders, the writing thread
    compresses it in the time it waits for them, and a thread hand-off would cost more than it
    saves (measured, two decoders: 8 % less time and less CPU than two compressing threads).
    Planes of several tiles or levels, or more decoders, get the threads."""
    if threads <= 3 and pyramid_levels(*shape, tile, pyramid) == 1 and max(shape) <= tile:
        return 1
    return threads


def _tile_for(size_y: int, size_x: int, tile: int) -> tuple[int, int]:
    """Tile shape: ``tile`` but no bigger than the plane rounded up to a multiple of 16."""
    def clip(n: int) -> int:
        return min(tile, max(16, -(-n // 16) * 16))

    return clip(size_y), clip(size_x)


def estimate_bytes(count: int, size_y: int, size_x: int, dtype: np.dtype, levels: int) -> int:
    """Uncompressed bytes of ``count`` planes with ``levels`` pyramid levels."""
    per = size_y * size_x * np.dtype(dtype).itemsize
    total = sum(per / 4**i for i in range(levels))
    return int(count * total)


@dataclass(frozen=True)
class Written:
    """What :func:`write_ometiff_file` wrote: pyramid levels, and the file's SHA-1 and size."""

    levels: int
    sha1: str
    size: int


def write_ometiff(path: Path, planes: Iterable[np.ndarray], **kwargs: object) -> int:
    """:func:`write_ometiff_file`, returning only the number of resolution levels."""
    return write_ometiff_file(path, planes, **kwargs).levels  # type: ignore[arg-type]


def partial_name(path: Path) -> Path:
    """The temporary name ``path`` is written under: unique per attempt, never hidden."""
    return path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.partial")


def write_ometiff_file(
    path: Path,
    planes: Iterable[np.ndarray],
    *,
    count: int,
    shape: tuple[int, int],
    dtype: np.dtype,
    ome_xml: str | bytes,
    tile: int = DEFAULT_TILE,
    compression: str = DEFAULT_COMPRESSION,
    pyramid: str | int = "auto",
    on_plane: Callable[[int], None] | None = None,
    threads: int = 1,
    on_level: Callable[[int, np.ndarray], None] | None = None,
    background: bool = True,
) -> Written:
    """Write ``count`` planes of ``shape`` and ``dtype`` to ``path`` as one OME-TIFF.

    ``planes`` is consumed lazily, in the IFD order the OME-XML describes. The file appears at
    ``path`` only when complete (written to :func:`partial_name` and renamed); on any error the
    partial file is removed and the error re-raised (an ``OSError`` such as a full disk as
    ``AtomicWriteError`` naming ``path``). ``on_plane(i)`` is called after each plane
    (progress). ``threads``: tiles of a plane compressed in parallel. ``on_level(i, level)`` gets
    plane i's smallest pyramid level (the plane itself without a pyramid) as it is written, so
    previews cost no second read (report.py). ``background``: the output is hashed and written
    by a helper thread (:class:`~posdir2ometiff.hashfile.HashingFile`); False for a position
    converted in one thread.
    """
    if tile % 16 or tile <= 0:
        raise WriterError(f"--tile must be a positive multiple of 16, not {tile}")
    if compression not in COMPRESSIONS:
        raise WriterError(
            f"--compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}"
        )
    codec, codec_args, predictor = COMPRESSIONS[compression]
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        predictor = False  # floating-point predictor is not read by every TIFF reader
    size_y, size_x = shape
    levels = pyramid_levels(size_y, size_x, tile, pyramid)
    bigtiff = estimate_bytes(count, size_y, size_x, dtype, levels) > BIGTIFF_THRESHOLD
    common = dict(
        photometric="minisblack",
        compression=codec,
        compressionargs=codec_args or None,
        predictor=predictor or None,
        metadata=None,
        software=False,
        maxworkers=max(1, threads),  # only used when tifffile compresses (zlib, lzw)
    )

    # OME-XML is UTF-8 ("µm"); tifffile accepts bytes for the tag, str only if 7-bit ASCII.
    xml_bytes: bytes | None = ome_xml.encode("utf-8") if isinstance(ome_xml, str) else ome_xml
    del ome_xml
    path = Path(path)
    encode = _tile_encoder(codec, codec_args, predictor)

    def checked() -> Iterator[np.ndarray]:
        for i, plane in enumerate(planes):
            if i >= count:
                raise WriterError(f"{path}: more than the {count} planes announced")
            if plane.shape != (size_y, size_x) or plane.dtype != dtype:
                raise WriterError(
                    f"{path}: plane {i} is {plane.dtype} {plane.shape}, "
                    f"expected {dtype} {(size_y, size_x)}"
                )
            yield plane

    def prepare(
        plane: np.ndarray,
    ) -> tuple[list[tuple[tuple[int, int], tuple[int, int], Any]], np.ndarray]:
        """Runs in the threads: the plane's pyramid levels, each as its tiles compressed (or
        the array itself when tifffile compresses: with a predictor, or no compression), and
        the smallest level as an array (for ``on_level``)."""
        out = []
        level = plane
        for i in range(levels):
            if i:
                level = downsample2(level)
            level_tile = _tile_for(*level.shape, tile)
            out.append((level.shape, level_tile, level if encode is None else
                        _encode_tiles(level, level_tile, encode)))
        return out, level

    partial = partial_name(path)
    written = 0
    prepared = map_ahead(prepare, checked(), threads, name="compress")

    def plane_done(fh: HashingFile, smallest: np.ndarray) -> None:
        # Plane `written` is in the file (its tiles and its IFD): previews, checkpoint, progress.
        nonlocal written
        if on_level is not None:
            on_level(written, smallest)
        written += 1
        fh.checkpoint()
        if on_plane is not None:
            on_plane(written)

    last: list[np.ndarray] = []  # the smallest level of the plane tifffile is writing

    def every_tile(fh: HashingFile) -> Iterator[bytes]:
        # The compressed tiles of all planes, for one tifffile call. tifffile asks for plane
        # i's first tile once plane i-1's IFD is written (TiffWriter.write: each page's tiles,
        # then its IFD, then the next page), so that is when plane i-1 is done, before plane
        # i is asked for; the last plane is done when the call returns.
        while True:
            if last:
                plane_done(fh, last.pop())
            item = next(prepared, None)
            if item is None:  # tifffile wants more tiles: say so before it finds us empty
                raise WriterError(f"{path}: got {written} planes, expected {count}")
            _plane, (pyramid_tiles, smallest) = item
            last.append(smallest)
            yield from pyramid_tiles[0][2]

    try:
        with HashingFile(partial, background=background) as fh, tifffile.TiffWriter(fh, bigtiff=bigtiff, ome=False) as tw:
            if levels == 1 and encode is not None and count:
                # One call for every plane: tifffile then builds the IFD once and patches its
                # offsets for each page, instead of a whole write() per plane (its tags, enums,
                # checks): measured 0.18 -> 0.014 ms of the writing thread's Python per plane,
                # time it holds the GIL the decoding threads wait for. The same tags and tiles;
                # pages from the third on point at the second page's resolution values instead
                # of their own copies. The OME-XML is held to the end of the call (tifffile
                # keeps its tags): measured peak RSS at T=200 within 1-3 % of T=20's.
                tw.write(every_tile(fh), shape=(count, size_y, size_x), dtype=dtype,
                         tile=_tile_for(size_y, size_x, tile), subfiletype=0,
                         description=xml_bytes, **common)
                xml_bytes = None
                plane_done(fh, last.pop())
                next(prepared, None)  # a plane beyond count: checked() raises
            else:
                for _plane, (pyramid_tiles, smallest) in prepared:
                    for i, (level_shape, level_tile, data) in enumerate(pyramid_tiles):
                        shape_kw = ({} if encode is None else
                                    {"shape": level_shape, "dtype": dtype})
                        tw.write(
                            data if encode is None else iter(data),
                            tile=level_tile,
                            subifds=(levels - 1 or None) if i == 0 else None,
                            subfiletype=0 if i == 0 else 1,
                            description=xml_bytes if i == 0 and written == 0 else None,
                            **shape_kw,
                            **common,
                        )
                    xml_bytes = None  # written with the first plane (MBs at large T)
                    plane_done(fh, smallest)
        if written != count:
            raise WriterError(f"{path}: got {written} planes, expected {count}")
        if fh.stale:
            logger.debug("%s: hashed by reading it back", path)
        result = Written(levels=levels, sha1=fh.sha1(), size=fh.size)
        commit_temporary(partial, path)  # fsync, rename, fsync the folder (atomic.py)
    except OSError as exc:  # a full disk (ENOSPC at a write or at the final flush), EIO
        partial.unlink(missing_ok=True)
        raise write_error(exc, path) from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        prepared.close()  # stop the compressing threads
    return result


def _tile_encoder(
    codec: str | None, codec_args: dict, predictor: bool
) -> Callable[[np.ndarray], bytes] | None:
    """The tile compressor we run in our threads, or None to let tifffile compress.

    Only for codecs without a predictor (zstd): the bytes are exactly what tifffile would write
    (``encode_chunks`` in tifffile.py: each tile zero-padded to the full tile, C order, passed
    to imagecodecs with the same arguments), so the file does not depend on ``threads``. With a
    predictor (zlib, lzw) tifffile compresses, with its own tile workers.
    """
    if codec == "zstd" and not predictor:
        return functools.partial(imagecodecs.zstd_encode, **codec_args)
    return None


def _encode_tiles(
    level: np.ndarray, tile: tuple[int, int], encode: Callable[[np.ndarray], bytes]
) -> list[bytes]:
    """The level's tiles in TIFF order (rows of tiles, left to right), each compressed."""
    th, tw = tile
    h, w = level.shape
    out = []
    for y in range(0, h, th):
        for x in range(0, w, tw):
            chunk = level[y : y + th, x : x + tw]
            if chunk.shape != (th, tw):
                padded = np.zeros((th, tw), level.dtype)
                padded[: chunk.shape[0], : chunk.shape[1]] = chunk
                chunk = padded
            out.append(encode(np.ascontiguousarray(chunk)))
    return out


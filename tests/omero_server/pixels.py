"""Pixel data for the OMERO stand-in: ``IPixels`` and ``RawPixelsStore``.

OMERO keeps the pixels of an image it created itself (``IPixels.createImage``) in one file per
Pixels object, planes stored one after another in XYZCT order, big-endian ("ROMIO"); an imported
image keeps its pixels in the original file and Bio-Formats reads planes out of it on demand.
The stand-in does the same: :class:`RomioBuffer` is a big-endian memory-mapped file at
``<store>/files/pixels/<id>`` (bytes on disk are the bytes on the wire, so a plane is served
without conversion), and :class:`TiffBuffer` reads planes of an imported OME-TIFF with tifffile,
located through the OME-XML's ``TiffData`` blocks exactly as the OME-TIFF specification says.

``RawPixelsStore`` speaks OMERO's byte conventions: every buffer is big-endian, a tile is ``h``
rows of ``w`` samples, offsets and sizes are in bytes. Writes go only to ROMIO pixels; an imported
image is read-only, as in OMERO. An imported pyramidal OME-TIFF serves its SubIFD levels as
OMERO's resolution levels (0 the smallest, ``levels - 1`` full resolution, the default);
RGB files serve each sample as a channel. Each pixel write counts against the
``drop_after_pixel_writes`` fault.

Not implemented (``ApiUsageException``): getHistogram, findMinMax, copyAndResize*, rendering
settings; ``bit``/``complex`` pixel types.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import Ice
import numpy as np
import omero
import omero.api
import omero.model
from omero.rtypes import rdouble, rint, rlong, rstring, rtime

from .server import ServerContext, StatefulService, servant
from .store import ENUMERATIONS, is_enum_kind

log = logging.getLogger(__name__)

#: OMERO's PixelsType values → big-endian numpy dtypes (the wire and on-disk order).
PIXELS_DTYPES: dict[str, np.dtype] = {
    "int8": np.dtype(">i1"),
    "uint8": np.dtype(">u1"),
    "int16": np.dtype(">i2"),
    "uint16": np.dtype(">u2"),
    "int32": np.dtype(">i4"),
    "uint32": np.dtype(">u4"),
    "float": np.dtype(">f4"),
    "double": np.dtype(">f8"),
}

#: Every PixelsType OMERO knows, with its bit size (``getAllEnumerations('PixelsType')`` lists
#: them all even though the stand-in stores only the ones in :data:`PIXELS_DTYPES`).
PIXELS_TYPE_BITS: dict[str, int] = {
    "bit": 1,
    "int8": 8,
    "uint8": 8,
    "int16": 16,
    "uint16": 16,
    "int32": 32,
    "uint32": 32,
    "float": 32,
    "double": 64,
    "complex": 64,
    "double-complex": 128,
}


def pixels_type_for_dtype(dtype: np.dtype) -> str:
    """The PixelsType value for a numpy dtype (``float32`` is OMERO's ``float``)."""
    dt = np.dtype(dtype).newbyteorder("=")
    for value, known in PIXELS_DTYPES.items():
        if known.newbyteorder("=") == dt:
            return value
    raise ValueError(f"no OMERO PixelsType for dtype {dtype}")


class PixelsError(Exception):
    """A request the pixel buffer cannot honour (out of bounds, wrong size, read-only).

    The servants turn it into ``omero.ApiUsageException`` as OMERO does; the buffers below stay
    free of Ice so they can be used and tested on their own.
    """


class UnsupportedWrite(PixelsError):
    """A write the buffer kind cannot do at all: Java's ``UnsupportedOperationException``.

    ROMIO takes only full-width strips, a pyramid only tiles (ome/omero-romio
    ``RomioPixelBuffer.setTile``, ``BfPyramidPixelBuffer.setPlane``). OMERO does not map that
    Java exception, so the client receives ``omero.InternalException`` (ome/omero-blitz
    ``src/main/java/omero/util/IceMapper.java``, ``handleException``).
    """


#: ome/omero-romio ``ConfiguredTileSizes()``: ``this(256, 256, 3192, 3192)``, the defaults of
#: ``omero.pixeldata.tile_width/height`` and ``max_plane_width/height``.
MAX_PLANE_WIDTH = MAX_PLANE_HEIGHT = 3192
PYRAMID_TILE = (256, 256)
#: ome/omero-romio ``RomioPixelBuffer.MAXIMUM_BUFFER_SIZE``: ROMIO's strips stay below 1 MiB.
ROMIO_MAXIMUM_BUFFER_SIZE = 1048576


def requires_pyramid(size_x: int, size_y: int, dtype: np.dtype) -> bool:
    """ome/omero-romio ``PixelsService.requiresPixelsPyramid``: more samples than 3192².

    ``maxPlaneFloatOverride`` is on by default there, so float and double never get a pyramid.
    """
    if dtype.kind == "f":
        return False
    return size_x * size_y > MAX_PLANE_WIDTH * MAX_PLANE_HEIGHT


@dataclass(frozen=True)
class Geometry:
    """Sizes of one Pixels object and OMERO's byte arithmetic over them."""

    size_x: int
    size_y: int
    size_z: int
    size_c: int
    size_t: int
    dtype: np.dtype  # big-endian

    @property
    def byte_width(self) -> int:
        return self.dtype.itemsize

    @property
    def row_size(self) -> int:
        return self.size_x * self.byte_width

    @property
    def plane_size(self) -> int:
        return self.row_size * self.size_y

    @property
    def stack_size(self) -> int:
        return self.plane_size * self.size_z

    @property
    def timepoint_size(self) -> int:
        return self.stack_size * self.size_c

    @property
    def total_size(self) -> int:
        return self.timepoint_size * self.size_t

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """Array shape of the whole buffer: plane-major XYZCT is (T, C, Z, Y, X) in C order."""
        return (self.size_t, self.size_c, self.size_z, self.size_y, self.size_x)

    def check_zct(self, z: int, c: int, t: int) -> None:
        if not (0 <= z < self.size_z and 0 <= c < self.size_c and 0 <= t < self.size_t):
            raise PixelsError(
                f"plane (z={z}, c={c}, t={t}) outside "
                f"Z={self.size_z} C={self.size_c} T={self.size_t}"
            )

    def check_tile(self, x: int, y: int, w: int, h: int) -> None:
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > self.size_x or y + h > self.size_y:
            raise PixelsError(
                f"tile x={x} y={y} w={w} h={h} outside plane {self.size_x}x{self.size_y}"
            )

    def plane_offset(self, z: int, c: int, t: int) -> int:
        self.check_zct(z, c, t)
        return t * self.timepoint_size + c * self.stack_size + z * self.plane_size


class PixelBuffer(Protocol):
    """What the RawPixelsStore servant needs from a pixel source."""

    geometry: Geometry  # of the current resolution level
    writable: bool

    def read_tile(self, z: int, c: int, t: int, x: int, y: int, w: int, h: int) -> bytes: ...

    def level_sizes(self) -> list[tuple[int, int]]: ...

    def set_level(self, pyramid_index: int) -> None: ...

    def tile_size(self) -> tuple[int, int] | None: ...

    def write_tile(
        self, data: bytes, z: int, c: int, t: int, x: int, y: int, w: int, h: int
    ) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class RomioBuffer:
    """A Pixels object's planes in one big-endian file, XYZCT plane-major, as OMERO's ROMIO.

    Written once, as ome/omero-romio ``PixelsService._getPixelBuffer``: a buffer opened on a
    Pixels whose file does not exist yet may write ("Creating ROMIO Pixel buffer"); once the
    file exists, every new buffer on it is read-only ("Pixel buffer file exists returning
    read-only ROMIO pixel buffer"), and its writes raise ``ApiUsageException("Write-method not
    permitted.")`` (``RomioPixelBuffer.throwIfReadOnly``). The file is created at the buffer's
    first use (``RomioPixelBuffer.getFileChannel`` opens it "rw"), sparse at its full size, so
    unwritten planes read as zeros and a plane written before a crash is still there after a
    restart. Writes are full-width strips only (``RomioPixelBuffer.setTile``).
    """

    def __init__(self, path: Path, geometry: Geometry) -> None:
        self.path = path
        self.geometry = geometry
        self.writable = not path.exists()
        self._array: np.memmap | None = None
        self._closed = False

    def _arr(self) -> np.memmap:
        if self._closed:
            raise PixelsError(f"pixel buffer {self.path} is closed")
        if self._array is None:
            g = self.geometry
            if self.writable:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "ab") as fh:
                    if fh.tell() != g.total_size:
                        fh.truncate(g.total_size)
            mode = "r+" if self.writable else "r"
            self._array = np.memmap(self.path, dtype=g.dtype, mode=mode, shape=g.shape)
        return self._array

    def read_tile(self, z: int, c: int, t: int, x: int, y: int, w: int, h: int) -> bytes:
        g = self.geometry
        g.check_zct(z, c, t)
        g.check_tile(x, y, w, h)
        return self._arr()[t, c, z, y : y + h, x : x + w].tobytes()

    def write_tile(
        self, data: bytes, z: int, c: int, t: int, x: int, y: int, w: int, h: int
    ) -> None:
        g = self.geometry
        if not self.writable:
            raise PixelsError("Write-method not permitted.")
        if x != 0:
            raise UnsupportedWrite("ROMIO pixel buffer only supports 0 offseted tile writes.")
        if w != g.size_x:
            raise UnsupportedWrite("ROMIO pixel buffer only supports full row writes.")
        g.check_zct(z, c, t)
        g.check_tile(x, y, w, h)
        check_length(data, g, w, h)
        self._arr()[t, c, z, y : y + h, x : x + w] = np.frombuffer(data, g.dtype).reshape(h, w)

    def level_sizes(self) -> list[tuple[int, int]]:
        """One resolution: OMERO's own pixel files have no pyramid below its size threshold."""
        return [(self.geometry.size_x, self.geometry.size_y)]

    def set_level(self, pyramid_index: int) -> None:
        if pyramid_index != 0:
            raise PixelsError("these pixels have one resolution level")

    def tile_size(self) -> tuple[int, int] | None:
        """Full-width strips below 1 MiB, as ``RomioPixelBuffer.getTileSize``."""
        g = self.geometry
        return g.size_x, max(1, min(g.size_y, (ROMIO_MAXIMUM_BUFFER_SIZE // g.byte_width) // g.size_x))

    def flush(self) -> None:
        if self._array is not None and self.writable:
            self._array.flush()

    def close(self) -> None:
        self.flush()
        self._array = None
        self._closed = True


def check_length(data: bytes, g: Geometry, w: int, h: int) -> None:
    """A tile's buffer must hold exactly ``w * h`` samples."""
    expected = w * h * g.byte_width
    if len(data) != expected:
        raise PixelsError(
            f"buffer of {len(data)} bytes for a {w}x{h} tile of {g.dtype.name} "
            f"(expected {expected})"
        )


class PyramidBuffer:
    """The pixels of an image larger than 3192², written as tiles once, in order.

    Follows ome/omero-romio ``BfPyramidPixelBuffer``: a buffer opened where the pyramid file
    does not exist writes into a temporary file through Bio-Formats' sequential TIFF writer
    (``setWriteSequentially(true)``), so tiles come plane by plane in XYZCT order and, within a
    plane, row by row at the tile size of the first tile; anything else is refused. The first
    read (or ``save``, which digests the pixels, or ``close``) closes the writer
    (``delegate()`` → ``closeWriter``) and the pyramid becomes read-only for good: a later
    ``setTile`` raises ``ApiUsageException("In read-only mode!")``, and so does every buffer
    opened once the file exists. Plane, row, region and stack writes raise
    ``UnsupportedOperationException("Non-tile based writing unsupported.")``. While writing,
    ``getTileSize`` is the configured 256×256 (``getTileSize`` when ``isWrite()``).

    Stored as one big-endian file like ROMIO (``<id>_pyramid``); the stand-in serves only the
    full resolution (see the README's differences).
    """

    def __init__(self, path: Path, geometry: Geometry) -> None:
        self.path = path
        self.geometry = geometry
        self.writable = not path.exists()
        self.tmp = path.with_name(path.name + ".tmp")
        self._tile: tuple[int, int] | None = None
        self._next = (0, 0, 0)  # plane number (XYZCT), tile row, tile column
        self._array: np.memmap | None = None
        self._closed = False

    def _plane_number(self, z: int, c: int, t: int) -> int:
        g = self.geometry
        return z + g.size_z * (c + g.size_c * t)

    def _open(self, path: Path, mode: str) -> np.memmap:
        g = self.geometry
        if mode == "r+":
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as fh:
                if fh.tell() != g.total_size:
                    fh.truncate(g.total_size)
        return np.memmap(path, dtype=g.dtype, mode=mode, shape=g.shape)

    def close_writer(self) -> None:
        """End the write phase: the temporary file becomes the pyramid, read-only from now on."""
        if not self.writable:
            return
        if self._array is None:
            self._array = self._open(self.tmp, "r+")
        self._array.flush()
        self._array = None
        self.tmp.replace(self.path)
        self.writable = False

    def _reader(self) -> np.memmap:
        if self._closed:
            raise PixelsError(f"pixel buffer {self.path} is closed")
        self.close_writer()
        if self._array is None:
            self._array = self._open(self.path, "r")
        return self._array

    def read_tile(self, z: int, c: int, t: int, x: int, y: int, w: int, h: int) -> bytes:
        g = self.geometry
        g.check_zct(z, c, t)
        g.check_tile(x, y, w, h)
        return self._reader()[t, c, z, y : y + h, x : x + w].tobytes()

    def _expected(self) -> tuple[int, int, int, int]:
        """x, y, w, h of the next tile the sequential writer accepts."""
        g = self.geometry
        tw, th = self._tile or (0, 0)
        _, row, col = self._next
        x, y = col * tw, row * th
        return x, y, min(tw, g.size_x - x), min(th, g.size_y - y)

    def write_tile(
        self, data: bytes, z: int, c: int, t: int, x: int, y: int, w: int, h: int
    ) -> None:
        g = self.geometry
        if not self.writable:
            raise PixelsError(f"In read-only mode! ({self.path.name} exists. Pyramid is read-only)")
        g.check_zct(z, c, t)
        g.check_tile(x, y, w, h)
        check_length(data, g, w, h)
        if self._tile is None:
            self._tile = (w, h)
        plane = self._plane_number(z, c, t)
        expected = self._expected()
        if plane != self._next[0] or (x, y, w, h) != expected:
            raise UnsupportedWrite(
                f"pyramid tiles are written once, in order: expected plane {self._next[0]} "
                f"(XYZCT) tile x={expected[0]} y={expected[1]} w={expected[2]} h={expected[3]}, "
                f"got plane {plane} (z={z} c={c} t={t}) x={x} y={y} w={w} h={h}"
            )
        if self._array is None:
            self._array = self._open(self.tmp, "r+")
        self._array[t, c, z, y : y + h, x : x + w] = np.frombuffer(data, g.dtype).reshape(h, w)
        tw, th = self._tile
        _, row, col = self._next
        col += 1
        if col * tw >= g.size_x:
            row, col = row + 1, 0
        if row * th >= g.size_y:
            plane, row = plane + 1, 0
        self._next = (plane, row, col)

    def level_sizes(self) -> list[tuple[int, int]]:
        return [(self.geometry.size_x, self.geometry.size_y)]

    def set_level(self, pyramid_index: int) -> None:
        if self.writable:
            raise PixelsError("In write mode!")
        if pyramid_index != 0:
            raise PixelsError("the stand-in serves the full resolution of a pyramid only")

    def tile_size(self) -> tuple[int, int] | None:
        if self.writable:
            return PYRAMID_TILE
        g = self.geometry
        return min(g.size_x, PYRAMID_TILE[0]), min(g.size_y, PYRAMID_TILE[1])

    def flush(self) -> None:
        """``save`` digests the pixels, which reads them and so closes the writer."""
        self.close_writer()

    def close(self) -> None:
        if not self._closed:
            self.close_writer()
        self._array = None
        self._closed = True


@dataclass(frozen=True)
class TiffSource:
    """Where an imported image's planes live: a file, its Image index, and (z, c, t) → IFD.

    ``samples`` > 1 for RGB-like files (one IFD holds that many channels as samples): OMERO
    channel c is then sample ``c % samples`` of its IFD, as Bio-Formats splits them.
    """

    path: Path
    image_index: int
    ifds: dict[tuple[int, int, int], int]
    geometry: Geometry
    samples: int = 1

    def to_json(self, store_dir: Path) -> dict[str, Any]:
        return {
            "path": str(self.path.relative_to(store_dir)),
            "image_index": self.image_index,
            "ifds": [[z, c, t, i] for (z, c, t), i in sorted(self.ifds.items())],
            "geometry": [
                self.geometry.size_x,
                self.geometry.size_y,
                self.geometry.size_z,
                self.geometry.size_c,
                self.geometry.size_t,
                pixels_type_for_dtype(self.geometry.dtype),
            ],
            "samples": self.samples,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], store_dir: Path) -> TiffSource:
        sx, sy, sz, sc, st, ptype = data["geometry"]
        geometry = Geometry(sx, sy, sz, sc, st, PIXELS_DTYPES[ptype])
        ifds = {(z, c, t): i for z, c, t, i in data["ifds"]}
        return cls(
            store_dir / data["path"], data["image_index"], ifds, geometry, data.get("samples", 1)
        )


def plane_ifds(
    pixels: Any, file_uuid: str | None = None, file_name: str | None = None
) -> dict[tuple[int, int, int], int]:
    """Map every (z, c, t) of an ome-types ``Pixels`` to its IFD, following its TiffData blocks.

    As the OME-TIFF specification says: a block starts at (FirstZ, FirstC, FirstT) and IFD, and
    covers PlaneCount planes (default: 1 if it names a first plane, else all) advancing in the
    DimensionOrder; no TiffData at all means IFD i holds plane i in DimensionOrder.
    A block's ``UUID`` may name this very file (by the root ``OME/@UUID`` *file_uuid*, or by
    *file_name*); blocks that point into another file (multi-file OME-TIFF) are not supported.
    With several samples per pixel (RGB), planes are counted per ``Channel`` element and
    each IFD serves :func:`samples_per_ifd` consecutive OMERO channels.
    """
    spp = samples_per_ifd(pixels)
    sizes = {"Z": pixels.size_z, "C": pixels.size_c // spp, "T": pixels.size_t}
    order = pixels.dimension_order.value[2:]  # e.g. "ZCT" from "XYZCT"
    total = sizes["Z"] * sizes["C"] * sizes["T"]

    def zct(index: int) -> tuple[int, int, int]:
        pos = {}
        for axis in order:
            pos[axis] = index % sizes[axis]
            index //= sizes[axis]
        return pos["Z"], pos["C"], pos["T"]

    def linear(z: int, c: int, t: int) -> int:
        pos = {"Z": z, "C": c, "T": t}
        index, stride = 0, 1
        for axis in order:
            index += pos[axis] * stride
            stride *= sizes[axis]
        return index

    def expand(mapping: dict[tuple[int, int, int], int]) -> dict[tuple[int, int, int], int]:
        return {(z, c * spp + s, t): ifd for (z, c, t), ifd in mapping.items() for s in range(spp)}

    blocks = pixels.tiff_data_blocks
    if not blocks:
        return expand({zct(i): i for i in range(total)})
    mapping: dict[tuple[int, int, int], int] = {}
    for block in blocks:
        if block.uuid is not None and not (
            (file_uuid and block.uuid.value == file_uuid)
            or (file_name and block.uuid.file_name == file_name)
            or not block.uuid.file_name
        ):
            raise PixelsError(
                f"TiffData refers to another file ({block.uuid.file_name}); "
                "multi-file OME-TIFF is not supported by the stand-in"
            )
        start = linear(block.first_z or 0, block.first_c or 0, block.first_t or 0)
        if block.plane_count is not None:
            count = block.plane_count
        elif len(blocks) == 1 and not (block.first_z or block.first_c or block.first_t):
            count = total
        else:
            count = 1
        for k in range(count):
            if start + k < total:
                mapping[zct(start + k)] = (block.ifd or 0) + k
    return expand(mapping)


def samples_per_ifd(pixels: Any) -> int:
    """How many OMERO channels one IFD holds: SizeC over the number of ``Channel`` elements."""
    n = len(pixels.channels) or pixels.size_c
    if pixels.size_c % n:
        raise PixelsError(f"SizeC={pixels.size_c} is not a multiple of {n} Channel elements")
    return pixels.size_c // n


class TiffBuffer:
    """Read-only planes of an imported OME-TIFF, read with tifffile (as Bio-Formats would).

    A window of a tiled page decodes only the TIFF tiles it touches (a 30,000² plane is never
    decoded whole to serve a 512² tile); a whole plane, or a window of a striped page, decodes
    the page and keeps the last few, so a client walking a plane row by row decodes it once.
    """

    writable = False
    _CACHE = 4

    def __init__(self, source: TiffSource) -> None:
        import tifffile

        self.source = source
        self.geometry = source.geometry
        self._tif = tifffile.TiffFile(source.path)
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}
        self._lock = threading.Lock()
        self.level = 0  # pyramid index: 0 is full resolution (OMERO numbers the other way)
        self._subpages: dict[tuple[int, int], Any] = {}
        first = min(source.ifds.values()) if source.ifds else None
        self._first_ifd = first
        self._levels = self._level_sizes(first)

    def _level_sizes(self, ifd: int | None) -> list[tuple[int, int]]:
        """(width, height) of every pyramid level (SubIFDs of the first plane), full first."""
        full = (self.geometry.size_x, self.geometry.size_y)
        if ifd is None:
            return [full]
        sizes = [full]
        for k in range(len(self._tif.pages[ifd].subifds or ())):
            page = self._subpage(ifd, k + 1)
            if (
                page.imagewidth > sizes[-1][0]
                or page.samplesperpixel != self._tif.pages[ifd].samplesperpixel
            ):
                break  # not a reduced-resolution copy of the plane
            sizes.append((page.imagewidth, page.imagelength))
        return sizes

    def _subpage(self, ifd: int, level: int) -> Any:
        """The plane of IFD *ifd* at pyramid index *level* (read from its SubIFDs)."""
        import tifffile

        key = (ifd, level)
        page = self._subpages.get(key)
        if page is None:
            base = self._tif.pages[ifd]
            self._tif.filehandle.seek(base.subifds[level - 1])
            page = tifffile.TiffPage(self._tif, index=(ifd, level - 1))
            self._subpages[key] = page
        return page

    def level_sizes(self) -> list[tuple[int, int]]:
        return list(self._levels)

    def set_level(self, pyramid_index: int) -> None:
        """Serve pyramid level *pyramid_index* (0: full resolution) from now on."""
        if not 0 <= pyramid_index < len(self._levels):
            raise PixelsError(
                f"resolution index {pyramid_index} outside 0..{len(self._levels) - 1}"
            )
        with self._lock:
            self.level = pyramid_index
            w, h = self._levels[pyramid_index]
            g = self.source.geometry
            self.geometry = Geometry(w, h, g.size_z, g.size_c, g.size_t, g.dtype)
            self._cache.clear()

    def tile_size(self) -> tuple[int, int] | None:
        """The file's own TIFF tile, the cheapest window to read (Bio-Formats' optimal size)."""
        if self._first_ifd is None:
            return None
        page = self._tif.pages[self._first_ifd]
        return (page.tilewidth, page.tilelength) if page.is_tiled else None

    def _page(self, ifd: int) -> Any:
        page = self._tif.pages[ifd] if self.level == 0 else self._subpage(ifd, self.level)
        if (page.imagelength, page.imagewidth) != (self.geometry.size_y, self.geometry.size_x):
            raise PixelsError(
                f"IFD {ifd} of {self.source.path.name} is {page.imagewidth}x{page.imagelength}, "
                f"expected {self.geometry.size_x}x{self.geometry.size_y}"
            )
        return page

    def _plane(self, z: int, c: int, t: int) -> np.ndarray:
        key = (z, c, t)
        plane = self._cache.get(key)
        if plane is None:
            ifd = self.source.ifds.get(key)
            if ifd is None:
                # OME-TIFF allows missing planes; OMERO serves them as zeros.
                plane = np.zeros((self.geometry.size_y, self.geometry.size_x), self.geometry.dtype)
            else:
                data = self._page(ifd).asarray()
                samples = self.source.samples
                if samples > 1 and data.ndim == 3:
                    # contiguous (Y, X, S) or planar (S, Y, X) samples
                    index = c % samples
                    data = data[..., index] if data.shape[-1] == samples else data[index]
                plane = data.reshape(self.geometry.size_y, self.geometry.size_x)
                plane = plane.astype(self.geometry.dtype, copy=False)
            if len(self._cache) >= self._CACHE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = plane
        return plane

    def _window(self, page: Any, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Decode only the TIFF tiles of a tiled, single-sample page that meet the window."""
        tw, tl = page.tilewidth, page.tilelength
        across = -(-page.imagewidth // tw)
        out = np.zeros((h, w), self.geometry.dtype)
        fh = self._tif.filehandle
        for ty in range(y // tl, (y + h - 1) // tl + 1):
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                index = ty * across + tx
                count = page.databytecounts[index]
                if not count:
                    continue  # a sparse tile: zeros
                fh.seek(page.dataoffsets[index])
                segment, _, _ = page.decode(
                    fh.read(count), index, jpegtables=page.jpegtables, jpegheader=page.jpegheader
                )
                tile = segment.reshape(tl, tw)
                y0, y1 = max(y, ty * tl), min(y + h, (ty + 1) * tl)
                x0, x1 = max(x, tx * tw), min(x + w, (tx + 1) * tw)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[
                    y0 - ty * tl : y1 - ty * tl, x0 - tx * tw : x1 - tx * tw
                ]
        return out

    def read_tile(self, z: int, c: int, t: int, x: int, y: int, w: int, h: int) -> bytes:
        g = self.geometry
        g.check_zct(z, c, t)
        g.check_tile(x, y, w, h)
        with self._lock:
            key = (z, c, t)
            ifd = self.source.ifds.get(key)
            whole = (x, y, w, h) == (0, 0, g.size_x, g.size_y)
            if key not in self._cache and ifd is not None and not whole:
                page = self._page(ifd)
                if page.is_tiled and page.samplesperpixel == 1 and page.imagedepth == 1:
                    return self._window(page, x, y, w, h).tobytes()
            return self._plane(z, c, t)[y : y + h, x : x + w].tobytes()

    def write_tile(
        self, data: bytes, z: int, c: int, t: int, x: int, y: int, w: int, h: int
    ) -> None:
        raise PixelsError("pixels of an imported image are read-only (they live in its file)")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._tif.close()
        self._cache.clear()


def pixels_dir(store_dir: Path) -> Path:
    """Folder of ROMIO files and import pointers, inside the store (kept across restarts)."""
    return Path(store_dir) / "files" / "pixels"


def romio_path(store_dir: Path, pixels_id: int) -> Path:
    return pixels_dir(store_dir) / str(pixels_id)


def pyramid_path(store_dir: Path, pixels_id: int) -> Path:
    """ome/omero-romio ``PixelsService``: the pyramid sits beside the ROMIO path, ``_pyramid``."""
    return pixels_dir(store_dir) / f"{pixels_id}_pyramid"


def tiff_pointer_path(store_dir: Path, pixels_id: int) -> Path:
    return pixels_dir(store_dir) / f"{pixels_id}.tiff.json"


def record_tiff_source(store_dir: Path, pixels_id: int, source: TiffSource) -> None:
    """Remember that a Pixels object is served from an imported file (written atomically)."""
    path = tiff_pointer_path(store_dir, pixels_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(source.to_json(Path(store_dir))))
    tmp.replace(path)


def open_buffer(store_dir: Path, pixels_id: int, geometry: Geometry) -> PixelBuffer:
    """The pixel source of a Pixels object: its imported file if it has one, else ROMIO."""
    pointer = tiff_pointer_path(store_dir, pixels_id)
    if pointer.exists():
        return TiffBuffer(TiffSource.from_json(json.loads(pointer.read_text()), Path(store_dir)))
    if requires_pyramid(geometry.size_x, geometry.size_y, geometry.dtype):
        return PyramidBuffer(pyramid_path(store_dir, pixels_id), geometry)
    return RomioBuffer(romio_path(store_dir, pixels_id), geometry)


def message_digest(buffer: PixelBuffer) -> bytes:
    """SHA-1 over all planes in XYZCT order, big-endian: what OMERO's calculateMessageDigest is."""
    g = buffer.geometry
    digest = hashlib.sha1()
    for t in range(g.size_t):
        for c in range(g.size_c):
            for z in range(g.size_z):
                digest.update(buffer.read_tile(z, c, t, 0, 0, g.size_x, g.size_y))
    return digest.digest()


# --------------------------------------------------------------------------- servants


def usage_error(message: str) -> omero.ApiUsageException:
    """The exception OMERO raises for a request that cannot be honoured as asked."""
    return omero.ApiUsageException(None, None, message)


def enum_name(enum_class: str) -> str:
    """``omero.model.PixelsTypeI`` / ``PixelsType`` / ``ome.model.enums.PixelsType`` → PixelsType."""
    name = enum_class.rsplit(".", 1)[-1]
    if name.endswith("I") and getattr(omero.model, name[:-1], None) is not None:
        name = name[:-1]
    return name


def with_bit_size(entry: Any) -> Any:
    """Fill ``PixelsType.bitSize`` as OMERO's database has it (other enumerations unchanged)."""
    if isinstance(entry, omero.model.PixelsType) and entry.getValue() is not None:
        bits = PIXELS_TYPE_BITS.get(entry.getValue().getValue())
        if bits is not None:
            entry.setBitSize(rint(bits))
    return entry


def pixels_type_value(ctx: ServerContext, ptype: Any) -> str:
    """The value ("uint16") of a PixelsType given loaded or as an unloaded reference."""
    if ptype is None:
        raise usage_error("no PixelsType given")
    if ptype.isLoaded() and ptype.getValue() is not None:
        return ptype.getValue().getValue()
    if ptype.getId() is None:
        raise usage_error("PixelsType without id or value")
    loaded = ctx.store.load("PixelsType", ptype.getId().getValue())
    if loaded is None:
        raise usage_error(f"PixelsType:{ptype.getId().getValue()} does not exist")
    return loaded.getValue().getValue()


def geometry_of(ctx: ServerContext, pixels_id: int) -> tuple[Any, Geometry]:
    """Load a Pixels object (with its type) and the geometry of its buffer."""
    pixels = ctx.store.load("Pixels", pixels_id, fetch=("pixelsType",))
    if pixels is None:
        raise omero.ValidationException(None, None, f"Pixels:{pixels_id} does not exist")
    ptype = pixels.getPixelsType().getValue().getValue()
    dtype = PIXELS_DTYPES.get(ptype)
    if dtype is None:
        raise usage_error(f"PixelsType {ptype!r} is not supported by the OMERO stand-in")

    def size(name: str) -> int:
        value = getattr(pixels, "get" + name)()
        return 1 if value is None else int(value.getValue())

    geometry = Geometry(
        size("SizeX"), size("SizeY"), size("SizeZ"), size("SizeC"), size("SizeT"), dtype
    )
    return pixels, geometry


def open_pixels(ctx: ServerContext, pixels_id: int) -> tuple[Any, PixelBuffer]:
    """The Pixels object and its open buffer (imported file or ROMIO)."""
    pixels, geometry = geometry_of(ctx, pixels_id)
    return pixels, open_buffer(ctx.store_dir, pixels_id, geometry)


def new_pixels_graph(
    ctx: ServerContext,
    size_x: int,
    size_y: int,
    size_z: int,
    size_t: int,
    channel_count: int,
    ptype: str,
    name: str,
    description: str | None,
) -> Any:
    """An unsaved Image → Pixels → Channels (+ LogicalChannel, StatsInfo) graph, as createImage.

    Shared with the import so both create the same shapes OMERO does.
    """
    for label, value in (
        ("sizeX", size_x),
        ("sizeY", size_y),
        ("sizeZ", size_z),
        ("sizeT", size_t),
        ("sizeC", channel_count),
    ):
        if value is None or value <= 0:
            raise usage_error(f"{label} must be positive (got {value})")
    if ptype not in PIXELS_DTYPES:
        raise usage_error(f"PixelsType {ptype!r} is not supported by the OMERO stand-in")
    store = ctx.store
    image = omero.model.ImageI()
    image.setName(rstring(name))
    if description is not None:
        image.setDescription(rstring(description))
    image.setAcquisitionDate(rtime(int(time.time() * 1000)))
    pixels = omero.model.PixelsI()
    pixels.setSizeX(rint(size_x))
    pixels.setSizeY(rint(size_y))
    pixels.setSizeZ(rint(size_z))
    pixels.setSizeC(rint(channel_count))
    pixels.setSizeT(rint(size_t))
    pixels.setPixelsType(
        omero.model.PixelsTypeI(store.enum("PixelsType", ptype).getId().getValue(), False)
    )
    pixels.setDimensionOrder(
        omero.model.DimensionOrderI(store.enum("DimensionOrder", "XYZCT").getId().getValue(), False)
    )
    pixels.setSignificantBits(rint(PIXELS_TYPE_BITS[ptype]))
    pixels.setSha1(rstring("Pending..."))
    image.addPixels(pixels)
    mono = store.enum("PhotometricInterpretation", "Monochrome")
    for _ in range(channel_count):
        channel = omero.model.ChannelI()
        logical = omero.model.LogicalChannelI()
        if mono is not None:
            logical.setPhotometricInterpretation(
                omero.model.PhotometricInterpretationI(mono.getId().getValue(), False)
            )
        channel.setLogicalChannel(logical)
        pixels.addChannel(channel)
    return image


@servant
class PixelsServiceI(omero.api.IPixels):
    """IPixels: create images, describe pixels, enumerations, channel min/max."""

    def __init__(self, ctx: ServerContext, session: Any) -> None:
        self.ctx = ctx
        self.session = session

    def createImage(
        self,
        sizeX: int,
        sizeY: int,
        sizeZ: int,
        sizeT: int,
        channelList: list[int],
        pixelsType: Any,
        name: str,
        description: str,
        current: Ice.Current | None = None,
    ) -> Any:
        """Create Image + Pixels + one Channel per entry of channelList; returns the image id.

        As OMERO, the pixel file itself is created lazily (by the first RawPixelsStore use).
        """
        if not channelList:
            raise usage_error("channelList must name at least one channel")
        if not name:
            raise usage_error("an image needs a name")
        ptype = pixels_type_value(self.ctx, pixelsType)
        image = new_pixels_graph(
            self.ctx, sizeX, sizeY, sizeZ, sizeT, len(channelList), ptype, name, description
        )
        image = self.session.save(image)
        return rlong(image.getId().getValue())

    def retrievePixDescription(self, pixId: int, current: Ice.Current | None = None) -> Any:
        """The Pixels with its type, dimension order, channels, logical channels and stats."""
        pixels = self.ctx.store.load(
            "Pixels",
            pixId,
            fetch=(
                "pixelsType",
                "dimensionOrder",
                "image",
                "channels.logicalChannel.photometricInterpretation",
                "channels.statsInfo",
            ),
        )
        if pixels is None:
            raise omero.ValidationException(None, None, f"Pixels:{pixId} does not exist")
        with_bit_size(pixels.getPixelsType())
        return pixels

    def getAllEnumerations(self, enumClass: str, current: Ice.Current | None = None) -> list[Any]:
        kind = enum_name(enumClass)
        if kind not in ENUMERATIONS and not is_enum_kind(kind):
            raise usage_error(f"{enumClass} is not an enumeration")
        entries = [
            self.ctx.store.load(kind, f.getId().getValue()) for f in self.ctx.store.all(kind)
        ]
        return [with_bit_size(e) for e in entries]

    def getEnumeration(self, enumClass: str, value: str, current: Ice.Current | None = None) -> Any:
        entry = self.ctx.store.enum(enum_name(enumClass), value)
        if entry is None:
            raise usage_error(f"no {enumClass} with value {value!r}")
        return with_bit_size(entry)

    def getBitDepth(self, type: Any, current: Ice.Current | None = None) -> int:  # noqa: A002
        return PIXELS_TYPE_BITS[pixels_type_value(self.ctx, type)]

    def setChannelGlobalMinMax(
        self,
        pixelsId: int,
        channelIndex: int,
        min: float,  # noqa: A002
        max: float,  # noqa: A002
        current: Ice.Current | None = None,
    ) -> None:
        """Record a channel's global min/max in its StatsInfo (what the viewers' ranges use)."""
        pixels = self.ctx.store.load("Pixels", pixelsId, fetch=("channels.statsInfo",))
        if pixels is None:
            raise omero.ValidationException(None, None, f"Pixels:{pixelsId} does not exist")
        channels = list(pixels.copyChannels())
        if not 0 <= channelIndex < len(channels):
            raise usage_error(f"channel index {channelIndex} outside 0..{len(channels) - 1}")
        channel = channels[channelIndex]
        stats = channel.getStatsInfo()
        if stats is None:
            stats = omero.model.StatsInfoI()
        stats.setGlobalMin(rdouble(float(min)))
        stats.setGlobalMax(rdouble(float(max)))
        channel.setStatsInfo(stats)
        self.session.save(channel)


@servant
class RawPixelsStoreI(StatefulService, omero.api.RawPixelsStore):
    """RawPixelsStore: planes, tiles, rows, stacks of one Pixels object, big-endian bytes.

    One servant per ``createRawPixelsStore()``; ``close`` releases the buffer and removes it.
    Every write first counts against the ``drop_after_pixel_writes`` fault.
    """

    def __init__(self, ctx: ServerContext, session: Any) -> None:
        self.ctx = ctx
        self.session = session
        self.pixels_id: int | None = None
        self.buffer: PixelBuffer | None = None
        self.dirty = False
        self.lock = threading.RLock()
        #: Set when the drop fault ends this servant's session under a write (``_count_write``).
        self.lost = False

    # -- set-up ---------------------------------------------------------------------------

    def _buf(self) -> PixelBuffer:
        if self.lost:
            # The session that made this servant was destroyed by the drop fault. OMERO removes
            # a destroyed login's services from the adapter "to prevent further remote calls on
            # it" (ome/omero-blitz omero/cmd/SessionI.java, destroy), so a call after it finds
            # no servant: Ice answers ObjectNotExistException. A call can still reach this one:
            # Ice resends the request whose connection was closed under it (the close is
            # graceful behind Glacier2) while the dropping dispatch is still ending the session,
            # and it then wrote into the buffer that dispatch was closing ("... is closed",
            # ApiUsageException: a CI run's 4th write in test_connection_drops_after_n_pixel_writes).
            raise Ice.ObjectNotExistException()
        if self.buffer is None:
            raise usage_error("setPixelsId must be called first")
        return self.buffer

    def _geo(self) -> Geometry:
        return self._buf().geometry

    def setPixelsId(
        self, pixelsId: int, bypassOriginalFile: bool, current: Ice.Current | None = None
    ) -> None:
        with self.lock:
            if self.buffer is not None and self.pixels_id == pixelsId:
                return  # ome/omero-server RawPixelsBean.setPixelsId: same id keeps its buffer
            _, buffer = _wrap(lambda: open_pixels(self.ctx, pixelsId))
            self._release()
            self.buffer = buffer
            self.pixels_id = pixelsId

    def getPixelsId(self, current: Ice.Current | None = None) -> int:
        self._buf()
        return int(self.pixels_id or 0)

    def getPixelsPath(self, current: Ice.Current | None = None) -> str:
        buf = self._buf()
        path = getattr(buf, "path", None) or buf.source.path  # type: ignore[attr-defined]
        return str(path)

    def prepare(self, pixelsIds: list[int], current: Ice.Current | None = None) -> None:
        """Nothing to prepare: buffers are opened on demand."""

    # -- sizes and offsets ----------------------------------------------------------------

    def getPlaneSize(self, current: Ice.Current | None = None) -> int:
        return self._geo().plane_size

    def getRowSize(self, current: Ice.Current | None = None) -> int:
        return self._geo().row_size

    def getStackSize(self, current: Ice.Current | None = None) -> int:
        return self._geo().stack_size

    def getTimepointSize(self, current: Ice.Current | None = None) -> int:
        return self._geo().timepoint_size

    def getTotalSize(self, current: Ice.Current | None = None) -> int:
        return self._geo().total_size

    def getRowOffset(
        self, y: int, z: int, c: int, t: int, current: Ice.Current | None = None
    ) -> int:
        g = self._geo()
        if not 0 <= y < g.size_y:
            raise usage_error(f"row {y} outside 0..{g.size_y - 1}")
        return _wrap(lambda: g.plane_offset(z, c, t)) + y * g.row_size

    def getPlaneOffset(self, z: int, c: int, t: int, current: Ice.Current | None = None) -> int:
        g = self._geo()
        return _wrap(lambda: g.plane_offset(z, c, t))

    def getStackOffset(self, c: int, t: int, current: Ice.Current | None = None) -> int:
        g = self._geo()
        return _wrap(lambda: g.plane_offset(0, c, t))

    def getTimepointOffset(self, t: int, current: Ice.Current | None = None) -> int:
        g = self._geo()
        return _wrap(lambda: g.plane_offset(0, 0, t))

    def getByteWidth(self, current: Ice.Current | None = None) -> int:
        return self._geo().byte_width

    def isSigned(self, current: Ice.Current | None = None) -> bool:
        return self._geo().dtype.kind in "if"

    def isFloat(self, current: Ice.Current | None = None) -> bool:
        return self._geo().dtype.kind == "f"

    # -- reads ----------------------------------------------------------------------------

    def getTile(
        self,
        z: int,
        c: int,
        t: int,
        x: int,
        y: int,
        w: int,
        h: int,
        current: Ice.Current | None = None,
    ) -> bytes:
        buf = self._buf()
        return _wrap(lambda: buf.read_tile(z, c, t, x, y, w, h))

    def getPlane(self, z: int, c: int, t: int, current: Ice.Current | None = None) -> bytes:
        g = self._geo()
        return self.getTile(z, c, t, 0, 0, g.size_x, g.size_y)

    def getRow(self, y: int, z: int, c: int, t: int, current: Ice.Current | None = None) -> bytes:
        g = self._geo()
        return self.getTile(z, c, t, 0, y, g.size_x, 1)

    def getCol(self, x: int, z: int, c: int, t: int, current: Ice.Current | None = None) -> bytes:
        g = self._geo()
        return self.getTile(z, c, t, x, 0, 1, g.size_y)

    def getPlaneRegion(
        self, z: int, c: int, t: int, size: int, offset: int, current: Ice.Current | None = None
    ) -> bytes:
        """``size`` samples starting ``offset`` samples into the plane (OMERO counts samples)."""
        g = self._geo()
        plane = self.getPlane(z, c, t)
        start, stop = offset * g.byte_width, (offset + size) * g.byte_width
        if offset < 0 or size < 0 or stop > len(plane):
            raise usage_error(f"plane region offset={offset} size={size} outside the plane")
        return plane[start:stop]

    def getStack(self, c: int, t: int, current: Ice.Current | None = None) -> bytes:
        g = self._geo()
        return b"".join(self.getPlane(z, c, t) for z in range(g.size_z))

    def getTimepoint(self, t: int, current: Ice.Current | None = None) -> bytes:
        g = self._geo()
        return b"".join(self.getStack(c, t) for c in range(g.size_c))

    def getRegion(self, size: int, offset: int, current: Ice.Current | None = None) -> bytes:
        """``size`` bytes at byte ``offset`` of the whole XYZCT buffer."""
        g = self._geo()
        if offset < 0 or size < 0 or offset + size > g.total_size:
            raise usage_error(f"region offset={offset} size={size} outside {g.total_size} bytes")
        out = bytearray()
        pos = offset
        while pos < offset + size:
            t, rest = divmod(pos, g.timepoint_size)
            c, rest = divmod(rest, g.stack_size)
            z, rest = divmod(rest, g.plane_size)
            plane = self.getPlane(z, c, t)
            take = min(g.plane_size - rest, offset + size - pos)
            out += plane[rest : rest + take]
            pos += take
        return bytes(out)

    def getHypercube(
        self,
        offset: list[int],
        size: list[int],
        step: list[int],
        current: Ice.Current | None = None,
    ) -> bytes:
        """A sub-volume (offsets/sizes/steps in X, Y, Z, C, T), XYZCT order, big-endian."""
        g = self._geo()
        if len(offset) != 5 or len(size) != 5 or len(step) != 5:
            raise usage_error("offset, size and step need 5 values (X, Y, Z, C, T)")
        ox, oy, oz, oc, ot = offset
        sx, sy, sz, sc, st = size
        kx, ky, kz, kc, kt = (max(1, s) for s in step)
        out = bytearray()
        for t in range(ot, ot + st, kt):
            for c in range(oc, oc + sc, kc):
                for z in range(oz, oz + sz, kz):
                    tile = np.frombuffer(self.getTile(z, c, t, ox, oy, sx, sy), g.dtype)
                    out += tile.reshape(sy, sx)[::ky, ::kx].tobytes()
        return bytes(out)

    def calculateMessageDigest(self, current: Ice.Current | None = None) -> bytes:
        return message_digest(self._buf())

    # -- writes ---------------------------------------------------------------------------

    def _count_write(self, current: Ice.Current | None) -> None:
        """Count a pixel write against the drop fault; after a drop, the write is lost.

        The dispatch still finishes (with an exception nobody receives: the connection is
        gone), so the server's shutdown does not wait for an unanswered request. Behind a
        real Glacier2 the client's router session is destroyed instead and the request fails
        with a connection error, which the router hands on as ``Ice.UnknownLocalException``
        (what an OMERO client sees when Blitz goes away under a routed request).
        """
        if self.ctx.behind_glacier2:
            drop = self.session.drop_router_sessions
        else:  # the stand-in plays the router: its logins end before the connection goes
            drop = self.ctx.router.lose_connection if self.ctx.router is not None else None
        chosen = drop or self.ctx.faults.drop_connection

        def lose(cur: Any) -> None:
            self.lost = True  # before the connection goes: a resent request must find it set
            chosen(cur)

        if self.ctx.faults.count_pixel_write(current, lose):
            if self.ctx.behind_glacier2:
                raise Ice.ConnectionLostException(0)
            raise omero.InternalException(
                None, None, "connection dropped by fault injection; the write was lost"
            )

    def _write(
        self,
        data: bytes,
        z: int,
        c: int,
        t: int,
        x: int,
        y: int,
        w: int,
        h: int,
        current: Ice.Current | None,
    ) -> Any:
        buf = self._buf()
        if not buf.writable:  # the buffer raises its own read-only error (ROMIO, pyramid, file)
            _wrap(lambda: buf.write_tile(bytes(data), z, c, t, x, y, w, h))
        self._count_write(current)
        with self.lock:
            _wrap(lambda: buf.write_tile(bytes(data), z, c, t, x, y, w, h))
            self.dirty = True
        return None

    def setTile(
        self,
        buf: bytes,
        z: int,
        c: int,
        t: int,
        x: int,
        y: int,
        w: int,
        h: int,
        current: Ice.Current | None = None,
    ) -> Any:
        return self._write(buf, z, c, t, x, y, w, h, current)

    def setPlane(
        self, buf: bytes, z: int, c: int, t: int, current: Ice.Current | None = None
    ) -> Any:
        g = self._geo()
        _whole_planes(self._buf())
        return self._write(buf, z, c, t, 0, 0, g.size_x, g.size_y, current)

    def setRow(
        self, buf: bytes, y: int, z: int, c: int, t: int, current: Ice.Current | None = None
    ) -> Any:
        g = self._geo()
        _whole_planes(self._buf())
        return self._write(buf, z, c, t, 0, y, g.size_x, 1, current)

    def setStack(
        self, buf: bytes, z: int, c: int, t: int, current: Ice.Current | None = None
    ) -> Any:
        """The whole Z stack of (c, t); *z* is ignored, as in OMERO's signature."""
        g = self._geo()
        _whole_planes(self._buf())
        if len(buf) != g.stack_size:
            raise usage_error(f"stack buffer of {len(buf)} bytes, expected {g.stack_size}")
        self._count_write(current)
        for z in range(g.size_z):
            part = buf[z * g.plane_size : (z + 1) * g.plane_size]
            _wrap(lambda p=part, z=z: self._buf().write_tile(p, z, c, t, 0, 0, g.size_x, g.size_y))
        self.dirty = True
        return None

    def setTimepoint(self, buf: bytes, t: int, current: Ice.Current | None = None) -> Any:
        g = self._geo()
        _whole_planes(self._buf())
        if len(buf) != g.timepoint_size:
            raise usage_error(f"timepoint buffer of {len(buf)} bytes, expected {g.timepoint_size}")
        self._count_write(current)
        for c in range(g.size_c):
            for z in range(g.size_z):
                start = c * g.stack_size + z * g.plane_size
                part = buf[start : start + g.plane_size]
                _wrap(
                    lambda p=part, z=z, c=c: self._buf().write_tile(
                        p, z, c, t, 0, 0, g.size_x, g.size_y
                    )
                )
        self.dirty = True
        return None

    def setRegion(
        self, size: int, offset: int, buf: bytes, current: Ice.Current | None = None
    ) -> Any:
        """Write ``size`` bytes at byte ``offset`` of the buffer (whole rows only)."""
        g = self._geo()
        _whole_planes(self._buf())
        if len(buf) != size or offset % g.row_size or size % g.row_size:
            raise usage_error("setRegion supports whole rows only in the OMERO stand-in")
        if offset + size > g.total_size:
            raise usage_error(f"region offset={offset} size={size} outside {g.total_size} bytes")
        self._count_write(current)
        pos = offset
        while pos < offset + size:
            t, rest = divmod(pos, g.timepoint_size)
            c, rest = divmod(rest, g.stack_size)
            z, rest = divmod(rest, g.plane_size)
            y = rest // g.row_size
            rows = min(g.size_y - y, (offset + size - pos) // g.row_size)
            part = buf[pos - offset : pos - offset + rows * g.row_size]
            _wrap(
                lambda p=part, z=z, c=c, t=t, y=y, rows=rows: self._buf().write_tile(
                    p, z, c, t, 0, y, g.size_x, rows
                )
            )
            pos += rows * g.row_size
        self.dirty = True
        return None

    # -- resolution levels ----------------------------------------------------------------
    # OMERO numbers levels from the smallest (0) to full resolution (levels - 1), and lists
    # descriptions from full resolution down. Imported pyramidal OME-TIFFs expose their
    # SubIFD levels; ROMIO pixels have one level.

    def requiresPixelsPyramid(self, current: Ice.Current | None = None) -> bool:
        """ome/omero-romio ``PixelsService.requiresPixelsPyramid`` (more than 3192² samples)."""
        g = self._geo()
        return requires_pyramid(g.size_x, g.size_y, g.dtype)

    def getResolutionLevels(self, current: Ice.Current | None = None) -> int:
        return len(self._buf().level_sizes())

    def getResolutionLevel(self, current: Ice.Current | None = None) -> int:
        buf = self._buf()
        return len(buf.level_sizes()) - 1 - getattr(buf, "level", 0)

    def setResolutionLevel(self, resolutionLevel: int, current: Ice.Current | None = None) -> None:
        buf = self._buf()
        n = len(buf.level_sizes())
        if not 0 <= resolutionLevel < n:
            raise usage_error(f"resolution level {resolutionLevel} outside 0..{n - 1}")
        with self.lock:
            _wrap(lambda: buf.set_level(n - 1 - resolutionLevel))

    def getResolutionDescriptions(self, current: Ice.Current | None = None) -> list[Any]:
        return [omero.api.ResolutionDescription(w, h) for w, h in self._buf().level_sizes()]

    def getTileSize(self, current: Ice.Current | None = None) -> list[int]:
        """The file's TIFF tile when it has one, else a tile far below Ice's message limit."""
        g = self._geo()
        tile = self._buf().tile_size()
        if tile is not None:
            return [min(g.size_x, tile[0]), min(g.size_y, tile[1])]
        return [min(g.size_x, 1024), min(g.size_y, 1024)]

    # -- lifecycle ------------------------------------------------------------------------

    def save(self, current: Ice.Current | None = None) -> Any:
        """Flush written pixels; returns the Pixels, or None when nothing was written.

        ome/omero-server ``RawPixelsBean.save``: only a modified buffer is digested (which
        reads it, so a pyramid's writer is closed), and an unmodified one returns null.
        """
        with self.lock:
            buf = self._buf()
            if not self.dirty:
                return None
            buf.flush()
            self.dirty = False
        return self.ctx.store.load("Pixels", int(self.pixels_id or 0), fetch=("pixelsType",))

    def _release(self) -> None:
        if self.buffer is not None:
            self.buffer.close()
            self.buffer = None
            self.pixels_id = None

    def close(self, current: Ice.Current | None = None) -> None:
        with self.lock:
            self._release()
        if current is not None:
            self.ctx.remove_servant(current)



def _wrap(fn: Callable[[], Any]) -> Any:
    """Run a buffer operation, turning :class:`PixelsError` into ``ApiUsageException``."""
    try:
        return fn()
    except UnsupportedWrite as exc:
        raise omero.InternalException(
            None, "java.lang.UnsupportedOperationException", str(exc)) from exc
    except PixelsError as exc:
        raise usage_error(str(exc)) from exc


def _whole_planes(buf: PixelBuffer) -> None:
    """A pyramid takes tiles only (ome/omero-romio ``BfPyramidPixelBuffer.setPlane`` & co)."""
    if isinstance(buf, PyramidBuffer):
        _wrap(_raise(UnsupportedWrite("Non-tile based writing unsupported.")))


def _raise(exc: Exception) -> Callable[[], Any]:
    def fail() -> Any:
        raise exc

    return fail


def register(ctx: ServerContext) -> None:
    """Plug IPixels (one per session) and RawPixelsStore (one per create call) into the core."""
    ctx.register_service("IPixels", PixelsServiceI)
    ctx.register_service("RawPixelsStore", RawPixelsStoreI)

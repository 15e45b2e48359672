"""Pixels mode: create the image with IPixels and write its pixels tile by tile.

For servers or files where import is not wanted (no managed repository, a format the server's
Bio-Formats reads differently, or only the pixels matter).  Pixels are sent as tiles
(``RawPixelsStore.setTile``), never whole planes: a 30,000² plane is far beyond Ice's message
limit.  Bytes are big-endian, as OMERO's pixel buffer expects.  The file is read one plane at a
time, so memory holds one plane, not the image.  Channel names, colours and global min/max (which
OMERO.web needs to render without a full stats pass) are set afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from omero_push.errors import InputError, ServerError
from omero_push.ometiff import ImageMeta
from omero_push.session import AsyncWindow, Session
from posdir2ometiff.ome import pixel_type

log = logging.getLogger(__name__)

#: Tiles in flight at once on a ROMIO buffer (see session.AsyncWindow).  A pyramid buffer takes
#: one at a time: its TIFF writer accepts tiles only in order (see :func:`tile_plan`).
IN_FLIGHT = 3
#: The server's Ice.MessageSizeMax: 65536 KiB in OMERO's etc/grid/templates.xml (a copy is
#: ome/omero-py test/unit/old_templates.xml: ``<property name="Ice.MessageSizeMax"
#: value="65536"/> <!-- 64 MB -->``).  omero-py's own 250 MB limit is the client's, not the server's.
SERVER_MESSAGE_SIZE_MAX = 65536 * 1024
#: Room for Ice's request header and the call's other arguments within one message.
_MESSAGE_HEADROOM = 64 * 1024
MAX_PAYLOAD_BYTES = SERVER_MESSAGE_SIZE_MAX - _MESSAGE_HEADROOM


def omero_pixel_type(dtype: np.dtype[Any]) -> str:
    """OMERO's PixelsType value for a numpy dtype (uint16 → "uint16", float32 → "float").

    OMERO's PixelsType values are the OME schema's PixelType names, so the converter's table is
    the one table.
    """
    try:
        return pixel_type(dtype)
    except ValueError:
        raise InputError(f"pixel type {np.dtype(dtype).name} has no OMERO equivalent") from None


@dataclass
class PlaneReader:
    """Reads one (z, c, t) plane of one OME-TIFF series without loading the whole image."""

    path: Path
    series: int = 0

    def __post_init__(self) -> None:
        self._tif = tifffile.TiffFile(self.path)
        s = self._tif.series[self.series]
        self._axes = s.get_axes(False)
        self._shape = s.get_shape(False)
        self._pages = s.pages
        self.dtype = np.dtype(s.dtype)
        self._outer = [a for a in self._axes if a not in "YXS"]
        self._outer_shape = [self._shape[self._axes.index(a)] for a in self._outer]
        self.samples = self._shape[self._axes.index("S")] if "S" in self._axes else 1

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> PlaneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def page_of(self, z: int, c: int, t: int) -> Any:
        """The IFD holding plane (z, c, t), or None when the file lacks it."""
        pos = {"Z": z, "C": c // self.samples, "T": t}
        idx = [pos.get(a, 0) for a in self._outer]
        flat = int(np.ravel_multi_index(idx, self._outer_shape)) if idx else 0
        return self._pages[flat]

    def plane(self, z: int, c: int, t: int) -> np.ndarray:
        """The 2-D plane (Y, X); RGB samples count as channels (c = page channel × S + sample)."""
        page = self.page_of(z, c, t)
        if page is None:
            raise InputError(f"{self.path}: plane z={z} c={c} t={t} is missing from the file")
        arr = page.asarray()
        if arr.ndim == 3:  # (Y, X, S)
            arr = arr[..., c % self.samples]
        return arr


def tiles(
    size_x: int, size_y: int, tile_w: int, tile_h: int
) -> Iterator[tuple[int, int, int, int]]:
    """(x, y, w, h) covering the plane row by row; edge tiles are smaller."""
    for y in range(0, size_y, tile_h):
        for x in range(0, size_x, tile_w):
            yield x, y, min(tile_w, size_x - x), min(tile_h, size_y - y)


def pixels_type_object(session: Session, value: str) -> Any:
    """The server's PixelsType enumeration object for ``value`` (looked up once per session)."""
    types = session.cache.get("PixelsType")
    if types is None:
        types = {
            pt.getValue().getValue(): pt for pt in session.pixels().getAllEnumerations("PixelsType")
        }
        session.cache["PixelsType"] = types
    if value in types:
        return types[value]
    raise ServerError(f"the server knows no pixel type {value!r}")


def create_image(session: Session, image: ImageMeta, dtype: np.dtype[Any], description: str) -> int:
    """IPixels.createImage for ``image``'s sizes; returns the new image id."""
    s = image.sizes
    iid = session.pixels().createImage(
        s["X"],
        s["Y"],
        s["Z"],
        s["T"],
        list(range(s["C"])),
        pixels_type_object(session, omero_pixel_type(dtype)),
        image.name,
        description,
    )
    return int(getattr(iid, "val", iid))


def pixels_id_of(session: Session, image_id: int) -> int:
    """The image's (only) Pixels id."""
    imgs = session.container().getImages("Image", [image_id], None)
    if not imgs:
        raise ServerError(f"image {image_id} not found after creating it")
    return imgs[0].getPrimaryPixels().getId().getValue()


@dataclass(frozen=True)
class TilePlan:
    """How one image's pixels go up: tile size, and how many setTile calls may be in flight."""

    width: int
    height: int
    in_flight: int
    pyramid: bool


def tile_plan(
    rps: Any, image: ImageMeta, dtype: np.dtype[Any], tile: tuple[int, int] | None = None
) -> TilePlan:
    """The tiles the server's pixel buffer accepts for this image, checked against ``--tile``.

    Follows ome/omero-romio: an image up to 3192² (``PixelsService.requiresPixelsPyramid``) is a
    ROMIO buffer, which takes only full-width strips at x=0 (``RomioPixelBuffer.setTile``) and
    proposes strips below 1 MiB (``RomioPixelBuffer.getTileSize``); a larger one is a
    ``BfPyramidPixelBuffer``, whose sequential TIFF writer takes tiles of the size of the first one,
    plane by plane (XYZCT) and row by row (``getIFD``), so only one call may be in flight.
    Raises :class:`InputError` when ``tile`` cannot be written to this buffer.
    """
    size_x, size_y = image.sizes["X"], image.sizes["Y"]
    server_w, server_h = _server_tile(rps)
    pyramid = bool(rps.requiresPixelsPyramid())
    itemsize = np.dtype(dtype).itemsize
    if tile is None:
        tw, th = server_w, server_h
    else:
        tw, th = min(tile[0], size_x), min(tile[1], size_y)
        if pyramid and (tw, th) != (min(server_w, size_x), min(server_h, size_y)):
            raise InputError(
                f"--tile {tile[0]}x{tile[1]}: the server writes {image.name} ({size_x}x{size_y}, "
                f"a pyramid) only in its own {server_w}x{server_h} tiles; leave --tile out"
            )
        if not pyramid and tw != size_x:
            raise InputError(
                f"--tile {tile[0]}x{tile[1]}: the server writes {image.name} ({size_x}x{size_y}) "
                f"only in full-width strips ({size_x}xN); use --tile {size_x}x{th} or leave "
                "--tile out"
            )
    if tw * itemsize > MAX_PAYLOAD_BYTES:
        raise InputError(
            f"{image.name}: one row of {tw} pixels exceeds the server's message limit "
            f"({SERVER_MESSAGE_SIZE_MAX // 2**20} MiB)"
        )
    if tw * th * itemsize > MAX_PAYLOAD_BYTES:
        if tile is not None:
            raise InputError(
                f"--tile {tile[0]}x{tile[1]}: a tile of {tw * th * itemsize} bytes exceeds the "
                f"server's message limit ({SERVER_MESSAGE_SIZE_MAX // 2**20} MiB)"
            )
        th = max(1, MAX_PAYLOAD_BYTES // (tw * itemsize))
    return TilePlan(tw, th, 1 if pyramid else IN_FLIGHT, pyramid)


def write_pixels(
    session: Session,
    pixels_id: int,
    reader: PlaneReader,
    image: ImageMeta,
    *,
    tile: tuple[int, int] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> list[tuple[float, float]]:
    """Write every plane as tiles, once, in order; returns per-channel (min, max) seen.

    OMERO writes a Pixels' data once (ome/omero-romio ``PixelsService._getPixelBuffer``: a
    buffer on existing data is read-only), so this runs only on a freshly created image.
    """
    s = image.sizes
    be = reader.dtype.newbyteorder(">")
    rps = session.sf.createRawPixelsStore()
    try:
        rps.setPixelsId(pixels_id, True)
        plan = tile_plan(rps, image, reader.dtype, tile)
        tw, th = plan.width, plan.height
        log.debug(
            "%s: %dx%d tiles, %d in flight%s",
            image.name,
            tw,
            th,
            plan.in_flight,
            " (pyramid)" if plan.pyramid else "",
        )
        window = AsyncWindow(plan.in_flight)
        mins = [np.inf] * s["C"]
        maxs = [-np.inf] * s["C"]
        # XYZCT: z fastest, then c, then t — the plane order a pyramid's writer expects.
        order = [(z, c, t) for t in range(s["T"]) for c in range(s["C"]) for z in range(s["Z"])]
        for (z, c, t), plane in _prefetched(reader, order):
            if plane.shape != (s["Y"], s["X"]):
                raise InputError(
                    f"{reader.path}: plane z={z} c={c} t={t} is {plane.shape}, "
                    f"OME-XML says {(s['Y'], s['X'])}"
                )
            if plane.size:
                lo, hi = _finite_range(plane)
                mins[c] = min(mins[c], lo)
                maxs[c] = max(maxs[c], hi)
            for x, y, w, h in tiles(s["X"], s["Y"], tw, th):
                # One copy per tile: gather and byte-swap together; Ice reads the array's buffer
                # (and marshals it before begin_setTile returns), so no bytes object is made.
                buf = np.ascontiguousarray(plane[y : y + h, x : x + w], dtype=be)
                window.call(rps.begin_setTile, rps.end_setTile, buf, z, c, t, x, y, w, h)
                if on_bytes is not None:
                    on_bytes(buf.nbytes)
        window.drain()
        rps.save()
    finally:
        try:
            rps.close()
        except Exception as exc:
            log.debug("closing RawPixelsStore failed: %s", exc)
    return [
        (lo if np.isfinite(lo) else 0.0, hi if np.isfinite(hi) else 0.0)
        for lo, hi in zip(mins, maxs, strict=True)
    ]


def _finite_range(plane: np.ndarray) -> tuple[float, float]:
    """(min, max) of the plane's finite values; (inf, -inf) when it has none.

    A float plane may hold NaN or ±inf (a division by zero in the acquisition's processing);
    OMERO's rendering settings need a finite window, and one infinite pixel must not make the
    whole channel render black. Integer planes are finite by construction.
    """
    if plane.dtype.kind != "f":
        return float(plane.min()), float(plane.max())
    finite = plane[np.isfinite(plane)]
    if not finite.size:
        return np.inf, -np.inf
    return float(finite.min()), float(finite.max())


def check_planes(path: Path, image: ImageMeta) -> np.dtype[Any]:
    """The file's dtype, after checking it holds every plane its OME-XML promises.

    Run before anything is created on the server: a file whose OME-XML lists more planes (or
    other sizes) than its IFDs hold would otherwise leave a half-written image behind. Reads
    IFD headers only, no pixels.
    """
    s = image.sizes
    with PlaneReader(path, image.index) as r:
        for z, c, t in ((z, c, t) for t in range(s["T"]) for c in range(s["C"])
                        for z in range(s["Z"])):
            try:
                page = r.page_of(z, c, t)
            except (ValueError, IndexError):
                page = None
            if page is None:
                raise InputError(
                    f"{path}: the OME-XML promises plane z={z} c={c} t={t} of image "
                    f"{image.name!r}, but the file does not hold it"
                )
            if tuple(page.shape[:2]) != (s["Y"], s["X"]):
                raise InputError(
                    f"{path}: plane z={z} c={c} t={t} is {page.shape[1]}x{page.shape[0]}, "
                    f"the OME-XML says {s['X']}x{s['Y']}"
                )
        return r.dtype


def _prefetched(
    reader: PlaneReader, order: list[tuple[int, int, int]]
) -> Iterator[tuple[tuple[int, int, int], np.ndarray]]:
    """Planes in ``order``, the next one read in a helper thread while this one is sent.

    Only the helper thread touches the TIFF file, so tifffile needs no locking.
    """
    if not order:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="omero-push-read") as ex:
        nxt = ex.submit(reader.plane, *order[0])
        for i, key in enumerate(order):
            plane = nxt.result()
            if i + 1 < len(order):
                nxt = ex.submit(reader.plane, *order[i + 1])
            yield key, plane


def _server_tile(rps: Any) -> tuple[int, int]:
    """``RawPixelsStore.getTileSize``: the only tile size a real server's buffer is sure to take."""
    w, h = rps.getTileSize()
    if w <= 0 or h <= 0:
        raise ServerError(f"the server proposes a tile of {w}x{h}")
    return int(w), int(h)


def set_channels(
    session: Session, pixels_id: int, image: ImageMeta, minmax: list[tuple[float, float]]
) -> None:
    """Channel names and colours from the OME-XML, and the global min/max just measured."""
    import omero
    from omero.rtypes import rint, rstring

    svc = session.pixels()
    pix = svc.retrievePixDescription(pixels_id)
    channels = list(pix.copyChannels())
    lcs = []
    chs = []
    for index, ch in enumerate(channels):
        meta = image.channels[index] if index < len(image.channels) else None
        if meta is not None and meta.name:
            lc = ch.getLogicalChannel()
            lc.setName(rstring(meta.name))
            lcs.append(lc)
        if meta is not None and meta.color is not None:
            r, g, b, a = meta.color
            ch.setRed(rint(int(r)))
            ch.setGreen(rint(int(g)))
            ch.setBlue(rint(int(b)))
            ch.setAlpha(rint(int(a)))
            ch.setLogicalChannel(
                omero.model.LogicalChannelI(ch.getLogicalChannel().getId().getValue(), False)
            )
            ch.setPixels(omero.model.PixelsI(pixels_id, False))
            chs.append(ch)
    upd = session.update()
    if lcs:
        upd.saveArray(lcs)
    if chs:
        upd.saveArray(chs)
    for index, (lo, hi) in enumerate(minmax):
        svc.setChannelGlobalMinMax(pixels_id, index, float(lo), float(hi))


def set_physical_sizes(session: Session, pixels_id: int, image: ImageMeta) -> None:
    """Pixel sizes in µm (what OMERO.web's scale bar and measurements use), when the file has them."""
    import omero
    from omero.model.enums import UnitsLength

    sizes = {k: v for k, v in image.physical_sizes.items() if v}
    if not sizes:
        return
    pix = session.query().get("Pixels", pixels_id)
    for axis, value in sizes.items():
        getattr(pix, f"setPhysicalSize{axis}")(
            omero.model.LengthI(float(value), UnitsLength.MICROMETER)
        )
    session.update().saveObject(pix)


def push_pixels(
    session: Session,
    path: Path,
    image: ImageMeta,
    image_id: int,
    *,
    tile: tuple[int, int] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Write pixels, channels and sizes of an already created image; returns its pixels id."""
    pid = pixels_id_of(session, image_id)
    with PlaneReader(path, image.index) as reader:
        minmax = write_pixels(session, pid, reader, image, tile=tile, on_bytes=on_bytes)
    set_channels(session, pid, image, minmax)
    try:
        set_physical_sizes(session, pid, image)
    except Exception as exc:
        from omero_push.session import is_connection_lost

        if is_connection_lost(exc):
            raise
        log.warning("%s: could not set the physical pixel sizes (%s)", image.name, exc)
    return pid


def reader_dtype(path: Path, series: int) -> np.dtype[Any]:
    with PlaneReader(path, series) as r:
        return r.dtype

"""The OMERO stand-in writes pixels once, as OMERO does: plain omero-py calls.

What ome/omero-romio's ``PixelsService``, ``RomioPixelBuffer`` and ``BfPyramidPixelBuffer``
refuse, the stand-in refuses with the same exception; each test names the source it follows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("omero")
import omero  # noqa: E402
import omero.model  # noqa: E402

from tests.test_omero_server_data import (  # noqa: E402
    big_endian,
    create_image,
    from_wire,
    random_stack,
    session,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def server(omero_server_session: Any) -> Any:
    """The shared stand-in (tests here never assume an empty store)."""
    return omero_server_session


# --- point 2: pixels are written once -------------------------------------------------------


def test_romio_pixels_are_read_only_once_written(server: Any) -> None:
    """A new RawPixelsStore on pixels whose file exists cannot write (reads still work).

    ome/omero-romio PixelsService._getPixelBuffer: "Pixel buffer file exists returning
    read-only ROMIO pixel buffer"; RomioPixelBuffer.throwIfReadOnly: ApiUsageException.
    """
    shape = (1, 1, 2, 20, 30)
    data = random_stack(shape, "uint16", seed=21)
    with session(server) as (_client, sf):
        pid = create_image(sf, shape, "uint16")
        first = sf.createRawPixelsStore()
        try:
            first.setPixelsId(pid, True)
            first.setPlane(big_endian(data[0, 0, 0]), 0, 0, 0)
            first.setPlane(big_endian(data[0, 0, 1]), 1, 0, 0)  # the same store may go on
            first.save()
        finally:
            first.close()
        second = sf.createRawPixelsStore()
        try:
            second.setPixelsId(pid, True)
            for write in (
                lambda: second.setPlane(big_endian(data[0, 0, 0]), 0, 0, 0),
                lambda: second.setTile(big_endian(data[0, 0, 1, :4]), 1, 0, 0, 0, 0, 30, 4),
                lambda: second.setRow(big_endian(data[0, 0, 1, 0]), 0, 1, 0, 0),
            ):
                with pytest.raises(omero.ApiUsageException, match="Write-method not permitted"):
                    write()
            got = from_wire(second.getPlane(1, 0, 0), np.dtype("uint16"), (20, 30))
            np.testing.assert_array_equal(got, data[0, 0, 1])
        finally:
            second.close()


def test_romio_takes_full_width_strips_only(server: Any) -> None:
    """ROMIO (planes up to 3192²) writes only tiles at x=0 and w=sizeX; its tile is a strip.

    ome/omero-romio RomioPixelBuffer.setTile ("only supports 0 offseted tile writes", "only
    supports full row writes": UnsupportedOperationException, an InternalException in the
    client) and RomioPixelBuffer.getTileSize (width sizeX, height ≤ 1 MiB / byte width / sizeX).
    """
    shape = (1, 1, 1, 2000, 700)
    data = random_stack(shape, "uint16", seed=22)
    with session(server) as (_client, sf):
        pid = create_image(sf, shape, "uint16")
        rps = sf.createRawPixelsStore()
        try:
            rps.setPixelsId(pid, True)
            assert rps.requiresPixelsPyramid() is False
            assert list(rps.getTileSize()) == [700, 1048576 // 2 // 700]
            with pytest.raises(omero.InternalException, match="0 offseted"):
                rps.setTile(big_endian(data[0, 0, 0, :10, 10:20]), 0, 0, 0, 10, 0, 10, 10)
            with pytest.raises(omero.InternalException, match="full row"):
                rps.setTile(big_endian(data[0, 0, 0, :10, :20]), 0, 0, 0, 0, 0, 20, 10)
            rps.setTile(big_endian(data[0, 0, 0, 100:110]), 0, 0, 0, 0, 100, 700, 10)
            got = from_wire(rps.getTile(0, 0, 0, 0, 100, 700, 10), np.dtype("uint16"), (10, 700))
            np.testing.assert_array_equal(got, data[0, 0, 0, 100:110])
        finally:
            rps.close()


PYRAMID = (1, 1, 2, 3200, 3200)  # 3200² > 3192²: OMERO writes a pyramid, not ROMIO


def _tiles(tile: int, size: int = 3200) -> list[tuple[int, int, int, int]]:
    return [(x, y, min(tile, size - x), min(tile, size - y))
            for y in range(0, size, tile) for x in range(0, size, tile)]


def test_pyramid_takes_tiles_in_order_once(server: Any) -> None:
    """Above 3192² the pixels are a pyramid: tiles in XYZCT plane order and row order, once.

    ome/omero-romio PixelsService.requiresPixelsPyramid (3192², ConfiguredTileSizes) and
    BfPyramidPixelBuffer: getTileSize 256² while writing; setPlane "Non-tile based writing
    unsupported."; the sequential TIFF writer; save digests (reads) the pixels, which closes
    the writer, and afterwards setTile raises "In read-only mode!", in any store.
    """
    data = random_stack(PYRAMID, "uint8", seed=23)
    tiles = _tiles(1100)
    with session(server) as (_client, sf):
        pid = create_image(sf, PYRAMID, "uint8")
        rps = sf.createRawPixelsStore()
        try:
            rps.setPixelsId(pid, True)
            assert rps.requiresPixelsPyramid() is True
            assert list(rps.getTileSize()) == [256, 256]
            with pytest.raises(omero.InternalException, match="Non-tile based"):
                rps.setPlane(big_endian(data[0, 0, 0]), 0, 0, 0)

            def put(z: int, x: int, y: int, w: int, h: int) -> None:
                rps.setTile(big_endian(data[0, 0, z, y:y + h, x:x + w]), z, 0, 0, x, y, w, h)

            with pytest.raises(omero.InternalException, match="in order"):
                put(1, *tiles[0])  # plane z=1 before z=0
            put(0, *tiles[0])
            with pytest.raises(omero.InternalException, match="in order"):
                put(0, *tiles[0])  # once
            with pytest.raises(omero.InternalException, match="in order"):
                put(0, *tiles[2])  # a tile skipped
            for tile in tiles[1:]:
                put(0, *tile)
            for tile in tiles:
                put(1, *tile)
            rps.save()
            with pytest.raises(omero.ApiUsageException, match="read-only"):
                put(1, *tiles[-1])
            got = from_wire(rps.getTile(1, 0, 0, 1000, 3000, 200, 200), np.dtype("uint8"),
                            (200, 200))
            np.testing.assert_array_equal(got, data[0, 0, 1, 3000:3200, 1000:1200])
        finally:
            rps.close()
        again = sf.createRawPixelsStore()
        try:
            again.setPixelsId(pid, True)
            with pytest.raises(omero.ApiUsageException, match="read-only"):
                again.setTile(big_endian(data[0, 0, 0, :256, :256]), 0, 0, 0, 0, 0, 256, 256)
        finally:
            again.close()


def test_pyramid_read_ends_the_writing(server: Any) -> None:
    """A read while a pyramid is being written closes the writer: no more tiles after it.

    ome/omero-romio BfPyramidPixelBuffer.delegate(): in write mode it calls closeWriter and
    opens the reader, so setTile then finds the buffer read-only.
    """
    data = random_stack(PYRAMID, "uint8", seed=24)
    tiles = _tiles(1600)
    with session(server) as (_client, sf):
        pid = create_image(sf, PYRAMID, "uint8")
        rps = sf.createRawPixelsStore()
        try:
            rps.setPixelsId(pid, True)
            x, y, w, h = tiles[0]
            rps.setTile(big_endian(data[0, 0, 0, y:y + h, x:x + w]), 0, 0, 0, x, y, w, h)
            rps.getTile(0, 0, 0, 0, 0, 16, 16)
            x, y, w, h = tiles[1]
            with pytest.raises(omero.ApiUsageException, match="read-only"):
                rps.setTile(big_endian(data[0, 0, 0, y:y + h, x:x + w]), 0, 0, 0, x, y, w, h)
        finally:
            rps.close()

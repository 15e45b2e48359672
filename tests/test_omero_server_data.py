"""The OMERO stand-in's data services, driven over TCP by the real omero-py client.

IPixels + RawPixelsStore (planes, tiles, big-endian bytes), RawFileStore (upload, read, SHA-1),
the managed-repository import (exactly the calls omero-py's own ``testlib.full_import`` makes),
OMERO.tables (omero-py's TableI over PyTables), and the faults and restarts the pusher must
survive. Only public omero-py calls are used on the client side: what passes here is what a
plain omero-py script would see. What each test proves is in its docstring.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("omero")
import Ice  # noqa: E402
import omero  # noqa: E402
import omero.clients  # noqa: E402
import tifffile  # noqa: E402
from ome_types import model as om  # noqa: E402
from ome_types import to_xml  # noqa: E402
from omero.callbacks import CmdCallbackI  # noqa: E402
from omero.model.enums import ChecksumAlgorithmSHA1160  # noqa: E402
from omero.rtypes import rbool, rstring  # noqa: E402

KV_NS = "openmicroscopy.org/omero/client/mapAnnotation"

pytestmark = pytest.mark.timeout(180)


# --- servers --------------------------------------------------------------------------------
# The core's fixtures (tests/omero_server/fixture.py): ``omero_server_session`` is shared by the
# read-mostly tests below; ``omero_server_factory`` starts servers with fault options.


@pytest.fixture
def server(omero_server_session: Any) -> Any:
    """The shared stand-in (tests here never assume an empty store)."""
    return omero_server_session


@contextmanager
def session(server: Any) -> Iterator[tuple[Any, Any]]:
    """A plain omero.client session over TCP: (client, ServiceFactory)."""
    client = omero.client(host=server.url, port=int(server.port))
    try:
        sf = client.createSession(server.user, server.password)
        yield client, sf
    finally:
        client.__del__()


# --- helpers --------------------------------------------------------------------------------


def pixels_type(sf: Any, value: str) -> Any:
    types = sf.getPixelsService().getAllEnumerations("PixelsType")
    return next(t for t in types if t.getValue().getValue() == value)


def create_image(sf: Any, shape: tuple[int, int, int, int, int], ptype: str) -> int:
    """IPixels.createImage for (T, C, Z, Y, X); returns the Pixels id."""
    t, c, z, y, x = shape
    iid = sf.getPixelsService().createImage(
        x, y, z, t, list(range(c)), pixels_type(sf, ptype), "synthetic", "made by a test"
    )
    image = sf.getContainerService().getImages("Image", [iid.getValue()], None)[0]
    return image.getPrimaryPixels().getId().getValue()


def big_endian(a: np.ndarray) -> bytes:
    return a.astype(a.dtype.newbyteorder(">")).tobytes()


def from_wire(buf: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(buf, np.dtype(dtype).newbyteorder(">")).reshape(shape)


def random_stack(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return rng.normal(100, 30, shape).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


OME_PIXEL_TYPES = {"uint8": "uint8", "uint16": "uint16", "float32": "float"}


def write_ome_tiff(
    path: Path,
    data: np.ndarray,
    channels: list[str],
    pairs: list[tuple[str, str]],
    tile: tuple[int, int] | None = (16, 16),
    pyramid: int = 0,
    compression: str = "zlib",
) -> None:
    """An OME-TIFF of ``data`` (T, C, Z, Y, X), planes in XYZCT order, written with tifffile.

    ``pyramid``: that many 2x-downsampled levels per plane in SubIFDs (the OME-TIFF pyramid).

    The OME-XML (ome-types) names the channels, gives them colours and links one
    MapAnnotation to the Image — what OMERO's import turns into channels and key-value pairs.
    """
    t, c, z, y, x = data.shape
    pixels = om.Pixels(
        id="Pixels:0",
        dimension_order="XYZCT",
        type=OME_PIXEL_TYPES[data.dtype.name],
        size_x=x,
        size_y=y,
        size_z=z,
        size_c=c,
        size_t=t,
        physical_size_x=0.25,
        physical_size_y=0.25,
        physical_size_z=0.5,
        channels=[
            om.Channel(
                id=f"Channel:0:{i}",
                name=name,
                samples_per_pixel=1,
                color=om.Color(((255, 0, 0), (0, 255, 0), (0, 0, 255))[i % 3]),
            )
            for i, name in enumerate(channels)
        ],
        tiff_data_blocks=[om.TiffData(ifd=0, plane_count=t * c * z)],
        planes=[
            om.Plane(the_z=zz, the_c=cc, the_t=tt, delta_t=5.0 * tt, exposure_time=30.0)
            for tt in range(t)
            for cc in range(c)
            for zz in range(z)
        ],
    )
    annotation = om.MapAnnotation(
        id="Annotation:0",
        namespace=KV_NS,
        value=om.Map(ms=[om.Map.M(k=k, value=v) for k, v in pairs]),
    )
    tag = om.TagAnnotation(id="Annotation:1", value="tag-from-the-file")
    ome = om.OME(
        images=[
            om.Image(
                id="Image:0",
                name="synthetic",
                pixels=pixels,
                annotation_refs=[
                    om.AnnotationRef(id="Annotation:0"),
                    om.AnnotationRef(id="Annotation:1"),
                ],
            )
        ],
        structured_annotations=om.StructuredAnnotations(
            map_annotations=[annotation], tag_annotations=[tag]
        ),
    )
    xml = to_xml(ome)
    with tifffile.TiffWriter(path) as tw:
        for i, (tt, cc, zz) in enumerate(
            (tt, cc, zz) for tt in range(t) for cc in range(c) for zz in range(z)
        ):
            tw.write(
                data[tt, cc, zz],
                description=xml if i == 0 else None,
                metadata=None,
                tile=tile,
                compression=compression,
                photometric="minisblack",
                subifds=pyramid or None,
            )
            for level in range(1, pyramid + 1):
                step = 2**level
                tw.write(
                    data[tt, cc, zz, ::step, ::step],
                    subfiletype=1,
                    metadata=None,
                    tile=tile,
                    compression=compression,
                    photometric="minisblack",
                )


def import_file(
    client: Any,
    path: Path,
    dataset_id: int | None = None,
    sha1: str | None = None,
    description: str | None = None,
    **settings_fields: Any,
) -> Any:
    """Import one file exactly as omero-py's ``testlib.ITest.full_import`` does.

    importFileset(fileset, settings) → getUploader(0).write(...) → verifyUpload([sha1]) →
    CmdCallbackI(client, handle).loop → ImportResponse; ``proc.close()`` at the end.
    """
    mrepo = client.getManagedRepository()
    fileset = omero.model.FilesetI()
    entry = omero.model.FilesetEntryI()
    entry.setClientPath(rstring(str(path.resolve())))
    fileset.addFilesetEntry(entry)
    upload = omero.model.UploadJobI()
    upload.setVersionInfo([omero.model.NamedValue("omero.version", "5.23.0")])
    fileset.linkJob(upload)
    settings = omero.grid.ImportSettings()
    settings.doThumbnails = rbool(True)
    settings.noStatsInfo = rbool(False)
    settings.userSpecifiedTarget = (
        None if dataset_id is None else omero.model.DatasetI(dataset_id, False)
    )
    settings.userSpecifiedDescription = None if description is None else rstring(description)
    for name, value in settings_fields.items():  # e.g. userSpecifiedName=rstring("...")
        setattr(settings, name, value)
    settings.checksumAlgorithm = omero.model.ChecksumAlgorithmI()
    settings.checksumAlgorithm.value = rstring(ChecksumAlgorithmSHA1160)
    proc = mrepo.importFileset(fileset, settings)
    try:
        rfs = proc.getUploader(0)
        try:
            offset = 0
            rfs.write([], offset, 0)  # touch, as testlib does
            with open(path, "rb") as fh:
                while block := fh.read(100_000):
                    rfs.write(block, offset, len(block))
                    offset += len(block)
        finally:
            rfs.close()
        handle = proc.verifyUpload([sha1 or client.sha1(str(path))])
        cb = CmdCallbackI(client, handle)
        try:
            rsp = cb.loop(10, 500)
        finally:
            cb.close(True)
        return rsp
    finally:
        proc.close()


def read_all_planes(sf: Any, pixels_id: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Every plane through RawPixelsStore.getPlane, as (T, C, Z, Y, X)."""
    t, c, z, y, x = shape
    rps = sf.createRawPixelsStore()
    try:
        rps.setPixelsId(pixels_id, True)
        out = np.empty(shape, dtype)
        for tt in range(t):
            for cc in range(c):
                for zz in range(z):
                    out[tt, cc, zz] = from_wire(rps.getPlane(zz, cc, tt), dtype, (y, x))
        return out
    finally:
        rps.close()


def image_maps(sf: Any, image_id: int) -> list[tuple[str | None, list[tuple[str, str]]]]:
    anns = sf.getMetadataService().loadAnnotations("Image", [image_id], [], [], None)
    return [
        (
            a.getNs().getValue() if a.getNs() else None,
            [(nv.name, nv.value) for nv in a.getMapValue()],
        )
        for a in anns.get(image_id, [])
        if isinstance(a, omero.model.MapAnnotation)
    ]


# --- IPixels + RawPixelsStore ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_planes_and_tiles_roundtrip(server: Any, dtype: str) -> None:
    """createImage, then setPlane for every plane and setTile over part of one, read back equal.

    Proves: the OMERO byte conventions (big-endian, XYZCT plane order, tile = h rows of w
    samples) for 8-bit, 16-bit and float pixels, and the size/offset arithmetic clients use.
    """
    shape = (2, 3, 2, 37, 53)  # odd sizes catch row/column mix-ups
    ptype = {"float32": "float"}.get(dtype, dtype)
    data = random_stack(shape, dtype)
    with session(server) as (_client, sf):
        pid = create_image(sf, shape, ptype)
        rps = sf.createRawPixelsStore()
        try:
            rps.setPixelsId(pid, True)
            for t in range(2):
                for c in range(3):
                    for z in range(2):
                        rps.setPlane(big_endian(data[t, c, z]), z, c, t)
            patch = random_stack((11, 53), dtype, seed=1)  # ROMIO: full-width strips only
            rps.setTile(big_endian(patch), 1, 2, 1, 0, 5, 53, 11)
            data[1, 2, 1, 5:16] = patch
            rps.save()
            itemsize = np.dtype(dtype).itemsize
            assert rps.getByteWidth() == itemsize
            assert rps.getPlaneSize() == 37 * 53 * itemsize
            assert rps.getTotalSize() == 2 * 3 * 2 * 37 * 53 * itemsize
            assert rps.getPlaneOffset(1, 2, 1) == ((1 * 3 + 2) * 2 + 1) * 37 * 53 * itemsize
            assert rps.isFloat() == (dtype == "float32")
            tile = from_wire(rps.getTile(1, 2, 1, 25, 3, 28, 15), dtype, (15, 28))
            np.testing.assert_array_equal(tile, data[1, 2, 1, 3:18, 25:53])
            row = from_wire(rps.getRow(7, 0, 1, 0), dtype, (53,))
            np.testing.assert_array_equal(row, data[0, 1, 0, 7])
            stack = from_wire(rps.getStack(2, 1), dtype, (2, 37, 53))
            np.testing.assert_array_equal(stack, data[1, 2])
        finally:
            rps.close()
        np.testing.assert_array_equal(read_all_planes(sf, pid, np.dtype(dtype), shape), data)


def test_stack_timepoint_region_and_hypercube_accessors(server: Any) -> None:
    """setStack/setTimepoint/setRegion and getCol/getRegion/getPlaneRegion/getHypercube agree
    with numpy on the same XYZCT buffer; calculateMessageDigest is SHA-1 of all planes."""
    shape = (2, 2, 3, 6, 5)  # (T, C, Z, Y, X)
    data = random_stack(shape, "int16", seed=17)
    with session(server) as (_client, sf):
        pid = create_image(sf, shape, "int16")
        rps = sf.createRawPixelsStore()
        try:
            rps.setPixelsId(pid, True)
            rps.setTimepoint(big_endian(data[0]), 0)
            for c in range(2):
                rps.setStack(big_endian(data[1, c]), 0, c, 1)
            np.testing.assert_array_equal(
                from_wire(rps.getTimepoint(1), np.dtype("int16"), (2, 3, 6, 5)), data[1]
            )
            rows = data.copy()
            rows[1, 0, 2, 2:5] = -7  # three whole rows of plane (z=2, c=0, t=1)
            offset = rps.getRowOffset(2, 2, 0, 1)
            rps.setRegion(3 * 5 * 2, offset, big_endian(rows[1, 0, 2, 2:5]))
            flat = rows.astype(">i2").tobytes()
            assert rps.getRegion(100, offset - 20) == flat[offset - 20 : offset + 80]
            col = from_wire(rps.getCol(4, 2, 0, 1), np.dtype("int16"), (6,))
            np.testing.assert_array_equal(col, rows[1, 0, 2, :, 4])
            region = from_wire(rps.getPlaneRegion(1, 1, 0, 7, 3), np.dtype("int16"), (7,))
            np.testing.assert_array_equal(region, rows[0, 1, 1].ravel()[3:10])
            cube = rps.getHypercube([1, 0, 0, 1, 0], [3, 6, 2, 1, 2], [2, 3, 1, 1, 1])
            expected = rows[0:2, 1:2, 0:2, 0:6:3, 1:4:2]  # (T, C, Z, Y, X) order of XYZCT
            np.testing.assert_array_equal(
                from_wire(cube, np.dtype("int16"), expected.shape), expected
            )
            assert rps.calculateMessageDigest() == hashlib.sha1(flat).digest()
            assert rps.isSigned() and not rps.isFloat()
        finally:
            rps.close()


def test_tiled_write_of_a_plane(server: Any) -> None:
    """A plane written only through getTileSize's tiles (the last one shorter) reads back equal.

    Proves the pusher's pixels mode: planes larger than Ice's message limit go up as tiles —
    on ROMIO pixels (up to 3192²) full-width strips below 1 MiB, as OMERO hands out.
    """
    shape = (1, 1, 1, 3000, 410)
    data = random_stack(shape, "uint16", seed=3)
    with session(server) as (_client, sf):
        pid = create_image(sf, shape, "uint16")
        rps = sf.createRawPixelsStore()
        try:
            rps.setPixelsId(pid, True)
            tw, th = rps.getTileSize()
            assert (tw, th) == (410, 1048576 // 2 // 410)  # RomioPixelBuffer.getTileSize
            for y in range(0, 3000, th):
                h = min(th, 3000 - y)
                rps.setTile(big_endian(data[0, 0, 0, y : y + h]), 0, 0, 0, 0, y, tw, h)
            rps.save()
        finally:
            rps.close()
        np.testing.assert_array_equal(read_all_planes(sf, pid, np.dtype("uint16"), shape), data)


def test_pixels_description_and_min_max(server: Any) -> None:
    """retrievePixDescription gives type, sizes and channels; setChannelGlobalMinMax sticks."""
    with session(server) as (_client, sf):
        pid = create_image(sf, (3, 2, 4, 8, 9), "uint16")
        pix = sf.getPixelsService()
        pix.setChannelGlobalMinMax(pid, 1, 5.0, 4000.0)
        desc = pix.retrievePixDescription(pid)
        assert desc.getPixelsType().getValue().getValue() == "uint16"
        assert desc.getPixelsType().getBitSize().getValue() == 16
        assert (desc.getSizeX().getValue(), desc.getSizeY().getValue()) == (9, 8)
        assert (
            desc.getSizeZ().getValue(),
            desc.getSizeC().getValue(),
            desc.getSizeT().getValue(),
        ) == (4, 2, 3)
        assert desc.getDimensionOrder().getValue().getValue() == "XYZCT"
        channels = desc.copyChannels()
        assert len(channels) == 2 and all(ch.getLogicalChannel() is not None for ch in channels)
        stats = channels[1].getStatsInfo()
        assert (stats.getGlobalMin().getValue(), stats.getGlobalMax().getValue()) == (5.0, 4000.0)


def test_pixel_requests_out_of_bounds_fail(server: Any) -> None:
    """Bad tiles, wrong buffer sizes and unknown pixels fail with OMERO's exceptions, not hangs."""
    with session(server) as (_client, sf):
        pid = create_image(sf, (1, 1, 1, 10, 10), "uint8")
        rps = sf.createRawPixelsStore()
        try:
            with pytest.raises(omero.ApiUsageException):
                rps.getPlane(0, 0, 0)  # no setPixelsId yet
            rps.setPixelsId(pid, True)
            with pytest.raises(omero.ApiUsageException):
                rps.setTile(b"\0" * 50, 0, 0, 0, 0, 8, 10, 5)  # beyond the plane
            with pytest.raises(omero.ApiUsageException):
                rps.setPlane(b"\0" * 99, 0, 0, 0)  # one byte short
            with pytest.raises(omero.ApiUsageException):
                rps.getPlane(0, 1, 0)  # no channel 1
            with pytest.raises(omero.ServerError):
                rps.setPixelsId(pid + 10_000, True)
        finally:
            rps.close()


# --- RawFileStore ---------------------------------------------------------------------------


def test_rawfile_upload_read_and_sha1(server: Any, tmp_path: Path) -> None:
    """client.upload (saveAndReturnObject + RawFileStore) then read at offsets and download.

    Proves: bytes stored as written, ``size``, partial ``read``, and ``save`` returning the
    OriginalFile with the SHA-1 the client computes.
    """
    src = tmp_path / "notes.bin"
    src.write_bytes(os.urandom(250_001))
    with session(server) as (client, sf):
        ofile = client.upload(str(src), type="application/octet-stream")
        rfs = sf.createRawFileStore()
        try:
            rfs.setFileId(ofile.getId().getValue())
            assert rfs.size() == 250_001
            assert rfs.read(1000, 64) == src.read_bytes()[1000:1064]
            saved = rfs.save()
        finally:
            rfs.close()
        expected = hashlib.sha1(src.read_bytes()).hexdigest()
        assert saved.getHash().getValue() == expected
        assert saved.getSize().getValue() == 250_001
        stored = sf.getQueryService().get("OriginalFile", ofile.getId().getValue())
        assert stored.getHash().getValue() == expected
        back = tmp_path / "back.bin"
        client.download(stored, str(back))
        assert back.read_bytes() == src.read_bytes()


# --- import ---------------------------------------------------------------------------------


def test_import_ome_tiff(server: Any, tmp_path: Path) -> None:
    """An OME-TIFF imported as omero-py's own import code does lands as OMERO's import would.

    Proves: the upload/verifyUpload/CmdCallbackI handshake, ImportResponse.pixels, every plane
    readable and equal, channel names and colours, physical sizes, the Image's MapAnnotation
    and TagAnnotation, the dataset link from userSpecifiedTarget, the Fileset with its
    OriginalFile and SHA-1, StatsInfo min/max.
    """
    data = random_stack((2, 2, 3, 40, 56), "uint16", seed=7)
    path = tmp_path / "pos007.ome.tiff"
    pairs = [("Strain", "Mig1-GFP"), ("Strain", "Dot6-GFP"), ("Aim", "import test")]
    write_ome_tiff(path, data, ["GFP", "mCherry"], pairs)
    with session(server) as (client, sf):
        dataset = omero.model.DatasetI()
        dataset.setName(rstring("import-target"))
        dataset = sf.getUpdateService().saveAndReturnObject(dataset)
        rsp = import_file(client, path, dataset.getId().getValue(), description="pushed by a test")
        assert isinstance(rsp, omero.grid.ImportResponse), rsp
        assert len(rsp.pixels) == 1
        pixels = rsp.pixels[0]
        image_id = pixels.getImage().getId().getValue()
        np.testing.assert_array_equal(
            read_all_planes(sf, pixels.getId().getValue(), np.dtype("uint16"), data.shape), data
        )
        rps = sf.createRawPixelsStore()
        try:  # windows across the file's 16x16 TIFF tiles decode only the tiles they touch
            rps.setPixelsId(pixels.getId().getValue(), True)
            for x, y, w, h in [(10, 5, 30, 20), (0, 0, 16, 16), (47, 31, 9, 9), (3, 17, 1, 23)]:
                got = from_wire(rps.getTile(2, 1, 1, x, y, w, h), np.dtype("uint16"), (h, w))
                np.testing.assert_array_equal(got, data[1, 1, 2, y : y + h, x : x + w])
            with pytest.raises(omero.ApiUsageException):  # imported pixels are read-only
                rps.setPlane(big_endian(data[0, 0, 0]), 0, 0, 0)
        finally:
            rps.close()
        desc = sf.getPixelsService().retrievePixDescription(pixels.getId().getValue())
        channels = desc.copyChannels()
        assert [ch.getLogicalChannel().getName().getValue() for ch in channels] == [
            "GFP",
            "mCherry",
        ]
        assert [(ch.getRed().getValue(), ch.getGreen().getValue()) for ch in channels] == [
            (255, 0),
            (0, 255),
        ]
        assert desc.getPhysicalSizeX().getValue() == pytest.approx(0.25)
        assert desc.getPhysicalSizeZ().getValue() == pytest.approx(0.5)
        infos = sf.getQueryService().findAllByQuery(
            "select p from PlaneInfo p where p.pixels.id = :id",
            omero.sys.ParametersI().addId(pixels.getId().getValue()),
        )
        assert len(infos) == 2 * 2 * 3
        timing = {(i.getTheT().getValue(), i.getDeltaT().getValue()) for i in infos}
        assert timing == {(0, 0.0), (1, 5.0)}
        assert {i.getExposureTime().getValue() for i in infos} == {30.0}
        for c, ch in enumerate(channels):
            assert ch.getStatsInfo().getGlobalMax().getValue() == float(data[:, c].max())
        assert image_maps(sf, image_id) == [(KV_NS, pairs)]
        anns = sf.getMetadataService().loadAnnotations("Image", [image_id], [], [], None)
        tags = [a for a in anns.get(image_id, []) if isinstance(a, omero.model.TagAnnotation)]
        assert [t.getTextValue().getValue() for t in tags] == ["tag-from-the-file"]
        in_dataset = sf.getContainerService().getImages(
            "Dataset", [dataset.getId().getValue()], None
        )
        assert [i.getId().getValue() for i in in_dataset] == [image_id]
        assert in_dataset[0].getName().getValue() == "pos007.ome.tiff"
        assert in_dataset[0].getDescription().getValue() == "pushed by a test"
        image = sf.getQueryService().findByQuery(
            "select i from Image i join fetch i.fileset where i.id = :id",
            omero.sys.ParametersI().addId(image_id),
        )
        fileset_id = image.getFileset().getId().getValue()
        fileset = sf.getQueryService().findByQuery(
            "select f from Fileset f left outer join fetch f.usedFiles as e "
            "left outer join fetch e.originalFile where f.id = :id",
            omero.sys.ParametersI().addId(fileset_id),
        )
        (entry,) = fileset.copyUsedFiles()
        ofile = entry.getOriginalFile()
        assert ofile.getName().getValue() == "pos007.ome.tiff"
        assert ofile.getHash().getValue() == hashlib.sha1(path.read_bytes()).hexdigest()
        assert ofile.getSize().getValue() == path.stat().st_size


def test_import_honours_user_settings(server: Any, tmp_path: Path) -> None:
    """userSpecifiedName and userSpecifiedAnnotationList are applied; userSpecifiedPixels
    does not override the file's physical sizes (ome/omero-blitz PixelsProcessor)."""
    path = tmp_path / "settings.ome.tiff"
    write_ome_tiff(path, random_stack((1, 1, 1, 8, 8), "uint8"), ["c0"], [])
    with session(server) as (client, sf):
        tag = omero.model.TagAnnotationI()
        tag.setTextValue(rstring("chosen-at-import"))
        tag = sf.getUpdateService().saveAndReturnObject(tag)
        rsp = import_file(
            client,
            path,
            userSpecifiedName=rstring("renamed"),
            userSpecifiedPixels=[0.1, 0.2, 2.0],
            userSpecifiedAnnotationList=[omero.model.TagAnnotationI(tag.getId().getValue(), False)],
        )
        pixels = rsp.pixels[0]
        image_id = pixels.getImage().getId().getValue()
        assert sf.getQueryService().get("Image", image_id).getName().getValue() == "renamed"
        desc = sf.getPixelsService().retrievePixDescription(pixels.getId().getValue())
        sizes = [desc.getPhysicalSizeX(), desc.getPhysicalSizeY(), desc.getPhysicalSizeZ()]
        assert [s.getValue() for s in sizes] == pytest.approx([0.25, 0.25, 0.5])
        anns = sf.getMetadataService().loadAnnotations("Image", [image_id], [], [], None)
        tags = [a for a in anns[image_id] if isinstance(a, omero.model.TagAnnotation)]
        assert tag.getId().getValue() in [a.getId().getValue() for a in tags]


def test_import_rejects_a_wrong_checksum(server: Any, tmp_path: Path) -> None:
    """verifyUpload with a SHA-1 that does not match fails as OMERO fails (no image made)."""
    path = tmp_path / "bad.ome.tiff"
    write_ome_tiff(path, random_stack((1, 1, 1, 8, 8), "uint8"), ["c0"], [])
    with session(server) as (client, _sf), pytest.raises(omero.ChecksumValidationException):
        import_file(client, path, sha1="0" * 40)


def test_import_of_a_file_with_two_images(server: Any, tmp_path: Path) -> None:
    """Two OME Images in one file become two OMERO Images named ``file [image name]``.

    Proves TiffData IFD offsets are followed per image and ImportResponse lists both Pixels.
    """
    first = random_stack((1, 1, 2, 12, 10), "uint8", seed=21)
    second = random_stack((2, 1, 1, 12, 10), "uint8", seed=22)
    images = []
    for index, (name, data) in enumerate([("left", first), ("right", second)]):
        t, c, z, y, x = data.shape
        images.append(
            om.Image(
                id=f"Image:{index}",
                name=name,
                pixels=om.Pixels(
                    id=f"Pixels:{index}",
                    dimension_order="XYZCT",
                    type="uint8",
                    size_x=x,
                    size_y=y,
                    size_z=z,
                    size_c=c,
                    size_t=t,
                    channels=[
                        om.Channel(id=f"Channel:{index}:0", name=f"{name}-ch", samples_per_pixel=1)
                    ],
                    tiff_data_blocks=[om.TiffData(ifd=2 * index, plane_count=2)],
                ),
            )
        )
    path = tmp_path / "pair.ome.tif"
    xml = to_xml(om.OME(images=images))
    with tifffile.TiffWriter(path) as tw:
        planes = [first[0, 0, 0], first[0, 0, 1], second[0, 0, 0], second[1, 0, 0]]
        for i, plane in enumerate(planes):
            tw.write(
                plane, description=xml if i == 0 else None, metadata=None, photometric="minisblack"
            )
    with session(server) as (client, sf):
        rsp = import_file(client, path)
        assert isinstance(rsp, omero.grid.ImportResponse), rsp
        assert len(rsp.pixels) == 2
        for pixels, (name, data) in zip(
            rsp.pixels, [("left", first), ("right", second)], strict=True
        ):
            got = read_all_planes(sf, pixels.getId().getValue(), np.dtype("uint8"), data.shape)
            np.testing.assert_array_equal(got, data)
            image = sf.getQueryService().get("Image", pixels.getImage().getId().getValue())
            assert image.getName().getValue() == f"pair.ome.tif [{name}]"


def test_import_of_an_rgb_ome_tiff(server: Any, tmp_path: Path) -> None:
    """An RGB OME-TIFF (one Channel with SamplesPerPixel=3) becomes three channels, R, G, B.

    Proves samples are split into OMERO channels as Bio-Formats does, each plane equal.
    """
    rgb = random_stack((2, 3, 20, 24, 3), "uint8", seed=31)  # (T, Z, Y, X, S)
    t, z, y, x, _ = rgb.shape
    pixels = om.Pixels(
        id="Pixels:0",
        dimension_order="XYZCT",
        type="uint8",
        interleaved=True,
        size_x=x,
        size_y=y,
        size_z=z,
        size_c=3,
        size_t=t,
        channels=[om.Channel(id="Channel:0:0", name="brightfield", samples_per_pixel=3)],
        tiff_data_blocks=[om.TiffData(ifd=0, plane_count=t * z)],
    )
    xml = to_xml(om.OME(images=[om.Image(id="Image:0", name="rgb", pixels=pixels)]))
    path = tmp_path / "colour.ome.tiff"
    with tifffile.TiffWriter(path) as tw:
        for i, (tt, zz) in enumerate((tt, zz) for tt in range(t) for zz in range(z)):
            tw.write(
                rgb[tt, zz], description=xml if i == 0 else None, metadata=None, photometric="rgb"
            )
    expected = np.moveaxis(rgb, -1, 1)  # (T, C=3, Z, Y, X)
    with session(server) as (client, sf):
        rsp = import_file(client, path)
        assert isinstance(rsp, omero.grid.ImportResponse), rsp
        pid = rsp.pixels[0].getId().getValue()
        got = read_all_planes(sf, pid, np.dtype("uint8"), expected.shape)
        np.testing.assert_array_equal(got, expected)
        channels = sf.getPixelsService().retrievePixDescription(pid).copyChannels()
        colours = [
            (ch.getRed().getValue(), ch.getGreen().getValue(), ch.getBlue().getValue())
            for ch in channels
        ]
        assert colours == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_import_of_a_pyramidal_ome_tiff(server: Any, tmp_path: Path) -> None:
    """SubIFD pyramid levels are served as OMERO's resolution levels (0 is the smallest).

    Proves getResolutionLevels/Descriptions, setResolutionLevel and tiles read at a reduced
    level equal the file's level; the full level stays the default.
    """
    data = random_stack((1, 2, 1, 64, 80), "uint16", seed=41)
    path = tmp_path / "pyramid.ome.tiff"
    write_ome_tiff(path, data, ["a", "b"], [], tile=(16, 16), pyramid=2)
    with session(server) as (client, sf):
        rsp = import_file(client, path)
        pid = rsp.pixels[0].getId().getValue()
        rps = sf.createRawPixelsStore()
        try:
            rps.setPixelsId(pid, True)
            assert rps.getResolutionLevels() == 3
            assert rps.getResolutionLevel() == 2  # full resolution
            assert [(d.sizeX, d.sizeY) for d in rps.getResolutionDescriptions()] == [
                (80, 64),
                (40, 32),
                (20, 16),
            ]
            assert rps.getTileSize() == [16, 16]
            full = from_wire(rps.getPlane(0, 1, 0), np.dtype("uint16"), (64, 80))
            np.testing.assert_array_equal(full, data[0, 1, 0])
            rps.setResolutionLevel(0)
            small = from_wire(rps.getTile(0, 1, 0, 0, 0, 20, 16), np.dtype("uint16"), (16, 20))
            np.testing.assert_array_equal(small, data[0, 1, 0, ::4, ::4])
            rps.setResolutionLevel(1)
            mid = from_wire(rps.getTile(0, 0, 0, 8, 4, 20, 20), np.dtype("uint16"), (20, 20))
            np.testing.assert_array_equal(mid, data[0, 0, 0, ::2, ::2][4:24, 8:28])
            with pytest.raises(omero.ApiUsageException):
                rps.setResolutionLevel(3)
        finally:
            rps.close()


def test_import_of_a_non_tiff_reports_an_error(server: Any, tmp_path: Path) -> None:
    """A file the stand-in cannot read finishes the handle with omero.cmd.ERR, as OMERO does."""
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n")
    with session(server) as (client, _sf):
        rsp = import_file(client, path)
    assert isinstance(rsp, omero.cmd.ERR)


def test_failed_import_leaves_no_half_made_images(server: Any, tmp_path: Path) -> None:
    """A file whose second image is broken: ERR, and the first image is removed again."""
    plane = random_stack((4, 5), "uint8", seed=51)
    images = [
        om.Image(
            id=f"Image:{i}",
            name=name,
            pixels=om.Pixels(
                id=f"Pixels:{i}",
                dimension_order="XYZCT",
                type="uint8",
                size_x=5,
                size_y=4,
                size_z=1,
                size_c=1,
                size_t=1,
                channels=[om.Channel(id=f"Channel:{i}:0", samples_per_pixel=1)],
                tiff_data_blocks=[om.TiffData(ifd=ifd, plane_count=1)],
            ),
        )
        for i, (name, ifd) in enumerate([("fine", 0), ("broken", 7)])  # IFD 7 does not exist
    ]
    path = tmp_path / "halfbroken.ome.tif"
    tifffile.imwrite(path, plane, description=to_xml(om.OME(images=images)), metadata=None)
    with session(server) as (client, sf):
        rsp = import_file(client, path)
        assert isinstance(rsp, omero.cmd.ERR)
        assert "IFD 7" in rsp.parameters["message"]
        left = sf.getQueryService().findAllByString(
            "Image", "name", "halfbroken.ome.tif [fine]", True, None
        )
        assert left == []


def test_import_converter_output(server: Any, swainlab_sample: Path, tmp_path: Path) -> None:
    """posdir2ometiff's output of the shared sample imports with planes, channels and pairs intact.

    Proves the converter → import path of the pusher: tiled, compressed, pyramidal OME-TIFF
    whose TiffData names its own file; every plane read through RawPixelsStore equals
    tifffile's reading of the file; channel names and MapAnnotations match the OME-XML.
    """
    convert = pytest.importorskip("posdir2ometiff.convert").convert
    from ome_types import from_xml

    result = convert(swainlab_sample, tmp_path / "out", workers=1)
    (position,) = [p for p in result.positions if p.status == "ok"]
    path = Path(position.output)
    with tifffile.TiffFile(path) as tif:
        expected = tif.series[0].asarray()  # (T, C, Z, Y, X) for XYZCT
        ome = from_xml(tif.ome_metadata)
    ome_image = ome.images[0]
    names = [ch.name for ch in ome_image.pixels.channels]
    by_id = {a.id: a for a in ome.structured_annotations.map_annotations}
    pairs = [
        (by_id[r.id].namespace, [(m.k, m.value) for m in by_id[r.id].value.ms])
        for r in ome_image.annotation_refs
        if r.id in by_id
    ]
    with session(server) as (client, sf):
        rsp = import_file(client, path)
        assert isinstance(rsp, omero.grid.ImportResponse), rsp
        pixels = rsp.pixels[0]
        got = read_all_planes(sf, pixels.getId().getValue(), expected.dtype, expected.shape)
        np.testing.assert_array_equal(got, expected)
        desc = sf.getPixelsService().retrievePixDescription(pixels.getId().getValue())
        assert [ch.getLogicalChannel().getName().getValue() for ch in desc.copyChannels()] == names
        assert sorted(image_maps(sf, pixels.getImage().getId().getValue())) == sorted(pairs)


# --- OMERO.tables ---------------------------------------------------------------------------


def test_table_typed_columns_roundtrip(server: Any) -> None:
    """newTable → initialize/addData with Long, Double, String, Bool → read back, query, reopen.

    Proves omero-py's own TableI/HdfStorage serve the stand-in's tables: typed headers, values,
    getWhereList, and an OriginalFile (mimetype OMERO.tables) that openTable reopens.
    """
    with session(server) as (_client, sf):
        resources = sf.sharedResources()
        assert resources.areTablesEnabled()
        repo_id = resources.repositories().descriptions[0].getId().getValue()
        table = resources.newTable(repo_id, "acq_channels.h5")
        assert table is not None
        cols = [
            omero.grid.LongColumn("exposure_ms", "", []),
            omero.grid.DoubleColumn("z_step", "", []),
            omero.grid.StringColumn("channel", "", 32, []),
            omero.grid.BoolColumn("skip", "", []),
        ]
        try:
            table.initialize(cols)
            cols[0].values = [30, 300, 10]
            cols[1].values = [0.5, 0.6, 0.7]
            cols[2].values = ["Brightfield", "DIC", "GFP"]
            cols[3].values = [False, True, False]
            table.addData(cols)
            assert table.getNumberOfRows() == 3
            assert table.getWhereList("(exposure_ms > 20)", {}, 0, 3, 1) == [0, 1]
            ofile = table.getOriginalFile()
        finally:
            table.close()
        stored = sf.getQueryService().get("OriginalFile", ofile.getId().getValue())
        assert stored.getMimetype().getValue() == "OMERO.tables"
        assert stored.getName().getValue() == "acq_channels.h5"
        assert stored.getSize().getValue() > 0
        reopened = resources.openTable(omero.model.OriginalFileI(ofile.getId().getValue(), False))
        try:
            headers = reopened.getHeaders()
            assert [type(h).__name__ for h in headers] == [
                "LongColumn",
                "DoubleColumn",
                "StringColumn",
                "BoolColumn",
            ]
            data = reopened.read(list(range(4)), 0, 3)
            assert [c.values for c in data.columns] == [
                [30, 300, 10],
                [0.5, 0.6, 0.7],
                ["Brightfield", "DIC", "GFP"],
                [False, True, False],
            ]
        finally:
            reopened.close()
        doomed = resources.newTable(repo_id, "scratch.h5")
        doomed.initialize([omero.grid.LongColumn("n", "", [])])
        doomed_id = doomed.getOriginalFile().getId().getValue()
        doomed.delete()  # Table.delete removes the table's OriginalFile (and its HDF5 file)
        assert sf.getQueryService().find("OriginalFile", doomed_id) is None


def test_tables_disabled(omero_server_factory: Any) -> None:
    """With ``--no-tables``, areTablesEnabled() is False and newTable/openTable return None."""
    own = omero_server_factory(tables=False)
    with session(own) as (_client, sf):
        resources = sf.sharedResources()
        assert resources.areTablesEnabled() is False
        assert resources.newTable(0, "t.h5") is None
        assert resources.openTable(omero.model.OriginalFileI(1, False)) is None
        assert (
            sf.getQueryService().findAllByString(
                "OriginalFile", "mimetype", "OMERO.tables", True, None
            )
            == []
        )


# --- faults and restarts --------------------------------------------------------------------


def test_a_write_resent_after_the_drop_finds_no_servant() -> None:
    """The race a CI run lost: the drop fault ends the session under the 4th write, and a
    request Ice resends on a new connection reaches the same servant while the dropping
    dispatch is still closing its buffer. It must be answered as a removed servant is
    (``Ice.ObjectNotExistException``, what OMERO's ``SessionI.destroy`` leads to), not with
    an ``ApiUsageException`` from the half-closed buffer. The servant is driven directly: the
    resend cannot be timed through a real connection."""
    from types import SimpleNamespace

    from tests.omero_server.faults import Faults
    from tests.omero_server.pixels import RawPixelsStoreI

    seen: list[bool] = []
    servant = RawPixelsStoreI.__new__(RawPixelsStoreI)
    servant.__dict__.update(buffer=object(), pixels_id=1, lost=False, session=None)
    router = SimpleNamespace(lose_connection=lambda current: seen.append(servant.lost))
    servant.ctx = SimpleNamespace(faults=Faults(drop_after_pixel_writes=0),
                                  behind_glacier2=False, router=router)
    with pytest.raises(omero.InternalException, match="dropped by fault injection"):
        servant._count_write(None)
    assert seen == [True]  # marked lost before the connection went
    with pytest.raises(Ice.ObjectNotExistException):
        servant._buf()  # what every read and write asks first


def test_connection_drops_after_n_pixel_writes(omero_server_factory: Any) -> None:
    """``--drop-after-pixel-writes 3``: the 4th write loses the connection; writes 1-3 are kept.

    Proves the fault the pusher's resume is tested with, and that planes written before the
    drop are on disk when a new session reads them.
    """
    shape = (1, 1, 6, 16, 16)
    data = random_stack(shape, "uint16", seed=11)
    own = omero_server_factory(drop_after_pixel_writes=3)
    with session(own) as (_client, sf):
        pid = create_image(sf, shape, "uint16")
        rps = sf.createRawPixelsStore()
        rps.setPixelsId(pid, True)
        for z in range(3):
            rps.setPlane(big_endian(data[0, 0, z]), z, 0, 0)
        with pytest.raises(Ice.LocalException) as err:
            rps.setPlane(big_endian(data[0, 0, 3]), 3, 0, 0)
        assert isinstance(
            err.value,
            (
                Ice.ConnectionLostException,
                Ice.SocketException,
                Ice.CloseConnectionException,
                Ice.ConnectionRefusedException,
                # behind Glacier2 the router ends the client's session with the connection
                Ice.UnknownLocalException,
                Ice.ObjectNotExistException,
            ),
        ), err.value
    with session(own) as (_client, sf):
        got = read_all_planes(sf, pid, np.dtype("uint16"), shape)
        np.testing.assert_array_equal(got[0, 0, :3], data[0, 0, :3])
        assert not got[0, 0, 3:].any()
        # as in OMERO, the pixels' file exists now: a client that reconnects cannot finish
        # them (a new image must be made), but the drop happens once, so it can make one
        rps = sf.createRawPixelsStore()
        try:
            rps.setPixelsId(pid, True)
            with pytest.raises(omero.ApiUsageException, match="Write-method not permitted"):
                rps.setPlane(big_endian(data[0, 0, 3]), 3, 0, 0)
            pid2 = create_image(sf, shape, "uint16")
            rps.setPixelsId(pid2, True)
            for z in range(6):
                rps.setPlane(big_endian(data[0, 0, z]), z, 0, 0)
            rps.save()
        finally:
            rps.close()
        np.testing.assert_array_equal(read_all_planes(sf, pid2, np.dtype("uint16"), shape), data)


def test_delay_fault_slows_data_services(omero_server_factory: Any) -> None:
    """``--delay-ms``: replies of IPixels, RawFileStore and SharedResources come late too."""
    own = omero_server_factory(delay_ms=300)
    with session(own) as (_client, sf):
        calls = [
            lambda: sf.getPixelsService().getAllEnumerations("PixelsType"),
            lambda: sf.createRawFileStore().exists(),
            lambda: sf.sharedResources().areTablesEnabled(),
        ]
        for call in calls:
            start = time.monotonic()
            call()
            assert time.monotonic() - start >= 0.3


def test_restart_keeps_pixels_files_imports_and_tables(
    omero_server_factory: Any, tmp_path: Path
) -> None:
    """Kill the server (SIGKILL), start it again on the same store: everything reads back.

    Proves "kill the server mid-push, restart, re-run" can work: ROMIO planes, uploaded file
    bytes and checksum, an imported image's planes, and a table are all kept in the store.
    """
    shape = (1, 2, 2, 12, 14)
    data = random_stack(shape, "uint16", seed=5)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(10_000))
    tiff = tmp_path / "kept.ome.tiff"
    imported = random_stack((1, 1, 2, 10, 10), "uint8", seed=6)
    write_ome_tiff(tiff, imported, ["only"], [("k", "v")])
    server = omero_server_factory()
    with session(server) as (client, sf):
        pid = create_image(sf, shape, "uint16")
        rps = sf.createRawPixelsStore()
        rps.setPixelsId(pid, True)
        for c in range(2):
            for z in range(2):
                rps.setPlane(big_endian(data[0, c, z]), z, c, 0)
        rps.close()
        file_id = client.upload(str(blob)).getId().getValue()
        imported_pid = import_file(client, tiff).pixels[0].getId().getValue()
        resources = sf.sharedResources()
        table = resources.newTable(0, "kept.h5")
        col = omero.grid.LongColumn("n", "", [])
        table.initialize([col])
        col.values = [4, 5, 6]
        table.addData([col])
        table_file = table.getOriginalFile().getId().getValue()
        table.close()
    server.kill()
    server.start()
    with session(server) as (client, sf):
        np.testing.assert_array_equal(read_all_planes(sf, pid, np.dtype("uint16"), shape), data)
        np.testing.assert_array_equal(
            read_all_planes(sf, imported_pid, np.dtype("uint8"), imported.shape), imported
        )
        stored = sf.getQueryService().get("OriginalFile", file_id)
        assert stored.getHash().getValue() == hashlib.sha1(blob.read_bytes()).hexdigest()
        back = tmp_path / "back.bin"
        client.download(stored, str(back))
        assert back.read_bytes() == blob.read_bytes()
        table = sf.sharedResources().openTable(omero.model.OriginalFileI(table_file, False))
        try:
            assert table.read([0], 0, 3).columns[0].values == [4, 5, 6]
        finally:
            table.close()


@pytest.mark.parametrize("ending", ["closeSession", "lost connection"])
def test_session_end_releases_import_table_and_pixels_servants(
    omero_server: Any, tmp_path: Path, ending: str
) -> None:
    """Ending a session removes every servant it made, as OMERO closes a session's services.

    The repository, an import process and its uploader, an open table and an open
    RawPixelsStore — reached through SharedResources/ImportProcess, not the ServiceFactory —
    answer ObjectNotExist afterwards (no servant left in memory until the server exits), and
    the table left open is released (another session reopens it and reads its rows) and the
    RawFileStore left open is closed (the file's size and SHA-1 are updated, as on close).
    """
    a, sf = omero_server.client(), None
    sf = a.getSession()
    resources = sf.sharedResources()
    repo = a.getManagedRepository()
    fileset = omero.model.FilesetI()
    entry = omero.model.FilesetEntryI()
    entry.setClientPath(rstring(str(tmp_path / "never-uploaded.ome.tiff")))
    fileset.addFilesetEntry(entry)
    proc = repo.importFileset(fileset, omero.grid.ImportSettings())
    uploader = proc.getUploader(0)
    table = resources.newTable(0, "left-open.h5")
    col = omero.grid.LongColumn("n", "", [])
    table.initialize([col])
    col.values = [7, 8, 9]
    table.addData([col])
    table_file = table.getOriginalFile().getId().getValue()
    pid = create_image(sf, (1, 1, 1, 4, 4), "uint8")
    rps = sf.createRawPixelsStore()
    rps.setPixelsId(pid, True)
    ofile = omero.model.OriginalFileI()
    ofile.setName(rstring("left-open.txt"))
    ofile.setPath(rstring("/tmp/"))
    ofile.setSize(omero.rtypes.rlong(0))
    file_id = sf.getUpdateService().saveAndReturnObject(ofile).getId().getValue()
    rfs = sf.createRawFileStore()
    rfs.setFileId(file_id)
    rfs.write(b"written, never closed", 0, 21)
    made = [str(p) for p in (resources, repo, proc, uploader, table, rps, rfs)]
    # nothing closed by the client: the session's end must do it
    if ending == "closeSession":
        a.closeSession()
    else:
        a.getCommunicator().destroy()  # the client process "dies" (the server notices it)

    with session(omero_server) as (b, sf_b):
        deadline = time.monotonic() + 10
        for text in made:
            stale = b.getCommunicator().stringToProxy(text)
            while True:  # a lost connection is noticed asynchronously
                try:
                    stale.ice_ping()
                except Ice.ObjectNotExistException:
                    break
                assert time.monotonic() < deadline, f"{text} is still served"
                time.sleep(0.1)
        reopened = sf_b.sharedResources().openTable(omero.model.OriginalFileI(table_file, False))
        try:
            assert reopened.read([0], 0, 3).columns[0].values == [7, 8, 9]
        finally:
            reopened.close()
        stored = sf_b.getQueryService().get("OriginalFile", file_id)  # closed: size and SHA-1 set
        assert stored.getSize().getValue() == 21
        assert stored.getHash().getValue() == hashlib.sha1(b"written, never closed").hexdigest()


def test_a_joined_login_ending_leaves_the_session_servants(omero_server: Any) -> None:
    """Servants belong to the session: a second login (joinSession) closing does not end them."""
    first = omero_server.client()
    try:
        table = first.getSession().sharedResources().newTable(0, "shared.h5")
        table.initialize([omero.grid.LongColumn("n", "", [])])
        other = omero.client(host=omero_server.url, port=int(omero_server.port))
        other.joinSession(first.getSessionId())
        other.closeSession()
        assert table.getNumberOfRows() == 0  # still there: the first login is alive
        table.close()
    finally:
        first.closeSession()

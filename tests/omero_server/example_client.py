"""A plain omero-py script: everything a lab's script does with OMERO, each step read back.

Run against the stand-in (``python -m tests.omero_server --port P --store DIR``) or a real
OMERO; it uses public omero-py calls only (``omero.client``, the session's services,
``omero.grid`` columns, the managed-repository import exactly as omero-py's own
``omero.testlib.ITest.full_import`` does it, ``omero.callbacks.CmdCallbackI``)::

    OMERO_PASSWORD=omero python tests/omero_server/example_client.py \\
        --host tcp://127.0.0.1 --port 4063 --user root pos001.ome.tiff

It logs in, saves a Dataset holding a new Image, writes that Image's pixels and reads them
back, imports the given OME-TIFF into the Dataset and reads every plane back against the
file (read locally with tifffile), then creates an OMERO.table, reopens it and reads it back.
Each step prints one line; a read-back that differs prints ``MISMATCH: ...``. Exit status: 0
when every read-back matched, 1 when one did not or a call failed, 2 for bad arguments. The
password is read from ``OMERO_PASSWORD`` only (never from the command line).

Why it lives here: it is the issue's "done when" in executable form, and
``tests/test_omero_server_example.py`` runs it as a subprocess against the stand-in (and
``tests/test_omero_real.py`` against a real OMERO when ``OMERO_HOST`` is set).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import omero
import omero.clients  # noqa: F401  (omero.client, and Glacier2 as omero-py loads it)
import omero.cmd
import omero.grid
import omero.model
import omero.sys
import tifffile
from omero.callbacks import CmdCallbackI
from omero.model.enums import ChecksumAlgorithmSHA1160
from omero.rtypes import rbool, rstring
from omero_version import omero_version

#: omero-py's pixel type names -> numpy dtypes (OMERO sends pixels big-endian).
DTYPES = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4",
          "uint32": "u4", "float": "f4", "double": "f8"}
#: Where OMERO.tables files attached to objects are recognised (OMERO.web shows them).
BULK_NS = "openmicroscopy.org/omero/bulk_annotations"


class Checks:
    """Counts read-backs; prints a MISMATCH line for each one that differs."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def expect(self, ok: bool, what: str) -> bool:
        if not ok:
            self.failed.append(what)
            print(f"MISMATCH: {what}", flush=True)
        return ok


def save_dataset_with_image(sf: Any, name: str, shape: tuple[int, int, int, int, int],
                            checks: Checks) -> tuple[int, int, int]:
    """Dataset + Image (IPixels.createImage) + DatasetImageLink; returns ids (dataset, image, pixels)."""
    t, c, z, y, x = shape
    update = sf.getUpdateService()
    dataset = omero.model.DatasetI()
    dataset.setName(rstring(name))
    dataset.setDescription(rstring("made by tests/omero_server/example_client.py"))
    dataset = update.saveAndReturnObject(dataset)
    dataset_id = dataset.getId().getValue()
    pixels_service = sf.getPixelsService()
    uint16 = next(p for p in pixels_service.getAllEnumerations("PixelsType")
                  if p.getValue().getValue() == "uint16")
    image_id = pixels_service.createImage(x, y, z, t, list(range(c)), uint16, name + "-image",
                                          "synthetic pixels written by the example").getValue()
    link = omero.model.DatasetImageLinkI()
    link.setParent(omero.model.DatasetI(dataset_id, False))
    link.setChild(omero.model.ImageI(image_id, False))
    update.saveObject(link)
    images = sf.getContainerService().getImages("Dataset", [dataset_id], None)
    checks.expect([i.getId().getValue() for i in images] == [image_id],
                  f"Dataset:{dataset_id} should hold exactly Image:{image_id}")
    pixels_id = images[0].getPrimaryPixels().getId().getValue() if images else -1
    print(f"saved Dataset:{dataset_id} with Image:{image_id} (Pixels:{pixels_id})", flush=True)
    return dataset_id, image_id, pixels_id


def write_and_read_pixels(sf: Any, pixels_id: int, data: np.ndarray, checks: Checks) -> None:
    """Every plane of ``data`` (T, C, Z, Y, X) through RawPixelsStore.setPlane, then getPlane."""
    t, c, z, y, x = data.shape
    big = data.dtype.newbyteorder(">")
    store = sf.createRawPixelsStore()
    try:
        store.setPixelsId(pixels_id, True)
        for tt in range(t):
            for cc in range(c):
                for zz in range(z):
                    store.setPlane(data[tt, cc, zz].astype(big).tobytes(), zz, cc, tt)
        store.save()
    finally:
        store.close()
    back = read_planes(sf, pixels_id, data.dtype, data.shape)
    same = checks.expect(np.array_equal(back, data),
                         f"planes read back from Pixels:{pixels_id} differ from those written")
    if same:
        print(f"wrote {t * c * z} planes to Pixels:{pixels_id}, read back equal", flush=True)


def read_planes(sf: Any, pixels_id: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """All planes of a Pixels object as (T, C, Z, Y, X), through RawPixelsStore.getPlane."""
    t, c, z, y, x = shape
    big = np.dtype(dtype).newbyteorder(">")
    out = np.empty(shape, dtype)
    store = sf.createRawPixelsStore()
    try:
        store.setPixelsId(pixels_id, True)
        for tt in range(t):
            for cc in range(c):
                for zz in range(z):
                    plane = np.frombuffer(store.getPlane(zz, cc, tt), big).reshape(y, x)
                    out[tt, cc, zz] = plane
    finally:
        store.close()
    return out


def import_ome_tiff(client: Any, path: Path, dataset_id: int) -> Any:
    """Import one file as omero-py's ``testlib.ITest.full_import``: returns the handle's response.

    importFileset(fileset, settings) -> getUploader(0).write(...) -> verifyUpload([sha1]) ->
    CmdCallbackI(client, handle).loop(...) -> ``omero.grid.ImportResponse`` (or ``omero.cmd.ERR``).
    """
    repo = client.getManagedRepository()
    fileset = omero.model.FilesetI()
    entry = omero.model.FilesetEntryI()
    entry.setClientPath(rstring(str(path.resolve())))
    fileset.addFilesetEntry(entry)
    upload = omero.model.UploadJobI()
    upload.setVersionInfo([
        omero.model.NamedValue("omero.version", omero_version),
        omero.model.NamedValue("os.name", platform.system()),
        omero.model.NamedValue("os.version", platform.release()),
        omero.model.NamedValue("os.architecture", platform.machine()),
    ])
    fileset.linkJob(upload)
    settings = omero.grid.ImportSettings()
    settings.doThumbnails = rbool(True)
    settings.noStatsInfo = rbool(False)
    settings.userSpecifiedTarget = omero.model.DatasetI(dataset_id, False)
    settings.userSpecifiedName = None
    settings.userSpecifiedDescription = None
    settings.userSpecifiedAnnotationList = None
    settings.userSpecifiedPixels = None
    settings.checksumAlgorithm = omero.model.ChecksumAlgorithmI()
    settings.checksumAlgorithm.value = rstring(ChecksumAlgorithmSHA1160)
    proc = repo.importFileset(fileset, settings)
    try:
        uploader = proc.getUploader(0)
        try:
            offset = 0
            uploader.write([], offset, 0)  # touch, as omero-py's testlib does
            with open(path, "rb") as fh:
                while block := fh.read(1_000_000):
                    uploader.write(block, offset, len(block))
                    offset += len(block)
        finally:
            uploader.close()
        handle = proc.verifyUpload([client.sha1(str(path))])
        callback = CmdCallbackI(client, handle)
        try:
            return wait_for_import(callback, handle, path.name)
        finally:
            callback.close(True)
    finally:
        proc.close()


#: OMERO imports in the background after verifyUpload (ome/omero-blitz ManagedImportRequestI:
#: metadata, pixel data, thumbnails, ...); a big file on a busy server takes hours, not a minute.
IMPORT_WAIT_CAP_S = 12 * 3600.0


def wait_for_import(
    callback: Any,
    handle: Any,
    name: str,
    cap_s: float = IMPORT_WAIT_CAP_S,
    poll_ms: int = 1000,
    report_every_s: float = 30.0,
) -> Any:
    """Wait until the server has finished importing, printing where it is every half minute.

    Like ``CmdCallbackI.loop(loops, ms)`` but with no fixed number of loops: block a second at a
    time (polling the handle too, in case a notification was lost) until the response is there,
    or raise ``omero.LockTimeout`` after ``cap_s``.
    """
    started = last = time.monotonic()
    while not callback.block(poll_ms):
        callback.poll()
        if callback.block(0):
            break
        now = time.monotonic()
        if now - started >= cap_s:
            raise omero.LockTimeout(None, None, f"import of {name} still running after "
                                    f"{now - started:.0f} s", 5000, 0)
        if now - last >= report_every_s:
            last = now
            status = handle.getStatus()
            where = f"step {status.currentStep + 1} of {status.steps}" if status else "running"
            print(f"importing {name}: {where} ({now - started:.0f} s)", flush=True)
    return callback.getResponse()


def local_planes(path: Path) -> np.ndarray:
    """The file's first image, full resolution, as (T, C, Z, Y, X) (tifffile; what was sent)."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
    for axis in "TCZ":  # absent axes become length 1
        if axis not in axes:
            data = data[np.newaxis]
            axes = axis + axes
    if "S" in axes:  # RGB samples are OMERO channels
        raise SystemExit(f"{path}: RGB OME-TIFF is not handled by this example")
    return np.transpose(data, [axes.index(a) for a in "TCZYX"])


def import_and_compare(client: Any, sf: Any, path: Path, dataset_id: int, checks: Checks) -> None:
    """Import the OME-TIFF into the Dataset, then compare every plane with the file's."""
    before = len(checks.failed)
    response = import_ome_tiff(client, path, dataset_id)
    if not checks.expect(isinstance(response, omero.grid.ImportResponse),
                         f"import of {path.name} failed: {_describe(response)}"):
        return
    pixels = response.pixels[0]
    pixels_id = pixels.getId().getValue()
    image_id = pixels.getImage().getId().getValue()
    desc = sf.getPixelsService().retrievePixDescription(pixels_id)
    ptype = desc.getPixelsType().getValue().getValue()
    sizes = tuple(getattr(desc, f"getSize{a}")().getValue() for a in "TCZYX")
    expected = local_planes(path)
    checks.expect(sizes == expected.shape,
                  f"Pixels:{pixels_id} has sizes TCZYX {sizes}, the file {expected.shape}")
    checks.expect(np.dtype(DTYPES.get(ptype, "V")) == expected.dtype,
                  f"Pixels:{pixels_id} is {ptype}, the file {expected.dtype}")
    in_dataset = [i.getId().getValue()
                  for i in sf.getContainerService().getImages("Dataset", [dataset_id], None)]
    checks.expect(image_id in in_dataset, f"imported Image:{image_id} is not in Dataset:{dataset_id}")
    channels = [ch.getLogicalChannel().getName() for ch in desc.copyChannels()]
    names = ", ".join(n.getValue() if n is not None else "?" for n in channels)
    if sizes != expected.shape:
        return
    got = read_planes(sf, pixels_id, expected.dtype, expected.shape)
    planes = sizes[0] * sizes[1] * sizes[2]
    checks.expect(np.array_equal(got, expected),
                  f"planes of Pixels:{pixels_id} differ from those of {path.name}")
    if len(checks.failed) == before:
        x, y = sizes[4], sizes[3]
        print(f"imported {path.name} as Image:{image_id} (Pixels:{pixels_id}, {x}x{y}, "
              f"Z={sizes[2]} C={sizes[1]} T={sizes[0]}, {ptype}; channels {names}); "
              f"{planes} planes read back equal", flush=True)


def _describe(response: Any) -> str:
    if isinstance(response, omero.cmd.ERR):
        return f"{response.category} {response.name}: {response.parameters.get('message', '')}"
    return type(response).__name__


def table_roundtrip(sf: Any, dataset_id: int, image_id: int, name: str, checks: Checks) -> None:
    """newTable, initialize, addData, close; openTable, read back; attach it to the Dataset."""
    before = len(checks.failed)
    resources = sf.sharedResources()
    if not checks.expect(resources.areTablesEnabled(), "OMERO.tables is not enabled on the server"):
        return
    repo_id = resources.repositories().descriptions[0].getId().getValue()
    columns = [
        omero.grid.ImageColumn("Image", "", [image_id] * 3),
        omero.grid.LongColumn("timepoint", "", [0, 1, 2]),
        omero.grid.DoubleColumn("exposure_ms", "", [30.0, 300.0, 12.5]),
        omero.grid.StringColumn("channel", "", 16, ["Brightfield", "GFP", "cy5"]),
        omero.grid.BoolColumn("in_focus", "", [True, False, True]),
    ]
    expected = [list(col.values) for col in columns]
    table = resources.newTable(repo_id, name + ".h5")
    if not checks.expect(table is not None, "newTable returned no table"):
        return
    try:
        table.initialize([type(col)(col.name, col.description, *_extra(col), []) for col in columns])
        table.addData(columns)
        file_id = table.getOriginalFile().getId().getValue()
    finally:
        table.close()
    link = omero.model.DatasetAnnotationLinkI()
    link.setParent(omero.model.DatasetI(dataset_id, False))
    annotation = omero.model.FileAnnotationI()
    annotation.setNs(rstring(BULK_NS))
    annotation.setFile(omero.model.OriginalFileI(file_id, False))
    link.setChild(annotation)
    sf.getUpdateService().saveObject(link)

    reopened = resources.openTable(omero.model.OriginalFileI(file_id, False))
    try:
        headers = [(type(h).__name__, h.name) for h in reopened.getHeaders()]
        rows = reopened.getNumberOfRows()
        data = reopened.read(list(range(len(columns))), 0, rows)
        where = reopened.getWhereList("(exposure_ms > 20)", {}, 0, rows, 1)
    finally:
        reopened.close()
    checks.expect(headers == [(type(c).__name__, c.name) for c in columns],
                  f"table OriginalFile:{file_id} headers {headers}")
    checks.expect([list(c.values) for c in data.columns] == expected,
                  f"table OriginalFile:{file_id} rows read back differ")
    checks.expect(list(where) == [0, 1], f"table getWhereList gave {list(where)}, not [0, 1]")
    linked = sf.getQueryService().findAllByQuery(
        "select l.child from DatasetAnnotationLink l where l.parent.id = :id and l.child.ns = :ns",
        omero.sys.ParametersI().addId(dataset_id).add("ns", rstring(BULK_NS)))
    checks.expect(len(linked) == 1, f"Dataset:{dataset_id} should carry one table annotation")
    if len(checks.failed) == before:
        print(f"table OriginalFile:{file_id}: {rows} rows x {len(headers)} columns read back equal",
              flush=True)


def _extra(col: Any) -> list[Any]:
    """A column's size argument (StringColumn's width) for an empty copy of it."""
    return [col.size] if isinstance(col, omero.grid.StringColumn) else []


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (OMERO's exceptions keep it in .message/.reason)."""
    text = getattr(exc, "message", None) or getattr(exc, "reason", None) or str(exc)
    lines = str(text).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="tcp://127.0.0.1",
                   help="OMERO host; tcp://HOST for plain TCP, a bare host for SSL")
    p.add_argument("--port", type=int, default=4063)
    p.add_argument("--user", default="root")
    p.add_argument("ome_tiff", type=Path, help="an OME-TIFF to import (e.g. posdir2ometiff's)")
    args = p.parse_args(argv)
    password = os.environ.get("OMERO_PASSWORD")
    if password is None:
        print("example_client: set OMERO_PASSWORD (the password is never taken from the command "
              "line)", file=sys.stderr)
        return 2
    if not args.ome_tiff.is_file():
        print(f"example_client: {args.ome_tiff}: no such file", file=sys.stderr)
        return 2

    checks = Checks()
    name = f"example-client-{uuid.uuid4().hex[:8]}"
    client = omero.client(host=args.host, port=args.port)  # tcp://HOST: plain TCP; a bare host: SSL
    try:
        sf = client.createSession(args.user, password)
        ec = sf.getAdminService().getEventContext()
        print(f"logged in as {ec.userName} (user {ec.userId}, group {ec.groupName}) "
              f"to {args.host}:{args.port}", flush=True)
        shape = (2, 2, 3, 48, 64)  # T, C, Z, Y, X
        dataset_id, image_id, pixels_id = save_dataset_with_image(sf, name, shape, checks)
        rng = np.random.default_rng(2024)
        data = rng.integers(0, 65535, shape, endpoint=True).astype(np.uint16)
        write_and_read_pixels(sf, pixels_id, data, checks)
        import_and_compare(client, sf, args.ome_tiff, dataset_id, checks)
        table_roundtrip(sf, dataset_id, image_id, name, checks)
    except Exception as exc:  # noqa: BLE001 - OMERO and Ice errors alike: one line, status 1
        print(f"example_client: {_one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        client.closeSession()
    if checks.failed:
        print(f"{len(checks.failed)} read-back(s) did not match", flush=True)
        return 1
    print("all read-backs matched", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""omero_push over real Ice against the OMERO stand-in (tests/omero_server), read back with omero-py.

What each test proves is in its docstring.  Reading back uses plain omero-py service calls
(IContainer, IQuery, IMetadata, RawPixelsStore, SharedResources) — never omero_push code — so a
bug in the pusher cannot hide behind the same bug in the check.
"""

from __future__ import annotations

import importlib
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("omero")
import omero  # noqa: E402
import omero.clients  # noqa: E402

from omero_push import cli  # noqa: E402
from omero_push.errors import ConnectionLostError  # noqa: E402
from omero_push.progress import NullProgress  # noqa: E402
from omero_push.provenance import MARKER_NS, PENDING_PREFIX, PROVENANCE_NS  # noqa: E402
from omero_push.push import push  # noqa: E402
from tests.test_push_support import (  # noqa: E402
    KV_NS,
    isolate_root_logging,
    make_converter_output,
    make_ome_tiff,
)

BULK_NS = "openmicroscopy.org/omero/bulk_annotations"
TABLE_NS = "posdir2ometiff/omero_push/table"
SENTINEL = "Sentinel-Pw-4d1f9c"

pytestmark = pytest.mark.timeout(300)
_clean_logging = pytest.fixture(autouse=True)(isolate_root_logging)


# --- reading back with plain omero-py -----------------------------------------------------------


def host_url(server: Any) -> str:
    """The stand-in speaks plain TCP (OMERO's port-4063 transport): ``tcp://host`` for omero-py.

    A real server (tests/test_omero_real.py) is reached as the environment names it.
    """
    if getattr(server, "real", False):
        return server.host
    return server.host if "://" in server.host else f"tcp://{server.host}"


@contextmanager
def reader(server: Any) -> Iterator[Any]:
    """A plain omero.client session on the stand-in (ServiceFactory)."""
    c = omero.client(host=host_url(server), port=int(server.port))
    try:
        sf = c.createSession(server.user, server.password)
        yield sf
    finally:
        c.__del__()


def _v(x: Any) -> Any:
    return None if x is None else getattr(x, "val", x)


def dataset_by_name(sf: Any, name: str) -> Any:
    found = sf.getQueryService().findAllByString("Dataset", "name", name, True, None)
    assert len(found) == 1, f"expected one dataset {name!r}, found {len(found)}"
    return found[0]


def images_of(sf: Any, dataset_id: int) -> list[Any]:
    return sorted(
        sf.getContainerService().getImages("Dataset", [dataset_id], None),
        key=lambda i: _v(i.getName()),
    )


def annotations_of(sf: Any, kind: str, obj_id: int) -> list[Any]:
    return list(
        sf.getMetadataService().loadAnnotations(kind, [obj_id], [], [], None).get(obj_id, [])
    )


def maps_in(anns: list[Any], ns: str) -> list[list[tuple[str, str]]]:
    return [
        [(nv.name, nv.value) for nv in a.getMapValue()]
        for a in anns
        if isinstance(a, omero.model.MapAnnotation) and _v(a.getNs()) == ns
    ]


def tag_texts(anns: list[Any]) -> list[str]:
    return sorted(_v(a.getTextValue()) for a in anns if isinstance(a, omero.model.TagAnnotation))


def read_plane(
    sf: Any, pixels_id: int, z: int, c: int, t: int, dtype: np.dtype, shape: tuple[int, int]
) -> np.ndarray:
    rps = sf.createRawPixelsStore()
    try:
        rps.setPixelsId(pixels_id, True)
        buf = rps.getPlane(z, c, t)
    finally:
        rps.close()
    return np.frombuffer(buf, dtype=np.dtype(dtype).newbyteorder(">")).reshape(shape)


def counts(sf: Any) -> dict[str, int]:
    """How many objects of each kind the push could create (for 'nothing new' checks)."""
    q = sf.getQueryService()
    kinds = [
        "Project",
        "Dataset",
        "Image",
        "Pixels",
        "TagAnnotation",
        "MapAnnotation",
        "CommentAnnotation",
        "FileAnnotation",
        "OriginalFile",
        "DatasetImageLink",
        "ImageAnnotationLink",
        "DatasetAnnotationLink",
        "ProjectDatasetLink",
    ]
    return {k: len(q.findAll(k, None)) for k in kinds}


def push_kw(server: Any, **kw: Any) -> dict[str, Any]:
    base = dict(
        server=host_url(server),
        port=int(server.port),
        user=server.user,
        password=server.password,
        backoff_s=0.2,
    )
    base.update(kw)
    return base


# --- the shared sample, converted and pushed -----------------------------------------------------


def _sample_pngs(sample: Path) -> dict[tuple[str, int, str, int], np.ndarray]:
    """(position, t, channel, z) → PNG pixels, straight from the lab's files."""
    from PIL import Image

    planes: dict[tuple[str, int, str, int], np.ndarray] = {}
    for png in sorted((sample / "pos001").glob("*.png")):
        parts = png.stem.split("_")
        t, ch, z = int(parts[-3]), parts[-2], int(parts[-1])
        planes[("pos001", t, ch, z)] = np.asarray(Image.open(png))
    return planes


@pytest.mark.parametrize("mode", ["import", "pixels"])
def test_sample_convert_and_push_reads_back_equal(
    omero_server: Any, swainlab_sample: Path, tmp_path: Path, mode: str, monkeypatch
) -> None:
    """Convert-and-push of the shared sample (``--convert``): pixels equal to the PNGs, channel names
    from the Acq file, the image's key-value pairs and provenance, the dataset's tables."""
    pytest.importorskip("posdir2ometiff.convert")
    ds = f"sample-{mode}"
    monkeypatch.setenv("OMERO_PASSWORD", omero_server.password)
    rc = cli.main(
        [
            str(swainlab_sample),
            "--convert",
            "--convert-out",
            str(tmp_path / "out"),
            "--server",
            host_url(omero_server),
            "--port",
            str(omero_server.port),
            "--user",
            omero_server.user,
            "--dataset",
            ds,
            "--mode",
            mode,
            "--quiet",
        ]
    )
    assert rc == 0
    pngs = _sample_pngs(swainlab_sample)
    with reader(omero_server) as sf:
        dataset = dataset_by_name(sf, ds)
        (image,) = images_of(sf, _v(dataset.getId()))
        assert _v(image.getName()) == "pos001"
        pix = image.getPrimaryPixels()
        pid = _v(pix.getId())
        desc = sf.getPixelsService().retrievePixDescription(pid)
        names = [_v(ch.getLogicalChannel().getName()) for ch in desc.copyChannels()]
        channel_of = {n: i for i, n in enumerate(names)}
        assert set(channel_of) >= {k[2] for k in pngs}, names
        sy, sx = _v(desc.getSizeY()), _v(desc.getSizeX())
        ts = sorted({k[1] for k in pngs})
        zs = sorted({k[3] for k in pngs})
        for (_pos, t, ch, z), expected in pngs.items():
            got = read_plane(
                sf, pid, zs.index(z), channel_of[ch], ts.index(t), expected.dtype, (sy, sx)
            )
            assert np.array_equal(got, expected), (t, ch, z)
        anns = annotations_of(sf, "Image", _v(image.getId()))
        assert len(maps_in(anns, KV_NS)) == 1  # the OME-XML's pairs, once
        (prov,) = maps_in(anns, PROVENANCE_NS)
        assert dict(prov)["mode"] == mode and dict(prov)["converter"] == "posdir2ometiff"
        dsanns = annotations_of(sf, "Dataset", _v(dataset.getId()))
        tables = [
            a
            for a in dsanns
            if isinstance(a, omero.model.FileAnnotation) and _v(a.getNs()) in (BULK_NS, TABLE_NS)
        ]
        assert tables, "the experiment's tables should be attached as OMERO.tables"
        from posdir2ometiff.metadata.tables import read_tables

        frames = read_tables(tmp_path / "out" / "experiment.h5")
        res = sf.sharedResources()
        seen = {}
        for fa in tables:
            t = res.openTable(omero.model.OriginalFileI(_v(fa.getFile().getId()), False))
            try:
                seen[_v(fa.getFile().getName())] = (
                    t.getNumberOfRows(),
                    [c.name for c in t.getHeaders()],
                    _v(fa.getNs()),
                )
            finally:
                t.close()
        assert set(seen) == set(frames)
        for name, df in frames.items():
            n_rows, headers, ns = seen[name]
            assert n_rows == len(df), name
            # OMERO.web's per-image query needs an Image column in every bulk-annotations table
            image_cols = ["Image", "Image Name"] if ns == BULK_NS else []
            assert headers == [str(c) for c in df.columns] + image_cols, name


# --- our own OME-TIFFs: every annotation checked ---------------------------------------------------


@pytest.mark.parametrize("mode", ["import", "pixels"])
def test_push_roundtrip_annotations_tables(omero_server: Any, tmp_path: Path, mode: str) -> None:
    """Both modes: images in project/dataset, pixels equal, channel names (and colours in pixels
    mode), tags reused by name, key-value pairs once, comment, provenance, description, tables rows."""
    out = tmp_path / "out"
    data = make_converter_output(out, positions=2)
    ds = f"roundtrip-{mode}"
    result = push([out], **push_kw(omero_server, dataset=ds, project=f"P-{mode}", mode=mode))
    assert len(result.image_ids) == 2 and all(r.status == "created" for r in result.images)
    with reader(omero_server) as sf:
        q = sf.getQueryService()
        dataset = dataset_by_name(sf, ds)
        did = _v(dataset.getId())
        assert did == result.dataset_id
        assert _v(dataset.getDescription()).startswith("Aim: test the push")
        projects = sf.getContainerService().loadContainerHierarchy(
            "Project", [result.project_id], None
        )
        assert [_v(d.getId()) for d in projects[0].linkedDatasetList()] == [did]
        images = images_of(sf, did)
        assert [_v(i.getName()) for i in images] == ["pos001", "pos002"]
        assert result.image_ids == [_v(i.getId()) for i in images]  # the API returns the ids
        for image in images:
            name = _v(image.getName())
            iid = _v(image.getId())
            expected = data[name]
            assert _v(image.getDescription()) == f"{name} of a test experiment"
            pid = _v(image.getPrimaryPixels().getId())
            desc = sf.getPixelsService().retrievePixDescription(pid)
            chans = list(desc.copyChannels())
            assert [_v(c.getLogicalChannel().getName()) for c in chans] == ["Brightfield", "GFP"]
            if mode == "pixels":
                assert (_v(chans[1].getRed()), _v(chans[1].getGreen()), _v(chans[1].getBlue())) == (
                    0,
                    255,
                    0,
                )
            t, c, z, y, x = expected.shape
            for ti in range(t):
                for ci in range(c):
                    for zi in range(z):
                        got = read_plane(sf, pid, zi, ci, ti, expected.dtype, (y, x))
                        assert np.array_equal(got, expected[ti, ci, zi]), (name, ti, ci, zi)
            anns = annotations_of(sf, "Image", iid)
            assert maps_in(anns, KV_NS) == [
                [("strain", "BY4741"), ("aim", "test push"), ("strain", "Hxt4-GFP")]
            ]
            assert tag_texts(anns) == ["glucose", "pushtest"]
            comments = [
                _v(a.getTextValue()) for a in anns if isinstance(a, omero.model.CommentAnnotation)
            ]
            assert comments == ["imaged after 2 h in glucose"]
            (prov,) = maps_in(anns, PROVENANCE_NS)
            prov_d = dict(prov)
            assert prov_d["source_file"] == f"{name}.ome.tiff" and len(prov_d["source_sha1"]) == 40
            assert prov_d["mode"] == mode and prov_d["conversion_options"]
        # Tags reused by name: one "glucose" tag although the dataset and both images carry it.
        glucose = q.findAllByString("TagAnnotation", "textValue", "glucose", True, None)
        assert len(glucose) == 1
        # ... and one "pushtest" although two images were tagged with it at the same time
        assert len(q.findAllByString("TagAnnotation", "textValue", "pushtest", True, None)) == 1
        dsanns = annotations_of(sf, "Dataset", did)
        assert tag_texts(dsanns) == ["exp-tag", "glucose"]
        assert maps_in(dsanns, KV_NS) == [
            [("Strain", "BY4741"), ("Strain", "Hxt4-GFP"), ("Z spacing (µm)", "0.6")]
        ]
        files = [a for a in dsanns if isinstance(a, omero.model.FileAnnotation)]
        assert sorted((_v(a.getFile().getName()), _v(a.getNs())) for a in files) == [
            ("channels", TABLE_NS),  # rows of no image: not an OMERO.web per-image table
            ("positions", BULK_NS),  # rows of images: omero-metadata's Image/Image Name columns
        ]
        rows = {}
        res = sf.sharedResources()
        for fa in files:
            table = res.openTable(omero.model.OriginalFileI(_v(fa.getFile().getId()), False))
            try:
                cols = table.getHeaders()
                n = table.getNumberOfRows()
                read = table.read(list(range(len(cols))), 0, n)
                rows[_v(fa.getFile().getName())] = {
                    col.name: (type(col).__name__, list(col.values)) for col in read.columns
                }
            finally:
                table.close()
        ch = rows["channels"]
        assert ch["exposure_ms"] == ("LongColumn", [30, 7])
        assert ch["gain"] == ("DoubleColumn", [1.5, 2.25])
        assert ch["skip"] == ("BoolColumn", [False, True])
        assert ch["channel"] == ("StringColumn", ["Brightfield", "GFP"])
        assert rows["positions"]["x"] == ("DoubleColumn", [10846.5, 1200.0])
        assert rows["positions"]["Image"] == ("ImageColumn", result.image_ids)
        assert rows["positions"]["Image Name"] == ("StringColumn", ["pos001", "pos002"])
        assert "Image" not in rows["channels"]


@pytest.mark.parametrize("mode", ["import", "pixels"])
def test_second_push_creates_nothing(omero_server: Any, tmp_path: Path, mode: str) -> None:
    """Idempotence: the same push again finds every image by its receipt and creates no object."""
    out = tmp_path / "out"
    make_converter_output(out, positions=2)
    kw = push_kw(omero_server, dataset=f"idem-{mode}", project="Idem", mode=mode)
    first = push([out], **kw)
    with reader(omero_server) as sf:
        before = counts(sf)
    second = push([out], **kw)
    with reader(omero_server) as sf:
        after = counts(sf)
    assert after == before
    assert second.image_ids == first.image_ids
    assert all(r.status == "present" for r in second.images)
    assert second.tables_created == [] and sorted(second.tables_present) == [
        "channels",
        "positions",
    ]


def test_no_provenance_writes_marker_only_and_stays_idempotent(
    omero_server: Any, tmp_path: Path
) -> None:
    """--no-provenance: no provenance record, only the checksum marker; re-runs still add nothing."""
    f = tmp_path / "loose.ome.tiff"
    make_ome_tiff(f, name="loose")
    kw = push_kw(omero_server, dataset="noprov", mode="pixels", provenance_on=False)
    first = push([f], **kw)
    with reader(omero_server) as sf:
        anns = annotations_of(sf, "Image", first.image_ids[0])
        assert maps_in(anns, PROVENANCE_NS) == []
        (marker,) = maps_in(anns, MARKER_NS)
        assert [k for k, _ in marker] == ["source_sha1", "series"]
        before = counts(sf)
    second = push([f], **kw)
    with reader(omero_server) as sf:
        assert counts(sf) == before
    assert second.images[0].status == "present"


# --- interruption and resume -------------------------------------------------------------------


class _KillAfter(NullProgress):
    """Kills the server (from another thread, like a crash) once ``limit`` bytes were sent."""

    def __init__(self, server: Any, limit: int) -> None:
        self.server, self.limit, self.sent, self.killed = server, limit, 0, False

    def advance(self, nbytes: int) -> None:
        self.sent += nbytes
        if not self.killed and self.sent >= self.limit:
            self.killed = True
            th = threading.Thread(target=self.server.kill)
            th.start()
            th.join()


@pytest.mark.parametrize("mode", ["import", "pixels"])
def test_resume_after_server_killed_midway(
    omero_server_factory: Any, tmp_path: Path, mode: str
) -> None:
    """Kill the server mid-push; the push fails with a 'connection lost, re-run' error; after a
    restart the same push completes: every image exactly once, none left half-made."""
    server = omero_server_factory()
    out = tmp_path / "out"
    data = make_converter_output(out, positions=3, shape_tczyx=(2, 2, 2, 64, 64))
    # one file at a time, so "the middle of the second file" is well defined
    kw = push_kw(server, dataset=f"resume-{mode}", mode=mode, retries=0, parallel=1)
    one = next(iter(data.values())).nbytes
    killer = _KillAfter(server, limit=one + one // 2)  # in the middle of the second image
    with pytest.raises(ConnectionLostError, match="re-run"):
        push([out], progress=killer, **kw)
    assert killer.killed
    server.restart()
    if mode == "import":  # the cut upload left a fileset without image: the re-run removes it
        with reader(server) as sf:
            q = sf.getQueryService()
            imaged = {
                _v(i.getFileset().getId()) for i in q.findAll("Image", None) if i.getFileset()
            }
            assert [f for f in q.findAll("Fileset", None) if _v(f.getId()) not in imaged]
    result = push([out], **kw)
    statuses = [r.status for r in result.images]
    # pos001 was complete; pos002 was cut mid-upload: a pixels-mode image is reused ("resumed"),
    # an interrupted upload never became an image, so it is imported afresh.
    assert statuses == ["present", "resumed" if mode == "pixels" else "created", "created"]
    with reader(server) as sf:
        did = _v(dataset_by_name(sf, f"resume-{mode}").getId())
        images = images_of(sf, did)
        assert sorted(_v(i.getName()) for i in images) == ["pos001", "pos002", "pos003"]
        all_images = sf.getQueryService().findAll("Image", None)
        assert len(all_images) == 3, "no orphan image outside the dataset"
        # no orphan upload either: every fileset holds an image (import mode)
        filesets = sf.getQueryService().findAll("Fileset", None)
        with_images = {_v(i.getFileset().getId()) for i in all_images if i.getFileset() is not None}
        assert {_v(f.getId()) for f in filesets} == with_images
        for image in images:
            assert not (_v(image.getDescription()) or "").startswith(PENDING_PREFIX)
            anns = annotations_of(sf, "Image", _v(image.getId()))
            assert len(maps_in(anns, PROVENANCE_NS)) == 1
            assert len(maps_in(anns, KV_NS)) == 1
            exp = data[_v(image.getName())]
            pid = _v(image.getPrimaryPixels().getId())
            got = read_plane(sf, pid, 1, 1, 1, exp.dtype, exp.shape[-2:])
            assert np.array_equal(got, exp[1, 1, 1])
    # and once more: nothing new
    with reader(server) as sf:
        before = counts(sf)
    push([out], **kw)
    with reader(server) as sf:
        assert counts(sf) == before


def test_resume_after_crash_between_import_and_annotations(
    omero_server_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Import mode, killed after the server imported the file but before the annotations and the
    receipt: the re-run finds the imported image by its 'incomplete' description and completes it
    — no second import of the file."""
    push_mod = importlib.import_module("omero_push.receipts")  # where images are completed

    server = omero_server_factory()
    f = tmp_path / "one.ome.tiff"
    data = make_ome_tiff(f, name="one")
    real = push_mod.complete_image

    def crash(*args: Any, **kw: Any) -> int:
        server.kill()
        return real(*args, **kw)

    monkeypatch.setattr(push_mod, "complete_image", crash)
    kw = push_kw(server, dataset="crash-import", mode="import", retries=0)
    with pytest.raises(ConnectionLostError):
        push([f], **kw)
    server.restart()
    with reader(server) as sf:
        (half,) = sf.getQueryService().findAll("Image", None)
        assert _v(half.getDescription()).startswith(PENDING_PREFIX)
    monkeypatch.setattr(push_mod, "complete_image", real)
    result = push([f], **kw)
    assert [r.status for r in result.images] == ["resumed"]
    with reader(server) as sf:
        (image,) = sf.getQueryService().findAll("Image", None)
        assert _v(image.getId()) == _v(half.getId())
        assert _v(image.getDescription()) == "one of a test experiment"
        anns = annotations_of(sf, "Image", _v(image.getId()))
        assert len(maps_in(anns, PROVENANCE_NS)) == 1 and len(maps_in(anns, KV_NS)) == 1
        assert tag_texts(anns) == ["glucose", "pushtest"]
        (loaded,) = sf.getContainerService().getImages("Image", [_v(image.getId())], None)
        pid = _v(loaded.getPrimaryPixels().getId())
        got = read_plane(sf, pid, 0, 0, 0, data.dtype, data.shape[-2:])
        assert np.array_equal(got, data[0, 0, 0])


def test_dropping_server_is_survived_by_retries(omero_server_factory: Any, tmp_path: Path) -> None:
    """A server that drops the connection after N pixel writes: the push reconnects with backoff and
    completes in one call, without duplicates."""
    server = omero_server_factory(drop_after_pixel_writes=5)
    out = tmp_path / "out"
    make_converter_output(out, positions=2, shape_tczyx=(2, 2, 2, 64, 64))
    result = push(
        [out], **push_kw(server, dataset="drops", mode="pixels", tile=(64, 16), retries=8)
    )
    assert result.reconnects >= 1
    with reader(server) as sf:
        assert len(sf.getQueryService().findAll("Image", None)) == 2
        did = _v(dataset_by_name(sf, "drops").getId())
        for image in images_of(sf, did):
            assert len(maps_in(annotations_of(sf, "Image", _v(image.getId())), PROVENANCE_NS)) == 1


# --- tables service off --------------------------------------------------------------------------


def test_tables_off_attaches_hdf5_file(omero_server_factory: Any, tmp_path: Path, caplog) -> None:
    """Without OMERO.tables the HDF5 file itself is attached to the dataset, and the log says so."""
    import hashlib

    caplog.set_level("WARNING", logger="omero_push")
    server = omero_server_factory(tables=False)
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    result = push([out], **push_kw(server, dataset="notables", mode="pixels"))
    assert result.tables_file_fallback and result.tables_created == []
    assert "OMERO.tables is not enabled" in caplog.text
    with reader(server) as sf:
        did = _v(dataset_by_name(sf, "notables").getId())
        files = [
            a
            for a in annotations_of(sf, "Dataset", did)
            if isinstance(a, omero.model.FileAnnotation)
        ]
        assert len(files) == 1
        of = sf.getQueryService().get("OriginalFile", _v(files[0].getFile().getId()))
        rfs = sf.createRawFileStore()
        try:
            rfs.setFileId(_v(of.getId()))
            content = rfs.read(0, int(_v(of.getSize())))
        finally:
            rfs.close()
        assert (
            hashlib.sha1(content).hexdigest()
            == hashlib.sha1((out / "experiment.h5").read_bytes()).hexdigest()
        )
    second = push([out], **push_kw(server, dataset="notables", mode="pixels"))
    assert second.tables_file_fallback
    with reader(server) as sf:
        files = [
            a
            for a in annotations_of(sf, "Dataset", did)
            if isinstance(a, omero.model.FileAnnotation)
        ]
        assert len(files) == 1  # not attached twice


# --- errors ------------------------------------------------------------------------------------


def test_wrong_password_one_line_no_traceback_no_leak(
    omero_server: Any, tmp_path: Path, capsys, caplog, monkeypatch
) -> None:
    """Wrong password: exit 3, one line, no traceback; the password is nowhere in output or logs,
    not even with --verbose."""
    f = tmp_path / "a.ome.tiff"
    make_ome_tiff(f)
    monkeypatch.setenv("OMERO_PASSWORD", SENTINEL)
    base = [
        str(f),
        "--server",
        host_url(omero_server),
        "--port",
        str(omero_server.port),
        "--user",
        omero_server.user,
        "--dataset",
        "D",
    ]
    rc = cli.main(base)
    cap = capsys.readouterr()
    assert rc == 3
    assert (
        cap.err.strip().count("\n") == 0
        and "login refused" in cap.err
        and "Traceback" not in cap.err
    )
    rc = cli.main([*base, "--verbose"])
    cap2 = capsys.readouterr()
    assert rc == 3
    assert "Traceback" in cap2.err  # --verbose is the one way to see it
    for text in (cap.out, cap.err, cap2.out, cap2.err, caplog.text):
        assert SENTINEL not in text


def test_unknown_host_and_closed_port(tmp_path: Path, capsys, monkeypatch) -> None:
    """Nothing listening / unknown host: exit 4 with one line naming host and port."""
    import socket

    f = tmp_path / "a.ome.tiff"
    make_ome_tiff(f)
    monkeypatch.setenv("OMERO_PASSWORD", SENTINEL)
    # A port bound but not listening refuses connections, and no other process can take it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
        rc = cli.main(
            [
                str(f),
                "--server",
                "tcp://127.0.0.1",
                "--port",
                str(free),
                "--user",
                "u",
                "--dataset",
                "D",
            ]
        )
    err = capsys.readouterr().err
    assert rc == 4 and f"127.0.0.1:{free}" in err and err.strip().count("\n") == 0
    rc = cli.main(
        [
            str(f),
            "--server",
            "no-such-host.invalid",
            "--user",
            "u",
            "--dataset",
            "D",
            "--retries",
            "0",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 4 and "no-such-host.invalid" in err and SENTINEL not in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


def test_no_permission_on_target_group(
    omero_server: Any, tmp_path: Path, capsys, monkeypatch
) -> None:
    """A group the user is not a member of: exit 5, one line, nothing created."""
    f = tmp_path / "a.ome.tiff"
    make_ome_tiff(f)
    monkeypatch.setenv("OMERO_PASSWORD", omero_server.password)
    with reader(omero_server) as sf:
        before = counts(sf)
        ec = sf.getAdminService().getEventContext()
        groups = [
            g for g in sf.getAdminService().lookupGroups() if _v(g.getId()) not in ec.memberOfGroups
        ]
    if not groups:
        pytest.skip("the stand-in user is a member of every group")
    rc = cli.main(
        [
            str(f),
            "--server",
            host_url(omero_server),
            "--port",
            str(omero_server.port),
            "--user",
            omero_server.user,
            "--group",
            _v(groups[0].getName()),
            "--dataset",
            "D",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 5 and "not a member" in err and err.strip().count("\n") == 0
    with reader(omero_server) as sf:
        assert counts(sf) == before


def test_password_absent_from_everything_in_a_failing_push(
    omero_server_factory: Any, tmp_path: Path, capsys, caplog, monkeypatch
) -> None:
    """A push that logs in (password = sentinel) and then fails mid-way (the server drops the
    connection, no retries), run with --verbose: the sentinel is in no output, log record or
    traceback, and the CLI's error is one line."""
    server = omero_server_factory(password=SENTINEL, drop_after_pixel_writes=3)
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    monkeypatch.setenv("OMERO_PASSWORD", SENTINEL)
    caplog.set_level("DEBUG")
    rc = cli.main(
        [
            str(out),
            "--server",
            host_url(server),
            "--port",
            str(server.port),
            "--user",
            server.user,
            "--dataset",
            "leak",
            "--mode",
            "pixels",
            "--tile",
            "64x16",
            "--retries",
            "0",
            "--verbose",
        ]
    )
    cap = capsys.readouterr()
    assert rc == 6, cap.err
    assert "re-run to resume" in cap.err
    records = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    for text in (cap.out, cap.err, caplog.text, records, server.stderr):
        assert SENTINEL not in text


def test_session_key_instead_of_password(omero_server: Any, tmp_path: Path, monkeypatch) -> None:
    """--session-key joins an existing session: no password needed anywhere."""
    monkeypatch.delenv("OMERO_PASSWORD", raising=False)
    f = tmp_path / "k.ome.tiff"
    make_ome_tiff(f, name="keyed")
    c = omero.client(host=host_url(omero_server), port=int(omero_server.port))
    try:
        c.createSession(omero_server.user, omero_server.password)
        key = c.getSessionId()
        result = push(
            [f],
            server=host_url(omero_server),
            port=int(omero_server.port),
            session_key=key,
            dataset="keyed",
            mode="pixels",
        )
    finally:
        c.__del__()
    assert [r.name for r in result.images] == ["keyed"]


def test_config_file_with_pyomeroupload_keys(
    omero_server: Any, tmp_path: Path, capsys, monkeypatch
) -> None:
    """--config with pyOmeroUpload's omero_conn: section gives host, port and user; the password
    still comes from the environment; the CLI prints the summary with the ids."""
    cfg = tmp_path / "omero.yml"
    cfg.write_text(
        f"omero_conn:\n  host: {host_url(omero_server)}\n  port: {omero_server.port}\n"
        f"  username: {omero_server.user}\n"
    )
    f = tmp_path / "c.ome.tiff"
    make_ome_tiff(f, name="configured")
    monkeypatch.setenv("OMERO_PASSWORD", omero_server.password)
    rc = cli.main([str(f), "--config", str(cfg), "--dataset", "from-config", "--mode", "pixels"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "(from-config): 1 image(s) — 1 new" in out and "configured  (created)" in out


def test_keepalive_is_enabled_on_the_session(omero_server: Any) -> None:
    """Long uploads outlive OMERO's idle timeout: the session pings itself (omero.keep_alive)."""
    from omero_push.config import resolve_settings
    from omero_push.session import open_session

    s = resolve_settings(
        server=host_url(omero_server),
        port=int(omero_server.port),
        user=omero_server.user,
        group=None,
        password=omero_server.password,
    )
    with open_session(s, keepalive_s=7) as session:
        props = session.client.getCommunicator().getProperties()
        assert props.getProperty("omero.keep_alive") == "7"
        assert session.user_id >= 0


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_push_pixels_mode_keeps_dtype(omero_server: Any, tmp_path: Path, dtype: str) -> None:
    """Pixels mode for other pixel types: the OMERO pixel type matches, values are equal, and the
    global min/max are those of the data."""
    f = tmp_path / f"{dtype}.ome.tiff"
    data = make_ome_tiff(f, name=dtype, dtype=dtype, shape_tczyx=(1, 2, 2, 30, 70))
    result = push([f], **push_kw(omero_server, dataset=f"dt-{dtype}", mode="pixels", tile=(70, 16)))
    with reader(omero_server) as sf:
        (image,) = sf.getContainerService().getImages("Image", result.image_ids, None)
        pid = _v(image.getPrimaryPixels().getId())
        desc = sf.getPixelsService().retrievePixDescription(pid)
        expected_type = {"uint8": "uint8", "int16": "int16", "float32": "float"}[dtype]
        assert _v(desc.getPixelsType().getValue()) == expected_type
        for c in range(2):
            for z in range(2):
                got = read_plane(sf, pid, z, c, 0, data.dtype, (30, 70))
                assert np.array_equal(got, data[0, c, z])
        ch0 = desc.copyChannels()[0]
        stats = ch0.getStatsInfo()
        assert stats is not None  # set by setChannelGlobalMinMax
        assert _v(stats.getGlobalMin()) == pytest.approx(float(data[0, 0].min()))
        assert _v(stats.getGlobalMax()) == pytest.approx(float(data[0, 0].max()))


def test_half_made_copies_are_replaced_by_one(omero_server: Any, tmp_path: Path) -> None:
    """Two half-made images of the same source (two interrupted pushes racing): OMERO writes a
    Pixels' data once, so the re-run deletes both with Delete2 and makes the image again, once.
    (Strict stand-in: a ROMIO buffer whose file exists is read-only, as omero-romio's.)"""
    from omero_push.plan import build_plan
    from omero_push.provenance import pending_description

    f = tmp_path / "dup.ome.tiff"
    data = make_ome_tiff(f, name="dup", shape_tczyx=(1, 1, 1, 20, 30))
    sha1 = build_plan([f], dataset="x").items[0].sha1
    with reader(omero_server) as sf:
        px = sf.getPixelsService()
        ptype = next(p for p in px.getAllEnumerations("PixelsType") if _v(p.getValue()) == "uint16")
        made = [
            _v(px.createImage(30, 20, 1, 1, [0], ptype, "dup", pending_description(sha1, 0)))
            for _ in range(2)
        ]
        (half,) = sf.getContainerService().getImages("Image", [made[0]], None)
        rps = sf.createRawPixelsStore()  # an interrupted push wrote part of the first copy
        try:
            rps.setPixelsId(_v(half.getPrimaryPixels().getId()), True)
            rps.setTile(b"\0" * 30 * 2 * 5, 0, 0, 0, 0, 0, 30, 5)
            rps.save()
        finally:
            rps.close()
    result = push([f], **push_kw(omero_server, dataset="dups", mode="pixels"))
    assert [r.status for r in result.images] == ["resumed"]
    (iid,) = result.image_ids
    assert iid not in made
    with reader(omero_server) as sf:
        images = sf.getQueryService().findAll("Image", None)
        assert [_v(i.getId()) for i in images] == [iid]
        (loaded,) = sf.getContainerService().getImages("Image", [iid], None)
        pid = _v(loaded.getPrimaryPixels().getId())
        assert np.array_equal(read_plane(sf, pid, 0, 0, 0, data.dtype, (20, 30)), data[0, 0, 0])


@pytest.mark.parametrize("mode", ["import", "pixels"])
def test_push_multi_image_ome_tiff(omero_server: Any, tmp_path: Path, mode: str) -> None:
    """An OME-TIFF from elsewhere with two Images (series): two OMERO images, each with its own
    receipt (same file SHA-1, series 0 and 1), pixels equal; a re-run adds nothing."""
    import tifffile

    f = tmp_path / "two.ome.tiff"
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4000, (2, 24, 40), dtype="uint16")  # C Y X
    b = rng.integers(0, 250, (3, 16, 20), dtype="uint8")  # Z Y X
    with tifffile.TiffWriter(f, ome=True) as tw:
        tw.write(a, metadata={"axes": "CYX", "Name": "first"})
        tw.write(b, metadata={"axes": "ZYX", "Name": "second"})
    kw = push_kw(omero_server, dataset=f"multi-{mode}", mode=mode)
    result = push([f], **kw)
    assert [r.series for r in result.images] == [0, 1] and len(set(result.image_ids)) == 2
    with reader(omero_server) as sf:
        images = sf.getContainerService().getImages("Image", result.image_ids, None)
        by_id = {_v(i.getId()): i for i in images}
        first, second = (by_id[i] for i in result.image_ids)
        assert (_v(first.getName()), _v(second.getName())) == ("first", "second")
        p1 = _v(first.getPrimaryPixels().getId())
        p2 = _v(second.getPrimaryPixels().getId())
        assert np.array_equal(read_plane(sf, p1, 0, 1, 0, a.dtype, (24, 40)), a[1])
        assert np.array_equal(read_plane(sf, p2, 2, 0, 0, b.dtype, (16, 20)), b[2])
        receipts = [
            dict(maps_in(annotations_of(sf, "Image", i), PROVENANCE_NS)[0])
            for i in result.image_ids
        ]
        assert [r["series"] for r in receipts] == ["0", "1"]
        assert receipts[0]["source_sha1"] == receipts[1]["source_sha1"]
        before = counts(sf)
    again = push([f], **kw)
    assert [r.status for r in again.images] == ["present", "present"]
    with reader(omero_server) as sf:
        assert counts(sf) == before


def test_crash_after_receipt_before_description_is_finished(
    omero_server_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed right after the receipt, before the real description: the re-run counts the image as
    present (no new image, no second receipt) and puts the real description in place."""
    from omero_push import annotate

    server = omero_server_factory()
    f = tmp_path / "late.ome.tiff"
    make_ome_tiff(f, name="late")
    real = annotate.set_name_and_description

    def crash(*args: Any, **kw: Any) -> bool:
        server.kill()
        return real(*args, **kw)

    monkeypatch.setattr(annotate, "set_name_and_description", crash)
    kw = push_kw(server, dataset="late", mode="pixels", retries=0)
    with pytest.raises(ConnectionLostError):
        push([f], **kw)
    server.restart()
    monkeypatch.setattr(annotate, "set_name_and_description", real)
    result = push([f], **kw)
    assert [r.status for r in result.images] == ["present"]
    with reader(server) as sf:
        (image,) = sf.getQueryService().findAll("Image", None)
        assert _v(image.getDescription()) == "late of a test experiment"
        assert len(maps_in(annotations_of(sf, "Image", _v(image.getId())), PROVENANCE_NS)) == 1


def test_group_the_user_belongs_to(omero_server: Any, tmp_path: Path) -> None:
    """--group NAME of a group the user is in: the session switches to it and the images land there."""
    f = tmp_path / "g.ome.tiff"
    make_ome_tiff(f, name="grouped")
    with reader(omero_server) as sf:
        ec = sf.getAdminService().getEventContext()
        other = [g for g in ec.memberOfGroups if g != ec.groupId]
        if not other:
            pytest.skip("the stand-in user belongs to one group only")
        name = _v(sf.getAdminService().getGroup(other[0]).getName())
    result = push([f], **push_kw(omero_server, dataset="in-group", mode="pixels", group=name))
    with reader(omero_server) as sf:
        img = sf.getQueryService().get("Image", result.image_ids[0])
        assert _v(img.getDetails().getGroup().getId()) == other[0]


def test_dataset_by_id(omero_server: Any, tmp_path: Path, capsys, monkeypatch) -> None:
    """--dataset Dataset:ID pushes into that dataset; an id that does not exist is one line, exit 2."""
    from omero.rtypes import rstring

    f = tmp_path / "i.ome.tiff"
    make_ome_tiff(f, name="by-id")
    with reader(omero_server) as sf:
        ds = omero.model.DatasetI()
        ds.setName(rstring("made elsewhere"))
        did = _v(sf.getUpdateService().saveAndReturnObject(ds).getId())
    result = push([f], **push_kw(omero_server, dataset=f"Dataset:{did}", mode="pixels"))
    assert result.dataset_id == did
    with reader(omero_server) as sf:
        assert [_v(i.getName()) for i in images_of(sf, did)] == ["by-id"]
    monkeypatch.setenv("OMERO_PASSWORD", omero_server.password)
    rc = cli.main(
        [
            str(f),
            "--server",
            host_url(omero_server),
            "--port",
            str(omero_server.port),
            "--user",
            omero_server.user,
            "--dataset",
            "Dataset:987654",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "Dataset:987654 does not exist" in err
    assert [ln for ln in err.splitlines() if "error" in ln.lower()] == [
        f"omero-push: error: Dataset:987654 does not exist or is not visible to {omero_server.user}"
    ]
    assert "Traceback" not in err


# --- review additions: each pins one point of the issue --------------------------------------------


def test_dry_run_connects_to_nothing_and_creates_nothing(
    omero_server: Any, swainlab_sample: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """--dry-run with a live server, a valid password and everything needed for a real push: no
    omero.client is ever made (so no connection), no object appears on the server, and with
    --convert no converted file is written."""
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    monkeypatch.setenv("OMERO_PASSWORD", omero_server.password)
    with reader(omero_server) as sf:
        before = counts(sf)
    made: list[Any] = []

    def no_client(*args: Any, **kw: Any) -> Any:
        made.append(args)
        raise RuntimeError("a dry run must not create an omero.client")

    conn = ["--server", host_url(omero_server), "--port", str(omero_server.port)]
    conn += ["--user", omero_server.user, "--dataset", "dry"]
    with monkeypatch.context() as m:
        m.setattr(omero, "client", no_client)
        rc = cli.main([str(out), *conn, "--dry-run"])
        rc_convert = cli.main(
            [
                str(swainlab_sample),
                "--convert",
                "--convert-out",
                str(tmp_path / "conv"),
                *conn,
                "--dry-run",
            ]
        )
    cap = capsys.readouterr()
    assert (rc, rc_convert) == (0, 0), cap.err
    assert made == []
    assert cap.out.count("dry run: nothing was sent") == 2
    assert not (tmp_path / "conv").exists()
    with reader(omero_server) as sf:
        assert counts(sf) == before


def test_keepalive_thread_pings_the_server(omero_server: Any, tmp_path: Path, monkeypatch) -> None:
    """Keep-alive is running, not only configured: omero-py's Resources thread exists with our
    interval and calls ServiceFactory.keepAlive on the stand-in, which answers; an interval below
    omero-py's 5 s minimum is raised to 5 instead of failing the login; push() hands its
    ``keepalive_s`` to the session."""
    import omero.api

    from omero_push.config import resolve_settings
    from omero_push.session import open_session

    pings: list[bool] = []
    real_ping = omero.api.ServiceFactoryPrx.keepAlive

    def ping(self: Any, *args: Any, **kw: Any) -> bool:
        ok = real_ping(self, *args, **kw)
        pings.append(ok)
        return ok

    monkeypatch.setattr(omero.api.ServiceFactoryPrx, "keepAlive", ping)
    s = resolve_settings(
        server=host_url(omero_server),
        port=int(omero_server.port),
        user=omero_server.user,
        group=None,
        password=omero_server.password,
    )
    with open_session(s, keepalive_s=1) as session:
        resources = session.client._BaseClient__resources
        assert resources is not None and resources.thread.is_alive()
        assert resources.sleeptime == 5
        # omero-py adds the ping after starting its thread, so the first one comes one
        # interval (5 s) after the login: waiting for it shows the periodic ping itself.
        deadline = time.monotonic() + 15
        while not pings and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pings and all(pings), "the keep-alive thread never pinged the session"

    intervals: list[int] = []
    real_enable = omero.clients.BaseClient.enableKeepAlive

    def enable(self: Any, seconds: int) -> None:
        intervals.append(seconds)
        real_enable(self, seconds)

    monkeypatch.setattr(omero.clients.BaseClient, "enableKeepAlive", enable)
    f = tmp_path / "ka.ome.tiff"
    make_ome_tiff(f, name="ka", shape_tczyx=(1, 1, 1, 8, 8))
    push([f], **push_kw(omero_server, dataset="ka", mode="pixels", keepalive_s=30))
    assert intervals == [30]


def test_retries_outlast_a_server_restart(
    omero_server_factory: Any, tmp_path: Path, caplog
) -> None:
    """The server is killed in the middle of an import and comes back 1.5 s later: one push()
    call reconnects with growing waits (0.3, 0.6, 1.2 … s), resumes, and ends with every image
    exactly once and no orphan upload."""
    server = omero_server_factory()
    out = tmp_path / "out"
    make_converter_output(out, positions=2, shape_tczyx=(2, 2, 2, 64, 64))
    caplog.set_level("WARNING", logger="omero_push")

    class KillThenRestart(NullProgress):
        def __init__(self) -> None:
            self.sent, self.killed = 0, False

        def advance(self, nbytes: int) -> None:
            self.sent += nbytes
            if not self.killed and self.sent > 4096:
                self.killed = True
                server.kill()

                def back() -> None:
                    time.sleep(1.5)
                    server.start()

                threading.Thread(target=back, daemon=True).start()

    progress = KillThenRestart()
    kw = push_kw(server, dataset="restart", mode="import", parallel=1, chunk_size=4096)
    result = push([out], progress=progress, retries=8, **{**kw, "backoff_s": 0.3})
    assert progress.killed and result.reconnects >= 2  # at least one try while it was down
    waits = [float(w) for w in re.findall(r"reconnecting in ([\d.]+) s", caplog.text)]
    assert len(waits) == result.reconnects
    assert sorted(r.name for r in result.images) == ["pos001", "pos002"]
    with reader(server) as sf:
        q = sf.getQueryService()
        images = q.findAll("Image", None)
        assert len(images) == 2
        imaged = {_v(i.getFileset().getId()) for i in images}
        assert {_v(f.getId()) for f in q.findAll("Fileset", None)} == imaged
        for image in images:
            anns = annotations_of(sf, "Image", _v(image.getId()))
            assert len(maps_in(anns, PROVENANCE_NS)) == 1


def test_pyomeroupload_config_file_as_is(
    omero_server_factory: Any, tmp_path: Path, capsys, caplog, monkeypatch
) -> None:
    """A pyOmeroUpload config file unchanged (``omero_conn:`` with username, password, server,
    port — its upload_cli reads exactly these): the push logs in with it, warns that the file
    holds a password, and the password appears in no output."""
    server = omero_server_factory(password=SENTINEL)
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        "omero_conn:\n"
        f"  username: {server.user}\n"
        f"  password: {SENTINEL}\n"
        f"  server: {host_url(server)}\n"
        f"  port: {server.port}\n"
    )
    monkeypatch.delenv("OMERO_PASSWORD", raising=False)
    f = tmp_path / "p.ome.tiff"
    make_ome_tiff(f, name="pyomero")
    caplog.set_level("DEBUG")
    rc = cli.main([str(f), "--config", str(cfg), "--dataset", "pyomero", "--verbose"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "holds a password" in cap.err
    with reader(server) as sf:
        did = _v(dataset_by_name(sf, "pyomero").getId())
        (iid,) = [_v(i.getId()) for i in images_of(sf, did)]
    # the summary: dataset id, image ids, annotations
    assert f"Dataset:{did} (pyomero): 1 image(s) — 1 new" in cap.out
    assert f"Image:{iid}  pyomero  (created)" in cap.out
    assert "annotations created: " in cap.out
    for text in (cap.out, cap.err, caplog.text):
        assert SENTINEL not in text


def test_password_absent_from_manifest_logs_and_server(
    omero_server_factory: Any, swainlab_sample: Path, tmp_path: Path, capsys, caplog, monkeypatch
) -> None:
    """Convert-and-push with --verbose, password = sentinel: not in the converter's manifest or any
    file it wrote, not in output or log records, and not in anything the push stored on the server
    (annotations, descriptions, upload job — the stand-in's whole store is searched)."""
    server = omero_server_factory(password=SENTINEL)
    monkeypatch.setenv("OMERO_PASSWORD", SENTINEL)
    caplog.set_level("DEBUG")
    rc = cli.main(
        [
            str(swainlab_sample),
            "--convert",
            "--convert-out",
            str(tmp_path / "conv"),
            "--server",
            host_url(server),
            "--port",
            str(server.port),
            "--user",
            server.user,
            "--dataset",
            "secret-free",
            "--verbose",
        ]
    )
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert (tmp_path / "conv" / "manifest.json").is_file()
    needle = SENTINEL.encode()
    written = [p for p in (tmp_path / "conv").rglob("*") if p.is_file()]
    assert written and not [p for p in written if needle in p.read_bytes()]
    records = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    for text in (cap.out, cap.err, caplog.text, records):
        assert SENTINEL not in text
    server.stop()  # the store's files complete on disk
    stored = [p for p in Path(server.store_dir).rglob("*") if p.is_file()]
    assert stored and not [p for p in stored if needle in p.read_bytes()]


def test_changed_file_is_refused_by_verify_upload(omero_server: Any, tmp_path: Path) -> None:
    """Import mode sends the planned SHA-1 to verifyUpload: a file whose content no longer matches
    (here: the manifest's checksum is stale) is refused with a clear error and no image is made."""
    import json

    from omero_push.errors import InputError

    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    man = json.loads((out / "manifest.json").read_text())
    f = out / "pos001.ome.tiff"
    man["positions"]["pos001"]["mtime_ns"] = f.stat().st_mtime_ns  # trusted as unchanged
    man["positions"]["pos001"]["sha1"] = "0" * 40
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(InputError, match="content changed since it was planned"):
        push([out], **push_kw(omero_server, dataset="stale", mode="import", retries=0))
    with reader(omero_server) as sf:
        assert sf.getQueryService().findAll("Image", None) == []


def test_existing_tag_is_reused_by_name(omero_server: Any, tmp_path: Path) -> None:
    """A tag made before the push (by OMERO.web, another tool) is linked, not duplicated."""
    from omero.rtypes import rstring

    with reader(omero_server) as sf:
        tag = omero.model.TagAnnotationI()
        tag.setTextValue(rstring("glucose"))
        tag_id = _v(sf.getUpdateService().saveAndReturnObject(tag).getId())
    f = tmp_path / "t.ome.tiff"
    make_ome_tiff(f, name="tagged")
    result = push([f], **push_kw(omero_server, dataset="tags", mode="pixels"))
    assert "glucose" in result.tags_reused and "glucose" not in result.tags_created
    with reader(omero_server) as sf:
        q = sf.getQueryService()
        (glucose,) = q.findAllByString("TagAnnotation", "textValue", "glucose", True, None)
        assert _v(glucose.getId()) == tag_id
        anns = annotations_of(sf, "Image", result.image_ids[0])
        assert tag_id in [_v(a.getId()) for a in anns]


def _record_tiles(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Record every setTile the pusher sends (z, c, t, x, y, w, h, bytes, calls in flight)."""
    import omero.api

    calls: list[tuple[Any, ...]] = []
    prx = omero.api.RawPixelsStorePrx
    real_begin, real_end = prx.begin_setTile, prx.end_setTile
    in_flight = [0]

    def begin_tile(self: Any, buf: Any, z: int, c: int, t: int, x: int, y: int, w: int, h: int):
        in_flight[0] += 1
        calls.append((z, c, t, x, y, w, h, memoryview(buf).nbytes, in_flight[0]))
        return real_begin(self, buf, z, c, t, x, y, w, h)

    def end_tile(self: Any, result: Any) -> Any:
        in_flight[0] -= 1
        return real_end(self, result)

    monkeypatch.setattr(prx, "begin_setTile", begin_tile)
    monkeypatch.setattr(prx, "end_setTile", end_tile)
    for name in ("setPlane", "begin_setPlane", "setRegion", "begin_setRegion", "setTile"):
        monkeypatch.setattr(prx, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} used"))
    return calls


def test_pixels_mode_sends_the_servers_tiles(
    omero_server: Any, tmp_path: Path, monkeypatch
) -> None:
    """Without --tile, pixels mode writes the tiles the server proposes (getTileSize): full-width
    strips below 1 MiB on a ROMIO buffer, each plane covered once, never setPlane/setRegion.
    (Strict stand-in: ROMIO refuses any tile narrower than the image, as RomioPixelBuffer.)"""
    calls = _record_tiles(monkeypatch)
    f = tmp_path / "tiles.ome.tiff"
    data = make_ome_tiff(f, name="tiles", shape_tczyx=(1, 1, 2, 1000, 700), tile=(256, 256))
    push([f], **push_kw(omero_server, dataset="tiles", mode="pixels"))
    rows = 1048576 // 2 // 700  # RomioPixelBuffer.getTileSize: MAXIMUM_BUFFER_SIZE / bytes / X
    assert {(x, w) for _z, _c, _t, x, _y, w, *_ in calls} == {(0, 700)}
    assert [h for z, _c, _t, _x, _y, _w, h, *_ in calls if z == 0] == [rows, 1000 - rows]
    assert all(n == w * h * 2 for *_, w, h, n, _f in calls)
    with reader(omero_server) as sf:
        (image,) = sf.getQueryService().findAll("Image", None)
        (img,) = sf.getContainerService().getImages("Image", [_v(image.getId())], None)
        pid = _v(img.getPrimaryPixels().getId())
        assert np.array_equal(read_plane(sf, pid, 1, 0, 0, data.dtype, (1000, 700)), data[0, 0, 1])


def test_tile_option_is_checked_against_the_server(
    omero_server: Any, tmp_path: Path, monkeypatch
) -> None:
    """--tile narrower than a ROMIO image is refused with one clear line before a pixel is sent,
    and leaves no image behind; a full-width --tile is used as given."""
    from omero_push.errors import InputError

    calls = _record_tiles(monkeypatch)
    f = tmp_path / "tiles.ome.tiff"
    make_ome_tiff(f, name="tiles", shape_tczyx=(1, 1, 2, 100, 150))
    kw = push_kw(omero_server, dataset="tiles", mode="pixels", retries=0)
    with pytest.raises(InputError, match=r"--tile 64x32: .*full-width strips \(150xN\)"):
        push([f], tile=(64, 32), **kw)
    assert calls == []
    push([f], tile=(150, 32), **kw)
    assert [(x, y, w, h) for z, _c, _t, x, y, w, h, *_ in calls if z == 0] == [
        (0, 0, 150, 32),
        (0, 32, 150, 32),
        (0, 64, 150, 32),
        (0, 96, 150, 4),
    ]
    with reader(omero_server) as sf:
        assert len(sf.getQueryService().findAll("Image", None)) == 1


def test_pixels_mode_pyramid_one_tile_in_flight_in_order(
    omero_server: Any, tmp_path: Path, monkeypatch
) -> None:
    """An image above 3192² is a pyramid on OMERO: its server tiles (256²) go one call at a time,
    plane by plane in XYZCT order and row by row, and read back equal. (Strict stand-in: the
    pyramid buffer refuses a tile out of order, as BfPyramidPixelBuffer's sequential writer.)"""
    calls = _record_tiles(monkeypatch)
    f = tmp_path / "big.ome.tiff"
    data = make_ome_tiff(
        f, name="big", dtype="uint8", shape_tczyx=(1, 1, 2, 3300, 3300), tile=(256, 256)
    )
    push([f], **push_kw(omero_server, dataset="big", mode="pixels"))
    assert calls and max(c[-1] for c in calls) == 1  # never two calls in flight
    expected = [
        (z, 0, 0, x, y, min(256, 3300 - x), min(256, 3300 - y))
        for z in range(2)
        for y in range(0, 3300, 256)
        for x in range(0, 3300, 256)
    ]
    assert [c[:7] for c in calls] == expected
    with reader(omero_server) as sf:
        (image,) = sf.getQueryService().findAll("Image", None)
        (img,) = sf.getContainerService().getImages("Image", [_v(image.getId())], None)
        pid = _v(img.getPrimaryPixels().getId())
        rps = sf.createRawPixelsStore()
        try:
            rps.setPixelsId(pid, True)
            tile = rps.getTile(1, 0, 0, 3000, 3100, 300, 200)
        finally:
            rps.close()
        got = np.frombuffer(tile, dtype=np.uint8).reshape(200, 300)
        assert np.array_equal(got, data[0, 0, 1, 3100:3300, 3000:3300])


# --- the import runs in the background on OMERO ----------------------------------------------------


def test_failed_import_is_cleaned_up_and_redone(
    omero_server_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import that fails after the server saved its images (strict stand-in: a Bio-Formats
    without zstd fails the pixel-data step, here on a server that claims 5.6.9) gets no receipt;
    the re-run deletes those images and imports the file again, to complete images with
    statistics."""
    from omero_push import imports
    from omero_push.errors import ServerError

    server = omero_server_factory(bioformats_version="6.10")
    # The stand-in says 5.6.8 with this Bio-Formats; this test needs the server that claims
    # 5.6.9 and still fails the pixel-data step, so the push's version check is told 5.6.9.
    monkeypatch.setattr(imports, "server_version", lambda session: (5, 6, 9))
    f = tmp_path / "z.ome.tiff"
    data = make_ome_tiff(f, name="z", compression="zstd")
    kw = push_kw(server, dataset="failed-import", mode="import", retries=0)
    with pytest.raises(ServerError, match="TiffCompress"):
        push([f], **kw)
    with reader(server) as sf:
        (half,) = sf.getQueryService().findAll("Image", None)
        assert _v(half.getDescription()).startswith(PENDING_PREFIX)
        assert maps_in(annotations_of(sf, "Image", _v(half.getId())), PROVENANCE_NS) == []
    server.restart(bioformats_version=None)  # the server's Bio-Formats now reads zstd
    result = push([f], **kw)
    assert [r.status for r in result.images] == ["created"]
    with reader(server) as sf:
        (found,) = sf.getQueryService().findAll("Image", None)
        assert _v(found.getId()) != _v(half.getId())
        assert len(sf.getQueryService().findAll("Fileset", None)) == 1
        (image,) = sf.getContainerService().getImages("Image", [_v(found.getId())], None)
        pid = _v(image.getPrimaryPixels().getId())
        desc = sf.getPixelsService().retrievePixDescription(pid)
        assert all(ch.getStatsInfo() is not None for ch in desc.copyChannels())
        assert len(maps_in(annotations_of(sf, "Image", _v(image.getId())), PROVENANCE_NS)) == 1
        got = read_plane(sf, pid, 1, 1, 1, data.dtype, data.shape[-2:])
        assert np.array_equal(got, data[1, 1, 1])


def test_rerun_waits_for_an_import_still_running_on_the_server(
    omero_server_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push that stopped waiting while the server still imports (each step held 2 s) leaves
    images the import saved but has not finished; the re-run, in a new session, finds that
    import with ``ManagedRepository.listImports`` (strict stand-in, as ome/omero-blitz
    ``ManagedRepositoryI.listImports``), waits for it and completes those images: it never
    deletes them or their fileset under the running import, and never imports twice."""
    import functools

    from omero_push import upload
    from omero_push.errors import ServerError

    server = omero_server_factory(import_step_ms=2000)
    f = tmp_path / "slow.ome.tiff"
    data = make_ome_tiff(f, name="slow")
    kw = push_kw(server, dataset="slow-import", mode="import", retries=0)
    wait_for = upload.wait_for
    # The first push gives up waiting at once, as one killed or capped after verifyUpload.
    monkeypatch.setattr(upload, "wait_for", functools.partial(wait_for, cap_s=0.0, poll_s=0.1))
    with pytest.raises(ServerError, match="still importing"):
        push([f], **kw)
    monkeypatch.setattr(upload, "wait_for", wait_for)
    with reader(server) as sf:
        q = sf.getQueryService()
        for _ in range(100):  # the metadata step (held 2 s) saves the images
            half = q.findAll("Image", None)
            if half:
                break
            time.sleep(0.1)
        (half,) = half
        (fileset,) = q.findAll("Fileset", None)
        assert _v(half.getDescription()).startswith(PENDING_PREFIX)
        (loaded,) = sf.getContainerService().getImages("Image", [_v(half.getId())], None)
        desc = sf.getPixelsService().retrievePixDescription(_v(loaded.getPrimaryPixels().getId()))
        assert desc.copyChannels()[0].getStatsInfo() is None  # the pixel-data step is to come
    result = push([f], **kw)  # four more steps of 2 s are still to run on the server
    assert [r.status for r in result.images] == ["resumed"]
    assert result.image_ids == [_v(half.getId())]
    with reader(server) as sf:
        q = sf.getQueryService()
        assert [_v(x.getId()) for x in q.findAll("Fileset", None)] == [_v(fileset.getId())]
        (image,) = sf.getContainerService().getImages("Image", [_v(half.getId())], None)
        pid = _v(image.getPrimaryPixels().getId())
        desc = sf.getPixelsService().retrievePixDescription(pid)
        assert all(ch.getStatsInfo() is not None for ch in desc.copyChannels())
        got = read_plane(sf, pid, 0, 0, 0, data.dtype, data.shape[-2:])
        assert np.array_equal(got, data[0, 0, 0])


# --- another user's tag: reused where the group lets us annotate, else our own ----------------


def _glucose_tags(server: Any) -> dict[int, int]:
    """Every "glucose" tag on the server (all groups, as the admin): id -> owner id."""
    import omero.sys

    with reader(server) as sf:
        params = omero.sys.ParametersI()
        params.addString("t", "glucose")
        found = sf.getQueryService().findAllByQuery(
            "select t from TagAnnotation t where t.textValue = :t", params, {"omero.group": "-1"}
        )
        return {_v(t.getId()): _v(t.getDetails().getOwner().getId()) for t in found}


@pytest.mark.parametrize("mode", ["pixels", "import"])
@pytest.mark.parametrize(
    ("perms", "shared"), [("rwra--", True), ("rwr---", False)], ids=["read-annotate", "read-only"]
)
def test_another_users_tag_is_reused_only_where_the_group_lets_us_annotate(
    omero_server_factory: Any, tmp_path: Path, perms: str, shared: bool, mode: str
) -> None:
    """User A pushes with tag "glucose", then user B of the same group pushes with it too. In a
    read-annotate group B's images link A's tag (no second "glucose"); in a read-only group B
    may not link A's tag (OMERO: SecurityViolation, strict stand-in as ome/omero-server
    ``OmeroInterceptor``), so B's push makes and links B's own tag, and succeeds."""
    server = omero_server_factory()
    gid = server.new_group(perms)
    uid = {name: server.new_user(name, [gid]) for name in ("ann", "bob")}
    results = {}
    for name in ("ann", "bob"):
        f = tmp_path / name / "p.ome.tiff"
        f.parent.mkdir()
        make_ome_tiff(f, name=f"{name}-image", tags=["glucose"])
        kw = push_kw(server, user=name, password=name, dataset=f"{name}-ds", mode=mode)
        results[name] = push([f], **kw)
    # tags_created counts tags the push saved; an import's tag is made by the server instead
    created = {n: r.tags_created for n, r in results.items()} if mode == "pixels" else None
    assert created is None or created["ann"] == ["glucose"]
    tags = _glucose_tags(server)
    (ann_tag,) = [t for t, owner in tags.items() if owner == uid["ann"]]
    bob = server.client_as("bob")
    try:
        (iid,) = results["bob"].image_ids
        anns = annotations_of(bob.getSession(), "Image", iid)
        linked = [_v(a.getId()) for a in anns if isinstance(a, omero.model.TagAnnotation)]
    finally:
        bob.closeSession()
    if shared:
        assert created is None or created["bob"] == []
        assert tags == {ann_tag: uid["ann"]}
        assert linked == [ann_tag]
    else:
        assert created is None or created["bob"] == ["glucose"]
        (bob_tag,) = [t for t, owner in tags.items() if owner == uid["bob"]]
        assert sorted(tags) == sorted([ann_tag, bob_tag])
        assert linked == [bob_tag]


# --- exact names, never substrings ----------------------------------------------------------------


def test_names_are_matched_exactly(omero_server: Any, tmp_path: Path) -> None:
    """--dataset exp4 does not pick exp42, a tag 'glu' is not 'glucose', and a name with a quote,
    %, _ and unicode is found again by the next run. (Strict stand-in: findAllByString is LIKE
    '%value%', as OMERO's QueryImpl.)"""
    from omero.rtypes import rstring

    with reader(omero_server) as sf:
        upd = sf.getUpdateService()
        ds = omero.model.DatasetI()
        ds.setName(rstring("exp42"))
        exp42 = _v(upd.saveAndReturnObject(ds).getId())
        tag = omero.model.TagAnnotationI()
        tag.setTextValue(rstring("glucose"))
        glucose = _v(upd.saveAndReturnObject(tag).getId())
    f = tmp_path / "a.ome.tiff"
    make_ome_tiff(f, name="a", tags=["glu"])
    result = push([f], **push_kw(omero_server, dataset="exp4", mode="pixels"))
    assert result.dataset_id != exp42
    assert result.tags_created == ["glu"]
    odd = '50% d\'or_ü "x"'
    first = push([f], **push_kw(omero_server, dataset=odd, mode="pixels"))
    again = push([f], **push_kw(omero_server, dataset=odd, mode="pixels"))
    assert again.dataset_id == first.dataset_id and [r.status for r in again.images] == ["present"]
    with reader(omero_server) as sf:
        q = sf.getQueryService()
        names = sorted(_v(d.getName()) for d in q.findAll("Dataset", None))
        assert names == sorted(["exp42", "exp4", odd])
        assert images_of(sf, exp42) == []
        anns = annotations_of(sf, "Image", result.image_ids[0])
        assert tag_texts(anns) == ["glu"]
        assert glucose not in [_v(a.getId()) for a in anns]


def test_push_sends_upper_case_checksum_in_lower_case(omero_server: Any, tmp_path: Path) -> None:
    """A manifest whose SHA-1 is in upper case still imports: verifyUpload gets the lower-case hex
    OMERO computes. (Strict stand-in: verifyUpload compares with String.equals, as OMERO.)"""
    import json

    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    man = json.loads((out / "manifest.json").read_text())
    f = out / "pos001.ome.tiff"
    man["positions"]["pos001"]["mtime_ns"] = f.stat().st_mtime_ns  # trusted as unchanged
    man["positions"]["pos001"]["sha1"] = man["positions"]["pos001"]["sha1"].upper()
    (out / "manifest.json").write_text(json.dumps(man))
    result = push([out], **push_kw(omero_server, dataset="upper", mode="import", retries=0))
    assert [r.status for r in result.images] == ["created"]


def test_zstd_import_on_an_old_server_stops_before_uploading(
    omero_server_factory: Any, tmp_path: Path
) -> None:
    """Before importing a zstd-compressed file the push reads the server's version
    (IConfig.getVersion): a stand-in playing Bio-Formats 6.10 says 5.6.8, older than 5.6.9, so
    the push stops with one line naming the fix, and nothing reaches the server; pixels mode
    (which decodes locally) pushes the same file."""
    from omero_push.errors import ServerError

    omero_server = omero_server_factory(bioformats_version="6.10")

    f = tmp_path / "z.ome.tiff"
    make_ome_tiff(f, name="z", compression="zstd")
    kw = push_kw(omero_server, dataset="zstd", retries=0)
    with pytest.raises(ServerError) as err:
        push([f], mode="import", **kw)
    msg = str(err.value)
    assert "\n" not in msg and "z.ome.tiff: zstd-compressed, which OMERO 5.6.8 cannot read" in msg
    assert "posdir2ometiff --compression zlib" in msg and "--mode pixels" in msg
    with reader(omero_server) as sf:
        assert sf.getQueryService().findAll("Fileset", None) == []
        assert sf.getQueryService().findAll("OriginalFile", None) == []
    result = push([f], mode="pixels", **kw)
    assert [r.status for r in result.images] == ["created"]

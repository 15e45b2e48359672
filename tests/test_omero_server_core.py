"""The OMERO stand-in's core, exercised with public omero-py calls only (omero.client, BlitzGateway).

Each test talks to a real server process over TCP through the real Ice runtime, so what passes
here is what the pusher will meet.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

omero = pytest.importorskip("omero")
# Glacier2 as omero-py loads it: a bare "import Glacier2" before omero.clients yields other
# exception classes, and omero.client.closeSession() then fails to catch its own exceptions.
Glacier2 = pytest.importorskip("omero.clients").Glacier2
import Ice  # noqa: E402
from omero.gateway import BlitzGateway  # noqa: E402
from omero.rtypes import rlong, rstring, unwrap  # noqa: E402
from omero.sys import ParametersI  # noqa: E402

MAP_NS = "openmicroscopy.org/omero/client/mapAnnotation"
REPO = Path(__file__).resolve().parents[1]


def _unique(name: str) -> str:
    """Names that cannot clash with earlier runs (the same tests run against a real OMERO)."""
    return f"omero-push-test-{name}-{uuid.uuid4().hex[:8]}"


def _image(name: str, channels: list[str]) -> omero.model.ImageI:
    """An Image with Pixels, Channels and LogicalChannels as a client builds one."""
    image = omero.model.ImageI()
    image.name = rstring(name)
    pixels = omero.model.PixelsI()
    pixels.sizeX, pixels.sizeY, pixels.sizeZ = omero.rtypes.rint(64), omero.rtypes.rint(32), omero.rtypes.rint(1)
    pixels.sizeC, pixels.sizeT = omero.rtypes.rint(len(channels)), omero.rtypes.rint(1)
    pixels.sha1 = rstring("")  # not-null in OMERO; the pixels service fills it
    pixels.physicalSizeX = omero.model.LengthI(0.65, omero.model.enums.UnitsLength.MICROMETER)
    # pixelsType and dimensionOrder are enumerations: callers set the server's entries
    for label in channels:
        ch = omero.model.ChannelI()
        lc = omero.model.LogicalChannelI()
        lc.name = rstring(label)
        ch.logicalChannel = lc
        pixels.addChannel(ch)
    image.addPixels(pixels)
    return image


@pytest.fixture
def server(omero_server_session):
    """The server under test: the session's stand-in here; test_omero_real.py points it at OMERO.

    Tests using it create uniquely named objects and never assume an empty server.
    """
    return omero_server_session


def _enum(client: omero.client, kind: str, value: str) -> omero.model.IObject:
    return client.sf.getQueryService().findByString(kind, "value", value)


# --------------------------------------------------------------------------- sessions

def test_login_event_context_keepalive_and_close(server) -> None:
    c = omero.client(host=server.url, port=server.port)
    try:
        sf = c.createSession(server.user, server.password)
        ec = sf.getAdminService().getEventContext()
        assert ec.userName == server.user
        assert ec.sessionUuid == c.getSessionId()
        assert ec.groupId in ec.memberOfGroups
        if server.user == "root":
            assert ec.userId == 0 and ec.groupName == "system" and ec.isAdmin
        types = [e.value.val for e in sf.getTypesService().allEnumerations("omero.model.PixelsType")]
        assert {"uint8", "uint16", "float"} <= set(types)
        assert sf.getConfigService().getVersion()
        assert sf.keepAlive(sf.getQueryService()) is True
        assert sf.keepAllAlive([sf.getQueryService(), sf.getUpdateService()]) == 0
    finally:
        c.closeSession()
    with pytest.raises(omero.ClientError):
        c.getSession()


def test_wrong_password_fails_as_omero_does(server) -> None:
    c = omero.client(host=server.url, port=server.port)
    try:
        with pytest.raises(Glacier2.PermissionDeniedException) as info:
            c.createSession(server.user, "not-the-password")
        assert "Password check failed" in info.value.reason
    finally:
        c.closeSession()


def test_join_session_by_uuid(server) -> None:
    first = server.client()
    try:
        other = omero.client(host=server.url, port=server.port)
        try:
            sf = other.joinSession(first.getSessionId())
            assert sf.getAdminService().getEventContext().sessionUuid == first.getSessionId()
        finally:
            other.closeSession()
    finally:
        first.closeSession()


def test_non_root_user_has_own_group(omero_server_factory) -> None:
    server = omero_server_factory(user="alice", password="secret")
    c = server.client()
    try:
        ec = c.sf.getAdminService().getEventContext()
        assert ec.userName == "alice" and not ec.isAdmin
        assert ec.groupName == "default"
        assert str(ec.groupPermissions) == "rwra--"
    finally:
        c.closeSession()


# --------------------------------------------------------------------------- saving and reading

def test_save_project_dataset_image_graph_and_read_back(server) -> None:
    c = server.client()
    try:
        sf = c.sf
        image = _image("img-1", ["GFP", "mCherry", "Brightfield"])
        image.getPrimaryPixels().pixelsType = _enum(c, "PixelsType", "uint16")
        image.getPrimaryPixels().dimensionOrder = _enum(c, "DimensionOrder", "XYZCT")
        project = omero.model.ProjectI()
        project.name = rstring("exp-project")
        dataset = omero.model.DatasetI()
        dataset.name = rstring("exp-dataset")
        project.linkDataset(dataset)
        dataset.linkImage(image)
        project = sf.getUpdateService().saveAndReturnObject(project)
        assert project.id.val > 0
        ds = project.copyDatasetLinks()[0].child
        img = ds.copyImageLinks()[0].child
        assert ds.id.val > 0 and img.id.val > 0

        q = sf.getQueryService()
        got = q.get("Image", img.id.val)
        assert got.name.val == "img-1"
        assert got.details.owner.id.val == c.sf.getAdminService().getEventContext().userId
        assert got.details.creationEvent.id.val > 0
        params = ParametersI().addId(img.id.val)
        full = q.findByQuery(
            "select i from Image i join fetch i.pixels as p join fetch p.pixelsType "
            "join fetch p.channels as c join fetch c.logicalChannel where i.id = :id", params)
        pix = full.getPrimaryPixels()
        assert pix.pixelsType.value.val == "uint16" and pix.sizeX.val == 64
        assert pix.physicalSizeX.getValue() == 0.65
        assert pix.physicalSizeX.getUnit() == omero.model.enums.UnitsLength.MICROMETER
        assert [ch.logicalChannel.name.val for ch in pix.copyChannels()] == [
            "GFP", "mCherry", "Brightfield"]

        in_ds = q.findAllByQuery(
            "select l.child from DatasetImageLink l where l.parent.id = :did",
            ParametersI().add("did", rlong(ds.id.val)))
        assert [i.id.val for i in in_ds] == [img.id.val]
        by_name = q.findAllByQuery(
            "select l.child from ProjectDatasetLink l where l.parent.id = :pid and l.child.name = :n",
            ParametersI().add("pid", rlong(project.id.val)).add("n", rstring("exp-dataset")))
        assert [d.id.val for d in by_name] == [ds.id.val]
    finally:
        c.closeSession()


def test_tags_reused_by_text_and_annotations_linked(server) -> None:
    c = server.client()
    try:
        update, q = c.sf.getUpdateService(), c.sf.getQueryService()
        ds = omero.model.DatasetI()
        ds.name = rstring("tagged")
        ds = update.saveAndReturnObject(ds)
        tag = omero.model.TagAnnotationI()
        text = _unique("timelapse")
        tag.textValue = rstring(text)
        link = omero.model.DatasetAnnotationLinkI()
        link.parent = omero.model.DatasetI(ds.id.val, False)
        link.child = tag
        link = update.saveAndReturnObject(link)
        tag_id = link.child.id.val

        found = q.findAllByQuery("select t from TagAnnotation t where t.textValue = :text",
                                 ParametersI().add("text", rstring(text)))
        assert [t.id.val for t in found] == [tag_id]
        assert q.findAllByQuery("select t from TagAnnotation t where t.textValue = :text",
                                ParametersI().add("text", rstring(_unique("absent")))) == []

        kv = omero.model.MapAnnotationI()
        kv.ns = rstring(MAP_NS)
        kv.setMapValue([omero.model.NamedValue("strain", "BY4741"), omero.model.NamedValue("aim", "x")])
        link2 = omero.model.DatasetAnnotationLinkI()
        link2.parent = omero.model.DatasetI(ds.id.val, False)
        link2.child = kv
        update.saveObject(link2)
        maps = q.findAllByQuery(
            "select l.child from DatasetAnnotationLink l where l.parent.id = :id and l.child.ns = :ns",
            ParametersI().addId(ds.id.val).add("ns", rstring(MAP_NS)))
        assert len(maps) == 1
        assert [(nv.name, nv.value) for nv in maps[0].getMapValue()] == [("strain", "BY4741"), ("aim", "x")]

        anns = c.sf.getMetadataService().loadAnnotations("Dataset", [ds.id.val], [], [], None)
        assert sorted(type(a).__name__ for a in anns[ds.id.val]) == ["MapAnnotationI", "TagAnnotationI"]
        tags_only = c.sf.getMetadataService().loadAnnotations(
            "Dataset", [ds.id.val], ["ome.model.annotations.TagAnnotation"], None, None)
        assert [a.id.val for a in tags_only[ds.id.val]] == [tag_id]
    finally:
        c.closeSession()


def test_unsupported_query_raises_api_usage(server) -> None:
    c = server.client()
    try:
        with pytest.raises(omero.ApiUsageException):
            c.sf.getQueryService().projection("select new map(i.id as id) from Image i", None)
        with pytest.raises(omero.ValidationException):
            c.sf.getQueryService().get("Image", 424242)
    finally:
        c.closeSession()


def test_unloaded_reference_to_missing_object_is_rejected(server) -> None:
    c = server.client()
    try:
        link = omero.model.DatasetImageLinkI()
        link.parent = omero.model.DatasetI(999, False)
        link.child = omero.model.ImageI(998, False)
        with pytest.raises(omero.ValidationException):
            c.sf.getUpdateService().saveObject(link)
    finally:
        c.closeSession()


def test_not_null_fields_are_enforced(server) -> None:
    c = server.client()
    try:
        with pytest.raises(omero.ValidationException) as info:
            c.sf.getUpdateService().saveObject(omero.model.DatasetI())  # no name
        assert "Dataset.name" in info.value.message
    finally:
        c.closeSession()


def test_container_service_and_delete(server) -> None:
    c = server.client()
    try:
        update = c.sf.getUpdateService()
        project = omero.model.ProjectI()
        project.name = rstring("p")
        dataset = omero.model.DatasetI()
        dataset.name = rstring("d")
        project.linkDataset(dataset)
        image = _image("i", ["c0"])
        image.getPrimaryPixels().pixelsType = _enum(c, "PixelsType", "uint8")
        image.getPrimaryPixels().dimensionOrder = _enum(c, "DimensionOrder", "XYZCT")
        dataset.linkImage(image)
        project = update.saveAndReturnObject(project)
        pid = project.id.val
        cs = c.sf.getContainerService()
        opts = omero.sys.ParametersI()
        opts.leaves()
        tree = cs.loadContainerHierarchy("Project", [pid], opts)
        ds = tree[0].copyDatasetLinks()[0].child
        assert ds.name.val == "d"
        images = cs.getImages("Project", [pid], None)
        assert [i.name.val for i in images] == ["i"]
        assert images[0].getPrimaryPixels().pixelsType.value.val == "uint8"
        assert cs.getCollectionCount("Dataset", "imageLinks", [ds.id.val], None) == {ds.id.val: 1}

        update.deleteObject(omero.model.ImageI(images[0].id.val, False))
        assert c.sf.getQueryService().find("Image", images[0].id.val) is None
        assert cs.getImages("Dataset", [ds.id.val], None) == []
    finally:
        c.closeSession()


# --------------------------------------------------------------------------- BlitzGateway

def test_blitzgateway_reads_what_was_saved(server) -> None:
    conn = BlitzGateway(server.user, server.password, host=server.url,
                        port=server.port)
    assert conn.connect(), conn.getLastError()
    try:
        assert conn.getUser().getName() == server.user
        update = conn.getUpdateService()
        ds = omero.model.DatasetI()
        ds_name = _unique("bg-dataset")
        ds.name = rstring(ds_name)
        ds.description = rstring("a description")
        image = _image("bg-image", ["DAPI", "GFP"])
        image.getPrimaryPixels().pixelsType = _enum(conn.c, "PixelsType", "uint16")
        image.getPrimaryPixels().dimensionOrder = _enum(conn.c, "DimensionOrder", "XYZCT")
        ds.linkImage(image)
        ds = update.saveAndReturnObject(ds)
        tag = omero.model.TagAnnotationI()
        tag.textValue = rstring("bg-tag")  # (listAnnotations reads it back through the link)
        img_id = ds.copyImageLinks()[0].child.id.val
        link = omero.model.ImageAnnotationLinkI()
        link.parent = omero.model.ImageI(img_id, False)
        link.child = tag
        update.saveObject(link)

        dataset = conn.getObject("Dataset", ds.id.val)
        assert dataset.getName() == ds_name and dataset.getDescription() == "a description"
        children = list(dataset.listChildren())
        assert [i.getName() for i in children] == ["bg-image"]
        assert [i.getId() for i in conn.getObjects("Image", opts={"dataset": ds.id.val})] == [img_id]
        img = conn.getObject("Image", img_id)
        assert img.getPrimaryPixels().getPixelsType().getValue() == "uint16"
        assert img.getChannelLabels() == ["DAPI", "GFP"]
        assert [ch.getLabel() for ch in img.getChannels(noRE=True)] == ["DAPI", "GFP"]
        assert [a.getValue() for a in img.listAnnotations()] == ["bg-tag"]
        assert [d.getId() for d in conn.getObjects("Dataset", attributes={"name": ds_name})] == [ds.id.val]
    finally:
        conn.close()


# --------------------------------------------------------------------------- lifecycle and faults

def test_restart_keeps_saved_objects(omero_server) -> None:
    c = omero_server.client()
    ds = omero.model.DatasetI()
    ds.name = rstring("survivor")
    did = c.sf.getUpdateService().saveAndReturnObject(ds).id.val
    c.closeSession()
    omero_server.kill()  # a crash, not a clean stop: the commit must already be on disk
    omero_server.start()
    c = omero_server.client()
    try:
        got = c.sf.getQueryService().get("Dataset", did)
        assert got.name.val == "survivor"
        ds2 = omero.model.DatasetI()
        ds2.name = rstring("after")
        assert c.sf.getUpdateService().saveAndReturnObject(ds2).id.val > did  # ids never reused
    finally:
        c.closeSession()


def test_sigterm_stops_cleanly(omero_server) -> None:
    c = omero_server.client()
    c.closeSession()
    assert omero_server.stop() == 0
    assert "Traceback" not in omero_server.stderr, omero_server.stderr
    # SQLite was closed: its write-ahead log is checkpointed and removed on the last close
    assert not (omero_server.store_dir / "objects.sqlite-wal").exists()


def test_delay_fault_slows_replies(omero_server_factory) -> None:
    server = omero_server_factory(delay_ms=300)
    c = server.client()
    try:
        q = c.sf.getQueryService()
        q.find("Dataset", 1)  # warm up the proxy
        t0 = time.monotonic()
        q.find("Dataset", 1)
        assert time.monotonic() - t0 >= 0.3
    finally:
        c.closeSession()


def test_query_forms_blitzgateway_composes(omero_server) -> None:
    """Counts, exists-subqueries, order by and paging as BlitzGateway sends them."""
    c = omero_server.client()
    try:
        update, q = c.sf.getUpdateService(), c.sf.getQueryService()
        names = ["b", "a", "c"]
        for n in names:
            d = omero.model.DatasetI()
            d.name = rstring(n)
            update.saveObject(d)
        rows = q.projection("select count(distinct obj) from Dataset obj", None)
        assert unwrap(rows[0][0]) == 3
        ordered = q.findAllByQuery("select obj from Dataset obj order by lower(obj.name), obj.id", None)
        assert [d.name.val for d in ordered] == ["a", "b", "c"]
        page = ParametersI()
        page.page(1, 1)
        assert [d.name.val for d in q.findAllByQuery(
            "select obj from Dataset obj order by obj.name", page)] == ["b"]
        orphans = q.findAllByQuery(
            "select obj from Dataset obj where not exists "
            "(select l from ProjectDatasetLink as l where l.child = obj.id)", None)
        assert len(orphans) == 3
    finally:
        c.closeSession()


def test_pusher_query_shapes(server) -> None:
    """The lookups the pusher makes to reuse what exists: every shape the README lists."""
    c = server.client()
    try:
        update, q = c.sf.getUpdateService(), c.sf.getQueryService()
        pname, dname, fname = _unique("project"), _unique("dataset"), _unique("file.ome.tiff")
        project = omero.model.ProjectI()
        project.name = rstring(pname)
        dataset = omero.model.DatasetI()
        dataset.name = rstring(dname)
        project.linkDataset(dataset)
        project = update.saveAndReturnObject(project)
        pid = project.id.val
        did = project.copyDatasetLinks()[0].child.id.val

        ofile = omero.model.OriginalFileI()
        ofile.name, ofile.path = rstring(fname), rstring("/in/")
        ofile.hash = rstring("ab" * 20)
        ofile.size = rlong(10)
        fa = omero.model.FileAnnotationI()
        fa.file = ofile
        fa.ns = rstring("openmicroscopy.org/omero/bulk_annotations")
        kv = omero.model.MapAnnotationI()
        kv.ns = rstring("swainlab.org/omero-push/provenance")
        key = _unique("sha1")
        kv.setMapValue([omero.model.NamedValue("source_sha1", key)])
        links = []
        for ann in (fa, kv):
            link = omero.model.DatasetAnnotationLinkI()
            link.parent = omero.model.DatasetI(did, False)
            link.child = ann
            links.append(link)
        saved = update.saveAndReturnArray(links)
        fa_id, kv_id = (link.child.id.val for link in saved)

        def ids(query: str, params: ParametersI) -> list[int]:
            return [o.id.val for o in q.findAllByQuery(query, params)]

        p = ParametersI().add("name", rstring(pname))
        assert ids("select p from Project p where p.name = :name", p) == [pid]
        p = ParametersI().add("name", rstring(dname))
        assert ids("select d from Dataset d where d.name = :name", p) == [did]
        p = ParametersI().add("pid", rlong(pid)).add("name", rstring(dname))
        assert ids("select d from Dataset d join d.projectLinks l "
                   "where l.parent.id = :pid and d.name = :name", p) == [did]
        p = ParametersI().add("h", rstring("ab" * 20)).add("n", rstring(fname))
        found = q.findAllByQuery("select f from OriginalFile f where f.hash = :h and f.name = :n", p)
        assert [f.size.val for f in found] == [10]
        p = ParametersI().add("k", rstring("source_sha1")).add("v", rstring(key))
        assert ids("select a from MapAnnotation a join a.mapValue mv "
                   "where mv.name = :k and mv.value = :v", p) == [kv_id]
        p = ParametersI().addId(did).add("ns", rstring("openmicroscopy.org/omero/bulk_annotations"))
        tables = q.findAllByQuery(
            "select l.child from DatasetAnnotationLink l join fetch l.child.file "
            "where l.parent.id = :id and l.child.ns = :ns", p)
        assert [a.id.val for a in tables] == [fa_id]
        assert tables[0].file.name.val == fname  # fetched
        p = ParametersI().add("p", rlong(pid)).add("c", rlong(did))
        assert len(ids("select l from ProjectDatasetLink l "
                       "where l.parent.id = :p and l.child.id = :c", p)) == 1
        rows = q.projection("select l.child.id, l.child.ns from DatasetAnnotationLink l "
                            "where l.parent.id = :id order by l.child.id", ParametersI().addId(did))
        assert [[unwrap(v) for v in r] for r in rows] == [
            [fa_id, "openmicroscopy.org/omero/bulk_annotations"],
            [kv_id, "swainlab.org/omero-push/provenance"]]
        assert q.findByString("OriginalFile", "name", fname).id.val == found[0].id.val
        unqualified = q.findAllByQuery("from Dataset where id = :id", ParametersI().addId(did))
        assert [d.name.val for d in unqualified] == [dname]
    finally:
        c.closeSession()


def test_delete_objects_as_blitzgateway_sends_it(server) -> None:
    """conn.deleteObjects submits omero.cmd.Delete2 and waits on the handle (OMERO's default graph)."""
    conn = server.gateway()
    try:
        update = conn.getUpdateService()
        ds = omero.model.DatasetI()
        ds.name = rstring(_unique("doomed"))
        image = _image("doomed-image", ["c0"])
        image.getPrimaryPixels().pixelsType = _enum(conn.c, "PixelsType", "uint8")
        image.getPrimaryPixels().dimensionOrder = _enum(conn.c, "DimensionOrder", "XYZCT")
        ds.linkImage(image)
        ds = update.saveAndReturnObject(ds)
        iid = ds.copyImageLinks()[0].child.id.val
        tag = omero.model.TagAnnotationI()
        tag.textValue = rstring(_unique("kept-tag"))
        kv = omero.model.MapAnnotationI()
        kv.setMapValue([omero.model.NamedValue("k", "v")])
        links = []
        for ann in (tag, kv):
            link = omero.model.ImageAnnotationLinkI()
            link.parent = omero.model.ImageI(iid, False)
            link.child = ann
            links.append(link)
        tag_id, kv_id = (link.child.id.val for link in update.saveAndReturnArray(links))

        conn.deleteObjects("Dataset", [ds.id.val], wait=True)
        q = conn.getQueryService()
        assert q.find("Dataset", ds.id.val) is None
        assert q.find("Image", iid) is None  # only in this dataset: deleted with it
        assert q.find("MapAnnotation", kv_id) is None  # only on this image
        assert q.find("TagAnnotation", tag_id) is not None  # tags are shared: kept
    finally:
        conn.close()


def test_ssl_as_omero_py_connects_by_default(omero_server_factory) -> None:
    server = omero_server_factory(ssl=True)
    conn = BlitzGateway(server.user, server.password, host=server.host, port=server.ssl_port)
    assert conn.connect(), conn.getLastError()
    try:
        assert conn.getEventContext().userName == server.user
    finally:
        conn.close()
    server.restart()  # same ports, same certificate
    c = server.client(ssl=True)
    c.closeSession()


def test_group_context_outside_membership_is_refused(server) -> None:
    """BlitzGateway(group=...) puts omero.group in every call; a foreign group is refused."""
    c = server.client()
    try:
        admin = c.sf.getAdminService()
        ec = admin.getEventContext()
        with pytest.raises(omero.SecurityViolation):
            admin.getEventContext({"omero.group": "987654"})
        allgroups = {"omero.group": "-1"}
        assert admin.getEventContext(allgroups).groupId == ec.groupId
        mine = {"omero.group": str(ec.groupId)}
        assert admin.getEventContext(mine).groupId == ec.groupId
    finally:
        c.closeSession()


def test_drop_fault_closes_the_connection_once() -> None:
    """The contract the pixels service relies on: the write after the N-th drops, once."""
    from tests.omero_server.faults import Faults

    closed: list[bool] = []

    class Con:
        def close(self, force: bool) -> None:
            closed.append(force)

    class Current:
        con = Con()

    faults = Faults(drop_after_pixel_writes=2)
    assert [faults.count_pixel_write(Current()) for _ in range(5)] == [False, False, True, False, False]
    assert closed == [True]
    assert not any(Faults().count_pixel_write(Current()) for _ in range(3))


def test_drop_fault_ends_the_logins_before_it_closes_the_connection() -> None:
    """Without a Glacier2 the stand-in plays the router: the dropped connection's logins (their
    pixel buffers) end before the connection closes, not later in its close callback, so no
    request can reach a buffer half torn down (a CI run's 4th write got "pixel buffer is
    closed" instead of a lost connection) or write after the drop."""
    import threading
    from types import SimpleNamespace

    from tests.omero_server.session import RouterI

    events: list[str] = []

    class Login:
        def destroy(self, current: object) -> None:
            events.append("logins end")

    class Con:
        def toString(self) -> str:  # noqa: N802 - Ice's name
            return "tcp 127.0.0.1:1 -> 127.0.0.1:2"

        def close(self, force: bool) -> None:
            events.append(f"connection closed (force={force})")

    class Current:
        con = Con()

    router = RouterI(SimpleNamespace(lock=threading.RLock()))  # type: ignore[arg-type]
    router._by_con[Current.con.toString()] = [Login(), Login()]
    router.lose_connection(Current())
    assert events == ["logins end", "logins end", "connection closed (force=True)"]
    assert not router._by_con
    router.lose_connection(Current())  # a second drop finds nothing left to end
    assert events[-1] == "connection closed (force=True)" and len(events) == 4


def test_lost_connection_ends_its_logins_but_not_the_session(server) -> None:
    """As with Glacier2: a vanished client's services go; a detached session can be rejoined.

    (Without ``detachOnDestroy`` OMERO closes the session with its last login: see
    test_omero_server_strict_sessions.py.)
    """
    a = server.client()
    a.getSession().detachOnDestroy()
    uuid_a = a.getSessionId()
    query_a = str(a.sf.getQueryService())
    a.getCommunicator().destroy()  # the client process "dies": no closeSession
    b = server.client()
    try:
        stale = omero.api.IQueryPrx.uncheckedCast(b.getCommunicator().stringToProxy(query_a))
        deadline = time.monotonic() + 10
        while True:
            try:
                stale.find("Dataset", 1)
            except Ice.ObjectNotExistException:
                break
            assert time.monotonic() < deadline, "servants of the lost connection are still there"
            time.sleep(0.1)
        again = omero.client(host=server.url, port=server.port)
        try:
            sf = again.joinSession(uuid_a)
            assert sf.getAdminService().getEventContext().sessionUuid == uuid_a
        finally:
            again.closeSession()
    finally:
        b.closeSession()


def test_sigterm_stops_even_with_a_request_in_progress(omero_server_factory) -> None:
    """A reply delayed for a minute must not keep a stopped server alive (it exits non-zero)."""
    import contextlib
    import threading

    server = omero_server_factory(delay_ms=60_000)
    client = omero.client(host=server.url, port=server.port)

    def login() -> None:
        with contextlib.suppress(Exception):  # the server goes away under it: expected
            client.createSession(server.user, server.password)

    thread = threading.Thread(target=login, daemon=True)
    thread.start()
    time.sleep(1.0)  # the login is now being "processed"
    t0 = time.monotonic()
    assert server.stop(timeout=30) == 1
    assert time.monotonic() - t0 < 20
    client.closeSession()


def test_query_conditions_and_aggregates(server) -> None:
    """or / not / like / is null / in (...) / group by, as hand-written HQL uses them."""
    c = server.client()
    try:
        update, q = c.sf.getUpdateService(), c.sf.getQueryService()
        stem = _unique("cond")
        made = []
        for i, desc in enumerate(["first", None, "third"]):
            d = omero.model.DatasetI()
            d.name = rstring(f"{stem}-{i}")
            if desc is not None:
                d.description = rstring(desc)
            made.append(update.saveAndReturnObject(d).id.val)
        like = ParametersI().add("pat", rstring(f"{stem}-%"))

        def names(where: str, params: ParametersI = like) -> list[str]:
            rows = q.findAllByQuery(f"select d from Dataset d where d.name like :pat and ({where}) "
                                    "order by d.name desc", params)
            return [d.name.val.rsplit("-", 1)[-1] for d in rows]

        assert names("d.description is null") == ["1"]
        assert names("d.description is not null") == ["2", "0"]
        assert names("d.description = 'first' or d.description = 'third'") == ["2", "0"]
        assert names("not (d.description = 'first')") == ["2"]  # null compares as unknown: dropped
        ids = ParametersI().add("pat", rstring(f"{stem}-%")).addIds(made[:2])
        assert names("d.id in (:ids)", ids) == ["1", "0"]
        assert names(f"upper(d.name) = '{stem.upper()}-2'") == ["2"]
        rows = q.projection("select d.description, count(d) from Dataset d where d.name like :pat "
                            "group by d.description order by d.description", like)
        assert sorted((unwrap(a) or "", unwrap(n)) for a, n in rows) == [("", 1), ("first", 1), ("third", 1)]
    finally:
        c.closeSession()


# --------------------------------------------------------------------------- the CLI (issue point 1)

def _cli(store: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m tests.omero_server --store STORE ARGS`` as a user starts it (no fixture)."""
    return subprocess.Popen([sys.executable, "-m", "tests.omero_server", "--store", str(store), *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_cli_defaults_root_omero_and_stops_on_sigint(tmp_path: Path) -> None:
    """No --user/--password and no OMERO_STANDIN_PASSWORD: root/omero, as a fresh OMERO; the
    first line is exactly ``listening on <port>``; Ctrl-C (SIGINT) stops it with status 0."""
    env = {k: v for k, v in os.environ.items() if k != "OMERO_STANDIN_PASSWORD"}
    proc = _cli(tmp_path / "store", "--port", "0", env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.fullmatch(r"listening on \d+\n", line), line + proc.stderr.read()
        c = omero.client(host="tcp://127.0.0.1", port=int(line.split()[-1]))
        try:
            ec = c.createSession("root", "omero").getAdminService().getEventContext()
            assert (ec.userName, ec.isAdmin) == ("root", True)
        finally:
            c.closeSession()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert not (tmp_path / "store" / "objects.sqlite-wal").exists()  # SQLite closed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cli_port_in_use_is_one_line_and_status_2(omero_server, tmp_path: Path) -> None:
    """A server that cannot start says why in one line on stderr and exits 2 (no traceback)."""
    proc = _cli(tmp_path / "other", "--port", str(omero_server.port))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"omero stand-in: cannot start on port {omero_server.port}"), err
    assert "listening" not in out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_and_restart_keeps_the_store(omero_server, signum: int) -> None:
    """Both signals: status 0, no traceback, SQLite closed; the next start reads the same store."""
    c = omero_server.client()
    ds = omero.model.DatasetI()
    ds.name = rstring("before-the-signal")
    did = c.sf.getUpdateService().saveAndReturnObject(ds).id.val
    c.closeSession()
    omero_server.proc.send_signal(signum)
    assert omero_server.proc.wait(30) == 0
    assert "Traceback" not in omero_server.stderr, omero_server.stderr
    assert not (omero_server.store_dir / "objects.sqlite-wal").exists()
    omero_server.start()
    c = omero_server.client()
    try:
        assert c.sf.getQueryService().get("Dataset", did).name.val == "before-the-signal"
    finally:
        c.closeSession()


# --------------------------------------------------------------------------- what is not served

@pytest.mark.parametrize("query", [
    "select new map(i.id as id) from Image i",
    "select d.name, count(d) from Dataset d group by d.name having count(d) > 1",
    "select d from Dataset d where d.id in (select l.child.id from ProjectDatasetLink l)",
    "select maxIndex(p.channels) from Pixels p",
    "select i from Image i where length(i.name) > 3",
    "update Dataset set name = 'x'",
])
def test_unsupported_hql_raises_api_usage(omero_server_session, query: str) -> None:
    """Every HQL shape outside the documented ones fails with ApiUsageException naming the
    stand-in (never a wrong answer, never a hang), through findAllByQuery and projection."""
    c = omero_server_session.client()
    try:
        q = c.sf.getQueryService()
        for call in (q.findAllByQuery, q.projection):
            with pytest.raises(omero.ApiUsageException) as info:
                call(query, None)
            assert "stand-in" in info.value.message
    finally:
        c.closeSession()


def test_unserved_operations_and_services_fail_at_once(omero_server_session) -> None:
    """An operation or service the stand-in does not implement answers ApiUsageException."""
    c = omero_server_session.client()
    try:
        with pytest.raises(omero.ApiUsageException) as info:
            c.sf.getQueryService().findAllByFullText("Image", "gfp", None)
        assert "not supported by the OMERO stand-in" in info.value.message
        with pytest.raises(omero.ApiUsageException):
            c.sf.getRoiService()
        with pytest.raises(omero.ApiUsageException):
            c.sf.getScriptService()
    finally:
        c.closeSession()


def test_find_all_by_string(server) -> None:
    """findAllByString: exact value, case-sensitive or not."""
    c = server.client()
    try:
        name = _unique("Find-By-String")
        ds = omero.model.DatasetI()
        ds.name = rstring(name)
        did = c.sf.getUpdateService().saveAndReturnObject(ds).id.val
        q = c.sf.getQueryService()
        assert [d.id.val for d in q.findAllByString("Dataset", "name", name, True, None)] == [did]
        assert q.findAllByString("Dataset", "name", name.lower(), True, None) == []
        assert [d.id.val for d in q.findAllByString("Dataset", "name", name.lower(), False, None)] == [did]
    finally:
        c.closeSession()


def test_restart_keeps_links_annotations_and_sessions_end(omero_server) -> None:
    """After a crash (SIGKILL) and restart: Project-Dataset-Image links and a tag are found by
    the pusher's lookups; the old session is gone (as after an OMERO restart)."""
    c = omero_server.client()
    update = c.sf.getUpdateService()
    project = omero.model.ProjectI()
    project.name = rstring("kept-project")
    dataset = omero.model.DatasetI()
    dataset.name = rstring("kept-dataset")
    project.linkDataset(dataset)
    image = _image("kept-image", ["c0"])
    image.getPrimaryPixels().pixelsType = _enum(c, "PixelsType", "uint8")
    image.getPrimaryPixels().dimensionOrder = _enum(c, "DimensionOrder", "XYZCT")
    dataset.linkImage(image)
    project = update.saveAndReturnObject(project)
    pid = project.id.val
    did = project.copyDatasetLinks()[0].child.id.val
    tag = omero.model.TagAnnotationI()
    tag.textValue = rstring("kept-tag")
    link = omero.model.DatasetAnnotationLinkI()
    link.parent = omero.model.DatasetI(did, False)
    link.child = tag
    tag_id = update.saveAndReturnObject(link).child.id.val
    old_uuid = c.getSessionId()
    omero_server.kill()
    c.closeSession()
    omero_server.start()
    c = omero_server.client()
    try:
        q = c.sf.getQueryService()
        found = q.findAllByQuery(
            "select l.child from ProjectDatasetLink l where l.parent.id = :pid and l.child.name = :n",
            ParametersI().add("pid", rlong(pid)).add("n", rstring("kept-dataset")))
        assert [d.id.val for d in found] == [did]
        images = c.sf.getContainerService().getImages("Project", [pid], None)
        assert [i.name.val for i in images] == ["kept-image"]
        tags = q.findAllByQuery("select t from TagAnnotation t where t.textValue = :t",
                                ParametersI().add("t", rstring("kept-tag")))
        assert [t.id.val for t in tags] == [tag_id]
        anns = c.sf.getMetadataService().loadAnnotations("Dataset", [did], [], [], None)
        assert [a.id.val for a in anns[did]] == [tag_id]
    finally:
        c.closeSession()
    again = omero.client(host=omero_server.url, port=omero_server.port)
    try:
        with pytest.raises(Glacier2.PermissionDeniedException):
            again.joinSession(old_uuid)
    finally:
        again.closeSession()


# --------------------------------------------------------------------------- it says what it is (point 6)

def test_it_says_it_is_a_stand_in(omero_server_session) -> None:
    """The README's title and the CLI's help say "not OMERO"; a client sees it in the version."""
    readme = (REPO / "tests" / "omero_server" / "README.md").read_text(encoding="utf-8")
    assert "not** OMERO" in readme.splitlines()[0]
    help_text = subprocess.run([sys.executable, "-m", "tests.omero_server", "--help"], cwd=REPO,
                               capture_output=True, text=True, timeout=60).stdout
    assert "stand-in for tests (not OMERO)" in help_text
    c = omero_server_session.client()
    try:
        assert c.sf.getConfigService().getVersion().endswith("-standin")
    finally:
        c.closeSession()


def test_docker_compose_describes_a_real_omero() -> None:
    """docker/ runs OMERO.server, PostgreSQL and OMERO.web; no password is written in it."""
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((REPO / "docker" / "docker-compose.yml").read_text(encoding="utf-8"))
    images = {name: svc["image"] for name, svc in compose["services"].items()}
    assert any(i.startswith("openmicroscopy/omero-server:") for i in images.values()), images
    assert any(i.startswith("postgres:") for i in images.values()), images
    assert any(i.startswith("openmicroscopy/omero-web") for i in images.values()), images
    server = next(s for s in compose["services"].values()
                  if s["image"].startswith("openmicroscopy/omero-server:"))
    assert server["environment"]["ROOTPASS"].startswith("${OMERO_ROOT_PASSWORD:?")  # must be set
    assert {"4063:4063", "4064:4064"} <= set(server["ports"])


def test_real_omero_tests_run_when_omero_host_is_set(omero_server) -> None:
    """tests/test_omero_real.py, pointed by OMERO_HOST/PORT/USER/PASSWORD at a server (here the
    stand-in, standing in for OMERO), runs its tests instead of skipping them, and they pass.

    omero_push's end-to-end tests in that suite ("push" in their names) are left out here:
    against the stand-in they are test_push_omero.py's own, run there.
    """
    env = dict(os.environ, OMERO_HOST=omero_server.url, OMERO_PORT=str(omero_server.port),
               OMERO_USER=omero_server.user, OMERO_PASSWORD=omero_server.password)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-k", "not push", "tests/test_omero_real.py"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"\b10 passed\b", done.stdout), done.stdout[-2000:]
    assert "skipped" not in done.stdout


def test_update_service_save_forms_and_delete(server) -> None:
    """saveObject/saveCollection/saveArray/saveAndReturnIds/saveAndReturnArray all store, with
    fresh ids; deleteObject removes; an edited loaded object is merged, not duplicated."""
    c = server.client()
    try:
        update, q = c.sf.getUpdateService(), c.sf.getQueryService()
        stem = _unique("forms")

        def dataset(suffix: str) -> omero.model.DatasetI:
            d = omero.model.DatasetI()
            d.name = rstring(f"{stem}-{suffix}")
            return d

        update.saveObject(dataset("object"))
        update.saveCollection([dataset("coll-1"), dataset("coll-2")])
        update.saveArray([dataset("array")])
        ids = update.saveAndReturnIds([dataset("ids-1"), dataset("ids-2")])
        returned = update.saveAndReturnArray([dataset("returned")])
        assert len(set(ids)) == 2 and returned[0].id.val not in ids

        def names() -> list[str]:
            found = q.findAllByQuery("select d from Dataset d where d.name like :p",
                                     ParametersI().add("p", rstring(f"{stem}-%")))
            return sorted(d.name.val[len(stem) + 1:] for d in found)

        assert names() == ["array", "coll-1", "coll-2", "ids-1", "ids-2", "object", "returned"]
        edited = q.get("Dataset", ids[0])
        edited.name = rstring(f"{stem}-renamed")
        update.saveObject(edited)
        update.deleteObject(omero.model.DatasetI(ids[1], False))
        assert names() == ["array", "coll-1", "coll-2", "object", "renamed", "returned"]
    finally:
        c.closeSession()

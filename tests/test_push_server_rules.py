"""omero_push against what a real OMERO 5.6 does, checked on the client side (no server).

These tests give the pusher omero-py model objects and small fakes for the services, and check
precisely what it sends and decides, where a situation is hard to bring about on the stand-in
(tests/omero_server), which now has users, ``listImports`` and a background import that can
be held (tests/test_push_omero.py covers those against it).  Each cites the OMERO source it
follows.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("omero")
import omero  # noqa: E402
import omero.model  # noqa: E402
import omero.sys  # noqa: E402
from omero.rtypes import rlong, rstring  # noqa: E402

from omero_push import annotate, imports, pixels, upload  # noqa: E402
from omero_push.errors import InputError, ServerError  # noqa: E402
from omero_push.ometiff import ImageMeta, PushItem  # noqa: E402

ME, OTHER = 2, 3


# --- fakes ---------------------------------------------------------------------------------------


@dataclass
class FakeQuery:
    """IQuery that answers findAllByQuery from a list and records every (query, params) sent."""

    objects: list[Any] = field(default_factory=list)
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def findAllByQuery(self, query: str, params: Any, ctx: Any = None) -> list[Any]:  # noqa: N802
        values = {k: getattr(v, "val", v) for k, v in (params.map or {}).items()}
        self.sent.append((query, values))
        kind = query.split(" from ")[1].split()[0]
        out = []
        for o in self.objects:
            if type(o).__name__ != kind + "I":
                continue
            if "textValue = :value" in query and o.getTextValue().val != values["value"]:
                continue
            out.append(o)
        return out

    def findAllByString(self, *a: Any, **k: Any) -> list[Any]:  # noqa: N802
        pytest.fail("findAllByString matches LIKE '%value%' on OMERO: never use it")


@dataclass
class FakeSession:
    """The parts of omero_push.session.Session the functions under test use."""

    q: FakeQuery = field(default_factory=FakeQuery)
    user_id: int = ME
    cache: dict[str, Any] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    client: Any = None

    def query(self) -> FakeQuery:
        return self.q


def tag(tid: int, text: str, owner: int, *, can_annotate: bool = True) -> Any:
    """A TagAnnotation as OMERO returns it: owner, and permissions with the caller's restrictions.

    The server fills ``Permissions._restrictions`` per object for the caller (ome/omero-py
    ``omero_model_PermissionsI.py``: ``canAnnotate`` is ``not isDisallow(ANNOTATERESTRICTION)``).
    """
    import omero.constants.permissions as ocp

    t = omero.model.TagAnnotationI(tid, True)
    t.setTextValue(rstring(text))
    d = t.getDetails()
    d._owner = omero.model.ExperimenterI(owner, False)
    perms = omero.model.PermissionsI("rwra--")
    restrictions = [False] * 8
    restrictions[ocp.ANNOTATERESTRICTION] = not can_annotate
    perms._restrictions = restrictions
    d._permissions = perms
    return t


# --- 1. exact names ------------------------------------------------------------------------------


def test_lookups_send_exact_hql_with_bound_parameters() -> None:
    """Names and markers travel as bound parameters of ``= :value`` (owner-filtered for our own
    containers and markers), never through findAllByString; a quote or % stays a character."""
    s = FakeSession()
    odd = "50% d'or_ü"
    annotate.find_dataset(s, odd, None)  # type: ignore[arg-type]
    annotate.find_project(s, odd)  # type: ignore[arg-type]
    annotate.find_images_by_description(s, "omero-push: incomplete upload of ab series 1")  # type: ignore[arg-type]
    annotate.find_tag(s, odd)  # type: ignore[arg-type]
    (ds_q, ds_p), (pr_q, pr_p), (im_q, im_p), (tg_q, tg_p) = s.q.sent
    assert ds_q.startswith("select o from Dataset o where o.name = :value")
    assert ds_p == {"value": odd, "uid": ME}
    assert "from Project o where o.name = :value and o.details.owner.id = :uid" in pr_q
    assert pr_p == {"value": odd, "uid": ME}
    assert "from Image o where o.description = :value" in im_q
    assert im_p["value"].endswith(" series 1")
    assert "from TagAnnotation o where o.textValue = :value" in tg_q and "uid" not in tg_p
    assert all(odd not in q for q, _ in s.q.sent)  # values are never spliced into the HQL


# --- 8. tags of other users: only where the group allows annotating ------------------------------


def test_other_users_tag_is_reused_only_where_it_may_be_linked() -> None:
    """Of the tags with the text, the oldest the user may link wins: their own, or another
    user's where ``canAnnotate`` (read-annotate group); a tag the user may not link (read-only or
    private group) is passed over and the user's own is made."""
    theirs_ok = tag(5, "glucose", OTHER, can_annotate=True)
    mine = tag(9, "glucose", ME)
    s = FakeSession(FakeQuery([mine, theirs_ok]))
    assert annotate.find_tag(s, "glucose") == 5  # type: ignore[arg-type]

    theirs_locked = tag(5, "glucose", OTHER, can_annotate=False)
    s = FakeSession(FakeQuery([mine, theirs_locked]))
    assert annotate.find_tag(s, "glucose") == 9  # type: ignore[arg-type]

    s = FakeSession(FakeQuery([theirs_locked]))
    assert annotate.find_tag(s, "glucose") is None  # type: ignore[arg-type]


def test_a_tag_that_may_not_be_linked_makes_the_users_own() -> None:
    """get_or_create_tag creates the user's own tag when the only one with the text is another
    user's that the group does not let them link."""

    class Update:
        saved: list[Any] = []

        def saveAndReturnObject(self, obj: Any) -> Any:  # noqa: N802
            obj.setId(rlong(42))
            self.saved.append(obj)
            return obj

    upd = Update()
    s = FakeSession(FakeQuery([tag(5, "glucose", OTHER, can_annotate=False)]))
    s.update = lambda: upd  # type: ignore[attr-defined]
    assert annotate.get_or_create_tag(s, "glucose") == (42, True)  # type: ignore[arg-type]
    assert upd.saved[0].getTextValue().val == "glucose"


# --- 3. pixels mode: the server's tiles, checked, within the message limit -----------------------


@dataclass
class FakeRps:
    tile: tuple[int, int]
    pyramid: bool

    def getTileSize(self) -> list[int]:  # noqa: N802
        return list(self.tile)

    def requiresPixelsPyramid(self) -> bool:  # noqa: N802
        return self.pyramid


def image(x: int, y: int) -> ImageMeta:
    return ImageMeta(
        index=0,
        name="im",
        description=None,
        sizes={"X": x, "Y": y, "Z": 1, "C": 1, "T": 1},
        pixel_type="uint16",
        dimension_order="XYZCT",
        channels=(),
    )


def test_tile_plan_follows_the_buffer_kind() -> None:
    """ROMIO (ome/omero-romio RomioPixelBuffer.setTile): full-width strips, several calls in
    flight; pyramid (BfPyramidPixelBuffer): the server's tile only, one call in flight."""
    u16 = np.dtype("uint16")
    romio = FakeRps((700, 748), False)
    plan = pixels.tile_plan(romio, image(700, 1000), u16)
    assert (plan.width, plan.height, plan.in_flight) == (700, 748, pixels.IN_FLIGHT)
    assert (pixels.tile_plan(romio, image(700, 1000), u16, (700, 10)).height) == 10
    with pytest.raises(InputError, match=r"--tile 256x256: .*full-width strips \(700xN\)"):
        pixels.tile_plan(romio, image(700, 1000), u16, (256, 256))
    pyr = FakeRps((256, 256), True)
    plan = pixels.tile_plan(pyr, image(5000, 5000), u16)
    assert (plan.width, plan.height, plan.in_flight, plan.pyramid) == (256, 256, 1, True)
    assert pixels.tile_plan(pyr, image(5000, 5000), u16, (256, 256)).in_flight == 1
    with pytest.raises(InputError, match="only in its own 256x256 tiles"):
        pixels.tile_plan(pyr, image(5000, 5000), u16, (512, 512))


def test_no_tile_message_exceeds_the_servers_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server tile above the server's Ice.MessageSizeMax is cut to fit; a --tile above it is
    refused with the limit named."""
    monkeypatch.setattr(pixels, "MAX_PAYLOAD_BYTES", 100_000)
    u16 = np.dtype("uint16")
    plan = pixels.tile_plan(FakeRps((1000, 1000), False), image(1000, 1000), u16)
    assert plan.width == 1000 and plan.width * plan.height * 2 <= 100_000
    with pytest.raises(InputError, match="exceeds the server's message limit"):
        pixels.tile_plan(FakeRps((1000, 10), False), image(1000, 1000), u16, (1000, 1000))


def test_server_message_limit_is_omeros() -> None:
    """OMERO's etc/grid/templates.xml: Ice.MessageSizeMax 65536 KiB; tiles stay below it."""
    assert pixels.SERVER_MESSAGE_SIZE_MAX == 64 * 2**20
    assert pixels.MAX_PAYLOAD_BYTES < pixels.SERVER_MESSAGE_SIZE_MAX


# --- 4. imports in the background ----------------------------------------------------------------


@dataclass
class FakeHandle:
    fileset_id: int
    response: Any = None

    def getRequest(self) -> Any:  # noqa: N802
        link = omero.model.FilesetJobLinkI()
        link.setParent(omero.model.FilesetI(self.fileset_id, False))
        return omero.grid.ImportRequest(activity=link)

    def getResponse(self) -> Any:  # noqa: N802
        return self.response


@dataclass
class FakeProc:
    handle: FakeHandle | None

    def getHandle(self) -> Any:  # noqa: N802
        return self.handle


@dataclass
class FakeRepo:
    procs: list[FakeProc]

    def listImports(self) -> list[FakeProc]:  # noqa: N802
        return self.procs


@dataclass
class FakeClient:
    repo: FakeRepo

    def getManagedRepository(self) -> FakeRepo:  # noqa: N802
        return self.repo


def test_running_imports_are_read_from_list_imports() -> None:
    """ManagedRepository.listImports → each process's handle → ImportRequest.activity's parent
    (the fileset): still running while getResponse is None (ome/omero-blitz
    ManagedRepositoryI.listImports, ManagedImportProcessI.verifyUpload)."""
    import omero.grid  # noqa: F401

    running = FakeHandle(7)
    done = FakeHandle(8, response=object())
    s = FakeSession(client=FakeClient(FakeRepo([FakeProc(running), FakeProc(done)])))
    found = upload.running_imports(s)  # type: ignore[arg-type]
    assert found.handles == {7: running} and not found.unknown_upload
    # an upload without a handle yet: its fileset is unknown, the running import still counts
    s = FakeSession(client=FakeClient(FakeRepo([FakeProc(None), FakeProc(running)])))
    found = upload.running_imports(s)  # type: ignore[arg-type]
    assert found.handles == {7: running} and found.unknown_upload


def item(tmp_path: Path) -> PushItem:
    f = tmp_path / "a.ome.tiff"
    f.write_bytes(b"x")
    return PushItem(path=f, sha1="ab" * 20, size=1, images=[image(4, 4)])


def test_a_fileset_still_importing_is_not_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of our filesets without images, the one the server is still importing stays; when an
    upload's fileset cannot be told, none is deleted this run."""
    deleted: list[list[int]] = []
    monkeypatch.setattr(upload, "unfinished_filesets", lambda s, i: [5, 6])
    monkeypatch.setattr(upload, "delete_filesets", lambda s, ids: deleted.append(list(ids)))
    found = upload.RunningImports({5: object()})
    monkeypatch.setattr(upload, "running_imports", lambda s: found)
    imports._remove_unfinished_uploads(FakeSession(), item(tmp_path))  # type: ignore[arg-type]
    assert deleted == [[6]]
    deleted.clear()
    found.unknown_upload = True
    imports._remove_unfinished_uploads(FakeSession(), item(tmp_path))  # type: ignore[arg-type]
    assert deleted == []


def test_images_of_a_running_import_are_waited_for_not_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images an import of this file saved while that import still runs: the re-run waits for
    the import's handle, then completes the images; they are never deleted under it."""
    calls: list[str] = []
    handle = FakeHandle(5)
    monkeypatch.setattr(upload, "filesets_of", lambda s, ids: [5])
    found = upload.RunningImports({5: handle}, unknown_upload=True)
    monkeypatch.setattr(upload, "running_imports", lambda s: found)
    monkeypatch.setattr(upload, "wait_for", lambda s, h, what: calls.append(f"wait {h.fileset_id}"))
    monkeypatch.setattr(upload, "images_complete", lambda s, ids: calls.append("check") or True)
    monkeypatch.setattr(annotate, "delete_objects", lambda *a: calls.append("delete"))
    assert imports._earlier_import_finished(FakeSession(), item(tmp_path), [11])  # type: ignore[arg-type]
    assert calls == ["wait 5", "check"]


# --- 11. waiting on an import: until done, with a cap and progress -------------------------------


class FakeCallback:
    """omero.callbacks.CmdCallbackI that finishes after ``polls`` blocks."""

    polls = 3
    closed: list[bool] = []

    def __init__(self, client: Any, handle: Any) -> None:
        self.n = 0

    def block(self, ms: int) -> bool:
        if ms:
            self.n += 1
        return self.n > self.polls

    def poll(self) -> None:
        pass

    def getResponse(self) -> Any:  # noqa: N802
        return omero.grid.ImportResponse(pixels=[], objects=[])

    def close(self, close_handle: bool) -> None:
        self.closed.append(close_handle)


class StatusHandle:
    def getStatus(self) -> Any:  # noqa: N802
        return omero.cmd.Status(currentStep=1, steps=5)


def test_import_wait_polls_until_done_and_reports_steps(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No fixed minute (the example's old ``loop(60, 1000)``): the wait goes on while the server
    works and logs where it is ("step 2 of 5")."""
    import omero.callbacks
    import omero.cmd  # noqa: F401
    import omero.grid  # noqa: F401

    monkeypatch.setattr(omero.callbacks, "CmdCallbackI", FakeCallback)
    FakeCallback.polls, FakeCallback.closed = 50, []
    caplog.set_level(logging.INFO, logger="omero_push.upload")
    rsp = upload.wait_for(
        FakeSession(),
        StatusHandle(),
        "import of a",
        poll_s=0.001,
        report_every_s=0.0,  # type: ignore[arg-type]
    )
    assert isinstance(rsp, omero.grid.ImportResponse)
    assert "import of a: step 2 of 5" in caplog.text
    assert FakeCallback.closed == [True]


def test_import_wait_gives_up_at_the_cap_and_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the cap the wait stops with one line: the import goes on, re-run later; the handle is
    not closed (the server's answer stays reachable)."""
    import omero.callbacks

    monkeypatch.setattr(omero.callbacks, "CmdCallbackI", FakeCallback)
    FakeCallback.polls, FakeCallback.closed = 10**9, []
    with pytest.raises(ServerError, match="still importing after .*re-run the same push later"):
        upload.wait_for(FakeSession(), StatusHandle(), "import of a", cap_s=0.0, poll_s=0.001)  # type: ignore[arg-type]
    assert FakeCallback.closed == [False]


def test_example_client_waits_past_a_minute_with_progress(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """tests/omero_server/example_client.py waits as long as the import runs (its old wait gave
    up after 60 one-second blocks), printing where the import is, and stops at its cap."""
    from tests.omero_server import example_client

    cb = FakeCallback(None, None)
    cb.polls = 70  # more than the old loop(60, 1000) allowed
    rsp = example_client.wait_for_import(
        cb, StatusHandle(), "a.ome.tiff", poll_ms=1, report_every_s=0.0
    )
    assert isinstance(rsp, omero.grid.ImportResponse)
    assert "importing a.ome.tiff: step 2 of 5" in capsys.readouterr().out
    cb = FakeCallback(None, None)
    cb.polls = 10**9
    with pytest.raises(omero.LockTimeout):
        example_client.wait_for_import(cb, StatusHandle(), "a.ome.tiff", cap_s=0.0, poll_ms=1)

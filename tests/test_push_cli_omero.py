"""omero-push as OMERO users expect it, against the stand-in (issue 12 points 1-4; issue 9.6-9.8).

``omero login`` and ``omero push`` run in-process through ``omero.cli.CLI`` (as omero-py's own CLI
tests drive it; the ``omero`` launcher refuses to run as root), with ``OMERO_SESSIONDIR`` in
``tmp_path`` so no test touches ``~/omero``.  Reading back uses plain omero-py calls.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("omero")
import omero  # noqa: E402
import omero.clients  # noqa: E402
from omero.cli import CLI, NonZeroReturnCode  # noqa: E402
from omero.util.sessions import SessionsStore  # noqa: E402

from omero_push import api, cli  # noqa: E402
from omero_push.push import push  # noqa: E402
from tests.test_push_omero import (  # noqa: E402
    _v,
    annotations_of,
    host_url,
    images_of,
    maps_in,
    reader,
    tag_texts,
)
from tests.test_push_support import (  # noqa: E402
    KV_NS,
    isolate_root_logging,
    make_converter_output,
    make_ome_tiff,
)

pytestmark = pytest.mark.timeout(300)
_clean_logging = pytest.fixture(autouse=True)(isolate_root_logging)
WEB = "https://omero.example.org/"


@pytest.fixture
def sessions_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``omero login``'s store in tmp_path; no password in the environment."""
    folder = tmp_path / "omero-sessions"
    folder.mkdir()
    monkeypatch.setenv("OMERO_SESSIONDIR", str(folder))
    monkeypatch.delenv("OMERO_PASSWORD", raising=False)
    monkeypatch.delenv("OMERO_SESSION_KEY", raising=False)
    return folder


def omero_cli(*argv: str) -> None:
    """One ``omero ARGS…`` invocation, in-process, as its own CLI instance (like a new shell)."""
    c = CLI()
    c.loadplugins()
    c.invoke(list(argv), strict=True)


def omero_login(server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """``omero login`` to the stand-in (password from OMERO_PASSWORD, as the CLI reads it);
    returns the stored session key."""
    with monkeypatch.context() as m:
        m.setenv("OMERO_PASSWORD", server.password)
        omero_cli("login", "-s", host_url(server), "-p", str(server.port), "-u", server.user)
    host, user, key, _port = SessionsStore(os.environ["OMERO_SESSIONDIR"]).get_current()
    assert (host, user) == (host_url(server), server.user) and key
    return key


def session_alive(server: Any, key: str) -> bool:
    c = omero.client(host=host_url(server), port=int(server.port))
    try:
        c.joinSession(key)
        return True
    except Exception:
        return False
    finally:
        c.__del__()


def new_dataset(server: Any, name: str, group: int | None = None) -> int:
    from omero.rtypes import rstring

    with reader(server) as sf:
        if group is not None:
            sf.setSecurityContext(omero.model.ExperimenterGroupI(group, False))
        ds = omero.model.DatasetI()
        ds.setName(rstring(name))
        return _v(sf.getUpdateService().saveAndReturnObject(ds).getId())


def run_cli(capsys: pytest.CaptureFixture[str], server: Any, *argv: str) -> tuple[int, Any, str]:
    """``omero-push ARGV --output json`` with the stand-in's address: (rc, document, stderr)."""
    rc = cli.main(
        [*argv, "-s", host_url(server), "-p", str(server.port), "-u", server.user,
         "--output", "json", "--web-url", WEB]
    )
    cap = capsys.readouterr()
    return rc, json.loads(cap.out), cap.err


# --- 1. `omero push` on the `omero login` session; stored logins; joined sessions survive ---------


def test_omero_push_plugin_runs_on_the_omero_login_session(
    omero_server: Any, sessions_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`omero login`, then `omero push FILE -d ID --tag --kv --output json`: no password anywhere,
    the images land in Dataset ID, and the login's session is still alive afterwards."""
    key = omero_login(omero_server, monkeypatch)
    did = new_dataset(omero_server, "made in the web client")
    f = tmp_path / "p.ome.tiff"
    make_ome_tiff(f, name="plugged", comment=None)
    capsys.readouterr()
    omero_cli("push", str(f), "-d", str(did), "--tag", "via-plugin", "--kv", "Medium=SC",
              "--output", "json", "--mode", "pixels")
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "ok" and doc["dataset_id"] == did
    (image,) = doc["images"]
    with reader(omero_server) as sf:
        assert [_v(i.getId()) for i in images_of(sf, did)] == [image["id"]]
        anns = annotations_of(sf, "Image", image["id"])
        assert "via-plugin" in tag_texts(anns)
        assert [("Medium", "SC")] in maps_in(anns, KV_NS)
    assert session_alive(omero_server, key)  # the CLI's session is the user's, not ours to close


def test_omero_push_plugin_failure_is_a_nonzero_return(
    omero_server: Any, sessions_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    omero_login(omero_server, monkeypatch)
    f = tmp_path / "p.ome.tiff"
    make_ome_tiff(f)
    with pytest.raises(NonZeroReturnCode) as err:
        omero_cli("push", str(f), "-d", "987654")
    assert err.value.rv == 2
    assert "Dataset:987654 does not exist" in capsys.readouterr().err


def test_omero_push_plugin_dry_run_needs_no_login(sessions_dir: Path, tmp_path: Path, capsys) -> None:
    """`omero push --dry-run` prints the plan and the resolved target without logging in."""
    f = tmp_path / "p.ome.tiff"
    make_ome_tiff(f, name="planned")
    omero_cli("push", str(f), "--dry-run", "-T", "Project:name:P/Dataset:%name:D")
    out = capsys.readouterr().out
    assert "-> P / D [Project:name:P/Dataset:%name:D]" in out and "dry run: nothing was sent" in out
    assert list(sessions_dir.iterdir()) == []  # no login happened


def test_standalone_push_reuses_the_stored_login_and_leaves_it_open(
    omero_server: Any, sessions_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """omero-push with no password and no key joins the `omero login` session for the same
    server and user (SessionsStore) and detaches from it instead of closing it."""
    key = omero_login(omero_server, monkeypatch)
    f = tmp_path / "s.ome.tiff"
    make_ome_tiff(f, name="stored")
    rc, doc, err = run_cli(capsys, omero_server, str(f), "-d", "from-stored", "--mode", "pixels")
    assert rc == 0, err
    assert [i["name"] for i in doc["images"]] == ["stored"]
    assert session_alive(omero_server, key)
    # No stored session for another user: the usual one-line "no password" error.
    rc = cli.main([str(f), "-s", host_url(omero_server), "-p", str(omero_server.port),
                   "-u", "someone-else", "-d", "x"])
    assert rc == 2 and "run 'omero login'" in capsys.readouterr().err


def test_joined_session_is_detached_not_closed(omero_server: Any, tmp_path: Path, monkeypatch) -> None:
    """9.7: with --session-key the push calls detachOnDestroy (as omero.util.sessions does) before
    it lets go, and the user's session is usable afterwards."""
    import omero.api

    calls: list[str] = []
    original = omero.api.ServiceFactoryPrx.detachOnDestroy

    def spy(self: Any, *a: Any, **kw: Any) -> Any:
        calls.append("detach")
        return original(self, *a, **kw)

    monkeypatch.setattr(omero.api.ServiceFactoryPrx, "detachOnDestroy", spy)
    monkeypatch.delenv("OMERO_PASSWORD", raising=False)
    f = tmp_path / "k.ome.tiff"
    make_ome_tiff(f, name="keyed")
    c = omero_server.client()
    try:
        key = c.getSessionId()
        push([f], server=host_url(omero_server), port=int(omero_server.port), session_key=key,
             dataset="keyed", mode="pixels")
        assert calls == ["detach"]
        assert c.getSession().getAdminService().getEventContext().sessionUuid == key
    finally:
        c.__del__()
    calls.clear()
    push([f], server=host_url(omero_server), port=int(omero_server.port),
         user=omero_server.user, password=omero_server.password, dataset="keyed", mode="pixels")
    assert calls == []  # a session we opened ourselves is closed, not detached


# --- 2. omero import's target flags ---------------------------------------------------------------


def test_dataset_number_is_an_id_and_names_keep_working(
    omero_server: Any, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("OMERO_PASSWORD", omero_server.password)
    monkeypatch.setenv("OMERO_SESSIONDIR", str(tmp_path / "none"))
    did = new_dataset(omero_server, "web-made")
    f = tmp_path / "a.ome.tiff"
    make_ome_tiff(f, name="by-number")
    rc, doc, err = run_cli(capsys, omero_server, str(f), "-d", str(did), "--mode", "pixels")
    assert rc == 0, err
    assert doc["dataset_id"] == did and doc["target"] == f"Dataset:id:{did}"
    with reader(omero_server) as sf:
        # No dataset *named* "<id>" was created.
        assert sf.getQueryService().findAllByString("Dataset", "name", str(did), True, None) == []
    rc, doc, _ = run_cli(capsys, omero_server, str(f), "-T", "Dataset:name:2024", "--mode", "pixels")
    with reader(omero_server) as sf:
        (named,) = sf.getQueryService().findAllByString("Dataset", "name", "2024", True, None)
        assert _v(named.getId()) == doc["dataset_id"] != did


def test_target_templates_pick_as_omero_import(
    omero_server: Any, tmp_path: Path, monkeypatch, capsys
) -> None:
    """+name newest (default), -name oldest, %name only if unique, @name always new;
    Project:name:P/Dataset:name:D found or created and linked, reused on re-runs."""
    monkeypatch.setenv("OMERO_PASSWORD", omero_server.password)
    monkeypatch.setenv("OMERO_SESSIONDIR", str(tmp_path / "none"))
    old, new = new_dataset(omero_server, "twin"), new_dataset(omero_server, "twin")
    f = tmp_path / "t.ome.tiff"
    make_ome_tiff(f, name="templated")
    args = [str(f), "--mode", "pixels"]
    assert run_cli(capsys, omero_server, *args, "-T", "Dataset:name:twin")[1]["dataset_id"] == new
    assert run_cli(capsys, omero_server, *args, "-T", "Dataset:-name:twin")[1]["dataset_id"] == old
    rc, doc, err = run_cli(capsys, omero_server, *args, "-T", "Dataset:%name:twin")
    assert rc == 2 and doc["status"] == "error"
    assert f"2 Datasets have that name (ids {old}, {new})" in err
    fresh = run_cli(capsys, omero_server, *args, "-T", "Dataset:@name:twin")[1]["dataset_id"]
    assert fresh not in (old, new)
    first = run_cli(capsys, omero_server, *args, "-T", "Project:name:P1/Dataset:name:D1")[1]
    again = run_cli(capsys, omero_server, *args, "-T", "Project:name:P1/Dataset:name:D1")[1]
    assert (first["project_id"], first["dataset_id"]) == (again["project_id"], again["dataset_id"])
    assert [i["status"] for i in again["images"]] == ["present"]
    with reader(omero_server) as sf:
        (project,) = sf.getContainerService().loadContainerHierarchy(
            "Project", [first["project_id"]], None
        )
        assert _v(project.getName()) == "P1"
        assert [_v(d.getId()) for d in project.linkedDatasetList()] == [first["dataset_id"]]


def test_name_description_tags_kv_and_annotations_on_every_image(
    omero_server: Any, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("OMERO_PASSWORD", omero_server.password)
    monkeypatch.setenv("OMERO_SESSIONDIR", str(tmp_path / "none"))
    f = tmp_path / "n.ome.tiff"
    make_ome_tiff(f, name="orig", comment=None)
    argv = [str(f), "-d", "flags", "-n", "renamed", "-x", "described", "--tag", "a", "--tag", "b",
            "--kv", "Medium=SC", "--kv", "Temp=30", "--annotation-ns", "lab/notes",
            "--annotation-text", "imaged late"]
    rc, doc, err = run_cli(capsys, omero_server, *argv)
    assert rc == 0, err
    (image,) = doc["images"]
    assert image["url"] == f"https://omero.example.org/webclient/?show=image-{image['id']}"
    with reader(omero_server) as sf:
        img = sf.getQueryService().get("Image", image["id"])
        assert (_v(img.getName()), _v(img.getDescription())) == ("renamed", "described")
        anns = annotations_of(sf, "Image", image["id"])
        assert {"a", "b"} <= set(tag_texts(anns))
        assert [("Medium", "SC"), ("Temp", "30")] in maps_in(anns, KV_NS)
        comments = [
            (_v(a.getNs()), _v(a.getTextValue()))
            for a in anns
            if isinstance(a, omero.model.CommentAnnotation)
        ]
        assert ("lab/notes", "imaged late") in comments
    rc, again, _ = run_cli(capsys, omero_server, *argv)  # a re-run adds nothing
    assert rc == 0 and again["images"][0]["status"] == "present"
    with reader(omero_server) as sf:
        assert len(annotations_of(sf, "Image", image["id"])) == len(anns)


def test_dataset_id_in_another_group_switches_to_it(
    omero_server: Any, tmp_path: Path, monkeypatch, capsys
) -> None:
    """9.8: Dataset:ID in another of the user's groups is found and the push works in that group."""
    monkeypatch.setenv("OMERO_PASSWORD", omero_server.password)
    monkeypatch.setenv("OMERO_SESSIONDIR", str(tmp_path / "none"))
    with reader(omero_server) as sf:
        ec = sf.getAdminService().getEventContext()
        other = [g for g in ec.memberOfGroups if g != ec.groupId]
    if not other:
        pytest.skip("the stand-in user belongs to one group only")
    did = new_dataset(omero_server, "elsewhere", group=other[0])
    f = tmp_path / "g.ome.tiff"
    make_ome_tiff(f, name="cross-group")
    rc, doc, err = run_cli(capsys, omero_server, str(f), "-d", str(did), "--mode", "pixels")
    assert rc == 0, err
    with reader(omero_server) as sf:
        img = sf.getQueryService().get("Image", doc["images"][0]["id"])
        assert _v(img.getDetails().getGroup().getId()) == other[0]
        assert [_v(i.getId()) for i in images_of(sf, did)] == [doc["images"][0]["id"]]


# --- 3. output ------------------------------------------------------------------------------------


def test_text_summary_has_ids_and_web_links(omero_server: Any, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("OMERO_PASSWORD", omero_server.password)
    monkeypatch.setenv("OMERO_SESSIONDIR", str(tmp_path / "none"))
    cfg = tmp_path / "omero.yml"
    cfg.write_text(f"host: {host_url(omero_server)}\nport: {omero_server.port}\n"
                   f"user: {omero_server.user}\nweb_url: https://web.example.org\n")
    f = tmp_path / "w.ome.tiff"
    make_ome_tiff(f, name="linked")
    assert cli.main([str(f), "--config", str(cfg), "-d", "web", "--mode", "pixels"]) == 0
    out = capsys.readouterr().out
    iid = int(out.split("Image:", 1)[1].split()[0])
    assert f"https://web.example.org/webclient/?show=image-{iid}" in out


# --- 4. the ezomero-style API ---------------------------------------------------------------------


def test_api_with_a_blitzgateway(omero_server: Any, tmp_path: Path) -> None:
    """Each verb takes the open BlitzGateway first and returns ids; calling again makes nothing
    new; push() accepts the connection too; the caller's connection is still open at the end."""
    out = tmp_path / "out"
    make_converter_output(out, positions=2)
    f = tmp_path / "f.ome.tiff"
    make_ome_tiff(f, name="api-file")
    conn = omero_server.gateway()
    try:
        did = api.find_or_create_dataset(conn, "api", project="api-project", description="d")
        assert api.find_or_create_dataset(conn, "api", project="api-project") == did
        (iid,) = api.push_files(conn, [f], dataset_id=did, mode="pixels")
        assert api.push_files(conn, [f], dataset_id=did, mode="pixels") == [iid]
        tag_ids = api.link_tags(conn, "Image", iid, ["x", "y"])
        assert len(tag_ids) == 2 and api.link_tags(conn, "Image", iid, ["y", "x"]) == tag_ids[::-1]
        kv = api.attach_key_values(conn, "Image", iid, {"k": "v"})
        assert api.attach_key_values(conn, "Image", iid, [("k", "v")]) == kv
        folder_ids = api.push_folder(conn, out, target="Dataset:name:api-folder", mode="pixels")
        assert len(folder_ids) == 2
        h5 = out / "experiment.h5"
        tables = api.attach_tables(conn, did, h5)
        assert tables and api.attach_tables(conn, did, h5) == tables
        result = push([f], conn=conn, dataset=did, mode="pixels")
        assert result.image_ids == [iid] and result.images[0].status == "present"
        assert conn.isConnected() and conn.getEventContext().userName == omero_server.user
    finally:
        conn.close()
    with reader(omero_server) as sf:
        assert [_v(i.getId()) for i in images_of(sf, did)] == [iid]
        anns = annotations_of(sf, "Image", iid)
        assert {"x", "y"} <= set(tag_texts(anns)) and [("k", "v")] in maps_in(anns, KV_NS)
        ds = sf.getQueryService().get("Dataset", did)
        assert _v(ds.getDescription()) == "d"


def test_readme_api_example_runs(omero_server: Any, tmp_path: Path, monkeypatch) -> None:
    """The README's ezomero-style example, run as written against the stand-in (its BlitzGateway
    is pointed at the stand-in; the files it names are made in the working directory)."""
    import re

    import omero.gateway

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Python API, ezomero style") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    real = omero.gateway.BlitzGateway

    def to_standin(user: str, passwd: str, host: str = "", secure: bool = False, **kw: Any) -> Any:
        return real(omero_server.user, passwd, host=omero_server.url, port=omero_server.port)

    monkeypatch.setattr(omero.gateway, "BlitzGateway", to_standin)
    monkeypatch.chdir(tmp_path)
    make_converter_output(tmp_path / "OUT", positions=1)
    make_ome_tiff(tmp_path / "a.ome.tiff", name="extra")
    scope: dict[str, Any] = {"password": omero_server.password}
    exec(compile(code, "README.md", "exec"), scope)
    assert len(scope["image_ids"]) == 1 and len(scope["more"]) == 1
    assert len(scope["tag_ids"]) == 2 and scope["kv_id"] and scope["table_ids"]
    with reader(omero_server) as sf:
        assert [_v(i.getId()) for i in images_of(sf, scope["did"])] == scope["image_ids"]

"""Groups and permissions as OMERO has them (issue 8 point 5), through plain omero-py calls.

Several users log in with their own passwords into groups of the four levels (private
``rw----``, read-only ``rwr---``, read-annotate ``rwra--``, read-write ``rwrw--``); IQuery sees
the current group unless the call says ``omero.group=-1``; linking follows
``OmeroInterceptor.evaluateLinkages`` and ``canAnnotate()``/``canLink()`` are what
``BasicACLVoter.postProcess`` computes for the caller.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("omero")
import Glacier2  # noqa: E402
import omero  # noqa: E402
import omero.model  # noqa: E402
import omero.sys  # noqa: E402
from omero.rtypes import rlong, rstring  # noqa: E402

pytestmark = pytest.mark.timeout(180)

ALL_GROUPS = {"omero.group": "-1"}


@pytest.fixture
def server(omero_server_session: Any) -> Any:
    """The shared stand-in: every test makes its own users and groups (unique names)."""
    return omero_server_session


@pytest.fixture
def logins() -> Iterator[list[Any]]:
    """Clients opened by a test, closed at its end."""
    opened: list[Any] = []
    yield opened
    for c in opened:
        c.closeSession()


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _pair(server: Any, logins: list[Any], perms: str) -> tuple[Any, Any, int]:
    """Two members (alice, bob) of a new group with *perms*, logged in; returns their sfs."""
    gid = server.new_group(perms)
    sfs = []
    for who in ("alice", "bob"):
        name = _name(who)
        server.new_user(name, [gid])
        c = server.client_as(name)
        logins.append(c)
        sfs.append(c.getSession())
    return sfs[0], sfs[1], gid


def _dataset(sf: Any, name: str) -> Any:
    ds = omero.model.DatasetI()
    ds.name = rstring(name)
    return sf.getUpdateService().saveAndReturnObject(ds)


def _image(sf: Any, name: str) -> Any:
    image = omero.model.ImageI()
    image.name = rstring(name)
    return sf.getUpdateService().saveAndReturnObject(image)


def _tag(sf: Any, text: str) -> Any:
    tag = omero.model.TagAnnotationI()
    tag.textValue = rstring(text)
    return sf.getUpdateService().saveAndReturnObject(tag)


def _link(sf: Any, image: Any, tag: Any) -> Any:
    link = omero.model.ImageAnnotationLinkI()
    link.parent = omero.model.ImageI(image.id.val, False)
    link.child = omero.model.TagAnnotationI(tag.id.val, False)
    return sf.getUpdateService().saveAndReturnObject(link)


def _datasets_named(sf: Any, name: str, ctx: dict[str, str] | None = None) -> list[Any]:
    params = omero.sys.ParametersI()
    params.addString("name", name)
    return sf.getQueryService().findAllByQuery(
        "select d from Dataset d where d.name = :name", params, ctx)


# --- users and groups ------------------------------------------------------------------------


def test_users_log_in_with_their_own_passwords_into_their_groups(server: Any, logins: list[Any]) -> None:
    gid = server.new_group("rwr---")
    name = _name("carol")
    uid = server.new_user(name, [gid], password="s3cret")
    c = server.client_as(name, "s3cret")
    logins.append(c)
    ec = c.getSession().getAdminService().getEventContext()
    assert (ec.userId, ec.userName, ec.groupId, ec.isAdmin) == (uid, name, gid, False)
    assert str(ec.groupPermissions) == "rwr---"
    assert gid in ec.memberOfGroups
    with pytest.raises(Glacier2.PermissionDeniedException):
        server.client_as(name, "wrong")
    # only an administrator makes groups
    group = omero.model.ExperimenterGroupI()
    group.name = rstring(_name("g"))
    with pytest.raises(omero.SecurityViolation):
        c.getSession().getAdminService().createGroup(group)


@pytest.mark.parametrize("perms", ["rw----", "rwr---", "rwra--", "rwrw--"])
def test_each_level_is_the_group_permission_of_new_objects(server: Any, logins: list[Any],
                                                           perms: str) -> None:
    alice, _bob, gid = _pair(server, logins, perms)
    ds = _dataset(alice, _name("ds"))
    assert ds.details.group.id.val == gid
    assert str(ds.details.permissions) == perms


@pytest.mark.parametrize(("perms", "bob_sees"), [("rw----", False), ("rwr---", True),
                                                 ("rwra--", True), ("rwrw--", True)])
def test_a_member_reads_anothers_data_unless_the_group_is_private(
        server: Any, logins: list[Any], perms: str, bob_sees: bool) -> None:
    alice, bob, _gid = _pair(server, logins, perms)
    name = _name("ds")
    ds = _dataset(alice, name)
    assert len(_datasets_named(bob, name)) == int(bob_sees)
    assert (bob.getQueryService().find("Dataset", ds.id.val) is not None) == bob_sees
    assert len(_datasets_named(alice, name)) == 1  # the owner always


def test_a_group_leader_reads_members_data_in_a_private_group(server: Any, logins: list[Any]) -> None:
    gid = server.new_group("rw----")
    alice, lead = _name("alice"), _name("lead")
    server.new_user(alice, [gid])
    server.new_user(lead, [gid], owner_of=(gid,))
    ca, cl = server.client_as(alice), server.client_as(lead)
    logins += [ca, cl]
    name = _name("ds")
    _dataset(ca.getSession(), name)
    assert len(_datasets_named(cl.getSession(), name)) == 1


# --- the current group and omero.group=-1 ----------------------------------------------------


def test_iquery_sees_the_current_group_unless_omero_group_is_minus_one(
        server: Any, logins: list[Any]) -> None:
    g1, g2 = server.new_group("rwra--"), server.new_group("rwra--")
    name = _name("dave")
    server.new_user(name, [g1, g2])
    c = server.client_as(name)
    logins.append(c)
    sf = c.getSession()
    shared = _name("ds")
    in_g1 = _dataset(sf, shared)
    sf.setSecurityContext(omero.model.ExperimenterGroupI(g2, False))
    in_g2 = _dataset(sf, shared)
    assert in_g2.details.group.id.val == g2
    assert [d.id.val for d in _datasets_named(sf, shared)] == [in_g2.id.val]
    assert sorted(d.id.val for d in _datasets_named(sf, shared, ALL_GROUPS)) == \
        sorted([in_g1.id.val, in_g2.id.val])
    # the "-1" was for that call only
    assert [d.id.val for d in _datasets_named(sf, shared)] == [in_g2.id.val]
    assert sf.getQueryService().find("Dataset", in_g1.id.val) is None
    assert sf.getQueryService().find("Dataset", in_g1.id.val, ALL_GROUPS) is not None
    with pytest.raises(omero.SecurityViolation):
        sf.getQueryService().get("Dataset", in_g1.id.val)
    # so are IContainer hierarchies and IMetadata annotations
    container = sf.getContainerService()
    mine = {d.id.val for d in container.loadContainerHierarchy("Dataset", [], None)}
    assert in_g2.id.val in mine and in_g1.id.val not in mine
    everywhere = {d.id.val for d in container.loadContainerHierarchy("Dataset", [], None,
                                                                      ALL_GROUPS)}
    assert {in_g1.id.val, in_g2.id.val} <= everywhere
    tag = _tag(sf, _name("g2-tag"))
    image = _image(sf, _name("g2-image"))
    _link(sf, image, tag)
    sf.setSecurityContext(omero.model.ExperimenterGroupI(g1, False))
    metadata = sf.getMetadataService()
    assert metadata.loadAnnotations("Image", [image.id.val], [], [], None)[image.id.val] == []
    found = metadata.loadAnnotations("Image", [image.id.val], [], [], None, ALL_GROUPS)
    assert [a.id.val for a in found[image.id.val]] == [tag.id.val]
    sf.setSecurityContext(omero.model.ExperimenterGroupI(g2, False))
    # a projection is filtered too
    params = omero.sys.ParametersI()
    params.addString("name", shared)
    rows = sf.getQueryService().projection(
        "select d.id from Dataset d where d.name = :name", params, ALL_GROUPS)
    assert len(rows) == 2


def test_all_groups_are_only_the_callers_groups(server: Any, logins: list[Any]) -> None:
    g1, g2 = server.new_group("rwra--"), server.new_group("rwra--")
    erin, frank = _name("erin"), _name("frank")
    server.new_user(erin, [g1])
    server.new_user(frank, [g2])
    ce, cf = server.client_as(erin), server.client_as(frank)
    logins += [ce, cf]
    shared = _name("ds")
    _dataset(ce.getSession(), shared)
    assert _datasets_named(cf.getSession(), shared, ALL_GROUPS) == []


def test_linking_across_groups_is_a_mixed_group_violation(server: Any, logins: list[Any]) -> None:
    g1, g2 = server.new_group("rwrw--"), server.new_group("rwrw--")
    name = _name("gina")
    server.new_user(name, [g1, g2])
    c = server.client_as(name)
    logins.append(c)
    sf = c.getSession()
    tag = _tag(sf, _name("tag"))
    sf.setSecurityContext(omero.model.ExperimenterGroupI(g2, False))
    image = _image(sf, _name("img"))
    with pytest.raises(omero.GroupSecurityViolation, match="MIXED GROUP"):
        _link(sf, image, tag)


# --- linking and annotating others' data -----------------------------------------------------


@pytest.mark.parametrize(("perms", "allowed"), [("rwr---", False), ("rwra--", True),
                                                ("rwrw--", True)])
def test_linking_another_users_tag_to_your_image(server: Any, logins: list[Any], perms: str,
                                                  allowed: bool) -> None:
    alice, bob, _gid = _pair(server, logins, perms)
    tag = _tag(bob, _name("bobs-tag"))
    image = _image(alice, _name("alices-image"))
    if allowed:
        link = _link(alice, image, tag)
        assert link.details.owner.id.val == alice.getAdminService().getEventContext().userId
    else:
        with pytest.raises(omero.SecurityViolation, match="Cannot link to object"):
            _link(alice, image, tag)


@pytest.mark.parametrize(("perms", "allowed"), [("rwr---", False), ("rwra--", True),
                                                ("rwrw--", True)])
def test_annotating_another_users_image(server: Any, logins: list[Any], perms: str,
                                        allowed: bool) -> None:
    alice, bob, _gid = _pair(server, logins, perms)
    image = _image(bob, _name("bobs-image"))
    tag = _tag(alice, _name("alices-tag"))
    if allowed:
        _link(alice, image, tag)
    else:
        with pytest.raises(omero.SecurityViolation):
            _link(alice, image, tag)


@pytest.mark.parametrize(("perms", "allowed"), [("rwra--", False), ("rwrw--", True)])
def test_putting_another_users_image_in_your_dataset_needs_write(
        server: Any, logins: list[Any], perms: str, allowed: bool) -> None:
    alice, bob, _gid = _pair(server, logins, perms)
    image = _image(bob, _name("bobs-image"))
    ds = _dataset(alice, _name("alices-ds"))
    link = omero.model.DatasetImageLinkI()
    link.parent = omero.model.DatasetI(ds.id.val, False)
    link.child = omero.model.ImageI(image.id.val, False)
    if allowed:
        alice.getUpdateService().saveObject(link)
    else:
        with pytest.raises(omero.SecurityViolation):
            alice.getUpdateService().saveObject(link)


# --- canAnnotate / canLink as the caller sees them -------------------------------------------


@pytest.mark.parametrize(("perms", "annotate", "link", "edit"), [
    ("rwr---", False, False, False),
    ("rwra--", True, False, False),
    ("rwrw--", True, True, True),
])
def test_permissions_say_what_the_caller_may_do(server: Any, logins: list[Any], perms: str,
                                                annotate: bool, link: bool, edit: bool) -> None:
    alice, bob, _gid = _pair(server, logins, perms)
    tag = _tag(bob, _name("bobs-tag"))
    params = omero.sys.ParametersI()
    params.add("id", rlong(tag.id.val))
    seen = alice.getQueryService().findByQuery(
        "select t from TagAnnotation t where t.id = :id", params)
    p = seen.details.permissions
    assert (p.canAnnotate(), p.canLink(), p.canEdit(), p.canDelete()) == \
        (annotate, link, edit, edit)
    assert not p.canChown()
    # the owner may do everything with its own tag, whatever the group
    own = bob.getQueryService().findByQuery(
        "select t from TagAnnotation t where t.id = :id", params).details.permissions
    assert (own.canAnnotate(), own.canLink(), own.canEdit(), own.canDelete()) == \
        (True, True, True, True)
    assert alice.getAdminService().canUpdate(omero.model.TagAnnotationI(tag.id.val, False)) == edit


def test_an_admin_may_not_link_to_members_data_in_a_private_group(server: Any,
                                                                   logins: list[Any]) -> None:
    gid = server.new_group("rw----")
    alice = _name("alice")
    server.new_user(alice, [gid])
    ca = server.client_as(alice)
    logins.append(ca)
    tag = _tag(ca.getSession(), _name("tag"))
    root = server.client()
    logins.append(root)
    sf = root.getSession()
    sf.setSecurityContext(omero.model.ExperimenterGroupI(gid, False))
    seen = sf.getQueryService().get("TagAnnotation", tag.id.val)
    assert not seen.details.permissions.canAnnotate()
    image = _image(sf, _name("roots-image"))
    with pytest.raises(omero.ReadOnlyGroupSecurityViolation):
        _link(sf, image, tag)


def test_blitzgateway_finds_other_groups_with_minus_one_and_reads_can_annotate(
        server: Any, logins: list[Any]) -> None:
    """What the pusher does: ``SERVICE_OPTS.setOmeroGroup(-1)`` to find ``Dataset:ID`` in any
    of the user's groups, and a tag wrapper's ``canAnnotate()`` before reusing it."""
    from omero.gateway import BlitzGateway

    home, lab = server.new_group("rwra--"), server.new_group("rwr---")
    hank, ivy = _name("hank"), _name("ivy")
    server.new_user(hank, [home, lab])
    server.new_user(ivy, [lab])
    ci, ch = server.client_as(ivy), server.client_as(hank)
    logins += [ci, ch]
    ivys_tag = _tag(ci.getSession(), _name("ivys-tag"))
    sf = ch.getSession()
    sf.setSecurityContext(omero.model.ExperimenterGroupI(lab, False))
    lab_ds = _dataset(sf, _name("lab-ds"))
    hanks_tag = _tag(sf, _name("hanks-tag"))
    conn = BlitzGateway(hank, hank, host=server.url, port=server.port)
    assert conn.connect()
    try:
        assert conn.getEventContext().groupId == home
        assert conn.getObject("Dataset", lab_ds.id.val) is None  # not in the current group
        conn.SERVICE_OPTS.setOmeroGroup(-1)
        found = conn.getObject("Dataset", lab_ds.id.val)
        assert found is not None and found.getDetails().getGroup().getId() == lab
        assert not conn.getObject("TagAnnotation", ivys_tag.id.val).canAnnotate()
        assert conn.getObject("TagAnnotation", hanks_tag.id.val).canAnnotate()
    finally:
        conn.close()


def test_users_groups_and_passwords_survive_a_restart(omero_server_factory: Any) -> None:
    """They live in the store as OMERO's live in its database (the password as a hash only)."""
    server = omero_server_factory()
    gid = server.new_group("rwr---")
    name = _name("jo")
    uid = server.new_user(name, [gid], password="pw-survives")
    server.restart()
    c = server.client_as(name, "pw-survives")
    try:
        ec = c.getSession().getAdminService().getEventContext()
        assert (ec.userId, ec.groupId, str(ec.groupPermissions)) == (uid, gid, "rwr---")
    finally:
        c.closeSession()
    for db in server.store_dir.glob("objects.sqlite*"):  # with the WAL, if any
        assert b"pw-survives" not in db.read_bytes()

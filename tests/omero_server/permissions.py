"""Groups and permissions: who reads, links and annotates what, as OMERO decides it.

Three places of OMERO's security system, imitated on the stand-in's flat objects:

* **reading** (ome/omero-server ``security/basic/BasicACLVoter.allowLoad`` and the
  ``OneGroupSecurityFilter``/``AllGroupsSecurityFilter`` Hibernate filters): system types and
  objects in the ``system``/``user`` groups are readable by everyone; otherwise an object is
  seen by an admin, its owner, a leader of its group, or a member of its group when the group
  grants GROUP READ (every level but private ``rw----``). Queries see only the current group,
  unless the call's context says ``omero.group=-1`` (all the caller's groups).
* **linking** (``security/basic/OmeroInterceptor.evaluateLinkages``): a saved object that refers
  to a stored object of another group fails with ``GroupSecurityViolation`` ("MIXED GROUP");
  otherwise the current group's permissions must grant the caller's role (USER for the
  linked object's owner, GROUP for a member) the needed right: ANNOTATE for annotation links
  (and a Roi on an Image), READ for rendering settings and thumbnails, WRITE for the rest
  (``neededRight``); failing that, ``SecurityViolation("... Cannot link to object: ...")``.
  Admins and group leaders (supervisors) pass, except in a private group, where they may not
  link to members' data (``ReadOnlyGroupSecurityViolation``, ticket:1769).
* **restrictions** (``BasicACLVoter.postProcess``/``allowUpdateOrDelete``): every object handed
  to a client carries ``details.permissions`` with the caller's restrictions — link, edit,
  delete, annotate, chgrp, chown — which ``Permissions.canAnnotate()``/``canLink()``/... read.

Permissions are omero-py ``PermissionsI`` bits (``granted(mask, shift)``); the string forms
``rw----`` (private), ``rwr---`` (read-only), ``rwra--`` (read-annotate) and ``rwrw--``
(read-write) set them, "w" implying "a" (omero-py ``omero_model_PermissionsI.from_string``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import omero
import omero.model

from .store import SYSTEM_GROUP_ID, USER_GROUP_ID, is_enum_kind, kind_of

if TYPE_CHECKING:
    from .session import Session
    from .store import ObjectStore

#: PermissionsI shifts (roles) and masks (rights), as omero-py's PermissionsI
USER, GROUP, WORLD = 8, 4, 0
READ, WRITE, ANNOTATE = 4, 2, 1

#: OMERO's SystemTypes: readable by all, linkable by all, never group-filtered
SYSTEM_KINDS = frozenset({"Experimenter", "ExperimenterGroup", "GroupExperimenterMap", "Event",
                          "EventLog", "Session", "Node", "Share"})

#: order of ``Permissions.restrictions`` (omero.constants.permissions *RESTRICTION)
LINK, EDIT, DELETE, ANNOT, CHGRP, CHOWN = range(6)
_SCOPE_RIGHTS = {LINK: WRITE, EDIT: WRITE, DELETE: WRITE, ANNOT: ANNOTATE}

#: the four levels a group can have (OMERO's names for them)
LEVELS = {"rw----": "private", "rwr---": "read-only", "rwra--": "read-annotate",
          "rwrw--": "read-write"}


def is_system(kind: str) -> bool:
    """OMERO's ``SystemTypes.isSystemType``: users, groups, events, sessions, enumerations."""
    return kind in SYSTEM_KINDS or is_enum_kind(kind)


def _ids(flat: Any) -> tuple[int | None, int | None]:
    """(owner id, group id) of a stored object; None where it has none."""
    d = flat.getDetails()
    if d is None:
        return None, None
    owner = d.owner.getId().getValue() if d.owner is not None else None
    group = d.group.getId().getValue() if d.group is not None else None
    return owner, group


def group_permissions(store: ObjectStore, gid: int | None) -> Any:
    """The ``PermissionsI`` of a group (private when unknown, as BasicACLVoter's fallback)."""
    group = store.flat("ExperimenterGroup", gid) if gid is not None else None
    perms = group.getDetails().permissions if group is not None and group.getDetails() else None
    return perms if perms is not None else omero.model.PermissionsI("rw----")


def granted(perms: Any, role: int, right: int) -> bool:
    """``Permissions.isGranted(role, right)``."""
    return bool(perms.granted(right, role))


def perms_string(perms: Any) -> str:
    """``rwra--`` and the like, for messages (omero-py's ``str(PermissionsI)``)."""
    return str(perms)


def in_open_group(gid: int | None) -> bool:
    """Objects in ``system`` or ``user`` are readable and linkable by all (``SystemTypes``)."""
    return gid in (SYSTEM_GROUP_ID, USER_GROUP_ID)


def can_read(session: Session, flat: Any) -> bool:
    """``BasicACLVoter.allowLoad`` with the security filter, ignoring the current group."""
    kind = kind_of(flat)
    owner, gid = _ids(flat)
    if is_system(kind) or gid is None or in_open_group(gid) or session.is_admin:
        return True
    if gid not in session.member_of:
        return False
    if owner == session.user_id or gid in session.leader_of:
        return True
    return granted(group_permissions(session.ctx.store, gid), GROUP, READ)


def in_context(session: Session, flat: Any) -> bool:
    """Readable *and* in the call's group: the current one, or any with ``omero.group=-1``."""
    if not can_read(session, flat):
        return False
    _owner, gid = _ids(flat)
    if gid is None or in_open_group(gid) or is_system(kind_of(flat)) or session.all_groups():
        return True
    return gid == session.group_id


def visibility(session: Session) -> Callable[[Any], bool]:
    """A predicate over flat objects for the query evaluator (``hql.run(visible=...)``)."""
    return lambda flat: in_context(session, flat)


# --------------------------------------------------------------------------- restrictions

def allowed_scopes(session: Session, flat: Any) -> list[bool]:
    """What the caller may do with an object: [link, edit, delete, annotate, chgrp, chown].

    ``BasicACLVoter.allowUpdateOrDelete`` for a full admin, a leader, the owner, a member, and
    system types (only linking); ``addChgrpChownRestrictionBits`` for chgrp/chown (owner or
    admin may chgrp, admin chown).
    """
    kind = kind_of(flat)
    owner, gid = _ids(flat)
    is_owner = owner == session.user_id
    if is_system(kind):
        allow = [True, session.is_admin, session.is_admin, True]
    else:
        # the user group reads as private to everyone (BasicACLVoter: "special handling")
        perms = omero.model.PermissionsI("rw----") if gid == USER_GROUP_ID else \
            group_permissions(session.ctx.store, gid)
        leader = session.is_admin or gid in session.leader_of
        member = gid in session.member_of
        # CurrentDetails.isGraphCritical: an admin or leader in a private group may not link
        # to or annotate members' data (ticket:1769)
        critical = (leader and not is_owner and not in_open_group(gid)
                    and not granted(perms, GROUP, READ))
        allow = []
        for scope in (LINK, EDIT, DELETE, ANNOT):
            right = _SCOPE_RIGHTS[scope]
            linkage = scope in (LINK, ANNOT)
            if critical and linkage:
                allow.append(False)
                continue
            allow.append(leader or granted(perms, WORLD, right)
                         or (is_owner and granted(perms, USER, right))
                         or (member and granted(perms, GROUP, right))
                         or (linkage and gid == SYSTEM_GROUP_ID))
    allow += [not is_system(kind) and (is_owner or session.is_admin), session.is_admin]
    return allow


def post_process(session: Session, result: Any) -> Any:
    """Set the caller's restrictions on every loaded object of a result (``postProcess``).

    Walks lists, tuples, dict values and loaded object graphs; each object gets a copy of its
    permissions (OMERO #9635) with ``restrictions`` = what is *not* allowed.
    """
    seen: set[int] = set()

    def walk(value: Any) -> None:
        if isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, omero.model.IObject):
            if id(value) in seen or not value.isLoaded() or value.getId() is None:
                return
            seen.add(id(value))
            _restrict(session, value)
            info = getattr(type(value), "_field_info", None)
            for name in (info._fields if info is not None else ()):
                if name == "details":
                    continue
                seq = getattr(value, f"_{name}Seq", None)
                if seq is not None:
                    if getattr(value, f"_{name}Loaded", False):
                        walk(list(seq))
                    continue
                ref = getattr(value, "_" + name, None)
                if isinstance(ref, omero.model.IObject):
                    walk(ref)

    walk(result)
    return result


def _restrict(session: Session, obj: Any) -> None:
    d = obj.getDetails()
    if d is None or d.permissions is None:
        return
    copy = omero.model.PermissionsI(d.permissions.getPerm1())
    copy._restrictions = [not a for a in allowed_scopes(session, obj)]
    d.permissions = copy


def can_update(session: Session, flat: Any) -> bool:
    """``IAdmin.canUpdate``: the EDIT scope above."""
    return allowed_scopes(session, flat)[EDIT]


# --------------------------------------------------------------------------- linking

def _needed_right(changed: str, linked: str) -> int:
    """``OmeroInterceptor.neededRight``."""
    if linked == "RenderingDef" or changed == "RenderingDef" or \
            (linked == "Pixels" and changed == "Thumbnail"):
        return READ
    if (changed.endswith("AnnotationLink") or (changed == "Roi" and linked == "Image")):
        return ANNOTATE
    return WRITE


def _references(obj: Any) -> list[Any]:
    """The many-to-one references of an object (``ExtendedMetadata.getLockCandidates``)."""
    info = getattr(type(obj), "_field_info", None)
    if info is None:
        return []
    out = []
    for name in info._fields:
        if name == "details" or hasattr(obj, f"_{name}Seq"):
            continue
        ref = getattr(obj, "_" + name, None)
        if isinstance(ref, omero.model.IObject) and ref.getId() is not None:
            out.append(ref)
    return out


def _graph(objs: list[Any]) -> list[Any]:
    """Every loaded object of the graphs about to be saved (what Hibernate flushes)."""
    out: list[Any] = []
    seen: set[int] = set()
    stack = list(objs)
    while stack:
        obj = stack.pop()
        if not isinstance(obj, omero.model.IObject) or id(obj) in seen or not obj.isLoaded():
            continue
        seen.add(id(obj))
        out.append(obj)
        info = getattr(type(obj), "_field_info", None)
        for name in (info._fields if info is not None else ()):
            if name == "details":
                continue
            if hasattr(obj, f"_{name}Seq"):
                if getattr(obj, f"_{name}Loaded", False):
                    stack.extend(getattr(obj, f"_{name}Seq") or [])
            else:
                stack.append(getattr(obj, "_" + name, None))
    return out


def check_linkages(session: Session, objs: list[Any]) -> None:
    """Refuse a save that links to stored objects the caller may not link to.

    ``OmeroInterceptor.evaluateLinkages`` for every object of the graphs (new or updated):
    each reference to a *stored* object is checked against the current group and its
    permissions; references to objects new in this save are the caller's own.
    """
    store = session.ctx.store
    perms = group_permissions(store, session.group_id)
    for changed in _graph(objs):
        ckind = kind_of(changed)
        if is_system(ckind):
            continue
        for ref in _references(changed):
            lkind = kind_of(ref)
            if is_system(lkind):
                continue
            linked = store.flat(lkind, ref.getId().getValue())
            if linked is None:
                continue  # a reference to a new object, or a missing one (the store says so)
            owner, gid = _ids(linked)
            if gid is None or in_open_group(gid):
                continue
            name = f"{kind_of(linked)}:{ref.getId().getValue()}"
            if gid != session.group_id and not session.all_groups():
                raise omero.GroupSecurityViolation(
                    None, None, f"MIXED GROUP: {ckind}(group={session.group_id}) and "
                    f"{name}(group={gid}) cannot be linked.")
            is_owner = owner == session.user_id
            supervisor = not is_owner and (session.is_admin or gid in session.leader_of)
            if supervisor and not granted(perms, GROUP, READ):
                raise omero.ReadOnlyGroupSecurityViolation(
                    None, None, f"Cannot link to {name}: current user ({session.user_name}) "
                    f"is an admin or the owner of the private group ({session.group_name}="
                    f"{perms_string(perms)}). It is not allowed to link to users' data.")
            if supervisor:
                continue
            role = USER if is_owner else GROUP if gid in session.member_of else WORLD
            if not granted(perms, role, _needed_right(ckind, lkind)):
                raise omero.SecurityViolation(
                    None, None, f"Group is {perms_string(perms)}. Cannot link to object: {name}")


def readable_or_raise(session: Session, kind: str, oid: int) -> None:
    """``BasicACLVoter.throwLoadViolation`` for ``IQuery.get`` of an object not visible."""
    flat = session.ctx.store.flat(kind, oid)
    if flat is not None and not in_context(session, flat):
        raise omero.SecurityViolation(None, None, f"Cannot read {kind_of(flat)}:{oid}")

"""Core OMERO services of the stand-in: IAdmin, IQuery, IUpdate, IContainer, IMetadata, ISession,
ITypes, IConfig.

Each servant answers the calls omero-py's client, BlitzGateway and the pusher make, with OMERO's
semantics as far as they matter to a client (ids assigned on save, unloaded references resolved,
``join fetch`` honoured, ``ValidationException`` for missing objects, ``ApiUsageException`` for
what is not supported). Operations not written here fail at once (see ``server.servant``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import omero
import omero.api
import omero.model
import omero.sys
from omero.rtypes import rlong, rstring, rtime, unwrap, wrap

from . import hql, permissions
from .server import servant
from .store import (
    GUEST_GROUP_ID,
    GUEST_ID,
    ROOT_ID,
    SYSTEM_GROUP_ID,
    USER_GROUP_ID,
    StoreError,
    is_enum_kind,
    kind_of,
    model_class,
)

if TYPE_CHECKING:
    from .server import ServerContext
    from .session import Session

log = logging.getLogger(__name__)


def _kind(name: str) -> str:
    """Class names as clients send them: "Image", "ImageI", "omero.model.Image", "ome.model.core.Image"."""
    name = name.rsplit(".", 1)[-1]
    if name.endswith("I") and hasattr(omero.model, name[:-1]):
        name = name[:-1]
    if not hasattr(omero.model, name + "I"):
        raise omero.ApiUsageException(None, None, f"unknown class {name!r}")
    return name


def _params(params: Any) -> tuple[dict[str, Any], int, int | None, int | None]:
    """Unwrap omero.sys.Parameters: (named values, offset, limit, owner id filter)."""
    if params is None:
        return {}, 0, None, None
    values = {k: unwrap(v) for k, v in (params.map or {}).items()}
    f = params.theFilter
    offset = unwrap(f.offset) if f is not None and f.offset is not None else 0
    limit = unwrap(f.limit) if f is not None and f.limit is not None else None
    owner = unwrap(f.ownerId) if f is not None and f.ownerId is not None else None
    return values, offset or 0, limit, owner


def _query_error(query: str, exc: Exception) -> omero.ApiUsageException:
    return omero.ApiUsageException(
        None, None, f"the OMERO stand-in cannot run this query ({exc}): {' '.join(query.split())}")


def _owner_id(flat: Any) -> int | None:
    d = flat.getDetails()
    return d.owner.getId().getValue() if d is not None and d.owner is not None else None


class _Service:
    """Base of the stateless services: the server context and the caller's session."""

    def __init__(self, ctx: ServerContext, session: Session) -> None:
        self.ctx = ctx
        self.session = session

    @property
    def store(self) -> Any:
        return self.ctx.store


# --------------------------------------------------------------------------- IAdmin

@servant
class AdminI(_Service, omero.api.IAdmin):
    """Who am I, which groups: what BlitzGateway and the pusher ask at login."""

    def getEventContext(self, current: Any = None) -> Any:
        return self.session.event_context()

    def _experimenter(self, uid: int) -> Any:
        obj = self.store.load("Experimenter", uid, fetch=["groupExperimenterMap.parent"])
        if obj is None:
            raise omero.ApiUsageException(None, None, f"no experimenter with id {uid}")
        return obj

    def getExperimenter(self, id: int, current: Any = None) -> Any:
        return self._experimenter(id)

    def lookupExperimenter(self, name: str, current: Any = None) -> Any:
        for e in self.store.all("Experimenter"):
            if unwrap(e.getOmeName()) == name:
                return self._experimenter(e.getId().getValue())
        raise omero.ApiUsageException(None, None, f"no experimenter named {name!r}")

    def lookupExperimenters(self, current: Any = None) -> list[Any]:
        return [self._experimenter(e.getId().getValue()) for e in self.store.all("Experimenter")]

    def _group(self, gid: int) -> Any:
        obj = self.store.load("ExperimenterGroup", gid, fetch=["groupExperimenterMap.child"])
        if obj is None:
            raise omero.ApiUsageException(None, None, f"no group with id {gid}")
        return obj

    def getGroup(self, id: int, current: Any = None) -> Any:
        return self._group(id)

    def lookupGroup(self, name: str, current: Any = None) -> Any:
        for g in self.store.all("ExperimenterGroup"):
            if unwrap(g.getName()) == name:
                return self._group(g.getId().getValue())
        raise omero.ApiUsageException(None, None, f"no group named {name!r}")

    def lookupGroups(self, current: Any = None) -> list[Any]:
        return [self._group(g.getId().getValue()) for g in self.store.all("ExperimenterGroup")]

    def _memberships(self, uid: int) -> list[Any]:
        return [m for m in self.store.all("GroupExperimenterMap")
                if m.getChild().getId().getValue() == uid]

    def getMemberOfGroupIds(self, experimenter: Any, current: Any = None) -> list[int]:
        uid = experimenter.getId().getValue() if experimenter is not None else self.session.user_id
        return [m.getParent().getId().getValue() for m in self._memberships(uid)]

    def getLeaderOfGroupIds(self, experimenter: Any, current: Any = None) -> list[int]:
        uid = experimenter.getId().getValue() if experimenter is not None else self.session.user_id
        return [m.getParent().getId().getValue() for m in self._memberships(uid)
                if unwrap(m.getOwner())]

    def containedGroups(self, experimenterId: int, current: Any = None) -> list[Any]:
        return [self._group(m.getParent().getId().getValue()) for m in self._memberships(experimenterId)]

    def containedExperimenters(self, groupId: int, current: Any = None) -> list[Any]:
        return [self._experimenter(m.getChild().getId().getValue())
                for m in self.store.all("GroupExperimenterMap")
                if m.getParent().getId().getValue() == groupId]

    def getDefaultGroup(self, experimenterId: int, current: Any = None) -> Any:
        if experimenterId == self.session.user_id:
            return self._group(self.session.group_id)
        ids = [m.getParent().getId().getValue() for m in self._memberships(experimenterId)]
        chosen = self.store.meta(f"default_group:{experimenterId}")
        if chosen is not None and int(chosen) in ids:
            return self._group(int(chosen))
        return self._group(next((g for g in ids if g != USER_GROUP_ID), ids[0]))

    def getSecurityRoles(self, current: Any = None) -> Any:
        return omero.sys.Roles(rootId=ROOT_ID, rootName="root", systemGroupId=SYSTEM_GROUP_ID,
                               systemGroupName="system", userGroupId=USER_GROUP_ID,
                               userGroupName="user", guestId=GUEST_ID, guestName="guest",
                               guestGroupId=GUEST_GROUP_ID, guestGroupName="guest")

    def canUpdate(self, obj: Any, current: Any = None) -> bool:
        flat = self.store.flat(kind_of(obj), obj.getId().getValue())
        return flat is not None and permissions.can_update(self.session, flat)

    # -- writes (admins only): what omero-py's testlib new_group/new_user call
    def _require_admin(self, what: str) -> None:
        """ome/omero-server ``AdminImpl``: these calls need an administrator."""
        if not self.session.is_admin:
            raise omero.SecurityViolation(
                None, None, f"{what}: user {self.session.user_name} is not an administrator")

    def _save_system(self, objs: list[Any]) -> list[Any]:
        """Save users, groups and memberships as root in ``system`` (OMERO's system types)."""
        return self.store.save_all(objs, owner=omero.model.ExperimenterI(ROOT_ID, False),
                                   group=omero.model.ExperimenterGroupI(SYSTEM_GROUP_ID, False),
                                   validate=True)

    def createGroup(self, group: Any, current: Any = None) -> int:
        """A new group; its permissions from ``details.permissions`` (default private).

        ome/omero-server ``AdminImpl.createGroup``: a group name is unique, and a group
        without permissions is private (``rw----``).
        """
        self._require_admin("createGroup")
        name = unwrap(group.getName())
        if any(unwrap(g.getName()) == name for g in self.store.all("ExperimenterGroup")):
            raise omero.ValidationException(None, None, f"a group named {name!r} already exists")
        g = omero.model.ExperimenterGroupI()
        g.name = rstring(name)
        g.ldap = omero.rtypes.rbool(bool(unwrap(group.getLdap())))
        given = group.getDetails().permissions if group.getDetails() is not None else None
        perms = str(given) if given is not None and given.getPerm1() != -1 else "rw----"
        g.details.permissions = omero.model.PermissionsI(perms)
        return self._save_system([g])[0].getId().getValue()

    def _new_experimenter(self, experimenter: Any, default_group: Any,
                          other_groups: list[Any]) -> int:
        name = unwrap(experimenter.getOmeName())
        if not name or any(unwrap(e.getOmeName()) == name for e in self.store.all("Experimenter")):
            raise omero.ValidationException(None, None, f"experimenter name {name!r} is empty or taken")
        e = omero.model.ExperimenterI()
        for field in ("omeName", "firstName", "lastName", "email", "institution"):
            setattr(e, "_" + field, getattr(experimenter, "_" + field, None))
        e.ldap = omero.rtypes.rbool(False)
        uid = self._save_system([e])[0].getId().getValue()
        gids = [default_group.getId().getValue()] + [
            g.getId().getValue() for g in other_groups or []]
        self._add_memberships(uid, list(dict.fromkeys(gids)))
        self.store.set_meta(f"default_group:{uid}", str(gids[0]))
        return uid

    def _add_memberships(self, uid: int, gids: list[int]) -> None:
        have = {m.getParent().getId().getValue() for m in self._memberships(uid)}
        maps = []
        for gid in gids:
            if self.store.flat("ExperimenterGroup", gid) is None:
                raise omero.ApiUsageException(None, None, f"no group with id {gid}")
            if gid in have:
                continue
            m = omero.model.GroupExperimenterMapI()
            m.parent = omero.model.ExperimenterGroupI(gid, False)
            m.child = omero.model.ExperimenterI(uid, False)
            m.owner = omero.rtypes.rbool(False)
            maps.append(m)
        if maps:
            self._save_system(maps)

    def createExperimenter(self, experimenter: Any, defaultGroup: Any, otherGroups: list[Any],
                           current: Any = None) -> int:
        """A user without a password: it cannot log in until ``changeUserPassword``."""
        self._require_admin("createExperimenter")
        return self._new_experimenter(experimenter, defaultGroup, otherGroups)

    def createExperimenterWithPassword(self, experimenter: Any, password: Any, defaultGroup: Any,
                                       otherGroups: list[Any], current: Any = None) -> int:
        """A user who logs in with *password* (kept as a salted hash) in *defaultGroup*."""
        from .session import set_password

        self._require_admin("createExperimenterWithPassword")
        uid = self._new_experimenter(experimenter, defaultGroup, otherGroups)
        set_password(self.store, unwrap(experimenter.getOmeName()), unwrap(password) or "")
        return uid

    def changeUserPassword(self, omeName: str, newPassword: Any, current: Any = None) -> None:
        from .session import set_password

        self._require_admin("changeUserPassword")
        self.lookupExperimenter(omeName)  # ApiUsageException for an unknown user
        set_password(self.store, omeName, unwrap(newPassword) or "")

    def addGroups(self, user: Any, groups: list[Any], current: Any = None) -> None:
        self._require_admin("addGroups")
        self._add_memberships(user.getId().getValue(), [g.getId().getValue() for g in groups])

    def setGroupOwner(self, group: Any, owner: Any, current: Any = None) -> None:
        """Make *owner* a leader of *group* (a member first if needed), as ``AdminImpl``."""
        self._require_admin("setGroupOwner")
        uid, gid = owner.getId().getValue(), group.getId().getValue()
        self._add_memberships(uid, [gid])
        for m in self._memberships(uid):
            if m.getParent().getId().getValue() == gid:
                loaded = self.store.load("GroupExperimenterMap", m.getId().getValue())
                loaded.owner = omero.rtypes.rbool(True)
                self._save_system([loaded])

    def setDefaultGroup(self, user: Any, group: Any, current: Any = None) -> None:
        """The group the user's next sessions start in (it must be one of theirs)."""
        uid, gid = user.getId().getValue(), group.getId().getValue()
        if uid != self.session.user_id:
            self._require_admin("setDefaultGroup")
        if gid not in [m.getParent().getId().getValue() for m in self._memberships(uid)]:
            raise omero.ApiUsageException(None, None, f"user {uid} is not a member of group {gid}")
        self.store.set_meta(f"default_group:{uid}", str(gid))

    def getCurrentAdminPrivileges(self, current: Any = None) -> list[Any]:
        out = []
        for name in self.session.event_context().adminPrivileges or []:
            p = omero.model.AdminPrivilegeI()
            p.setValue(rstring(name))
            out.append(p)
        return out


# --------------------------------------------------------------------------- IQuery

@servant
class QueryI(_Service, omero.api.IQuery):
    """Lookups and the HQL subset of :mod:`tests.omero_server.hql`."""

    def _visible(self, flat: Any) -> bool:
        return permissions.in_context(self.session, flat)

    def get(self, klass: str, id: int, current: Any = None) -> Any:
        permissions.readable_or_raise(self.session, _kind(klass), id)
        obj = self.store.load(_kind(klass), id)
        if obj is None:
            raise omero.ValidationException(
                None, None, f"No row with the given identifier exists: [{_kind(klass)}#{id}]")
        return obj

    def find(self, klass: str, id: int, current: Any = None) -> Any:
        flat = self.store.flat(_kind(klass), id)
        if flat is None or not self._visible(flat):
            return None
        return self.store.load(_kind(klass), id)

    def findAll(self, klass: str, filter: Any, current: Any = None) -> list[Any]:
        kind = _kind(klass)
        flats = [f for f in self.store.all(kind) if self._visible(f)]
        if filter is not None and filter.ownerId is not None:
            flats = [f for f in flats if _owner_id(f) == unwrap(filter.ownerId)]
        offset = unwrap(filter.offset) if filter is not None and filter.offset is not None else 0
        limit = unwrap(filter.limit) if filter is not None and filter.limit is not None else None
        flats = flats[offset:offset + limit if limit is not None else None]
        return [self.store.load(kind_of(f), f.getId().getValue()) for f in flats]

    def _by_string(self, klass: str, field: str, match: Callable[[str], bool]) -> list[Any]:
        kind = _kind(klass)
        out = []
        for flat in self.store.all(kind):
            if not self._visible(flat):
                continue
            v = unwrap(getattr(flat, "_" + field, None))
            if isinstance(v, str) and match(v):
                out.append(flat)
        return [self.store.load(kind_of(f), f.getId().getValue()) for f in out]

    def findByString(self, klass: str, field: str, value: str, current: Any = None) -> Any:
        """Equality (``Restrictions.eq``), one result at most: ome/omero-server QueryImpl."""
        found = self._by_string(klass, field, lambda v: v == value)
        if len(found) > 1:
            raise omero.ApiUsageException(None, None, f"more than one {klass} with {field}={value!r}")
        return found[0] if found else None

    def findAllByString(self, klass: str, field: str, value: str, caseSensitive: bool,
                        filter: Any, current: Any = None) -> list[Any]:
        """``field LIKE '%value%'`` (``ILIKE`` unless case-sensitive), filter's offset/limit.

        ome/omero-server ``src/main/java/ome/logic/QueryImpl.java`` ``findAllByString``:
        ``Restrictions.like(fieldName, value, MatchMode.ANYWHERE)`` (or ``ilike``), so the
        value is a substring and its ``%`` and ``_`` are wildcards; ``parseFilter`` pages.
        """
        rx = hql.like_regex(f"%{value or ''}%", case_sensitive=caseSensitive)
        found = self._by_string(klass, field, lambda v: rx.match(v) is not None)
        offset = unwrap(filter.offset) if filter is not None and filter.offset is not None else 0
        limit = unwrap(filter.limit) if filter is not None and filter.limit is not None else None
        return found[offset:offset + limit if limit is not None else None]

    def _run(self, query: str, params: Any) -> list[Any]:
        values, offset, limit, _owner = _params(params)
        try:
            return hql.run(self.store, query, values, offset, limit,
                           visible=permissions.visibility(self.session))
        except hql.QueryError as exc:
            raise _query_error(query, exc) from exc

    def findByQuery(self, query: str, params: Any, current: Any = None) -> Any:
        found = self._run(query, params)
        if len(found) > 1:
            raise omero.ApiUsageException(
                None, None, f"findByQuery found {len(found)} objects; use findAllByQuery")
        return found[0] if found else None

    def findAllByQuery(self, query: str, params: Any, current: Any = None) -> list[Any]:
        return self._run(query, params)

    def projection(self, query: str, params: Any, current: Any = None) -> list[list[Any]]:
        values, offset, limit, _owner = _params(params)
        try:
            rows = hql.project(self.store, query, values, offset, limit,
                               visible=permissions.visibility(self.session))
        except hql.QueryError as exc:
            raise _query_error(query, exc) from exc
        return [[_rtype(v) for v in row] for row in rows]

    def refresh(self, iObject: Any, current: Any = None) -> Any:
        return self.get(kind_of(iObject), iObject.getId().getValue())


def _rtype(value: Any) -> Any:
    """Wrap projection values as OMERO does (ids and counts as RLong, entities as RObject)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return omero.rtypes.rbool(value)
    if isinstance(value, int):
        return rlong(value)
    if isinstance(value, omero.model.IObject):
        return omero.rtypes.robject(value)
    return wrap(value)


# --------------------------------------------------------------------------- IUpdate

@servant
class UpdateI(_Service, omero.api.IUpdate):
    """Saves object graphs (ids assigned, references resolved) and deletes objects."""

    def saveObject(self, obj: Any, current: Any = None) -> None:
        self._save_all([obj])

    def saveAndReturnObject(self, obj: Any, current: Any = None) -> Any:
        return self._save_all([obj])[0]

    def saveCollection(self, objs: list[Any], current: Any = None) -> None:
        self._save_all(objs)

    def saveArray(self, graph: list[Any], current: Any = None) -> None:
        self._save_all(graph)

    def saveAndReturnArray(self, graph: list[Any], current: Any = None) -> list[Any]:
        return self._save_all(graph)

    def saveAndReturnIds(self, graph: list[Any], current: Any = None) -> list[int]:
        return [o.getId().getValue() for o in self._save_all(graph)]

    def _save_all(self, objs: list[Any]) -> list[Any]:
        permissions.check_linkages(self.session, list(objs))
        return self.ctx.store.save_all(list(objs), owner=self.session.owner,
                                       group=self.session.group, validate=True)

    def deleteObject(self, row: Any, current: Any = None) -> None:
        self.store.delete(kind_of(row), row.getId().getValue())

    def indexObject(self, row: Any, current: Any = None) -> None:
        return None


# --------------------------------------------------------------------------- IContainer

_HIERARCHY = {"Project": ("datasetLinks", "imageLinks"), "Dataset": ("imageLinks",)}


@servant
class ContainerI(_Service, omero.api.IContainer):
    """Project/Dataset/Image hierarchies as OMERO.insight and ezomero read them."""

    def loadContainerHierarchy(self, rootType: str, rootIds: list[int], options: Any,
                               current: Any = None) -> list[Any]:
        kind = _kind(rootType)
        if kind not in _HIERARCHY:
            raise omero.ApiUsageException(None, None, f"rootType must be Project or Dataset, not {kind}")
        opts = getattr(options, "theOptions", None)
        leaves = bool(opts is not None and unwrap(opts.leaves))
        ids = list(rootIds) or [f.getId().getValue() for f in self.store.all(kind)]
        ids = [i for i in ids if self.store.flat(kind, i) is not None
               and permissions.in_context(self.session, self.store.flat(kind, i))]
        if kind == "Project":
            fetch = ["datasetLinks.child.imageLinks.child.pixels"] if leaves else [
                "datasetLinks.child"]
        else:
            fetch = ["imageLinks.child.pixels"] if leaves else []
        out = [self.store.load(kind, i, fetch=fetch) for i in ids]
        return [o for o in out if o is not None]

    def _image_ids(self, kind: str, ids: list[int]) -> list[int]:
        if kind == "Image":
            return ids
        if kind == "Dataset":
            return [link.getChild().getId().getValue() for i in ids
                    for link in self.store.children("Dataset", i, "imageLinks")]
        if kind == "Project":
            dids = [link.getChild().getId().getValue() for i in ids
                    for link in self.store.children("Project", i, "datasetLinks")]
            return self._image_ids("Dataset", dids)
        raise omero.ApiUsageException(None, None, f"cannot list images of {kind}")

    def getImages(self, rootType: str, rootIds: list[int], options: Any,
                  current: Any = None) -> list[Any]:
        ids = list(dict.fromkeys(self._image_ids(_kind(rootType), list(rootIds))))
        out = [self.store.load("Image", i, fetch=["pixels.pixelsType", "pixels.dimensionOrder"])
               for i in ids]
        return [o for o in out if o is not None]

    def getCollectionCount(self, type: str, property: str, ids: list[int], options: Any,
                           current: Any = None) -> dict[int, int]:
        kind = _kind(type)
        prop = property.rsplit("_", 1)[-1].rsplit(".", 1)[-1]
        return {i: len(self.store.children(kind, i, prop)) for i in ids}

    def createDataObject(self, obj: Any, options: Any, current: Any = None) -> Any:
        return self.createDataObjects([obj], options)[0]

    def createDataObjects(self, dataObjects: list[Any], options: Any, current: Any = None) -> list[Any]:
        permissions.check_linkages(self.session, list(dataObjects))
        return self.ctx.store.save_all(list(dataObjects), owner=self.session.owner,
                                       group=self.session.group, validate=True)

    def updateDataObject(self, obj: Any, options: Any, current: Any = None) -> Any:
        return self.createDataObjects([obj], options)[0]

    def updateDataObjects(self, objs: list[Any], options: Any, current: Any = None) -> list[Any]:
        return self.createDataObjects(objs, options)

    def link(self, links: list[Any], options: Any, current: Any = None) -> list[Any]:
        return self.createDataObjects(links, options)

    def unlink(self, links: list[Any], options: Any, current: Any = None) -> None:
        for link in links:
            self.store.delete(kind_of(link), link.getId().getValue())


# --------------------------------------------------------------------------- IMetadata

def _annotation_kinds(types: list[str]) -> list[str]:
    return [_kind(t) for t in types] or ["Annotation"]


@servant
class MetadataI(_Service, omero.api.IMetadata):
    """Annotations of objects: what OMERO.web's right-hand panel and ezomero read."""

    def loadAnnotations(self, rootType: str, rootIds: list[int], annotationTypes: list[str],
                        annotatorIds: list[int], options: Any, current: Any = None) -> dict[int, list[Any]]:
        kind = _kind(rootType)
        kinds = _annotation_kinds(list(annotationTypes or []))
        owners = set(annotatorIds or [])
        out: dict[int, list[Any]] = {}
        for rid in rootIds:
            anns = []
            for link in self.store.children(kind, rid, "annotationLinks"):
                child = self.store.resolve(link.getChild())
                if child is None:
                    continue
                if not any(hql_is_a(kind_of(child), k) for k in kinds):
                    continue
                if owners and _owner_id(child) not in owners:
                    continue
                if not permissions.in_context(self.session, child):
                    continue
                anns.append(self.store.load(kind_of(child), child.getId().getValue(),
                                            fetch=_annotation_fetch(child)))
            out[rid] = anns
        return out

    def loadSpecifiedAnnotations(self, annotationType: str, include: list[str], exclude: list[str],
                                 options: Any, current: Any = None) -> list[Any]:
        kind = _kind(annotationType)
        out = []
        for flat in self.store.all(kind):
            ns = unwrap(flat.getNs())
            if include and ns not in include:
                continue
            if exclude and ns in exclude:
                continue
            out.append(self.store.load(kind_of(flat), flat.getId().getValue(),
                                       fetch=_annotation_fetch(flat)))
        return out

    def loadAnnotation(self, annotationIds: list[int], current: Any = None) -> list[Any]:
        out = []
        for aid in annotationIds:
            flat = self.store.flat("Annotation", aid)
            if flat is not None:
                out.append(self.store.load(kind_of(flat), aid, fetch=_annotation_fetch(flat)))
        return out

    def loadSpecifiedAnnotationsLinkedTo(self, annotationType: str, include: list[str],
                                         exclude: list[str], rootNodeType: str,
                                         rootNodeIds: list[int], options: Any,
                                         current: Any = None) -> dict[int, list[Any]]:
        found = self.loadAnnotations(rootNodeType, rootNodeIds, [annotationType], [], options)
        return {rid: [a for a in anns if (not include or unwrap(a.getNs()) in include)
                      and (not exclude or unwrap(a.getNs()) not in exclude)]
                for rid, anns in found.items()}


def hql_is_a(kind: str, of: str) -> bool:
    from .store import is_subkind
    return is_subkind(kind, of)


def _annotation_fetch(flat: Any) -> list[str]:
    return ["file"] if kind_of(flat) == "FileAnnotation" else []


# --------------------------------------------------------------------------- ISession / ITypes / IConfig

@servant
class SessionServiceI(_Service, omero.api.ISession):
    """The session records BlitzGateway reads at login and closes at logout."""

    def getSession(self, sessionUuid: str, current: Any = None) -> Any:
        session = self.ctx.sessions.get(sessionUuid)
        if session is None or session.closed:
            raise omero.RemovedSessionException(None, None, f"session {sessionUuid} does not exist")
        return session.model()

    def getReferenceCount(self, sessionUuid: str, current: Any = None) -> int:
        session = self.ctx.sessions.get(sessionUuid)
        if session is None:
            raise omero.RemovedSessionException(None, None, f"session {sessionUuid} does not exist")
        return session.refcount

    def closeSession(self, sess: Any, current: Any = None) -> int:
        """Drop one reference; the session closes only when none is left.

        ome/omero-server ``SessionManagerImpl.close`` (what ``ISession.closeSession`` calls):
        a joined session's owner keeps working after a joiner's closeSession. Returns the
        references left, -2 when the session was closed, -1 when it did not exist.
        """
        suuid = unwrap(sess.getUuid())
        session = self.ctx.sessions.get(suuid)
        if session is None:
            return -1
        return session.close_reference()


@servant
class TypesI(_Service, omero.api.ITypes):
    """Enumerations (PixelsType, DimensionOrder, ChecksumAlgorithm, ...)."""

    def allEnumerations(self, type: str, current: Any = None) -> list[Any]:
        kind = _kind(type)
        return [self.store.load(kind, f.getId().getValue()) for f in self.store.all(kind)]

    def getEnumeration(self, type: str, value: str, current: Any = None) -> Any:
        found = self.store.enum(_kind(type), value)
        if found is None:
            raise omero.ApiUsageException(None, None, f"no {type} enumeration {value!r}")
        return found

    def getEnumerationTypes(self, current: Any = None) -> list[str]:
        from .store import ENUMERATIONS
        return [f"omero.model.{k}" for k in ENUMERATIONS]

    def getEnumerationsWithEntries(self, current: Any = None) -> dict[str, list[Any]]:
        from .store import ENUMERATIONS
        return {f"omero.model.{k}": self.allEnumerations(k) for k in ENUMERATIONS}


@servant
class ConfigI(_Service, omero.api.IConfig):
    """Server configuration: a version that says what this is, and empty client settings.

    The version is the OMERO.server release that shipped the Bio-Formats the stand-in plays
    (``--bioformats-version``, :meth:`Faults.omero_version`), so a client that checks it
    (omero_push's zstd check) sees the same server the import then behaves as.
    """

    def getVersion(self, current: Any = None) -> str:
        return self.ctx.faults.omero_version()

    def _config(self) -> dict[str, str]:
        return {**_CONFIG, "omero.version": self.getVersion()}

    def getConfigValue(self, key: str, current: Any = None) -> str:
        return self._config().get(key, "")

    def getConfigValues(self, keyRegex: str, current: Any = None) -> dict[str, str]:
        import re
        return {k: v for k, v in self._config().items() if re.search(keyRegex, k)}

    def getClientConfigValues(self, current: Any = None) -> dict[str, str]:
        return {}

    def getClientConfigDefaults(self, current: Any = None) -> dict[str, str]:
        return {}

    def getConfigDefaults(self, current: Any = None) -> dict[str, str]:
        return self._config()

    def getDatabaseUuid(self, current: Any = None) -> str:
        return self.store.database_uuid

    def getServerTime(self, current: Any = None) -> Any:
        return rtime(int(time.time() * 1000))

    def getDatabaseTime(self, current: Any = None) -> Any:
        return rtime(int(time.time() * 1000))


_CONFIG = {
    "omero.db.name": "omero-standin",
    "omero.pixeldata.max_plane_width": "3192",
    "omero.pixeldata.max_plane_height": "3192",
    "omero.pixeldata.tile_width": "256",
    "omero.pixeldata.tile_height": "256",
}


# --------------------------------------------------------------------------- Delete2

#: Annotation kinds OMERO's delete keeps when the annotated object goes (they are shared).
_SHARED_ANNOTATIONS = ("TagAnnotation", "TermAnnotation")
_JAVA_PACKAGES = {"Project": "containers", "Dataset": "containers", "Image": "core",
                  "Pixels": "core", "Channel": "core", "LogicalChannel": "core",
                  "OriginalFile": "core", "Fileset": "fs", "FilesetEntry": "fs"}


def delete_graph(ctx: ServerContext, targets: dict[str, list[int]], dry_run: bool = False
                 ) -> dict[str, list[int]]:
    """Delete objects as OMERO's ``Delete2`` does by default; returns deleted ids by Java class.

    Beyond what :meth:`ObjectStore.delete` removes with an object (links, pixels, channels):
    a project takes the datasets only it contains, a dataset the images only it contains, an
    image the annotations only it carries (not tags or terms) and its fileset once no image of
    the fileset is left (entries and original files too). Child options are not interpreted.
    """
    store = ctx.store
    doomed: list[tuple[str, int]] = []

    def add(kind: str, oid: int) -> None:
        flat = store.flat(kind, oid)
        if flat is None or (kind_of(flat), oid) in doomed:
            return
        doomed.append((kind_of(flat), oid))
        k = kind_of(flat)
        if k == "Project":
            for link in store.children("Project", oid, "datasetLinks"):
                did = link.getChild().getId().getValue()
                others = [pl for pl in store.children("Dataset", did, "projectLinks")
                          if pl.getParent().getId().getValue() != oid]
                if not others:
                    add("Dataset", did)
        elif k == "Dataset":
            for link in store.children("Dataset", oid, "imageLinks"):
                iid = link.getChild().getId().getValue()
                others = [dl for dl in store.children("Image", iid, "datasetLinks")
                          if dl.getParent().getId().getValue() != oid]
                if not others:
                    add("Image", iid)
        if k in ("Project", "Dataset", "Image"):
            for link in store.children(k, oid, "annotationLinks"):
                ann = store.resolve(link.getChild())
                if ann is None or kind_of(ann) in _SHARED_ANNOTATIONS:
                    continue
                aid = ann.getId().getValue()
                users = [lk for (root, field), targets_ in store._back.items()
                         if root.endswith("AnnotationLink") and field == "child"
                         for lk in targets_.get(aid, ())]
                if len(users) <= 1:
                    add("Annotation", aid)
                    if kind_of(ann) == "FileAnnotation" and ann.getFile() is not None:
                        add("OriginalFile", ann.getFile().getId().getValue())
        if k == "Image" and flat.getFileset() is not None:
            fsid = flat.getFileset().getId().getValue()
            rest = [im for im in store.children("Fileset", fsid, "images")
                    if ("Image", im.getId().getValue()) not in doomed]
            if not rest:
                add("Fileset", fsid)
        if k == "Fileset":
            for entry in store.children("Fileset", oid, "usedFiles"):
                add("OriginalFile", entry.getOriginalFile().getId().getValue())

    for kind, ids in targets.items():
        for oid in ids:
            add(_kind(kind), oid)
    deleted: dict[str, list[int]] = {}
    for kind, oid in doomed:
        if not dry_run and store.flat(kind, oid) is not None:
            for root, did in store.delete(kind, oid):
                pkg = _JAVA_PACKAGES.get(root, "annotations" if root == "Annotation" else "core")
                deleted.setdefault(f"ome.model.{pkg}.{root}", []).append(did)
        elif dry_run:
            pkg = _JAVA_PACKAGES.get(kind, "core")
            deleted.setdefault(f"ome.model.{pkg}.{kind}", []).append(oid)
    return deleted


# --------------------------------------------------------------------------- registration

def register(ctx: ServerContext) -> None:
    """Plug the core services into the registry (called by the server at start)."""
    ctx.register_service("IAdmin", AdminI)
    ctx.register_service("IQuery", QueryI)
    ctx.register_service("IUpdate", UpdateI)
    ctx.register_service("IContainer", ContainerI)
    ctx.register_service("IMetadata", MetadataI)
    ctx.register_service("ISession", SessionServiceI)
    ctx.register_service("ITypes", TypesI)
    ctx.register_service("IConfig", ConfigI)


__all__ = ["register", "AdminI", "QueryI", "UpdateI", "ContainerI", "MetadataI",
           "SessionServiceI", "TypesI", "ConfigI", "StoreError", "is_enum_kind", "model_class"]

"""Sessions: the Glacier2 router servant, the per-login ServiceFactory, and the Session record.

What omero-py does (omero/clients.py ``createSession``): ``router.createSession(user, password)``
on the default router ``OMERO.Glacier2/router``, then casts the returned ``Glacier2.Session``
proxy to ``omero.api.ServiceFactoryPrx``; ``getSessionId()`` is that proxy's identity *name*.
It then creates a callback adapter with the router (``getServerProxy``/``getCategoryForClient``),
calls ``setCallback``, and keeps the session alive with ``keepAlive``/``keepAllAlive``.
``closeSession()`` calls ``router.destroySession()``. ``joinSession(uuid)`` logs in with the
session uuid as both user name and password.

A wrong password raises ``Glacier2.PermissionDeniedException`` as OMERO's permissions verifier does.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import Ice
import omero
import omero.api
import omero.grid  # noqa: F401  (SharedResourcesPrx)
import omero.model
import omero.sys
from omero.clients import Glacier2  # as omero-py loads it (with Router and its exceptions)
from omero.rtypes import rlong, rstring, rtime

from .faults import Faults
from .server import STATEFUL_SERVICES, servant
from .store import GROUP_PERMS, SYSTEM_GROUP_ID, USER_GROUP_ID

if TYPE_CHECKING:
    from .server import ServerContext

log = logging.getLogger(__name__)

#: The router identity omero-py's default router string names: "OMERO.Glacier2/router".
ROUTER_IDENTITY = Ice.Identity("router", "OMERO.Glacier2")

#: omero-py's service names (getByName/createByName) -> registry names.
SERVICE_NAMES = {
    "omero.api.IAdmin": "IAdmin", "omero.api.IConfig": "IConfig",
    "omero.api.IContainer": "IContainer", "omero.api.IMetadata": "IMetadata",
    "omero.api.IPixels": "IPixels", "omero.api.IQuery": "IQuery",
    "omero.api.ISession": "ISession", "omero.api.ITypes": "ITypes",
    "omero.api.IUpdate": "IUpdate", "omero.api.IRoi": "IRoi",
    "omero.api.IRenderingSettings": "IRenderingSettings",
    "omero.api.RawPixelsStore": "RawPixelsStore", "omero.api.RawFileStore": "RawFileStore",
    "omero.grid.SharedResources": "SharedResources",
}


def _proxy_class(name: str) -> Any:
    """The typed proxy class of a service (IQuery -> omero.api.IQueryPrx)."""
    for module in (omero.api, omero.grid):
        cls = getattr(module, name + "Prx", None)
        if cls is not None:
            return cls
    return Ice.ObjectPrx


@dataclass
class Session:
    """One OMERO session (what a session uuid names); several logins may join it.

    The data services use ``owner``/``group`` (unloaded Experimenter/ExperimenterGroup) when
    they save objects, or simply :meth:`save`.
    """

    ctx: ServerContext
    uuid: str
    user_id: int
    user_name: str
    group_id: int
    group_name: str
    member_of: list[int]
    leader_of: list[int]
    is_admin: bool
    agent: str = ""
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    closed: bool = False
    callback: Any = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: live logins (ServiceFactories) of this session; its servants go when the last one ends
    logins: int = 0
    #: OMERO's reference count (ome/omero-server SessionManagerImpl): 1 at creation, +1 per
    #: join, -1 per ended login ("detach") and per ISession.closeSession; below 1 a close
    #: removes the session
    refcount: int = 0
    #: per-call state (Ice runs calls on several threads): whether this call reads all groups
    _call: threading.local = field(default_factory=threading.local, repr=False)

    def all_groups(self) -> bool:
        """Whether the call being dispatched asked ``omero.group=-1`` (all the user's groups)."""
        return getattr(self._call, "all_groups", False)

    def close_reference(self) -> int:
        """``SessionManagerImpl.close``: drop one reference; at none left, close the session.

        Returns the references left, or -2 when the session was closed (OMERO's values).
        """
        with self.lock:
            self.refcount -= 1
            left = self.refcount
        if left >= 1:
            return left
        self.end()
        return -2

    def end(self) -> None:
        """Remove the session: no more joins; what was made for it is closed."""
        with self.ctx.lock:
            self.ctx.sessions.pop(self.uuid, None)
        self.closed = True
        self.release_servants()  # OMERO closes a closed session's services too
    #: servants added under this session's uuid and not yet removed: identity string -> identity
    servants: dict[str, Any] = field(default_factory=dict)
    #: Glacier2 SessionControl proxies of this session's logins through a real router
    router_controls: list[Any] = field(default_factory=list)

    def drop_router_sessions(self, current: Any = None) -> None:
        """End this session's Glacier2 sessions: the router closes the clients' connections.

        What the drop fault does behind a real router (``SessionControl.destroy``).
        """
        with self.lock:
            controls, self.router_controls = list(self.router_controls), []
        for control in controls:
            try:
                control.destroy()
            except Ice.LocalException as exc:
                log.debug("router session already gone: %s", exc)

    def track(self, ident: Any) -> None:
        """Remember a servant made for this session (``ServerContext.add_servant`` calls it)."""
        with self.lock:
            self.servants[Ice.identityToString(ident)] = ident

    def untrack(self, ident: Any) -> None:
        """Forget a servant the client closed (``ServerContext.remove_servant`` calls it)."""
        with self.lock:
            self.servants.pop(Ice.identityToString(ident), None)

    def release_servants(self) -> int:
        """Remove every servant still recorded for this session and close it; returns how many.

        Why: services reached through other services (the managed repository, import
        processes and their uploaders, handles, tables) are not the ServiceFactory's own, so
        without this they stayed in the adapter, with their files open, until the server
        exited. OMERO closes a session's stateful services when the session ends; so does
        this: ``close(None)`` releases files (a table left open is closed and its
        OriginalFile refreshed, as a client's ``close()`` would).
        """
        with self.lock:
            idents = list(self.servants.values())
            self.servants.clear()
        for ident in idents:
            remove_and_close(self.ctx, ident)
        return len(idents)

    @property
    def owner(self) -> Any:
        """Unloaded Experimenter of the session's user."""
        return omero.model.ExperimenterI(self.user_id, False)

    @property
    def group(self) -> Any:
        """Unloaded ExperimenterGroup the session writes into."""
        return omero.model.ExperimenterGroupI(self.group_id, False)

    def apply_call_context(self, current: Any) -> None:
        """Honour ``omero.group`` in a call's context as OMERO does (BlitzGateway sets it).

        "-1" (all groups) reads across groups: nothing to change. A group id or name the user
        is not a member of raises ``omero.SecurityViolation``; one it is a member of becomes
        the group new objects are saved in.
        """
        call_ctx = getattr(current, "ctx", None) or {}
        wanted = call_ctx.get("omero.group")
        self._call.all_groups = wanted == "-1"  # read by permissions.in_context for this call
        if not wanted or wanted == "-1":
            return
        store = self.ctx.store
        if wanted.lstrip("-").isdigit():
            gid: int | None = int(wanted)
        else:
            gid = next((g.getId().getValue() for g in store.all("ExperimenterGroup")
                        if g.getName() is not None and g.getName().getValue() == wanted), None)
        if gid is None or store.flat("ExperimenterGroup", gid) is None or (
                gid not in self.member_of and not self.is_admin):  # admins enter any group
            raise omero.SecurityViolation(
                None, None, f"User {self.user_name} is not a member of group {wanted}")
        if gid != self.group_id:
            group = store.flat("ExperimenterGroup", gid)
            self.group_id, self.group_name = gid, group.getName().getValue()

    def post_process(self, result: Any) -> Any:
        """Set this caller's restrictions on the objects of a result (see permissions.py)."""
        from .permissions import post_process
        return post_process(self, result)

    def save(self, obj: Any, event_type: str = "User") -> Any:
        """Save an object graph as this session's user (see ObjectStore.save)."""
        return self.ctx.store.save(obj, owner=self.owner, group=self.group, event_type=event_type)

    def event_context(self) -> Any:
        """An ``omero.sys.EventContext`` as OMERO fills it for this session."""
        group = self.ctx.store.flat("ExperimenterGroup", self.group_id)
        perms = group.getDetails().getPermissions() if group is not None else None
        return omero.sys.EventContext(
            shareId=-1, sessionId=abs(hash(self.uuid)) % 100000, sessionUuid=self.uuid,
            userId=self.user_id, userName=self.user_name, sudoerId=None, sudoerName=None,
            groupId=self.group_id, groupName=self.group_name, isAdmin=self.is_admin,
            adminPrivileges=_ADMIN_PRIVILEGES if self.is_admin else [],
            eventId=-1, eventType="User", memberOfGroups=list(self.member_of),
            leaderOfGroups=list(self.leader_of),
            groupPermissions=perms or omero.model.PermissionsI(GROUP_PERMS))

    def model(self) -> Any:
        """The ``omero.model.Session`` ISession.getSession returns."""
        s = omero.model.SessionI(abs(hash(self.uuid)) % 100000, True)
        s.uuid = rstring(self.uuid)
        s.started = rtime(self.started_ms)
        s.timeToIdle = rlong(600000)
        s.timeToLive = rlong(0)
        s.userAgent = rstring(self.agent)
        s.owner = self.owner
        s.closed = None
        return s


def remove_and_close(ctx: ServerContext, ident: Any) -> None:
    """Remove a servant the client left open and ``close(None)`` it (files released, saved).

    Services without a ``close`` (or whose Slice ``close`` the stand-in does not serve) are
    only removed.
    """
    session = ctx.sessions.get(ident.category)
    if session is not None:
        session.untrack(ident)
    try:
        servant_ = ctx.adapter.remove(ident)
    except Ice.LocalException:  # already gone, or the adapter is shutting down
        return
    close = getattr(servant_, "close", None)
    if close is None:
        return
    try:
        close(None)
    except Exception:  # noqa: BLE001 - a stub close answers ApiUsageException; nothing to release
        log.debug("closing %s left open by its client", Ice.identityToString(ident), exc_info=True)


_ADMIN_PRIVILEGES = ["Chgrp", "Chown", "DeleteFile", "DeleteManagedRepo", "DeleteOwned",
                     "DeleteScriptRepo", "ModifyGroup", "ModifyGroupMembership", "ModifyUser",
                     "ReadSession", "Sudo", "WriteFile", "WriteManagedRepo", "WriteOwned",
                     "WriteScriptRepo"]


def new_session(ctx: ServerContext, user_name: str, agent: str = "") -> Session:
    """Start a session for a stored user, in its default group (first membership it owns)."""
    store = ctx.store
    user = next((e for e in store.all("Experimenter")
                 if e.getOmeName() is not None and e.getOmeName().getValue() == user_name), None)
    if user is None:
        raise KeyError(user_name)
    uid = user.getId().getValue()
    maps = [m for m in store.all("GroupExperimenterMap") if m.getChild().getId().getValue() == uid]
    member_of = [m.getParent().getId().getValue() for m in maps]
    leader_of = [m.getParent().getId().getValue() for m in maps
                 if m.getOwner() is not None and m.getOwner().getValue()]
    chosen = store.meta(f"default_group:{uid}")  # IAdmin.setDefaultGroup / createExperimenter
    default = int(chosen) if chosen is not None and int(chosen) in member_of else \
        next((g for g in member_of if g not in (USER_GROUP_ID,)), member_of[0])
    group = store.flat("ExperimenterGroup", default)
    return Session(ctx=ctx, uuid=str(uuid.uuid4()), user_id=uid, user_name=user_name,
                   group_id=default, group_name=group.getName().getValue(),
                   member_of=member_of, leader_of=leader_of,
                   is_admin=SYSTEM_GROUP_ID in member_of, agent=agent)


def check_permissions(ctx: ServerContext, user_id: str, password: str) -> tuple[bool, str]:
    """Glacier2's login check, as ome/omero-blitz ``PermissionsVerifierI.checkPermissions``.

    A live session's uuid logs in (joins) only as both user name and password; otherwise the
    stand-in's account and password. The reasons are OMERO's.
    """
    with ctx.lock:
        joined = ctx.sessions.get(password) or ctx.sessions.get(user_id)
        if joined is not None and not joined.closed:
            if user_id == password:
                return True, ""
            return False, "username and password must be equal; use joinSession"
        if user_id == ctx.user and password == ctx.password:
            return True, ""
        if user_id != ctx.user and password_matches(ctx.store, user_id, password):
            return True, ""  # a user made through IAdmin.createExperimenterWithPassword
        uid = next((e.getId().getValue() for e in ctx.store.all("Experimenter")
                    if e.getOmeName() is not None and e.getOmeName().getValue() == user_id), None)
    return False, f"Password check failed for '{user_id}': [id={'null' if uid is None else uid}]"


def password_matches(store: Any, user_name: str, password: str) -> bool:
    """Whether *password* is the one IAdmin set for *user_name* (salted hash in the store)."""
    stored = store.meta(f"password:{user_name}")
    if not stored:
        return False  # no password set: OMERO refuses the login too
    salt, digest = stored.split(":", 1)
    return hmac.compare_digest(digest, hash_password(password, bytes.fromhex(salt)))


def hash_password(password: str, salt: bytes) -> str:
    """A salted PBKDF2 hash (OMERO keeps salted hashes too: never the password itself)."""
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 10000).hex()


def set_password(store: Any, user_name: str, password: str) -> None:
    """Store a salted hash of a user's password (``IAdmin.changeUserPassword``)."""
    salt = os.urandom(16)
    store.set_meta(f"password:{user_name}", f"{salt.hex()}:{hash_password(password, salt)}")


def open_login(ctx: ServerContext, user_id: str, agent: str = "") -> tuple[ServiceFactoryI, Any]:
    """A new ServiceFactory for a checked login: joins the session *user_id* names, if live.

    Returns the servant and its ``Glacier2.SessionPrx`` (identity name = the session uuid, as
    omero-py's ``getSessionId`` reads it).
    """
    with ctx.lock:
        joined = ctx.sessions.get(user_id)
        if joined is not None and not joined.closed:
            session = joined
        else:
            session = new_session(ctx, user_id, agent)
            ctx.sessions[session.uuid] = session
        sf = ServiceFactoryI(ctx, session)
        session.logins += 1
        session.refcount += 1  # a new session's first reference, or a join's
        prx = ctx.adapter.add(sf, Ice.Identity(session.uuid, "sf-" + str(uuid.uuid4())))
        sf.identity = prx.ice_getIdentity()
    log.info("session %s for %s", session.uuid, session.user_name)
    return sf, Glacier2.SessionPrx.uncheckedCast(prx)


class PermissionsVerifierI(Glacier2.PermissionsVerifier):
    """What the real Glacier2 router asks before it creates a session (``BlitzVerifier``)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def checkPermissions(self, userId: str, password: str, current: Any = None) -> tuple[bool, str]:
        self.ctx.faults.delay()  # a login is an API reply too (the delay fault)
        return check_permissions(self.ctx, userId, password)


class SessionManagerI(Glacier2.SessionManager):
    """Creates the ServiceFactory for the real Glacier2 router (``BlitzManager``).

    As ome/omero-blitz ``SessionManagerI.create``: the session's identity category and name
    are added to the router's filters (``control.categories()``), so the client reaches the
    session's objects and nothing else; the router calls ``destroy`` when the client's
    session ends (destroySession, a closed connection or the session timeout).
    """

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def create(self, userId: str, control: Any, current: Any = None) -> Any:
        agent = (current.ctx or {}).get("omero.agent", "") if current is not None else ""
        try:
            sf, prx = open_login(self.ctx, userId, agent)
        except KeyError as exc:
            raise Glacier2.CannotCreateSessionException(f"no user {userId}") from exc
        if control is not None:
            ident = prx.ice_getIdentity()
            control.categories().add([ident.category, ident.name])
            with sf.session.lock:
                sf.session.router_controls.append(control)
        return prx


@servant
class RouterI(Glacier2.Router):
    """A Glacier2 router that routes to itself: every call the client routes lands on our adapter.

    ``createSession`` and ``refreshSession`` are asynchronous-dispatch in Glacier2's Slice;
    :func:`~tests.omero_server.server.servant` generates their ``_async`` forms.
    """

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.proxy: Any = None  # set once added to the adapter
        # connection -> ServiceFactory servants created on it (for destroySession)
        self._by_con: dict[str, list[ServiceFactoryI]] = {}

    # Ice::Router
    def getClientProxy(self, current: Any = None) -> Any:
        return self.proxy

    def getServerProxy(self, current: Any = None) -> Any:
        return self.proxy

    def addProxies(self, proxies: list[Any], current: Any = None) -> list[Any]:
        return []

    def addProxy(self, proxy: Any, current: Any = None) -> None:
        return None

    # Glacier2::Router
    def getCategoryForClient(self, current: Any = None) -> str:
        return "client-" + _con_key(current)[-12:].replace(":", "_").replace(".", "_")

    def createSession(self, userId: str, password: str, current: Any = None) -> Any:
        ok, reason = check_permissions(self.ctx, userId, password)
        if not ok:
            raise Glacier2.PermissionDeniedException(reason)
        agent = (current.ctx or {}).get("omero.agent", "") if current is not None else ""
        sf, prx = open_login(self.ctx, userId, agent)
        with self.ctx.lock:
            sf.con_key = _con_key(current)
            first_on_connection = sf.con_key not in self._by_con
            self._by_con.setdefault(sf.con_key, []).append(sf)
        con = getattr(current, "con", None)
        if first_on_connection and con is not None:
            # as Glacier2: a lost connection ends its logins (the session stays joinable)
            con.setCallback(_ConnectionClosed(self, sf.con_key))
        return prx

    def createSessionFromSecureConnection(self, current: Any = None) -> Any:
        raise Glacier2.PermissionDeniedException("certificate logins are not supported")

    def refreshSession(self, current: Any = None) -> None:
        if not self._by_con.get(_con_key(current)):
            raise Glacier2.SessionNotExistException()

    def destroySession(self, current: Any = None) -> None:
        if not self.drop_connection_logins(_con_key(current)):
            raise Glacier2.SessionNotExistException()

    def drop_connection_logins(self, con_key: str) -> bool:
        """Destroy the ServiceFactories created on one connection; False if there were none."""
        with self.ctx.lock:
            sfs = self._by_con.pop(con_key, [])
        for sf in sfs:
            sf.destroy(None)
        return bool(sfs)

    def lose_connection(self, current: Any) -> None:
        """What a connection lost under a request does through Glacier2: the client's router
        session ends, its services closed, and its connection goes (the drop fault, faults.py).
        Glacier2 destroys the session it loses the client of, and OMERO's ``destroy`` removes
        the login and its services from the adapter "to prevent further remote calls on it"
        (ome/omero-blitz ``src/main/java/omero/cmd/SessionI.java``, ``destroy``).

        In this order, and in the dropping request's thread: left to the close callback, which
        Ice runs later in another thread, the logins ended while requests could still come.
        A CI run's 4th write then got a reply from a pixel buffer the callback had already
        closed (``ApiUsageException`` "... is closed", not a lost connection). The likely
        path: Ice resends a request once, even with omero.client's ``Ice.RetryIntervals=-1``,
        when it sees a graceful close (``Ice.CloseConnectionException``). Through Glacier2
        such a request finds no session; here it now finds no servant.
        """
        self.drop_connection_logins(_con_key(current))
        Faults.drop_connection(current)

    def getSessionTimeout(self, current: Any = None) -> int:
        return 600

    def getACMTimeout(self, current: Any = None) -> int:
        return 0


class _ConnectionClosed(Ice.ConnectionCallback):
    """Removes a connection's logins and their servants when the client goes away."""

    def __init__(self, router: RouterI, con_key: str) -> None:
        self.router = router
        self.con_key = con_key

    def heartbeat(self, con: Any) -> None:
        return None

    def closed(self, con: Any) -> None:
        try:
            self.router.drop_connection_logins(self.con_key)
        except Exception:  # noqa: BLE001 - called by Ice, possibly while shutting down
            log.debug("cleaning up after a closed connection failed", exc_info=True)


def _con_key(current: Any) -> str:
    """A key naming the client connection a request came in on (one Glacier2 session each)."""
    con = getattr(current, "con", None)
    if con is None:
        return "local"
    try:
        return con.toString()
    except Ice.LocalException:
        return "closed"


@servant
class ServiceFactoryI(omero.api.ServiceFactory):
    """One login's ServiceFactory: hands out service proxies made by the registry's factories."""

    def __init__(self, ctx: ServerContext, session: Session) -> None:
        self.ctx = ctx
        self.session = session
        self.identity: Any = None
        self.do_close = True
        self.con_key = ""
        self._stateless: dict[str, Any] = {}
        self._stateful: list[Any] = []
        self._lock = threading.RLock()

    # -- services
    def _service(self, name: str) -> Any:
        factory = self.ctx.services.get(name)
        if factory is None:
            raise omero.ApiUsageException(
                None, None, f"service {name} is not available in the OMERO stand-in")
        with self._lock:
            if name in STATEFUL_SERVICES:
                prx = self.ctx.add_servant(factory(self.ctx, self.session), self.session.uuid)
                self._stateful.append(prx.ice_getIdentity())
            else:
                prx = self._stateless.get(name)
                if prx is None:
                    prx = self.ctx.add_servant(factory(self.ctx, self.session), self.session.uuid,
                                               f"{name}-{uuid.uuid4()}")
                    self._stateless[name] = prx
        return _proxy_class(name).uncheckedCast(prx)

    def getAdminService(self, current: Any = None) -> Any:
        return self._service("IAdmin")

    def getConfigService(self, current: Any = None) -> Any:
        return self._service("IConfig")

    def getContainerService(self, current: Any = None) -> Any:
        return self._service("IContainer")

    def getMetadataService(self, current: Any = None) -> Any:
        return self._service("IMetadata")

    def getPixelsService(self, current: Any = None) -> Any:
        return self._service("IPixels")

    def getQueryService(self, current: Any = None) -> Any:
        return self._service("IQuery")

    def getSessionService(self, current: Any = None) -> Any:
        return self._service("ISession")

    def getTypesService(self, current: Any = None) -> Any:
        return self._service("ITypes")

    def getUpdateService(self, current: Any = None) -> Any:
        return self._service("IUpdate")

    def getRoiService(self, current: Any = None) -> Any:
        return self._service("IRoi")

    def getRenderingSettingsService(self, current: Any = None) -> Any:
        return self._service("IRenderingSettings")

    def createRawPixelsStore(self, current: Any = None) -> Any:
        return self._service("RawPixelsStore")

    def createRawFileStore(self, current: Any = None) -> Any:
        return self._service("RawFileStore")

    def createThumbnailStore(self, current: Any = None) -> Any:
        return self._service("ThumbnailStore")

    def createRenderingEngine(self, current: Any = None) -> Any:
        return self._service("RenderingEngine")

    def sharedResources(self, current: Any = None) -> Any:
        return self._service("SharedResources")

    def getByName(self, name: str, current: Any = None) -> Any:
        return self._service(SERVICE_NAMES.get(name, name.rsplit(".", 1)[-1]))

    def createByName(self, name: str, current: Any = None) -> Any:
        return self._service(SERVICE_NAMES.get(name, name.rsplit(".", 1)[-1]))

    # -- session bookkeeping
    def getSecurityContexts(self, current: Any = None) -> list[Any]:
        return [omero.model.ExperimenterGroupI(g, False) for g in self.session.member_of]

    def setSecurityContext(self, obj: Any, current: Any = None) -> Any:
        previous = self.session.group
        gid = obj.getId().getValue()
        if not isinstance(obj, omero.model.ExperimenterGroup) \
                or self.ctx.store.flat("ExperimenterGroup", gid) is None \
                or (gid not in self.session.member_of and not self.session.is_admin):
            raise omero.SecurityViolation(None, None, f"not a member of group {gid}")
        group = self.ctx.store.flat("ExperimenterGroup", gid)
        self.session.group_id = gid
        self.session.group_name = group.getName().getValue()
        return previous

    def setSecurityPassword(self, password: str, current: Any = None) -> None:
        name = self.session.user_name
        if not (name == self.ctx.user and password == self.ctx.password) and \
                not password_matches(self.ctx.store, name, password):
            raise omero.SecurityViolation(None, None, "wrong password")

    def setCallback(self, cb: Any, current: Any = None) -> None:
        self.session.callback = cb

    def subscribe(self, topic: str, prx: Any, current: Any = None) -> None:
        return None

    def closeOnDestroy(self, current: Any = None) -> None:
        """The default: this login's end closes the session if no reference is left."""
        self.do_close = True

    def detachOnDestroy(self, current: Any = None) -> None:
        """This login's end only drops its reference: the session stays to be joined later.

        ome/omero-blitz ``ServiceFactoryI.detachOnDestroy`` / ``omero/cmd/SessionI.destroy``.
        """
        self.do_close = False

    def activeServices(self, current: Any = None) -> list[str]:
        with self._lock:
            return [Ice.identityToString(p.ice_getIdentity()) for p in self._stateless.values()] + \
                [Ice.identityToString(i) for i in self._stateful]

    def keepAllAlive(self, proxies: list[Any], current: Any = None) -> int:
        # a bit set for every proxy that is *not* alive: all are
        return 0

    def keepAlive(self, proxy: Any, current: Any = None) -> bool:
        return True

    def getSessionId(self, current: Any = None) -> str:  # not Slice; for symmetry with omero.client
        return self.session.uuid

    # -- omero::cmd::Session (ServiceFactory extends it): conn.deleteObjects() sends Delete2
    def submit(self, req: Any, current: Any = None) -> Any:
        """Run a command to completion and hand back a finished handle (``omero.cmd.Handle``).

        Supported: ``omero.cmd.Delete2`` (see :func:`services_core.delete_graph`). The handle is
        finished before the client sees it, so omero-py's ``CmdCallbackI`` needs no callback.
        """
        import omero.cmd

        from .services_core import delete_graph

        try:
            from .repository import HandleI
        except ImportError as exc:  # pragma: no cover - the data plug-in provides handles
            raise omero.ApiUsageException(None, None, "commands need tests.omero_server.repository") from exc
        handle = HandleI(self.ctx, req, 1)
        handle.step_started(0)
        if isinstance(req, omero.cmd.Delete2):
            deleted = delete_graph(self.ctx, req.targetObjects or {}, dry_run=bool(req.dryRun))
            handle.step_done(0)
            handle.finish(omero.cmd.Delete2Response(deletedObjects=deleted))
        else:
            handle.finish(omero.cmd.ERR(
                category=req.ice_id(), name="not-supported",
                parameters={"message": f"{type(req).__name__} is not supported by the OMERO "
                            "stand-in"}), failed=True)
        prx = self.ctx.add_servant(handle, self.session.uuid)
        return omero.cmd.HandlePrx.uncheckedCast(prx)

    # -- Glacier2::Session
    def destroy(self, current: Any = None) -> None:
        """End this login, as ome/omero-blitz ``omero/cmd/SessionI.destroy``.

        Its servants are removed; its reference to the session is dropped ("detach"). If no
        reference is left and the login did not ask ``detachOnDestroy``, the session is closed
        (not joinable any more) with everything made for it; otherwise it stays, and when
        this was its last live login, what was made for it (imports, tables, ...) is closed.
        """
        with self._lock:
            for prx in self._stateless.values():
                self.ctx.remove_servant(prx.ice_getIdentity())
            self._stateless.clear()
            for ident in self._stateful:  # stateful services the client did not close
                remove_and_close(self.ctx, ident)
            self._stateful.clear()
            if self.identity is None:
                return  # already destroyed
            self.ctx.remove_servant(self.identity)
            self.identity = None
        session = self.session
        with session.lock:
            session.logins -= 1
            session.refcount -= 1
            last = session.logins <= 0
            close = self.do_close and session.refcount < 1
        if close:
            session.end()
        elif last:
            session.release_servants()

"""The stand-in's core: one Ice communicator, one adapter, a Glacier2 router, and a service registry.

Why one adapter: the real omero-py client talks to OMERO through a Glacier2 router. A servant of
``Glacier2.Router`` whose ``getClientProxy``/``getServerProxy`` return the router's own direct
proxy makes the client send every routed call to this adapter, so the sessions and services
can all live here, each under its own identity, with no Glacier2 process.

Why a registry: services are written by different people (the core here; pixels, files,
import and tables in sibling modules). Each module exposes ``register(ctx)`` and calls
:meth:`ServerContext.register_service`; the session servant looks factories up by name.

Why :func:`servant`: OMERO's API operations use asynchronous dispatch (``name_async(cb, ...)``);
a servant that only defines ``name`` leaves the client waiting for ever. The decorator lets
servants be written as plain methods, generates the ``_async`` forms that answer through the
callback, turns Python errors into OMERO's exceptions, applies the delay fault, and makes every
operation the stand-in does not implement fail with ``omero.ApiUsageException`` instead of hanging.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import logging
import re
import sys
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import Ice
import omero

from .faults import Faults
from .store import ObjectStore, StoreError

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

#: Factory of a service servant for one session: ``factory(ctx, session) -> Ice.Object``.
ServiceFactoryFn = Callable[["ServerContext", "Session"], Ice.Object]

#: Sibling modules that plug services in (absent ones are skipped while they are being written).
PLUGIN_MODULES = ("services_core", "pixels", "rawfile", "repository", "tables")

#: Services created fresh for every ``create*`` call (stateful in OMERO, closed by the client).
STATEFUL_SERVICES = frozenset({"RawPixelsStore", "RawFileStore", "ThumbnailStore",
                               "RenderingEngine", "Exporter", "Search", "JobHandle"})


@dataclass
class ServerContext:
    """Everything a servant may need, one per server process.

    Attributes:
        store: the :class:`~tests.omero_server.store.ObjectStore` (SQLite + files/).
        store_dir: the folder holding it.
        faults: fault-injection settings (:class:`~tests.omero_server.faults.Faults`).
        adapter: the Ice object adapter every servant lives in.
        communicator: the server's Ice communicator.
        lock: an RLock for servant state shared across threads (Ice dispatches on a pool).
        user / password: the one account that may log in (besides joining by session uuid).
        services: the service registry (name -> factory), filled by ``register_service``.
        sessions: live sessions by uuid.
    """

    store: ObjectStore
    store_dir: Path
    faults: Faults
    adapter: Any
    communicator: Any
    user: str = "root"
    password: str = "omero"
    lock: threading.RLock = field(default_factory=threading.RLock)
    services: dict[str, ServiceFactoryFn] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    #: import processes by fileset id, for ``ManagedRepository.listImports`` (see .repository)
    import_processes: dict[int, Any] = field(default_factory=dict)
    #: True when clients come through a real Glacier2 router (callbacks go to its proxies)
    behind_glacier2: bool = False
    #: the stand-in's own Glacier2 router (``session.RouterI``), which clients use without one
    router: Any = None

    def callback_proxy(self, prx: Any, current: Any = None) -> Any:
        """A proxy on which the server can call a client's callback object (CmdCallback, ...).

        Behind Glacier2 the client's proxy already names the router's server endpoints, which
        forward to the client, as with OMERO. Without it, the stand-in itself plays the router,
        so the call goes back over the connection the client's request came in on
        (bidirectional, as the client's router-bound adapter expects).
        """
        con = getattr(current, "con", None)
        if self.behind_glacier2 or con is None:
            return prx
        return con.createProxy(prx.ice_getIdentity())

    def register_service(self, name: str, factory: ServiceFactoryFn) -> None:
        """Make service *name* available to sessions.

        Names are OMERO's short service names: "IAdmin", "IQuery", "IUpdate", "IContainer",
        "IMetadata", "ISession", "ITypes", "IConfig", "IPixels", "RawPixelsStore",
        "RawFileStore", "SharedResources", ... A stateless service's factory is called once per
        session; a stateful one's (see ``STATEFUL_SERVICES``) once per ``create*`` call.
        """
        with self.lock:
            if name in self.services:
                log.debug("service %s re-registered", name)
            self.services[name] = factory

    def add_servant(self, servant: Ice.Object, category: str = "", name: str | None = None) -> Any:
        """Add *servant* to the adapter under a fresh (or given) identity; returns its proxy.

        With a live session's uuid as *category* (what services pass), the session records
        the identity, and the session's end removes and closes the servant if the client
        did not (see ``Session.release_servants``).
        """
        ident = Ice.Identity(name or str(uuid.uuid4()), category)
        prx = self.adapter.add(servant, ident)
        session = self.sessions.get(category)
        if session is not None:
            session.track(ident)
        return prx

    def remove_servant(self, current_or_identity: Any) -> None:
        """Remove a servant (by ``Ice.Current`` or identity); a stateful service's ``close``."""
        ident = getattr(current_or_identity, "id", current_or_identity)
        session = self.sessions.get(ident.category)
        if session is not None:
            session.untrack(ident)
        with contextlib.suppress(Ice.LocalException):  # already gone, or shutting down
            self.adapter.remove(ident)


# --------------------------------------------------------------------------- dispatch helper

_OP_LINE = re.compile(r"^\s*(\w+)\._op_(\w+) = IcePy\.Operation\((.*)\)\s*$")
_signatures: dict[tuple[str, str], int] = {}
_scanned: set[str] = set()


def _scan_generated(path: Path) -> None:
    """Read the generated ``_op_*`` lines of one Slice module: how many values each op returns."""
    if str(path) in _scanned:
        return
    _scanned.add(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return
    for line in text.splitlines():
        if "IcePy.Operation(" not in line:
            continue
        m = _OP_LINE.match(line)
        if not m:
            continue
        iface, op, args = m.groups()
        # the arguments are literals apart from type references: replace those by names
        try:
            tree = ast.parse(f"f({args})", mode="eval")
        except SyntaxError:
            continue
        call = tree.body
        if not isinstance(call, ast.Call) or len(call.args) < 9:
            continue
        outs = call.args[7]
        ret = call.args[8]
        n_out = len(outs.elts) if isinstance(outs, ast.Tuple) else 0
        has_ret = not (isinstance(ret, ast.Constant) and ret.value is None)
        _signatures[(iface, op)] = n_out + (1 if has_ret else 0)


def _result_count(cls: type, op: str) -> int:
    """How many values operation *op* of Slice class *cls* (or its bases) returns."""
    for klass in cls.__mro__:
        if f"_op_{op}" not in vars(klass):
            continue
        name = klass.__name__
        if (name, op) not in _signatures:
            for mod in list(sys.modules.values()):
                fname = getattr(mod, "__file__", None) or ""
                if fname.endswith("_ice.py") and name in Path(fname).stem.split("_") + [Path(fname).stem]:
                    _scan_generated(Path(fname))
            if (name, op) not in _signatures:
                for mod in list(sys.modules.values()):
                    fname = getattr(mod, "__file__", None) or ""
                    if fname.endswith("_ice.py"):
                        _scan_generated(Path(fname))
                        if (name, op) in _signatures:
                            break
        if (name, op) in _signatures:
            return _signatures[(name, op)]
    raise LookupError(f"cannot find the Slice signature of {cls.__name__}.{op}")


def _operations(cls: type) -> dict[str, type]:
    """Slice operations of a servant class: op name -> the Slice class declaring it."""
    ops: dict[str, type] = {}
    for klass in reversed(cls.__mro__):
        for attr in vars(klass):
            # (data-services engineer) skip Ice's own ice_isA/ice_ping/ice_ids/ice_id: stubbing
            # them broke every checkedCast (client.getManagedRepository, IQueryPrx.checkedCast)
            if attr.startswith("_op_") and not attr.startswith("_op_ice_"):
                ops[attr[4:]] = klass
    return ops


def server_error(exc: BaseException) -> omero.ServerError:
    """Turn a Python error raised by a servant into the OMERO exception a client expects."""
    if isinstance(exc, omero.ServerError):
        return exc
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, StoreError):
        return omero.ValidationException(stack, type(exc).__name__, str(exc))
    if isinstance(exc, (ValueError, KeyError, TypeError, LookupError)):
        return omero.ApiUsageException(stack, type(exc).__name__, str(exc))
    return omero.InternalException(stack, type(exc).__name__, f"{type(exc).__name__}: {exc}")


class StatefulService:
    """What every stateful service (RawPixelsStore, RawFileStore, ImportProcess) answers alike.

    Put it before the Slice class in the bases so :func:`servant` finds these methods; the
    servant must have ``self.session``.
    """

    def activate(self, current: Ice.Current | None = None) -> None:
        """Nothing to do: the stand-in never passivates a service."""

    def passivate(self, current: Ice.Current | None = None) -> None:
        """Nothing to do: state lives in the servant until close."""

    def getCurrentEventContext(self, current: Ice.Current | None = None) -> Any:
        return self.session.event_context()


def servant(cls: type) -> type:
    """Class decorator for servants: generate AMD ``_async`` methods and fail-fast stubs.

    Write a servant method as ``def getEventContext(self, current=None)`` returning the result
    (a tuple when the operation has out-parameters). For each Slice operation of the class:

    * implemented: ``name_async(cb, *args, current)`` calls it, applies ``ctx.faults.delay()``
      (if the servant has ``self.ctx``) and the caller's ``omero.group`` context (if it has
      ``self.session``: see ``Session.apply_call_context``), answers ``cb.ice_response(...)`` or ``cb.ice_exception(...)``
      with Python errors mapped by :func:`server_error` (StoreError -> ValidationException,
      ValueError/KeyError/... -> ApiUsageException, others -> InternalException).
    * not implemented: both forms raise ``omero.ApiUsageException("... not supported by the
      OMERO stand-in")`` so a client fails at once instead of hanging.
    """
    for op, decl in _operations(cls).items():
        plain = None
        for klass in cls.__mro__:
            if klass is Ice.Object or any(a.startswith("_op_") for a in vars(klass)):
                break  # reached generated Slice code: its methods are empty stubs
            if op in vars(klass):
                plain = vars(klass)[op]
                break
        if plain is None:
            setattr(cls, op, _unsupported(cls, op))
            setattr(cls, op + "_async", _unsupported_async(cls, op))
            continue
        if op + "_async" in vars(cls) and getattr(vars(cls)[op + "_async"], "_handwritten", False):
            continue
        try:
            count = _result_count(decl, op)
        except LookupError:
            log.warning("no Slice signature for %s.%s; assuming one result", decl.__name__, op)
            count = 1
        setattr(cls, op + "_async", _make_async(plain, count))
    return cls


def _make_async(plain: Callable[..., Any], count: int) -> Callable[..., None]:
    @functools.wraps(plain)
    def dispatch(self: Any, cb: Any, *args: Any) -> None:
        ctx = getattr(self, "ctx", None)
        try:
            if ctx is not None:
                ctx.faults.delay()
            session = getattr(self, "session", None)
            if session is not None and args and hasattr(session, "apply_call_context"):
                session.apply_call_context(args[-1])
            result = plain(self, *args)
            if session is not None and hasattr(session, "post_process"):
                result = session.post_process(result)  # the caller's restrictions (canAnnotate)
            if count == 0:
                cb.ice_response()
            elif count == 1:
                cb.ice_response(result)
            else:
                cb.ice_response(*result)
        except Ice.Exception as exc:
            cb.ice_exception(exc)
        except Exception as exc:  # noqa: BLE001 - every error must reach the client
            log.debug("servant error in %s", plain.__name__, exc_info=True)
            cb.ice_exception(server_error(exc))

    dispatch.__name__ = plain.__name__ + "_async"
    return dispatch


def _unsupported(cls: type, op: str) -> Callable[..., Any]:
    def method(self: Any, *args: Any) -> Any:
        raise omero.ApiUsageException(None, None, f"{op} is not supported by the OMERO stand-in")

    method.__name__ = op
    return method


def _unsupported_async(cls: type, op: str) -> Callable[..., Any]:
    def method(self: Any, cb: Any, *args: Any) -> None:
        cb.ice_exception(omero.ApiUsageException(
            None, None, f"{cls.__name__}.{op} is not supported by the OMERO stand-in"))

    method.__name__ = op + "_async"
    return method


# --------------------------------------------------------------------------- running

def _ice_properties(host: str, port: int, ssl_cert: Path | None = None) -> Any:
    props = Ice.createProperties()
    if ssl_cert is not None:
        props.setProperty("Ice.Plugin.IceSSL", "IceSSL:createIceSSL")
        props.setProperty("IceSSL.CertFile", str(ssl_cert))
        props.setProperty("IceSSL.VerifyPeer", "0")  # clients present no certificate
        props.setProperty("Ice.Warn.Deprecated", "0")
    props.setProperty("Ice.ThreadPool.Server.Size", "4")
    props.setProperty("Ice.ThreadPool.Server.SizeMax", "16")
    props.setProperty("Ice.ThreadPool.Server.Serialize", "0")
    # omero-py allows 250 MB messages; keep the server in step
    props.setProperty("Ice.MessageSizeMax", "256000")
    # never close idle client connections: long pushes keep one connection
    props.setProperty("Ice.ACM.Server.Timeout", "0")
    props.setProperty("Ice.Warn.Connections", "0")
    props.setProperty("Ice.Warn.Dispatch", "0")
    return props


def load_plugins(ctx: ServerContext, names: tuple[str, ...] = PLUGIN_MODULES) -> list[str]:
    """Import ``tests.omero_server.<name>`` for each plug-in and call its ``register(ctx)``.

    A module that does not exist yet is skipped; one that fails to import or register is logged
    with its traceback and skipped, so one broken service does not take the others down.
    Returns the names registered.
    """
    import importlib

    loaded = []
    for name in names:
        modname = f"{__package__}.{name}"
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:
                log.debug("plug-in %s not present", modname)
                continue
            log.exception("plug-in %s failed to import", modname)
            continue
        except Exception:  # noqa: BLE001 - report and go on with the other services
            log.exception("plug-in %s failed to import", modname)
            continue
        register = getattr(module, "register", None)
        if register is None:
            log.error("plug-in %s has no register(ctx)", modname)
            continue
        try:
            register(ctx)
        except Exception:  # noqa: BLE001
            log.exception("plug-in %s failed to register", modname)
            continue
        loaded.append(name)
    return loaded


def ssl_certificate(store_dir: Path) -> Path:
    """A self-signed certificate + key (one PEM) in ``<store>/ssl``, made once with openssl.

    OMERO serves SSL on 4064 and omero-py connects with SSL by default, without verifying the
    server (``IceSSL.VerifyPeer=0``), so any certificate will do.
    """
    import shutil
    import subprocess
    import tempfile

    folder = Path(store_dir) / "ssl"
    pem = folder / "standin.pem"
    if pem.exists():
        return pem
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("--ssl-port needs the openssl command to make a certificate")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        key, cert = Path(tmp) / "key.pem", Path(tmp) / "cert.pem"
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(key), "-out", str(cert), "-days", "3650", "-subj", "/CN=omero-standin"],
                       check=True, capture_output=True)
        part = Path(tmp) / "standin.pem"
        part.write_bytes(cert.read_bytes() + key.read_bytes())
        part.replace(pem)
    return pem


class Server:
    """A running stand-in: communicator, adapter, router and store. Use :func:`serve` for the CLI."""

    def __init__(self, store_dir: Path, port: int = 0, host: str = "127.0.0.1", user: str = "root",
                 password: str = "omero", faults: Faults | None = None,
                 ssl_port: int | None = None, glacier2: bool = False,
                 session_timeout: int | None = None) -> None:
        import omero.rtypes
        from omero import ObjectFactoryRegistrar

        from .session import ROUTER_IDENTITY, RouterI

        self.router: Any = None
        public = (host, port, ssl_port)
        if glacier2:  # the router takes the public ports; Blitz listens on loopback only
            host, port, ssl_port = "127.0.0.1", 0, None
        init = Ice.InitializationData()
        cert = ssl_certificate(Path(store_dir)) if ssl_port is not None else None
        init.properties = _ice_properties(host, port, cert)
        self.communicator = Ice.initialize(init)
        try:
            # incoming model objects become omero.model.*I instances, as in a client
            ObjectFactoryRegistrar.registerObjectFactory(self.communicator, None)
            for of in omero.rtypes.ObjectFactories.values():
                of.register(self.communicator)
            store = ObjectStore(Path(store_dir), user=user)
            endpoints = f"tcp -h {host} -p {port}"
            if ssl_port is not None:
                endpoints += f":ssl -h {host} -p {ssl_port}"
            adapter = self.communicator.createObjectAdapterWithEndpoints("OMERO.StandIn", endpoints)
        except BaseException:
            self.communicator.destroy()
            raise
        self.ctx = ServerContext(store=store, store_dir=Path(store_dir), faults=faults or Faults(),
                                 adapter=adapter, communicator=self.communicator, user=user,
                                 password=password)
        self.plugins = load_plugins(self.ctx)
        router = RouterI(self.ctx)
        router.proxy = adapter.add(router, ROUTER_IDENTITY)
        self.ctx.router = router
        adapter.activate()
        ports = {e.getInfo().type(): e.getInfo().port for e in adapter.getEndpoints()}
        self.port = ports[Ice.TCPEndpointType]
        self.ssl_port = ports.get(Ice.SSLEndpointType)
        self.host = host
        if glacier2:
            try:
                self._start_router(public, session_timeout)
            except BaseException:
                self.shutdown()
                raise

    def _start_router(self, public: tuple[str, int, int | None], session_timeout: int | None) -> None:
        """Serve Glacier2's verifier and session manager, then start glacier2router in front."""
        from . import glacier2
        from .session import PermissionsVerifierI, SessionManagerI

        adapter = self.ctx.adapter
        adapter.add(PermissionsVerifierI(self.ctx), Ice.Identity(glacier2.VERIFIER_IDENTITY, ""))
        adapter.add(SessionManagerI(self.ctx), Ice.Identity(glacier2.MANAGER_IDENTITY, ""))
        self.ctx.behind_glacier2 = True
        host, port, ssl_port = public
        config = glacier2.RouterConfig(
            host=host, port=port or _free_port(host),
            ssl_port=None if ssl_port is None else (ssl_port or _free_port(host)),
            backend_port=self.port, folder=self.ctx.store_dir / "glacier2",
            session_timeout_s=session_timeout or glacier2.SESSION_TIMEOUT_S)
        self.router = glacier2.Router(config)
        self.backend_port = self.port
        self.host, self.port, self.ssl_port = host, config.port, config.ssl_port

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Stop dispatching, destroy the communicator, close SQLite (idempotent).

        Ice waits for requests in progress; a servant that never answers would hold the
        process for ever, so after *timeout* seconds the store is closed regardless and False
        is returned (the caller then exits without waiting for Ice).
        """
        if self.router is not None:  # no new requests: the router goes first
            self.router.stop()
            self.router = None
        if self.communicator is None:
            return True
        communicator, self.communicator = self.communicator, None
        communicator.shutdown()
        waiter = threading.Thread(target=communicator.waitForShutdown, daemon=True)
        waiter.start()
        waiter.join(timeout)
        clean = not waiter.is_alive()
        if clean:
            communicator.destroy()
        else:
            log.error("requests still running after %.0f s; stopping without them", timeout)
        self.ctx.store.close()
        return clean


def _free_port(host: str) -> int:
    """A TCP port free on *host* right now (the router needs a number, not 0)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve(store_dir: Path, port: int, host: str = "127.0.0.1", user: str = "root",
          password: str = "omero", faults: Faults | None = None, ssl_port: int | None = None,
          glacier2: bool = False, session_timeout: int | None = None) -> int:
    """Run in the foreground until SIGTERM/SIGINT; prints ``listening on <port>`` when ready.

    With *ssl_port*, ``ssl on <port>`` is printed first (the last line always marks readiness).
    With *glacier2*, a real glacier2router serves those ports and ``behind glacier2`` is printed.
    """
    import signal

    stop = threading.Event()
    server = Server(store_dir, port, host, user, password, faults, ssl_port, glacier2,
                    session_timeout)

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if server.router is not None:
        print(f"behind glacier2 (blitz on {server.backend_port})", flush=True)
    if server.ssl_port is not None:
        print(f"ssl on {server.ssl_port}", flush=True)
    print(f"listening on {server.port}", flush=True)
    log.info("OMERO stand-in on %s:%d, store %s, services: %s", host, server.port, store_dir,
             ", ".join(sorted(server.ctx.services)))
    try:
        while not stop.wait(0.2):
            pass
    finally:
        clean = server.shutdown()
    log.info("stopped")
    if not clean:
        import os

        os._exit(1)  # Ice threads are stuck in a dispatch: do not wait for them at exit
    return 0

"""Opening, keeping and closing an OMERO session; turning Ice/OMERO failures into typed errors.

A :class:`Session` wraps one ``omero.client`` with its ServiceFactory; services are fetched on use
(they die with the session, so caching them across a reconnect would hand out dead proxies).
:func:`open_session` is a context manager that always closes the session, as ezomero's does.

Connection loss (server killed, network dropped, Glacier2 session gone after a server restart) is
recognised by :func:`is_connection_lost`; the push retries such failures with exponential backoff
by reconnecting and resuming (see ``push.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from omero_push.config import ConnectionSettings, Secret
from omero_push.errors import (
    AuthenticationError,
    ClientMissingError,
    ConnectionLostError,
    NoPermissionError,
    PushError,
    ServerError,
    ServerUnreachableError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

AGENT = "omero_push"
DEFAULT_KEEPALIVE_S = 60
#: omero-py's keep-alive thread (omero.util.Resources) refuses intervals below 5 s.
MIN_KEEPALIVE_S = 5
CONNECT_TIMEOUT_MS = 10_000


def _omero() -> Any:
    """Import omero lazily: planning and --dry-run must work without the [omero] extra."""
    try:
        import Ice  # noqa: F401
        import omero
        import omero.clients  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ClientMissingError(
            "omero-py or zeroc-ice is not installed: run 'omero-push setup-ice' (installs "
            "zeroc-ice 3.6.5, built for this Python if PyPI has no wheel, and omero-py), or "
            "use the container image (docker/README.md)"
        ) from exc
    return omero


@dataclass
class Session:
    """One logged-in OMERO session (client + ServiceFactory) and who we are on it."""

    client: Any
    settings: ConnectionSettings
    user_id: int
    group_id: int
    member_of: list[int] = field(default_factory=list)
    #: Per-session lookups that never change while it lives (enumerations): saves a round trip each.
    cache: dict[str, Any] = field(default_factory=dict)
    #: Serialises find-or-create steps between the push's worker threads (one tag per name).
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: False for a connection the caller opened (a BlitzGateway or omero.client handed to
    #: ``push``/the API, or the ``omero`` CLI's): we never close what we did not open.
    owned: bool = True

    @property
    def sf(self) -> Any:
        return self.client.getSession()

    def query(self) -> Any:
        return self.sf.getQueryService()

    def update(self) -> Any:
        return self.sf.getUpdateService()

    def admin(self) -> Any:
        return self.sf.getAdminService()

    def container(self) -> Any:
        return self.sf.getContainerService()

    def metadata(self) -> Any:
        return self.sf.getMetadataService()

    def pixels(self) -> Any:
        return self.sf.getPixelsService()

    def close(self) -> None:
        """Close the session and the communicator; never raises (used in finally blocks).

        A joined session (``--session-key`` or a stored ``omero login``) was detached at login
        (``detachOnDestroy``, as omero-py's SessionsStore does), so closing our connection leaves
        the user's session alive; a borrowed connection is left entirely alone.
        """
        if not self.owned:
            return
        try:
            self.client.closeSession()
        except Exception as exc:  # a dead server cannot be told goodbye
            log.debug("closing the session failed: %s", exc)
        try:
            self.client.__del__()
        except Exception as exc:
            log.debug("destroying the communicator failed: %s", exc)


def connect(settings: ConnectionSettings, *, keepalive_s: int = DEFAULT_KEEPALIVE_S) -> Session:
    """Log in (password or session key), switch to ``settings.group`` and start keep-alive.

    Keep-alive matters because uploads of large files take longer than OMERO's idle session
    timeout (10 min by default); omero-py pings the session from a background thread, every
    ``keepalive_s`` seconds (at least 5, omero-py's minimum).
    """
    omero = _omero()
    import Glacier2
    import Ice

    # A port only when the user gave one: omero-py then picks 4064 (SSL) for a bare host and 4063
    # for tcp://host (omero.clients.BaseClient._check_for_hosturl).
    port = {"port": int(settings.port)} if settings.port else {}
    client = omero.client(
        host=settings.server,
        pmap={"Ice.Override.ConnectTimeout": str(CONNECT_TIMEOUT_MS)},
        **port,
    )
    client.setAgent(AGENT)
    where = settings.describe()
    try:
        if settings.session_key is not None:
            key = settings.session_key.reveal()
            client.createSession(key, key)
        else:
            assert settings.password is not None
            client.createSession(settings.user, settings.password.reveal())
    except Glacier2.PermissionDeniedException:
        _destroy(client)
        if settings.stored_login:
            raise AuthenticationError(
                f"{where}: the stored 'omero login' session has expired: run 'omero login' "
                "again, or set OMERO_PASSWORD"
            ) from None
        what = "session key" if settings.session_key is not None else "user name or password"
        raise AuthenticationError(f"{where}: login refused (wrong {what})") from None
    except Glacier2.CannotCreateSessionException as exc:
        _destroy(client)
        raise AuthenticationError(f"{where}: cannot create a session ({exc.reason})") from None
    except Ice.DNSException:
        _destroy(client)
        raise ServerUnreachableError(f"{settings.server}: unknown host") from None
    except (Ice.ConnectFailedException, Ice.ConnectTimeoutException, Ice.SocketException):
        _destroy(client)
        raise ServerUnreachableError(
            f"{settings.address()}: no OMERO server answers (check host and port)"
        ) from None
    except Ice.LocalException as exc:
        _destroy(client)
        raise ServerUnreachableError(
            f"{where}: connection failed ({exc.__class__.__name__})"
        ) from None
    except omero.ClientError as exc:
        _destroy(client)
        raise AuthenticationError(f"{where}: {exc}") from None
    try:
        sf = client.getSession()
        if settings.joined:
            sf.detachOnDestroy()  # the user's session outlives our connection (omero.util.sessions)
        client.enableKeepAlive(max(MIN_KEEPALIVE_S, int(keepalive_s)))
        ec = sf.getAdminService().getEventContext()
        session = Session(
            client=client,
            settings=settings,
            user_id=ec.userId,
            group_id=ec.groupId,
            member_of=list(ec.memberOfGroups or []),
        )
        if settings.group:
            switch_group(session, settings.group)
        log.info("connected to %s as %s (group %s)", where, ec.userName, session.group_id)
        return session
    except BaseException:
        _destroy(client)
        raise


def borrow(client: Any, group: str | None = None) -> Session:
    """A :class:`Session` over a connection the caller opened and keeps (never closed by us).

    ``client`` is an ``omero.client`` (what the ``omero`` CLI's ``ctx.conn(args)`` returns) or a
    connected ``BlitzGateway`` (ezomero's way: its ``c`` attribute is the client).
    """
    _omero()
    client = getattr(client, "c", client)
    sf = client.getSession()
    ec = sf.getAdminService().getEventContext()
    settings = ConnectionSettings(
        server=client.getProperty("omero.host") or "?",
        port=int(client.getProperty("omero.port") or 0) or None,
        user=ec.userName,
        group=group,
    )
    session = Session(
        client=client,
        settings=settings,
        user_id=ec.userId,
        group_id=ec.groupId,
        member_of=list(ec.memberOfGroups or []),
        owned=False,
    )
    if group:
        switch_group(session, group)
    return session


def rejoin_settings(session: Session) -> ConnectionSettings:
    """Settings that join ``session``'s server-side session again by its key (a reconnect after a
    borrowed connection dropped); such a join is detached, never closed, when we let go."""
    s = session.settings
    return ConnectionSettings(
        server=s.server,
        port=s.port,
        user=s.user,
        group=str(session.group_id),
        session_key=Secret(session.client.getSessionId()),
    )


def switch_group(session: Session, group: str) -> None:
    """Make ``group`` the context for everything created; refuse a group we are not in."""
    omero = _omero()
    admin = session.admin()
    try:
        gid = int(group) if group.isdigit() else admin.lookupGroup(group).id.val
    except omero.ApiUsageException:
        raise NoPermissionError(
            f"group {group!r} does not exist on {session.settings.server}"
        ) from None
    if session.member_of and gid not in session.member_of:
        raise NoPermissionError(
            f"user {session.settings.user} is not a member of group {group!r}: "
            "ask the group owner to add you, or push to another group"
        )
    try:
        session.sf.setSecurityContext(omero.model.ExperimenterGroupI(gid, False))
    except omero.SecurityViolation:
        raise NoPermissionError(f"not allowed to work in group {group!r}") from None
    session.group_id = gid


def _destroy(client: Any) -> None:
    """Destroy the communicator of a client whose login failed, without a word on stderr.

    ``closeSession`` always destroys the communicator (in a ``finally``) and raises what the
    router said; ``client.__del__`` would log that as a WARNING ("Ignoring error in
    client.__del__: Ice.DNSException"), a second line under our one-line error.
    """
    try:
        client.closeSession()
    except Exception as exc:
        log.debug("destroying the communicator failed: %s", exc)


@contextmanager
def open_session(
    settings: ConnectionSettings, *, keepalive_s: int = DEFAULT_KEEPALIVE_S
) -> Iterator[Session]:
    """``with open_session(s) as session:`` — the session is closed however the block ends."""
    session = connect(settings, keepalive_s=keepalive_s)
    try:
        yield session
    finally:
        session.close()


def is_connection_lost(exc: BaseException) -> bool:
    """True for failures a reconnect can cure (dropped TCP, restart, timeouts, session gone)."""
    try:
        import Glacier2
        import Ice
        import omero
        import omero.clients  # noqa: F401 - defines omero's exception classes
    except ImportError:  # pragma: no cover
        return False
    lost = (
        Ice.ConnectionLostException,
        Ice.ConnectionRefusedException,
        Ice.ConnectFailedException,
        Ice.ConnectionTimeoutException,
        Ice.TimeoutException,
        Ice.SocketException,
        Ice.CloseConnectionException,
        Ice.ObjectNotExistException,  # the session's services vanish with a restart
        Ice.CommunicatorDestroyedException,
        Glacier2.SessionNotExistException,
        omero.RemovedSessionException,
        omero.SessionTimeoutException,
    )
    return isinstance(exc, lost)


def translate(exc: BaseException, what: str) -> PushError:
    """A server-side exception as one of our typed errors (message names ``what`` was done)."""
    omero = _omero()
    if isinstance(exc, PushError):
        return exc
    if isinstance(exc, omero.SecurityViolation):
        return NoPermissionError(f"{what}: not allowed ({_server_message(exc)})")
    if is_connection_lost(exc):
        return ConnectionLostError(
            f"{what}: connection to the server lost ({exc.__class__.__name__}); re-run to resume"
        )
    if isinstance(exc, omero.ServerError):
        return ServerError(f"{what}: {exc.__class__.__name__}: {_server_message(exc)}")
    return ServerError(f"{what}: {exc.__class__.__name__}: {exc}")


def _server_message(exc: Any) -> str:
    msg = getattr(exc, "message", None) or getattr(exc, "serverExceptionClass", None) or ""
    return str(msg).strip().splitlines()[0] if msg else exc.__class__.__name__


def with_backoff(
    fn: Callable[[], T],
    *,
    retries: int,
    base_delay_s: float = 1.0,
    max_delay_s: float = 30.0,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; on connection loss wait 1, 2, 4 … s (capped) and call it again.

    ``fn`` must be safe to repeat (the push is: every step first looks for what already exists).
    After ``retries`` failed retries the last error is re-raised for the caller to translate.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            lost = is_connection_lost(exc) or isinstance(exc, (ConnectionLostError,))
            if isinstance(exc, ServerUnreachableError) and attempt > 0:
                lost = True  # the server is coming back after a restart
            if not lost or attempt >= retries:
                raise
            delay = min(max_delay_s, base_delay_s * (2**attempt))
            attempt += 1
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)


class AsyncWindow:
    """Keeps up to ``size`` asynchronous Ice calls in flight (AMI ``begin_*``/``end_*``).

    Sending the next chunk or tile while the server still writes the previous one overlaps the
    client's reading, hashing and byte-swapping with the network and the server's write: the
    round-trip latency is paid once per window instead of once per call.  Writes carry their own
    offset or tile position, so the order the server applies them in does not matter.  Errors
    (including connection loss) surface from :meth:`drain` or the next :meth:`call`.

    When a call fails, the rest of the window is waited for, and a lost connection among its
    failures is the error raised: it is the cause, and the others its echoes. When the server
    drops a session, the writes it had already taken in are answered by a service closed under
    them ("pixel buffer ... is closed"), and such an answer can arrive before the lost
    connection does; raised first, it read as a server error, so the push neither retried nor
    told the user to re-run (seen as a flaky test in CI).
    """

    def __init__(self, size: int = 3) -> None:
        self.size = max(1, size)
        self._pending: list[tuple[Callable[[Any], Any], Any]] = []

    def call(self, begin: Callable[..., Any], end: Callable[[Any], Any], *args: Any) -> None:
        self._pending.append((end, begin(*args)))
        if len(self._pending) >= self.size:
            end_fn, result = self._pending.pop(0)
            try:
                end_fn(result)
            except Exception as exc:
                self._raise_cause(exc)

    def drain(self) -> None:
        """Wait for every call still in flight (raises the first error, a lost connection
        before any other)."""
        self._raise_cause(None)

    def _raise_cause(self, first: Exception | None) -> None:
        pending, self._pending = self._pending, []
        for end_fn, result in pending:
            try:
                end_fn(result)
            except Exception as exc:  # wait for all; keep the first, or the first lost connection
                if first is None or (is_connection_lost(exc) and not is_connection_lost(first)):
                    first = exc
        if first is not None:
            raise first


def wait_for_command(session: Session, handle: Any, what: str, poll_every_s: float = 5.0) -> Any:
    """Wait on an OMERO command handle (import, delete) and return its response.

    ``CmdCallbackI`` is told when the server finishes; between notifications the handle is polled
    every few seconds so that a dead server raises instead of leaving us waiting for ever.
    An ``omero.cmd.ERR`` response becomes a :class:`ServerError` naming ``what``.
    """
    _omero()
    import omero.callbacks

    cb = omero.callbacks.CmdCallbackI(session.client, handle)
    try:
        while not cb.block(int(poll_every_s * 1000)):
            cb.poll()
        rsp = cb.getResponse()
    finally:
        try:
            cb.close(True)
        except Exception as exc:
            log.debug("closing the callback failed: %s", exc)
    return command_response(rsp, what)


def command_response(rsp: Any, what: str) -> Any:
    """``rsp`` itself, or the :class:`ServerError` naming ``what`` that an ``omero.cmd.ERR`` is."""
    import omero.cmd

    if isinstance(rsp, omero.cmd.ERR):
        params = dict(rsp.parameters or {})
        detail = params.get("message") or (params.get("stacktrace") or "").strip().splitlines()[:1]
        raise ServerError(f"{what}: the server reports {rsp.name}: {detail}")
    return rsp

"""Pytest fixtures that run the OMERO stand-in as a subprocess on a free port.

Why a subprocess: the pusher is tested "over the real wire" and against a server that can be
killed and restarted mid-push; a server thread inside the test process could do neither. The
server is ``python -m tests.omero_server`` run with this interpreter from the repository root.

Fixtures:
    ``omero_server``          a fresh server and empty store per test (function scope).
    ``omero_server_session``  one server shared by a test session (for read-mostly tests).
    ``omero_server_factory``  ``factory(**options)`` starts servers with fault options
                              (``drop_after_pixel_writes``, ``delay_ms``, ``tables``), stopped at the end.

Each yields a :class:`StandIn`: ``host``, ``port``, ``user``, ``password``, ``store_dir``,
``url`` ("tcp://127.0.0.1", the host form omero-py reads as "plain TCP"), ``ssl_port`` (with the
option ``ssl=True``: omero-py's default transport, ``omero.client(host, ssl_port)``), ``stop()``, ``kill()``,
``start()``, ``restart(**options)`` (same port and store), ``client()`` (a logged-in
``omero.client``) and ``gateway()`` (a connected BlitzGateway).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _logged_in(client: Any, name: str, password: str) -> Any:
    """``client`` with a session for ``name``; a refused login destroys the client's
    communicator before the error goes up, as ``omero_push.session.connect`` does: a client
    left to the interpreter's exit makes Ice print "communicator not destroyed during global
    destruction" (the message at the end of every full test run, from a wrong-password test)."""
    try:
        client.createSession(name, password)
    except BaseException:
        with contextlib.suppress(Exception):  # closeSession destroys the communicator (finally)
            client.closeSession()
        raise
    return client


class StandInError(RuntimeError):
    """The stand-in did not start (its stderr is in the message)."""


@dataclass
class StandIn:
    """A stand-in server process and how to reach it."""

    store_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    user: str = "root"
    password: str = "omero"
    drop_after_pixel_writes: int | None = None
    delay_ms: int = 0
    tables: bool = True
    ssl: bool = False
    ssl_port: int | None = None
    bioformats_version: str | None = None
    import_step_ms: int = 0
    #: None: behind a real glacier2router when it is installed (as OMERO), else direct
    glacier2: bool | None = None
    session_timeout: int | None = None
    backend_port: int | None = None
    proc: subprocess.Popen | None = None
    _stderr: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Host as omero-py reads "plain TCP" (``omero.client(host=url, port=port)``)."""
        return f"tcp://{self.host}"

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "tests.omero_server", "--port", str(self.port),
                "--host", self.host, "--store", str(self.store_dir), "--user", self.user]
        if self.drop_after_pixel_writes is not None:
            argv += ["--drop-after-pixel-writes", str(self.drop_after_pixel_writes)]
        if self.delay_ms:
            argv += ["--delay-ms", str(self.delay_ms)]
        if not self.tables:
            argv.append("--no-tables")
        if self.ssl:
            argv += ["--ssl-port", str(self.ssl_port or 0)]
        if self.bioformats_version:
            argv += ["--bioformats-version", self.bioformats_version]
        if self.import_step_ms:
            argv += ["--import-step-ms", str(self.import_step_ms)]
        if self.behind_glacier2:
            argv.append("--glacier2")
        if self.session_timeout:
            argv += ["--session-timeout", str(self.session_timeout)]
        return argv

    @property
    def behind_glacier2(self) -> bool:
        """Whether clients go through a real glacier2router (see ``glacier2=``)."""
        if self.glacier2 is None:
            return glacier2_available()
        return self.glacier2

    def start(self) -> StandIn:
        """Start the process and wait for ``listening on <port>``."""
        if self.proc is not None and self.proc.poll() is None:
            raise StandInError("already running")
        env = dict(os.environ, OMERO_STANDIN_PASSWORD=self.password)  # never on argv
        self._stderr = []
        self.proc = subprocess.Popen(self._argv(), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._drain_stderr, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        assert self.proc.stdout is not None
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("behind glacier2"):
                self.backend_port = int(line.split()[-1].rstrip(")"))
            if line.startswith("ssl on"):
                self.ssl_port = int(line.split()[-1])  # kept for restarts on the same port
            if line.startswith("listening on"):
                self.port = int(line.split()[-1])
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return self
            if not line and self.proc.poll() is not None:
                break
        self.kill()
        raise StandInError("OMERO stand-in did not start:\n" + "".join(self._stderr[-40:]))

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        """What the server has written to stderr so far (warnings, tracebacks)."""
        return "".join(self._stderr)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; returns the exit status (0 for a clean stop)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash (the store keeps what was committed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, **options: Any) -> StandIn:
        """Stop (if running) and start again on the same port and store, with new fault options."""
        self.stop()
        for key, value in options.items():
            if not hasattr(self, key) or key in ("store_dir", "proc"):
                raise TypeError(f"unknown stand-in option {key!r}")
            setattr(self, key, value)
        return self.start()

    def client(self, ssl: bool = False) -> Any:
        """A new ``omero.client`` logged in as the stand-in's user (close it with closeSession).

        ``ssl=True`` connects as omero-py does by default (bare host, SSL port; the server must
        have been started with ``ssl=True``).
        """
        import omero.clients

        if ssl:
            c = omero.client(host=self.host, port=self.ssl_port)
        else:
            c = omero.client(host=self.url, port=self.port)
        return _logged_in(c, self.user, self.password)

    # -- several users and groups, made through IAdmin as omero-py's testlib does
    def new_group(self, perms: str = "rwra--", name: str | None = None) -> int:
        """Create a group (``rw----``, ``rwr---``, ``rwra--``, ``rwrw--``) as the admin login.

        omero-py ``testlib.ITest.new_group``: ``IAdmin.createGroup`` with
        ``details.permissions``. Returns the group id.
        """
        import uuid

        import omero.model
        from omero.rtypes import rbool, rstring

        group = omero.model.ExperimenterGroupI()
        group.name = rstring(name or f"group-{uuid.uuid4().hex[:8]}")
        group.ldap = rbool(False)
        group.details.permissions = omero.model.PermissionsI(perms)
        return self._as_admin(lambda admin: admin.createGroup(group))

    def new_user(self, name: str, groups: list[int], password: str | None = None,
                 owner_of: tuple[int, ...] = ()) -> int:
        """Create a user in *groups* (the first is its default) who logs in with *password*.

        omero-py ``testlib.ITest.new_user``: ``IAdmin.createExperimenterWithPassword`` (the
        password defaults to the user name, as there) plus ``setGroupOwner`` for *owner_of*.
        Returns the user id.
        """
        import omero.model
        from omero.rtypes import rbool, rstring

        e = omero.model.ExperimenterI()
        e.omeName = rstring(name)
        e.firstName = rstring(name)
        e.lastName = rstring(name)
        e.ldap = rbool(False)

        def create(admin: Any) -> int:
            others = [omero.model.ExperimenterGroupI(g, False) for g in groups[1:]]
            others.append(admin.lookupGroup("user"))
            uid = admin.createExperimenterWithPassword(
                e, rstring(password or name), omero.model.ExperimenterGroupI(groups[0], False),
                others)
            for gid in owner_of:
                admin.setGroupOwner(omero.model.ExperimenterGroupI(gid, False),
                                    omero.model.ExperimenterI(uid, False))
            return uid

        return self._as_admin(create)

    def client_as(self, name: str, password: str | None = None) -> Any:
        """A new ``omero.client`` logged in as another user (password defaults to the name)."""
        import omero.clients

        return _logged_in(omero.client(host=self.url, port=self.port), name, password or name)

    def _as_admin(self, call: Callable[[Any], Any]) -> Any:
        c = self.client()
        try:
            return call(c.getSession().getAdminService())
        finally:
            c.closeSession()

    def gateway(self) -> Any:
        """A connected ``omero.gateway.BlitzGateway`` (close it with ``close()``)."""
        from omero.gateway import BlitzGateway

        conn = BlitzGateway(self.user, self.password, host=self.url, port=self.port)
        if not conn.connect():
            raise StandInError(f"BlitzGateway could not connect: {conn.getLastError()}")
        return conn


def glacier2_available() -> bool:
    """Whether ``glacier2router`` (Debian zeroc-glacier2) is installed; says once when not."""
    global _GLACIER2_NOTE
    if shutil.which("glacier2router") is not None:
        return True
    if not _GLACIER2_NOTE:
        _GLACIER2_NOTE = True
        warnings.warn("glacier2router is not installed (apt-get install zeroc-glacier2, see "
                      "scripts/setup.d/glacier2.sh): the OMERO stand-in runs without Glacier2 "
                      "and the router's own tests are skipped", stacklevel=2)
    return False


_GLACIER2_NOTE = False


def require_glacier2() -> None:
    """Skip the calling test when there is no Glacier2 router to test."""
    if shutil.which("glacier2router") is None:
        pytest.skip("glacier2router is not installed (zeroc-glacier2; scripts/setup.d/glacier2.sh)")


def _start(tmp: Path, **options: Any) -> StandIn:
    return StandIn(store_dir=tmp / "omero-store", **options).start()


@pytest.fixture
def omero_server(tmp_path: Path) -> Iterator[StandIn]:
    """A fresh stand-in (empty store) for one test; stopped afterwards."""
    pytest.importorskip("omero")
    server = _start(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def omero_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    """One stand-in shared by the whole test session (tests must not depend on it being empty)."""
    pytest.importorskip("omero")
    server = _start(tmp_path_factory.mktemp("omero-session"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def omero_server_factory(tmp_path: Path) -> Iterator[Callable[..., StandIn]]:
    """``factory(**options)``: start stand-ins with fault options; all are stopped afterwards.

    Options: ``drop_after_pixel_writes=N``, ``delay_ms=N``, ``tables=False``, ``ssl=True``, ``user=``,
    ``password=``; ``store_dir=`` to share a store between servers run one after the other.
    """
    pytest.importorskip("omero")
    started: list[StandIn] = []

    def factory(**options: Any) -> StandIn:
        store = options.pop("store_dir", tmp_path / f"omero-store-{len(started)}")
        server = StandIn(store_dir=Path(store), **options).start()
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.stop()

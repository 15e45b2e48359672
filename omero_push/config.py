"""Connection settings: where they come from and how the password is kept out of sight.

Precedence (highest first): command-line options / API arguments, the YAML config file, defaults.
The password never comes from argv: ``OMERO_PASSWORD``, an interactive prompt on a terminal, a
``--session-key``, or (with a warning, for pyOmeroUpload compatibility) a ``password`` key in the
config file.  It is held in :class:`Secret`, whose ``repr``/``str`` never show it, so a logged or
printed settings object, an exception or a traceback's ``repr`` cannot leak it.
"""

from __future__ import annotations

import getpass
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from omero_push.errors import ConfigError

log = logging.getLogger(__name__)

#: What omero-py uses when no port is given for a bare host (SSL); ``tcp://host`` means 4063.
#: We pass a port to ``omero.client`` only when the user gave one, as omero-py's own CLI does.
DEFAULT_PORT = 4064
PASSWORD_ENV = "OMERO_PASSWORD"
#: Where ``omero login`` keeps its sessions when not ``~/omero/sessions`` (omero-py's sessions plugin).
SESSION_DIR_ENV = "OMERO_SESSIONDIR"

# Keys accepted in a config file, top level or under pyOmeroUpload's ``omero_conn:`` section,
# mapped to our field names.
_KEY_ALIASES: dict[str, str] = {
    "host": "server",
    "server": "server",
    "port": "port",
    "user": "user",
    "username": "user",
    "group": "group",
    "password": "password",
    "session_key": "session_key",
    # OMERO.web's address, for links in the summary (not a connection setting).
    "web_url": "web_url",
    "web": "web_url",
    "omero.web": "web_url",
}


class Secret:
    """A string that refuses to be shown: ``repr``/``str``/format all print ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value, only to hand it to the OMERO client."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:  # never pickled into a worker or a cache
        raise TypeError("Secret values are not picklable")


@dataclass
class ConnectionSettings:
    """Everything needed to open an OMERO session; the password is a :class:`Secret`."""

    server: str
    #: None: let omero-py choose (4064 for a bare host, 4063 for ``tcp://host``).
    port: int | None = None
    user: str | None = None
    group: str | None = None
    password: Secret | None = field(default=None, repr=False)
    session_key: Secret | None = field(default=None, repr=False)
    #: The session key is a stored ``omero login`` session (for the error when it has expired).
    stored_login: bool = False

    @property
    def joined(self) -> bool:
        """A session someone else opened (key or stored login): detached, never closed, by us."""
        return self.session_key is not None

    def address(self) -> str:
        """``host:port``, or the host alone when omero-py picks the port."""
        return f"{self.server}:{self.port}" if self.port else self.server

    def describe(self) -> str:
        """``user@host:port`` for messages (no secret in it)."""
        who = f"{self.user}@" if self.user else ""
        return f"{who}{self.address()}"


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config and return our keys (server, port, user, group, password, session_key).

    pyOmeroUpload's layout (``omero_conn: {host, port, username, password}``) and a flat layout
    (``server: …, user: …``) are both accepted; unknown keys are ignored with a debug message so a
    shared lab config with other tools' sections still works.  A password in the file is accepted
    with a warning, because config files get committed and mailed around.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc.__class__.__name__})") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{p}: expected a mapping of keys at the top level")
    merged: dict[str, Any] = {}
    sections: list[Mapping[str, Any]] = [raw]
    conn = raw.get("omero_conn")
    if conn is not None:
        if not isinstance(conn, Mapping):
            raise ConfigError(f"{p}: 'omero_conn' must be a mapping")
        sections.append(conn)  # the omero_conn section wins over flat keys
    for section in sections:
        for key, value in section.items():
            name = _KEY_ALIASES.get(str(key).lower())
            if name is None:
                if key != "omero_conn":
                    log.debug("%s: ignoring key %r", p, key)
                continue
            if value is None:
                continue
            merged[name] = value
    if "password" in merged:
        log.warning(
            "%s holds a password: prefer the %s environment variable or the prompt "
            "(config files get shared and committed)",
            p,
            PASSWORD_ENV,
        )
        merged["password"] = Secret(str(merged["password"]))
    if "session_key" in merged:
        merged["session_key"] = Secret(str(merged["session_key"]))
    if "port" in merged:
        try:
            merged["port"] = int(merged["port"])
        except (TypeError, ValueError):
            raise ConfigError(f"{p}: port must be a number, got {merged['port']!r}") from None
    return merged


def resolve_settings(
    *,
    server: str | None,
    port: int | None,
    user: str | None,
    group: str | None,
    password: str | Secret | None = None,
    session_key: str | Secret | None = None,
    config: str | os.PathLike[str] | None = None,
    interactive: bool | None = None,
) -> ConnectionSettings:
    """Combine explicit values, the config file and the environment into settings.

    The password is looked up only when neither a password nor a session key was given:
    ``OMERO_PASSWORD``, then the config file, then a prompt if stdin is a terminal
    (``interactive=None`` means "detect").  Without any of them, a :class:`ConfigError` tells
    the user the three ways to give one.
    """
    from_file = load_config(config) if config else {}
    server = server or from_file.get("server")
    if not server:
        raise ConfigError("no server given: use --server HOST or 'host:' in the config file")
    user = user or from_file.get("user")
    group = group or from_file.get("group")
    given_port = port or from_file.get("port")
    port = int(given_port) if given_port else None

    key: Secret | None = _as_secret(session_key) or from_file.get("session_key")
    secret: Secret | None = _as_secret(password)
    stored = False
    if secret is None and key is None:
        env = os.environ.get(PASSWORD_ENV)
        login = None if env else stored_login(str(server), user, port)
        if env:
            secret = Secret(env)
        elif login is not None:
            user, key, stored = login[0], Secret(login[1]), True
            log.info("using the stored omero login session of %s@%s", user, server)
        elif from_file.get("password"):
            secret = from_file["password"]
        else:
            tty = sys.stdin.isatty() if interactive is None else interactive
            if tty and user:
                secret = Secret(getpass.getpass(f"OMERO password for {user}@{server}: "))
    if key is None and not user:
        raise ConfigError("no user given: use --user USER or 'username:' in the config file")
    if key is None and not secret:
        raise ConfigError(
            f"no password for {user}@{server}: run 'omero login', set {PASSWORD_ENV}, run on a "
            "terminal to be prompted, or pass --session-key"
        )
    return ConnectionSettings(
        server=str(server),
        port=port,
        user=user,
        group=group,
        password=secret,
        session_key=key,
        stored_login=stored,
    )


def stored_login(server: str, user: str | None, port: int | None) -> tuple[str, str] | None:
    """(user, session key) of the newest ``omero login`` session stored for this server and user.

    Read from omero-py's :class:`omero.util.sessions.SessionsStore` (``~/omero/sessions``, or
    ``$OMERO_SESSIONDIR``), as OMERO's CLI plug-ins reuse it.  Without ``user``, the store's
    current login is taken when it is for this server.  Nothing is contacted here: an expired
    session is reported when joining it fails.
    """
    try:
        from omero.util import get_omero_userdir
        from omero.util.sessions import SessionsStore
    except ImportError:
        return None
    folder = os.environ.get(SESSION_DIR_ENV) or str(get_omero_userdir() / "sessions")
    if not Path(folder).is_dir():  # SessionsStore would create it: never write into $HOME here
        return None
    store = SessionsStore(folder)
    host, current_user, current_key, _port = store.get_current()
    if user is None:
        if host != server or not current_user:
            return None
        user = current_user
    keys = store.available(server, user)
    if not keys:
        return None
    if host == server and current_user == user and current_key in keys:
        return user, current_key  # the one `omero login` made last
    for key in keys:
        props = store.get(server, user, key)
        if port is None or str(props.get("omero.port", port)) == str(port):
            return user, key
    return None


def _as_secret(value: str | Secret | None) -> Secret | None:
    if value is None or isinstance(value, Secret):
        return value
    return Secret(value) if value else None

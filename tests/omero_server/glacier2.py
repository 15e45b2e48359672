"""Run a real Glacier2 router (``glacier2router``) in front of the stand-in, as OMERO does.

Why: every OMERO client talks to Blitz through Glacier2; session creation, routing, callbacks
to the client (``CmdCallbackI``), session timeouts and ``Ice.MessageSizeMax`` are the router's.
Debian's ``zeroc-glacier2`` (3.7) speaks the Ice 3.6 protocol omero-py uses. The properties
follow OMERO's ``Glacier2Template`` (ome/openmicroscopy ``etc/templates/grid/templates.xml``):
instance ``OMERO.Glacier2`` (omero-py's default router ``OMERO.Glacier2/router``), the Blitz
``PermissionsVerifier`` and ``SessionManager`` (served by the stand-in, see :mod:`.session`),
``Glacier2.Client.ForwardContext=1``, a 600 s session timeout and ``Ice.MessageSizeMax=65536``
(KB). Plain TCP on one port and SSL on another, like OMERO's 4063/4064, the SSL side with a
real (self-signed) certificate and no anonymous cipher.

The router is a child of the stand-in process and dies with it (``PR_SET_PDEATHSIG``), so a
SIGKILLed stand-in leaves no router behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: What omero-py's default router string names (``omero.ClientCallback`` goes through it too).
INSTANCE_NAME = "OMERO.Glacier2"
VERIFIER_IDENTITY = "BlitzVerifier"
MANAGER_IDENTITY = "BlitzManager"
#: OMERO's "Basics" properties: Ice.MessageSizeMax 65536 KB (64 MB).
MESSAGE_SIZE_MAX_KB = 65536
#: Glacier2Template's session-timeout default (seconds).
SESSION_TIMEOUT_S = 600
#: OpenSSL cipher list: authenticated ciphers only (no ADH/aNULL), as OMERO since 5.6 with a
#: certificate (omero-certificates) instead of the old anonymous "ADH:..." list.
CIPHERS = "HIGH:!aNULL:!eNULL:!MD5:!3DES:@STRENGTH"
START_TIMEOUT_S = 20.0


class RouterError(RuntimeError):
    """glacier2router is missing or did not start (the message says which and why)."""


def router_executable() -> str | None:
    """Path of ``glacier2router``, or None when it is not installed."""
    return shutil.which("glacier2router")


@dataclass(frozen=True)
class RouterConfig:
    """Where the router listens and where the stand-in's Blitz objects are."""

    host: str
    port: int
    ssl_port: int | None
    backend_port: int
    folder: Path
    session_timeout_s: int = SESSION_TIMEOUT_S

    def properties(self, cert: Path | None, key: Path | None) -> dict[str, str]:
        """glacier2router's configuration (OMERO's Glacier2Template, our ports)."""
        backend = f"tcp -h 127.0.0.1 -p {self.backend_port}"
        client = f"tcp -h {self.host} -p {self.port}"
        props = {
            "Glacier2.InstanceName": INSTANCE_NAME,
            "Glacier2.Server.Endpoints": "tcp -h 127.0.0.1",
            "Glacier2.SessionTimeout": str(self.session_timeout_s),
            "Glacier2.PermissionsVerifier": f"{VERIFIER_IDENTITY}:{backend}",
            "Glacier2.SessionManager": f"{MANAGER_IDENTITY}:{backend}",
            "Glacier2.Client.ForwardContext": "1",
            "Ice.MessageSizeMax": str(MESSAGE_SIZE_MAX_KB),
            "Ice.CacheMessageBuffers": "0",
            "Ice.PrintAdapterReady": "1",
            "Ice.Warn.Connections": "0",
        }
        if self.ssl_port is not None and cert is not None and key is not None:
            client += f":ssl -h {self.host} -p {self.ssl_port}"
            props.update({
                "Ice.Plugin.IceSSL": "IceSSL:createIceSSL",
                "IceSSL.CertFile": str(cert),
                "IceSSL.KeyFile": str(key),
                "IceSSL.VerifyPeer": "0",  # clients present no certificate, as with OMERO
                "IceSSL.Ciphers": CIPHERS,
            })
        props["Glacier2.Client.Endpoints"] = client
        return props


def router_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed RSA certificate and its key for the router's SSL endpoint (made once)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "router-cert.pem", folder / "router-key.pem"
    if cert.exists() and key.exists():
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RouterError("the router's SSL endpoint needs the openssl command for a certificate")
    tmp_cert, tmp_key = cert.with_suffix(".tmp"), key.with_suffix(".tmp")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(tmp_key), "-out", str(tmp_cert), "-days", "3650",
                    "-subj", "/CN=omero-standin"], check=True, capture_output=True)
    tmp_key.replace(key)
    tmp_cert.replace(cert)
    return cert, key


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the stand-in dies (Linux ``prctl(PR_SET_PDEATHSIG)``)."""
    with contextlib.suppress(OSError):  # not Linux: the stand-in's SIGTERM still stops it
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class Router:
    """A running ``glacier2router`` child process."""

    def __init__(self, config: RouterConfig) -> None:
        exe = router_executable()
        if exe is None:
            raise RouterError("glacier2router is not installed (Debian package zeroc-glacier2)")
        cert = key = None
        if config.ssl_port is not None:
            cert, key = router_certificate(config.folder)
        config.folder.mkdir(parents=True, exist_ok=True)
        conf = config.folder / "glacier2.cfg"
        conf.write_text("".join(f"{k}={v}\n" for k, v in config.properties(cert, key).items()))
        self.config = config
        self.proc = subprocess.Popen([exe, f"--Ice.Config={conf}"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=_die_with_parent)
        self._stderr: list[str] = []
        threading.Thread(target=self._drain, args=(self.proc.stderr, self._stderr),
                         daemon=True).start()
        self._wait_ready()

    @staticmethod
    def _drain(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)
            log.debug("glacier2router: %s", line.rstrip())

    def _wait_ready(self) -> None:
        """Wait for ``Glacier2.Client ready`` (Ice.PrintAdapterReady) on the router's stdout."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("Glacier2.Client ready"):
                threading.Thread(target=self._drain, args=(self.proc.stdout, []),
                                 daemon=True).start()
                return
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        time.sleep(0.05)  # let the stderr reader catch the router's last words
        detail = " ".join(line.strip() for line in self._stderr[-5:]) or "no message"
        raise RouterError(f"glacier2router did not start on port {self.config.port}: {detail}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (the router destroys its sessions) and wait; SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

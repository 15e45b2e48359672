"""The stand-in behind a real Glacier2 router (Debian zeroc-glacier2), as OMERO runs behind one.

Clients reach the stand-in only through ``glacier2router``: sessions are created by the router
through the stand-in's ``PermissionsVerifier`` and ``SessionManager`` (ome/omero-blitz
``PermissionsVerifierI``, ``SessionManagerI``), requests and callbacks are routed, and the
router's limits are OMERO's (``Glacier2Template`` in ome/openmicroscopy
``etc/templates/grid/templates.xml``). Skipped when glacier2router is not installed.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import numpy as np
import pytest

from tests.omero_server.fixture import require_glacier2

pytest.importorskip("omero")
import Ice  # noqa: E402
import omero  # noqa: E402
import omero.clients  # noqa: E402

from tests.test_omero_server_data import create_image  # noqa: E402

Glacier2 = omero.clients.Glacier2  # omero-py's (see tests/omero_server/README.md)

pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture
def routed(omero_server_factory: Any) -> Any:
    """A stand-in behind glacier2router, serving plain TCP and SSL."""
    require_glacier2()
    return omero_server_factory(glacier2=True, ssl=True)


def test_clients_reach_blitz_only_through_the_router(routed: Any) -> None:
    """The public ports are glacier2router's: sessions, routed calls, joins, over TCP and SSL.

    The router answers as OMERO's (OMERO.Glacier2/router, 600 s session timeout); the
    stand-in's own objects are not reachable on the public port; a wrong password is refused
    by the router with the stand-in verifier's reason (PermissionsVerifierI).
    """
    assert routed.backend_port is not None and routed.backend_port != routed.port
    for client in (routed.client(), routed.client(ssl=True)):
        try:
            sf = client.getSession()
            assert sf.getAdminService().getEventContext().userName == routed.user
            router = Glacier2.RouterPrx.checkedCast(client.getRouter(client.getCommunicator()))
            assert router.ice_getIdentity() == Ice.Identity("router", "OMERO.Glacier2")
            assert router.getSessionTimeout() == 600
            joined = omero.client(host=routed.url, port=routed.port)
            try:
                joined.joinSession(client.getSessionId())
                assert joined.getSession().getAdminService().getEventContext().sessionUuid == \
                    client.getSessionId()
            finally:
                joined.__del__()
        finally:
            client.__del__()
    comm = Ice.initialize()
    try:
        direct = comm.stringToProxy(f"BlitzVerifier:tcp -h 127.0.0.1 -p {routed.port}")
        with pytest.raises(Ice.ConnectionLostException):  # Glacier2: no session, no request
            direct.ice_ping()
    finally:
        comm.destroy()
    bad = omero.client(host=routed.url, port=routed.port)
    try:
        with pytest.raises(Glacier2.PermissionDeniedException) as err:
            bad.createSession(routed.user, "wrong")
        assert err.value.reason == f"Password check failed for '{routed.user}': [id=0]"
    finally:
        bad.__del__()


def test_message_size_max_is_omeros(routed: Any) -> None:
    """A request above OMERO's Ice.MessageSizeMax (65536 KB) is refused by the router."""
    client = routed.client()
    try:
        sf = client.getSession()
        size = 3000  # 3000² doubles: 72 MB, one ROMIO plane (floats never need a pyramid)
        pid = create_image(sf, (1, 1, 1, size, size), "double")
        rps = sf.createRawPixelsStore()
        rps.setPixelsId(pid, True)
        with pytest.raises(Ice.LocalException) as err:
            rps.setPlane(np.zeros((size, size), ">f8").tobytes(), 0, 0, 0)
        assert isinstance(err.value, (Ice.ConnectionLostException, Ice.MemoryLimitException,
                                      Ice.UnknownLocalException,
                                      Ice.CloseConnectionException)), err.value
    finally:
        client.__del__()


def test_sessions_time_out_in_the_router(omero_server_factory: Any) -> None:
    """Glacier2.SessionTimeout: an idle client's session is destroyed by the router.

    The router destroys the ServiceFactory; a login that asked detachOnDestroy leaves OMERO's
    session joinable (omero/cmd/SessionI.destroy).
    """
    require_glacier2()
    server = omero_server_factory(glacier2=True, session_timeout=2)
    client = omero.client(host=server.url, port=server.port)
    try:
        client.createSession(server.user, server.password)
        client.enableKeepAlive(0)
        client.getSession().detachOnDestroy()
        uuid = client.getSessionId()
        sf = client.getSession()
        sf.getAdminService().getEventContext()
        time.sleep(6)  # three timeouts without a request
        with pytest.raises(Ice.Exception):
            sf.getAdminService().getEventContext()
    finally:
        client.__del__()
    again = omero.client(host=server.url, port=server.port)
    try:
        again.joinSession(uuid)
        assert again.getSession().getAdminService().getEventContext().sessionUuid == uuid
    finally:
        again.__del__()


def test_ssl_has_a_certificate_and_no_anonymous_cipher(routed: Any) -> None:
    """The router's SSL port presents a real certificate and refuses anonymous (aNULL) ciphers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", routed.ssl_port), timeout=10) as raw, \
            ctx.wrap_socket(raw) as tls:
        cert = tls.getpeercert(binary_form=True)
        assert cert and b"omero-standin" in cert
    anon = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anon.check_hostname = False
    anon.verify_mode = ssl.CERT_NONE
    anon.maximum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 has no anonymous suites at all
    anon.set_ciphers("aNULL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", routed.ssl_port), timeout=10) as raw, \
            pytest.raises((ssl.SSLError, ConnectionError)):
        anon.wrap_socket(raw).close()

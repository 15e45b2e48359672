"""Sessions as OMERO counts them: joins add references, closes drop one, detachOnDestroy keeps.

Follows ome/omero-server ``SessionManagerImpl`` (``createSession``: a join increments the
reference count; ``close``/``detach`` decrement it) and ome/omero-blitz ``omero/cmd/SessionI``
(``destroy``: the login's reference is dropped, and the session closed only when none is left
and ``detachOnDestroy`` was not asked).
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("omero")
import omero  # noqa: E402
import omero.clients  # noqa: E402

pytestmark = pytest.mark.timeout(180)

Glacier2 = omero.clients.Glacier2


def _join(server: Any, uuid: str) -> Any:
    client = omero.client(host=server.url, port=server.port)
    client.joinSession(uuid)
    return client


def test_closing_a_joined_session_drops_only_that_reference(omero_server: Any) -> None:
    """A joiner's closeSession leaves the owner's session working; the last reference closes it.

    omero/cmd/SessionI.destroy detaches the joiner's reference (2 -> 1) and, references being
    left, does not close; ISession.closeSession (SessionManagerImpl.close) drops the last one
    and closes the session (-2).
    """
    owner = omero_server.client()
    try:
        uuid = owner.getSessionId()
        sessions = owner.getSession().getSessionService()
        assert sessions.getReferenceCount(uuid) == 1
        joiner = _join(omero_server, uuid)
        assert sessions.getReferenceCount(uuid) == 2
        joiner.closeSession()
        assert sessions.getReferenceCount(uuid) == 1
        assert owner.getSession().getAdminService().getEventContext().sessionUuid == uuid
        assert sessions.closeSession(sessions.getSession(uuid)) == -2
        again = omero.client(host=omero_server.url, port=omero_server.port)
        try:
            with pytest.raises(Glacier2.PermissionDeniedException):
                again.joinSession(uuid)
        finally:
            again.__del__()
    finally:
        owner.__del__()


def test_a_session_closes_with_its_last_login_unless_detached(omero_server: Any) -> None:
    """closeSession of the last login closes the session; after detachOnDestroy it stays.

    omero/cmd/SessionI.destroy: ``if (doClose && ref < 1)`` the session is closed; a login
    that called detachOnDestroy only detaches, so the session can be joined later (what
    ``omero login`` relies on).
    """
    closing = omero_server.client()
    closed_uuid = closing.getSessionId()
    closing.closeSession()
    again = omero.client(host=omero_server.url, port=omero_server.port)
    try:
        with pytest.raises(Glacier2.PermissionDeniedException):
            again.joinSession(closed_uuid)
    finally:
        again.__del__()

    detached = omero_server.client()
    kept_uuid = detached.getSessionId()
    detached.getSession().detachOnDestroy()
    detached.closeSession()
    later = _join(omero_server, kept_uuid)
    try:
        assert later.getSession().getAdminService().getEventContext().sessionUuid == kept_uuid
    finally:
        later.__del__()


def test_a_refused_login_of_the_fixture_leaves_no_communicator_to_the_exit(
        omero_server: Any) -> None:
    """``client_as(name, "wrong")`` raises, and destroys its client's communicator first: a
    client left to the interpreter's exit makes Ice print "communicator not destroyed during
    global destruction" on stderr, a line that hid at the end of every full test run. The
    control (omero-py's own ``createSession`` left to the exit) shows the line is printed."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = f"""
import sys; sys.path.insert(0, {str(repo)!r})
import omero, omero.clients, Glacier2
from tests.omero_server.fixture import _logged_in
c = omero.client(host={omero_server.url!r}, port={omero_server.port})
try:
    {{login}}
except Glacier2.PermissionDeniedException:
    print("refused")
"""
    for login, leaks in (("_logged_in(c, 'root', 'wrong')", False),
                         ("c.createSession('root', 'wrong')", True)):
        proc = subprocess.run([sys.executable, "-c", code.format(login=login)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.stdout.strip() == "refused", proc.stderr
        assert ("communicator not destroyed" in proc.stderr) is leaks, (login, proc.stderr)

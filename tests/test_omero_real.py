"""The stand-in's end-to-end basics against a REAL OMERO (skipped unless OMERO_HOST is set).

Set ``OMERO_HOST`` (a host for SSL, or ``tcp://host``), ``OMERO_PORT`` (default 4064),
``OMERO_USER`` and ``OMERO_PASSWORD``; ``docker/`` has a compose file for a throw-away server.
The tests are those of ``test_omero_server_core.py`` that hold for any OMERO (not the stand-in's
restart, fault and seeding tests), run through the same ``server`` fixture name, so a
difference between the stand-in and OMERO shows up as the same test failing here; the
plain omero-py script ``tests/omero_server/example_client.py`` (import, pixels, tables); and
omero_push's end-to-end tests from ``test_push_omero.py`` (convert and push in both modes,
a second push creates nothing, read-back of pixels, annotations and tables), through the same
``omero_server`` fixture name. One command validates everything on a real OMERO::

    OMERO_HOST=omero.example.org OMERO_USER=me OMERO_PASSWORD=... pytest tests/test_omero_real.py
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(not os.environ.get("OMERO_HOST"),
                                reason="set OMERO_HOST, OMERO_PORT, OMERO_USER, OMERO_PASSWORD")

omero = pytest.importorskip("omero")

from tests.test_omero_server_core import (  # noqa: E402,F401  (collected again, against OMERO)
    test_blitzgateway_reads_what_was_saved,
    test_find_all_by_string,
    test_join_session_by_uuid,
    test_login_event_context_keepalive_and_close,
    test_not_null_fields_are_enforced,
    test_save_project_dataset_image_graph_and_read_back,
    test_tags_reused_by_text_and_annotations_linked,
    test_update_service_save_forms_and_delete,
    test_wrong_password_fails_as_omero_does,
)
from tests.test_omero_server_example import converted, run_example  # noqa: E402,F401
from tests.test_push_omero import (  # noqa: E402,F401  (omero_push end to end, against OMERO)
    test_multi_image_ome_tiff,
    test_pixels_mode_keeps_dtype,
    test_push_roundtrip_annotations_tables,
    test_sample_convert_and_push_reads_back_equal,
    test_second_push_creates_nothing,
    test_upper_case_checksum_is_sent_in_lower_case,
)

#: omero_push's end-to-end tests this module runs against a real OMERO (the stand-in's test
#: ``test_omero_server_real_suite.py`` checks they are collected).
PUSH_TESTS = ("test_sample_convert_and_push_reads_back_equal",
              "test_push_roundtrip_annotations_tables", "test_second_push_creates_nothing")


@dataclass
class RealOmero:
    """A real server, with the same attributes and helpers as the stand-in's fixture."""

    url: str
    port: int
    user: str
    password: str
    #: Tells the push tests' helpers to use ``url`` as given (a bare host is SSL on 4064).
    real: bool = True

    @property
    def host(self) -> str:
        """omero_push's tests read ``host`` (a ``tcp://`` URL or a bare host for SSL)."""
        return self.url

    def client(self) -> Any:
        import omero.clients

        c = omero.client(host=self.url, port=self.port)
        c.createSession(self.user, self.password)
        return c

    def gateway(self) -> Any:
        from omero.gateway import BlitzGateway

        conn = BlitzGateway(self.user, self.password, host=self.url, port=self.port)
        assert conn.connect(), conn.getLastError()
        return conn


@pytest.fixture
def server() -> RealOmero:
    """Overrides the core tests' ``server`` fixture: the OMERO named by the environment."""
    return RealOmero(url=os.environ["OMERO_HOST"], port=int(os.environ.get("OMERO_PORT", "4064")),
                     user=os.environ.get("OMERO_USER", "root"),
                     password=os.environ.get("OMERO_PASSWORD", ""))


@pytest.fixture
def omero_server(server: RealOmero) -> RealOmero:
    """Overrides the stand-in fixture of omero_push's tests: the same real OMERO."""
    return server


def test_example_script_against_real_omero(server: RealOmero, converted: Any) -> None:  # noqa: F811
    """tests/omero_server/example_client.py passes against OMERO as it does against the stand-in."""
    done = run_example(server, converted)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("all read-backs matched")

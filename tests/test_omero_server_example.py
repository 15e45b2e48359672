"""The issue's "done when", run as a user would: a plain omero-py script against the stand-in.

``tests/omero_server/example_client.py`` logs in over TCP, saves a Dataset with an Image, writes
and reads back pixels, imports an OME-TIFF written by posdir2ometiff and reads its planes back
equal, and creates and reads an OMERO.table. It runs here as a separate process (its own
interpreter, its own Ice communicator), so nothing of the test process helps it along.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("omero")

SCRIPT = Path(__file__).resolve().parent / "omero_server" / "example_client.py"
REPO = SCRIPT.parents[2]


def run_example(server: Any, ome_tiff: Path, password: str | None = None,
                host: str | None = None, port: int | None = None) -> subprocess.CompletedProcess:
    """``example_client.py --host H --port P --user U FILE`` with OMERO_PASSWORD in the environment."""
    env = {k: v for k, v in os.environ.items() if k != "OMERO_PASSWORD"}
    env["OMERO_PASSWORD"] = server.password if password is None else password
    argv = [sys.executable, str(SCRIPT), "--host", host or server.url,
            "--port", str(port or server.port), "--user", server.user, str(ome_tiff)]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def converted(swainlab_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """posdir2ometiff's OME-TIFF of the shared sample's one position."""
    from posdir2ometiff.convert import convert

    result = convert(swainlab_sample, tmp_path_factory.mktemp("converted"), workers=1)
    (position,) = [p for p in result.positions if p.status == "ok"]
    return Path(position.output)


def test_example_script_does_everything_over_tcp(omero_server: Any, converted: Path) -> None:
    """Exit 0 and one line per step: every read-back matched, the password never printed."""
    done = run_example(omero_server, converted)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"logged in as {omero_server.user} " in out
    assert re.search(r"^saved Dataset:\d+ with Image:\d+ \(Pixels:\d+\)$", out, re.M), out
    assert re.search(r"^wrote 12 planes to Pixels:\d+, read back equal$", out, re.M), out
    imported = re.search(r"^imported pos001\.ome\.tiff as Image:\d+ \(Pixels:\d+, 512x512, "
                         r"Z=5 C=3 T=3, uint16; channels (.*)\); 45 planes read back equal$", out, re.M)
    assert imported, out
    assert imported.group(1) == "Brightfield, DIC, GFP"
    assert re.search(r"^table OriginalFile:\d+: 3 rows x 5 columns read back equal$", out, re.M), out
    assert out.rstrip().endswith("all read-backs matched")
    assert "MISMATCH" not in out
    assert omero_server.password not in out + done.stderr
    assert "Traceback" not in omero_server.stderr, omero_server.stderr


def test_example_script_fails_when_a_read_back_fails(omero_server_factory: Any,
                                                     converted: Path) -> None:
    """Its exit status means something: on a server without OMERO.tables the table step fails."""
    server = omero_server_factory(tables=False)
    done = run_example(server, converted)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "MISMATCH: OMERO.tables is not enabled on the server" in done.stdout
    assert "45 planes read back equal" in done.stdout  # the steps before still ran
    assert "all read-backs matched" not in done.stdout


def test_example_script_wrong_password_and_no_server(omero_server: Any, converted: Path) -> None:
    """A wrong password is OMERO's PermissionDenied in one line; no server is one line too."""
    done = run_example(omero_server, converted, password="not-the-password")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "example_client: PermissionDeniedException: Password check failed for "
        f"'{omero_server.user}': [id=0]"]
    assert "not-the-password" not in done.stdout + done.stderr
    port = omero_server.port
    omero_server.stop()
    done = run_example(omero_server, converted, port=port)
    assert done.returncode == 1
    assert "ConnectionRefusedException" in done.stderr


def test_example_script_over_ssl(omero_server_factory: Any, converted: Path) -> None:
    """With a bare host omero-py connects over SSL, as to a real OMERO on 4064: same result."""
    server = omero_server_factory(ssl=True)
    done = run_example(server, converted, host=server.host, port=server.ssl_port)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"to {server.host}:{server.ssl_port}" in done.stdout.splitlines()[0]
    assert done.stdout.rstrip().endswith("all read-backs matched")

"""``tests/test_omero_real.py`` runs omero_push's end-to-end tests too (issue 8, point 8).

Collected with ``OMERO_HOST`` set (to an address nothing listens on: only collection runs), the
real-server suite must hold both modes of convert-and-push, the second push that creates
nothing, and the read-back of pixels, annotations and tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_real_server_suite_collects_the_push_end_to_end_tests() -> None:
    pytest.importorskip("omero")
    env = dict(os.environ, OMERO_HOST="tcp://127.0.0.1", OMERO_PORT="9", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/test_omero_real.py"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ids = {line.split("::", 1)[1] for line in done.stdout.splitlines() if "::" in line}
    for mode in ("import", "pixels"):
        assert f"test_sample_convert_and_push_reads_back_equal[{mode}]" in ids
        assert f"test_push_roundtrip_annotations_tables[{mode}]" in ids
        assert f"test_second_push_creates_nothing[{mode}]" in ids
    assert "test_example_script_against_real_omero" in ids

"""Shared pytest fixtures: where the shared sample lives, and markers that need outside resources."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO.parent / "shared" / "samples" / "swainlab-demo"


@pytest.fixture(scope="session")
def swainlab_sample() -> Path:
    """The real experiment kept beside the repository in ../shared (read-only; never copied in)."""
    if not SHARED_SAMPLE.is_dir():
        pytest.skip(f"shared sample not found at {SHARED_SAMPLE}")
    return SHARED_SAMPLE
from tests.omero_server.fixture import omero_server, omero_server_factory, omero_server_session  # noqa: E402,F401

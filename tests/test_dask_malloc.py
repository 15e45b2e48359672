"""Dask workers run with MALLOC_TRIM_THRESHOLD_ set by their nanny; the position task undoes its
side effect on plane-sized buffers (measured: +30 % CPU per position without this)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent("""
    import ctypes, sys
    libc = ctypes.CDLL(None)
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "fix":
        from posdir2ometiff.startup import heap_for_plane_buffers
        heap_for_plane_buffers(override=("MALLOC_TRIM_THRESHOLD_",))
    else:
        import posdir2ometiff.dask_executor  # the same imports (their own mmaps) both ways
    base = libc.mallinfo2().hblkhd
    mapped = []
    for _ in range(20):  # what a plane costs: a decoded plane, freed, then the next one
        buf = bytearray(2 << 20)
        mapped.append(libc.mallinfo2().hblkhd - base)
        del buf
    print(max(mapped[5:]))
""")


def mmapped_bytes(mode: str) -> int:
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr(
    "CS_GNU_LIBC_VERSION") is None, reason="glibc's allocator only")
def test_plane_buffers_come_from_the_heap_on_a_dask_worker() -> None:
    assert mmapped_bytes("plain") >= 2 << 20  # the nanny's setting: every buffer an mmap
    assert mmapped_bytes("fix") < 2 << 20     # after the task's fix: from the heap

"""The C heap set for plane buffers (startup.heap_for_plane_buffers): by the command line and in
the converter's own worker processes, never in a process that calls the Python API; a user's own
allocator tuning wins. Each case runs in a fresh interpreter (the setting is per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from posdir2ometiff import startup
from posdir2ometiff.demo import make_demo

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc's allocator only")

ROOT = Path(__file__).resolve().parents[1]

#: argv: mode, source experiment, output folder. Prints whether this process set the heap and
#: the page faults of a plane buffer's churn: four 1 MiB buffers in flight, then all freed, 50
#: times (as decoded planes and compressed tiles pass through a position).
_PROBE = """
import json, os, resource, sys
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp
import numpy as np
from posdir2ometiff import executors, startup
from posdir2ometiff.cli import main

def churn():
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        planes = [np.ones(1 << 20, np.uint8) for _ in range(4)]
        del planes
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

def heaps():
    # Heaps (arenas) in use once 8 threads allocated at the same time: glibc's malloc_info.
    import ctypes, re, tempfile, threading
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    start, held = threading.Barrier(8), []
    def hold():
        start.wait()
        held.append(np.ones(1 << 20, np.uint8))
    threads = [threading.Thread(target=hold) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    with tempfile.NamedTemporaryFile() as tmp:
        fp = libc.fopen(tmp.name.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        return len(re.findall(r'<heap nr="', open(tmp.name).read()))

def state():
    churn()  # the first round sets glibc's dynamic thresholds
    return {"set": startup._heap_set, "faults": churn(), "heaps": heaps()}

mode, src, out = sys.argv[1:4]
rc = 0
if mode == "program":  # the console script: main() without argv
    sys.argv = ["posdir2ometiff", src, "-o", out, "-q"]
    rc = main()
elif mode == "embedded":  # a program calling main(argv)
    rc = main([src, "-o", out, "-q"])
elif mode == "api":
    from posdir2ometiff.convert import convert
    convert(src, out, progress="off")
worker = None
if mode == "pool":  # the converter's pool, as executors.run_jobs starts it (before the
    # caller's own threads: heaps a worker inherits stay in use, whatever its limit)
    with ProcessPoolExecutor(1, mp_context=mp.get_context("fork"),
                             initializer=executors._init_worker,
                             initargs=(None, os.getpid())) as pool:
        worker = pool.submit(state).result()
print(json.dumps({"rc": rc, **state(), "worker": worker}))
"""


@pytest.fixture
def demo(tmp_path: Path):
    return make_demo(tmp_path / "exp", positions=1, z=1, t=1, size=32)


def probe(mode: str, demo, tmp_path: Path, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, str(demo.folder), str(tmp_path / mode)],
        capture_output=True, text=True, check=False, timeout=300,
        env={**clean, "PYTHONPATH": str(ROOT), **env})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["rc"] == 0
    return got


def test_the_command_line_reuses_plane_buffers_and_a_caller_keeps_its_heap(
    demo, tmp_path: Path
) -> None:
    """The console script sets the thresholds: a plane buffer's churn then faults in no fresh
    pages. glibc's dynamic ones (what main(argv) and the API leave, the caller's process being
    its own) gave 49,600 faults: the heap's top trimmed each time four buffers were freed, and
    faulted in again for the next plane (measured on a position: 30,400 faults against 2,240,
    and 11 % of its time)."""
    program = probe("program", demo, tmp_path)
    assert program["set"] and program["faults"] < 1000, program
    assert program["heaps"] <= startup.ARENA_MAX, program  # threads share two heaps
    for mode in ("embedded", "api"):
        left = probe(mode, demo, tmp_path)
        assert not left["set"], (mode, left)
        assert left["faults"] > 10 * max(program["faults"], 1000), (mode, left)
        assert left["heaps"] > startup.ARENA_MAX, (mode, left)  # glibc's: one per busy thread


def test_the_pools_workers_set_it_in_their_own_process(demo, tmp_path: Path) -> None:
    """The pool's workers are the converter's processes: each sets the heap when it starts,
    whatever the process that started the pool did (here: nothing)."""
    got = probe("pool", demo, tmp_path)
    assert not got["set"]
    assert got["worker"]["set"] and got["worker"]["faults"] < 1000, got
    assert got["worker"]["heaps"] <= startup.ARENA_MAX, got


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"MALLOC_MMAP_THRESHOLD_": "262144"},
                                 {"MALLOC_ARENA_MAX": "4"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_a_users_own_allocator_tuning_is_left_as_it_is(
    demo, tmp_path: Path, env: dict[str, str]
) -> None:
    got = probe("program", demo, tmp_path, **env)
    assert not got["set"], got

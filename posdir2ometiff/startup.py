"""What the command lines (``posdir2ometiff``, ``omero-push``) do to their process, and only they.

The Python API (``convert``, ``omero_push.push``) leaves the process to its caller, as it leaves
logging (logconfig.py). Its own processes are another matter: the converter's pool workers and
the position tasks on Dask workers set the C heap for plane buffers too
(:func:`heap_for_plane_buffers`).
"""

from __future__ import annotations

import functools
import gc
import os
from typing import Any


def freeze_imports() -> None:
    """Put every object alive now (the imports: pandas, ome-types, pydantic, NumPy; about 100,000
    objects) out of the cyclic garbage collector's reach, once per process.

    They live as long as the process, yet each full collection walks them all: in a fresh
    ``posdir2ometiff`` the first one comes during the conversion (measured 90-130 ms, holding the
    GIL the decoding threads wait for), and the interpreter's exit walks them again (measured
    0.42-0.53 s, 0.05-0.07 s once they are frozen). Whole process, measured in pairs: a
    one-position conversion 0.68 s less (3.43 -> 2.76 s), an ``omero-push`` of two files 0.79 s
    less (3.86 -> 3.18 s; omero-py, imported later, is not frozen). ``gc.freeze`` moves them to a
    generation "ignored in all the future collections" (Python's gc docs); reference counting
    still frees them. The converter's workers are forked after it and inherit it.

    Called only by a command line that is the program (its ``main()`` without ``argv``), and only
    once: frozen objects are never collected, so a process that froze objects of its own is left
    as it is.

    Whether the process froze objects already is asked once: ``gc.get_freeze_count()`` counts
    the frozen objects by walking their list (CPython's ``gc_list_size``), 10 ms once they are
    the imports, which a program running ``main()`` again (a benchmark, a notebook) paid on
    every run.
    """
    global _asked
    if _asked:
        return
    _asked = True
    if not gc.get_freeze_count():
        gc.freeze()


#: freeze_imports() has run in this process (and frozen the imports, or found objects frozen).
_asked = False


#: glibc ``mallopt`` parameters (malloc.h: ``M_TRIM_THRESHOLD``, ``M_MMAP_THRESHOLD``,
#: ``M_ARENA_MAX``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Allocations below this come from the heap (glibc's own ceiling for its dynamic threshold,
#: ``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Free memory kept at the top of the heap while positions convert (glibc's dynamic rule: 2 ×
#: the mmap threshold); returned to the OS after each position on Dask (:func:`return_free_heap`).
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
#: Heaps the process's threads share (glibc's default: 8 per core). Each keeps its own free
#: memory; the threads allocate a few large buffers per plane (the small objects are Python's
#: own allocator's, under the GIL), so two heaps are little to wait for.
ARENA_MAX = 2
#: What a user tunes glibc's allocator with: such a process is left as it is.
MALLOC_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX")
_heap_set = False


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (``mallopt``, ``malloc_trim``), else None."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
    except OSError:
        return None
    ok = all(hasattr(libc, f) for f in ("mallopt", "malloc_trim", "gnu_get_libc_version"))
    return libc if ok else None


def heap_for_plane_buffers(override: tuple[str, ...] = ()) -> None:
    """Let this process take plane-sized buffers from the C heap and reuse them (glibc only).

    Every plane allocates a few buffers of 0.3-8 MB (the PNG's bytes, the inflated rows, the
    decoded plane, the compressed tile) and frees them a moment later. glibc serves such sizes
    with a fresh ``mmap`` at first and, once one is freed, raises its mmap threshold to that
    size and its trim threshold to twice it (mallopt(3), "dynamic adjustment"): the buffers
    then come from the heap, but the heap's top is still given back whenever more than that is
    free, and faulted in again for the next planes; and each of up to 8 heaps per core (one per
    thread that found the others busy) keeps free memory of its own. Here the thresholds go
    where glibc's dynamic rule tops out, and the threads share :data:`ARENA_MAX` heaps.

    Measured on a 300-plane position with the lab's metadata files, glibc's defaults against
    these (medians): ``--threads 1`` (6 runs each) made 19,000 page faults against 1,650 and
    took 1.42 against 1.37 s; ``--threads 2`` (10 runs each) 19,600 against 10,100 faults (most
    of the rest: the forked tables child's copy-on-write, forked.py), 0.91 against 0.90 s, peak
    RSS 144 against 140 MB. Without metadata files, default options (3 runs each): 300 planes
    0.85 against 0.78 s, 13,300 against 2,400 faults, peak RSS 142-148 against 136-143 MB;
    3,000 planes 8.0 against 7.9 s, 70,400 against 8,700 faults, peak RSS 157-159 against
    158-160 MB. So: far fewer faults, the same memory, and time within this machine's noise
    but for one thread. The thresholds without the shared heaps kept more free memory (3,000
    planes peaked at 164-172 MB).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``
    (``distributed.nanny.pre-spawn-environ``, to hand freed memory back to the OS). Setting any
    trim parameter also freezes glibc's mmap threshold at 128 KiB, so every decoded plane,
    file read and compressed tile became a fresh ``mmap``: page faults and, with our decode
    threads, TLB shoot-downs at each ``munmap``. Measured: the same two positions took 30 % more
    CPU (9.0 against 6.9 s) in a process with that variable set; with these thresholds, two
    workers on 2 cores used 5 % less CPU (median 5.96 against 6.3 s) and converted 7 % faster.
    What Dask wanted, free memory back to the OS, is done once per position instead
    (:func:`return_free_heap`); its task passes ``override=("MALLOC_TRIM_THRESHOLD_",)``.

    Once per process. A process whose allocator the user tuned (a :data:`MALLOC_TUNING`
    variable not in ``override``, or a ``glibc.malloc`` tunable) is left as it is.
    """
    global _heap_set
    tuned = any(n in os.environ for n in MALLOC_TUNING if n not in override)
    if _heap_set or tuned or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return
    _heap_set = True
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        libc.mallopt(_M_ARENA_MAX, ARENA_MAX)


def return_free_heap() -> None:
    """Give the heap's free memory back to the OS (``malloc_trim``), as Dask's low trim
    threshold would have: after a position, not after every plane."""
    if _heap_set and (libc := _glibc()) is not None:
        libc.malloc_trim(0)

"""Python work beside a position, in a forked child process instead of a thread.

A position converted in this process (one worker) keeps its writing thread busy with Python
between the C calls that release the GIL. Work beside it that is Python too (the experiment's
HDF5 tables: pandas and PyTables, about 45 ms of CPU for the benchmark's experiment, 80 ms for
the demo generator's log of 20 positions × 240 timepoints × 3 channels) then takes turns with that thread on one interpreter
lock: measured on 2 cores, the benchmark's tables cost the one-position run 80-110 ms of its
planes' writing in a thread beside them, about as much written after them. A forked child has
an interpreter of its own, so the work runs on the core the run's serial start (metadata,
probe, OME-XML: one thread) leaves idle. The fork is not free: the run's serial start took
about 35 ms longer (the fork, 5 ms; the copy-on-write faults of the pages the parent then
writes; the probe's threads waiting for the core the child holds), so the run gained a median
9 ms, 1 % (nine A/B series of 16-40 alternated runs: from 4 ms lost to 44 ms gained), more
where the tables are larger. Forked later, just before the decoding threads start, it lost
30 ms (its copy-on-write faults and its CPU then fall in the planes' busiest part).

Forked only where that is safe and possible: Linux (macOS has ``fork`` too, but its system
libraries are not safe in a forked child), and no other Python thread alive (a thread holding a
lock at the fork would leave it held in the child forever; native threads such as OpenBLAS's
re-initialise themselves). Elsewhere :func:`start` returns None and the caller does the work
itself. The child is killed with its parent (orphans.py) and ignores SIGINT (the parent answers
Ctrl-C); its result, or its error as one line, comes back pickled through a pipe. A child that
has not answered within :data:`ANSWER_TIMEOUT` is stopped and counts as failed, so that a child
stuck for a reason nobody foresaw costs the run that long, never the run itself.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from posdir2ometiff.orphans import die_with_parent

R = TypeVar("R")

#: Seconds a child may take to answer (measured: the tables of a log of 20 positions × 240
#: timepoints × 3 channels, 14,400 captures, take 80 ms; 72,000 records, one per plane, 0.25 s).
ANSWER_TIMEOUT = 120.0


class ChildFailed(RuntimeError):
    """The child raised, or exited without an answer; the message is one line."""


def _child(fn: Callable[[], Any], conn: Any, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    try:
        answer: tuple[bool, Any] = (True, fn())
    except BaseException as exc:  # told to the parent, which does the work again itself
        first = str(exc).splitlines()[0] if str(exc) else ""
        answer = (False, f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
    try:
        conn.send(answer)
    except (OSError, ValueError):  # the parent gave up on us (closed its end)
        pass
    finally:
        conn.close()


class Forked(Generic[R]):
    """``fn()`` computed in a child forked at construction; :meth:`result` waits for it."""

    def __init__(self, fn: Callable[[], R], name: str) -> None:
        ctx = mp.get_context("fork")
        self._conn, sender = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(fn, sender, os.getpid()), name=name,
                                 daemon=True)
        self._proc.start()
        sender.close()  # ours: the child's end closing is what tells us it has gone
        self._name = name

    def result(self, timeout: float = ANSWER_TIMEOUT) -> R:
        """The child's value; :class:`ChildFailed` if it raised, died without one, or gave none
        within ``timeout`` seconds (it is then stopped)."""
        try:
            if not self._conn.poll(timeout):
                self._proc.kill()
                self._proc.join()
                raise ChildFailed(f"{self._name}: no answer from the child process in "
                                  f"{timeout:g} s; stopped")
            ok, value = self._conn.recv()
        except (EOFError, OSError):
            self._proc.join()
            raise ChildFailed(f"{self._name}: the child process exited with status "
                              f"{self._proc.exitcode} before answering") from None
        finally:
            self._conn.close()
        self._proc.join()
        if not ok:
            raise ChildFailed(f"{self._name}: {value}")
        return value


def can_fork() -> bool:
    """Whether :func:`start` would fork now (Linux, and no other Python thread alive)."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


def start(fn: Callable[[], R], name: str) -> Forked[R] | None:
    """``fn()`` in a forked child from now on, or None where forking is not safe (see above)."""
    return Forked(fn, name) if can_fork() else None

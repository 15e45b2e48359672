"""Worker processes never outlive the converter: no orphan keeps writing into OUT.

Two ways a parent can go: killed outright (SIGKILL, or SIGTERM whose default action ends the
process without running any Python), or interrupted (SIGINT → KeyboardInterrupt, any exception).

* Killed: each worker asks the kernel, as its first act, to be sent SIGKILL when its parent dies
  (Linux ``prctl(PR_SET_PDEATHSIG)``, what util-linux's ``setpriv --pdeathsig`` sets), then
  checks the parent is still the one that started it (it may have
  died before the request was made).
* Interrupted: :func:`stop_workers_on_error` terminates the pool's processes before the executor's
  ``shutdown(wait=True)`` would wait for their positions to finish, as Python 3.14's
  ``ProcessPoolExecutor.terminate_workers`` does (CPython ``Lib/concurrent/futures/process.py``).

A killed worker leaves its temporary file; the next run removes it (``atomic.py``, under the
folder's lock).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """In a worker: be killed (SIGKILL) as soon as the parent ``parent_pid`` dies. Linux only;
    elsewhere a no-op (the interrupted case is still handled by the parent)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            logger.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return
    except (OSError, AttributeError) as exc:  # no libc symbol: carry on unprotected
        logger.debug("prctl unavailable: %s", exc)
        return
    if os.getppid() != parent_pid:  # the parent died before the request: nobody will tell us
        os._exit(1)


@contextlib.contextmanager
def stop_workers_on_error(ex: ProcessPoolExecutor) -> Iterator[None]:
    """On any exception (KeyboardInterrupt included) leaving the block, terminate the pool's
    worker processes, so none goes on writing after the run has given up."""
    try:
        yield
    except BaseException:
        # ``_processes`` is the executor's pid → Process map (CPython 3.8–3.14).
        procs = list((getattr(ex, "_processes", None) or {}).values())
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.terminate()
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.join(5)
        ex.shutdown(wait=False, cancel_futures=True)
        raise


__all__ = ["die_with_parent", "stop_workers_on_error"]

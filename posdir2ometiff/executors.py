"""Where positions run: inline (one worker) or a local process pool, results as they come.

Each worker converts whole positions and never raises (a bad position cannot take the pool
down); progress travels back through a queue in batches.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from typing import Any

from posdir2ometiff.cores import cores_each, usable_cores
from posdir2ometiff.errors import ConversionError
from posdir2ometiff.layout import LayoutError
from posdir2ometiff.orphans import die_with_parent, stop_workers_on_error
from posdir2ometiff.position import PositionJob, convert_position, failed_entry
from posdir2ometiff.progress import Progress
from posdir2ometiff.startup import heap_for_plane_buffers
from posdir2ometiff.writer import WriterError

logger = logging.getLogger(__name__)


def default_threads(workers: int) -> int:
    """Threads per position when ``--threads`` is not given: the cores the workers leave free.

    One position on a 32-core machine gets 32 threads; 16 positions in 16 processes get 2 each,
    and so do 20 (the share rounded to the nearest core: :func:`~posdir2ometiff.cores.cores_each`).
    """
    return cores_each(usable_cores(), workers)


def wants_io_helper(threads: int, cores: int, slots: int, asked: bool = False) -> bool:
    """Whether a position converted in ``threads`` threads, beside ``slots`` positions at once on
    ``cores`` cores, hashes and writes its output in a helper thread (hashfile.py).

    Beside several threads, yes: it keeps the writing thread's system calls from giving the GIL
    away. Beside one, only when a core is spare for it and the user left the threads to us
    (``asked`` False): where every core already converts a position (``--workers`` = cores, an
    experiment of many positions; a one-core Slurm task) it would only take turns with them, and
    ``--threads 1`` asked for is a budget of one core, which a helper busy a fifth of the time
    beside it would overrun (several converters side by side, each told one thread, then
    oversubscribe the machine, as two one-thread positions on 2 cores did: 3.6 % less time and
    6.7 % less CPU without it, 8 pairs). A spare core left to us is used (3 cores, 2 workers):
    one position alone with one thread on 2 cores took 20-25 % more time without it (6 pairs)."""
    return threads > 1 or (not asked and cores > slots * threads)


_worker_queue: Any = None  # set in each worker process by _init_worker (per process, not shared)


def _init_worker(q: Any, parent_pid: int | None = None) -> None:
    global _worker_queue
    _worker_queue = q
    if parent_pid is not None:  # a process of the pool: ours, not the caller's
        die_with_parent(parent_pid)  # a killed converter takes its workers along (orphans.py)
        heap_for_plane_buffers()  # (already, when forked from the command line)


def convert_guarded(
    job: PositionJob, report: Callable[[int], None] | None = None
) -> tuple[dict, str | None]:
    """Convert one position, turning every error into a failed manifest entry (one line) and,
    for unexpected ones, a traceback for --verbose. Never raises: one bad position cannot take
    a pool or a cluster down."""
    try:
        return convert_position(job, report), None
    except (ConversionError, WriterError, LayoutError) as exc:
        return failed_entry(str(exc)), None
    except OSError as exc:
        return failed_entry(f"{exc.filename or job.layout.folder}: {exc.strerror or exc}"), None
    except Exception as exc:  # unexpected: keep the traceback for --verbose
        return (failed_entry(f"{job.layout.folder}: {type(exc).__name__}: {exc}"),
                traceback.format_exc())


def _run_job(job: PositionJob) -> tuple[dict, str | None]:
    """Worker entry point of the process pool; progress goes back through the queue in batches
    (the first plane at once: the progress bar moves, and an inline run starts its side work)."""
    pending = [0, float("-inf")]

    def report(n: int) -> None:
        pending[0] += n
        now = time.monotonic()
        if _worker_queue is not None and (now - pending[1] > 0.2):
            _worker_queue.put(pending[0])
            pending[0], pending[1] = 0, now

    result = convert_guarded(job, report)
    if _worker_queue is not None and pending[0]:
        _worker_queue.put(pending[0])
    return result


class SideWork:
    """Work a run does beside its positions (the experiment's HDF5 tables): attempted once
    while they convert, and once more after them if that attempt failed.

    Beside the positions it competes with them for the disk: on a nearly full one it can fail
    only because a position's partial file held the space (removed when that position failed).
    Tried again after the positions, its error is the one a run doing it last would give, so
    which of the two reached the disk first never decides what the user is told.
    """

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._state = "new"  # → "running" → "ok" | "failed"

    def attempt(self) -> None:
        """Run it once, never raising: a failure is left for :meth:`finish` to try again."""
        with self._lock:
            if self._state != "new":
                return
            self._state = "running"
        try:
            self._fn()
        except Exception as exc:  # tried again after the positions; that error is the one raised
            logger.debug("beside the positions: %s (tried again after them)", exc)
            self._state = "failed"
        else:
            self._state = "ok"

    def finish(self) -> None:
        """After the positions (and after a running :meth:`attempt`): run it again unless the
        attempt succeeded; this error propagates."""
        if self._state != "ok":
            self._fn()
            self._state = "ok"


def run_jobs(
    jobs: list[PositionJob], workers: int, fail_fast: bool, progress: Progress,
    beside: SideWork,
) -> Iterator[tuple[PositionJob, tuple[dict, str | None]]]:
    """Run jobs in this process (one worker) or a process pool, yielding results as they come.

    ``beside`` is attempted while the positions convert: here in this process while the pool
    works; beside the inline positions, in a thread started once the first planes are written
    (the position's decoding and compressing threads leave the GIL free most of the time then;
    before, its OME-XML is built in this thread; the caller may have its Python work done by a
    forked child, so that the thread only waits for it: forked.py). It is finished after the
    positions.
    """
    if workers <= 1 or not jobs:
        side = ThreadPoolExecutor(1, thread_name_prefix="beside")
        started: list[Future] = []

        def start_beside() -> None:
            if not started:
                started.append(side.submit(beside.attempt))

        try:
            for job in jobs:
                entry, detail = _run_job_inline(job, progress, start_beside)
                yield job, (entry, detail)
                if fail_fast and entry["status"] != "ok":
                    logger.warning("--fail-fast: no further position is started")
                    break
            if started:
                started[0].result()
        finally:
            side.shutdown(wait=True)
        beside.finish()
        return

    q = mp.get_context().Queue()
    todo = iter(jobs)
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                             initargs=(q, os.getpid())) as ex, stop_workers_on_error(ex):
        # Submit only as many positions as there are workers, the next when one finishes:
        # the pool would otherwise pre-queue work that --fail-fast could no longer cancel.
        futures: dict[Future, PositionJob] = {}
        for job in todo:
            futures[ex.submit(_run_job, job)] = job
            if len(futures) >= workers:
                break
        beside.attempt()
        pending = set(futures)
        stop = False
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(q, progress)
            for fut in done:
                entry, detail = fut.result()
                yield futures[fut], (entry, detail)
                if fail_fast and entry["status"] != "ok" and not stop:
                    stop = True
                    logger.warning("--fail-fast: no further position is started")
                if not stop:
                    nxt = next(todo, None)
                    if nxt is not None:
                        new = ex.submit(_run_job, nxt)
                        futures[new] = nxt
                        pending.add(new)
    # Only now, with the workers joined: a worker's last count can still sit in its queue's
    # feeder thread when its result has arrived (the two travel by different pipes), and a
    # process joins that thread before it exits (multiprocessing/queues.py, _finalize_join).
    _drain(q, progress)
    beside.finish()


def _run_job_inline(
    job: PositionJob, progress: Progress, on_progress: Callable[[], None]
) -> tuple[dict, str | None]:
    """One-worker path: same error handling as the pool, progress updated directly (and
    ``on_progress()`` called with each update)."""

    class _Direct:
        def put(self, n: int) -> None:
            progress.update(n)
            on_progress()

    _init_worker(_Direct())
    try:
        return _run_job(job)
    finally:
        _init_worker(None)


def _drain(q: Any, progress: Progress) -> None:
    while True:
        try:
            progress.update(q.get_nowait())
        except queue_mod.Empty:
            return

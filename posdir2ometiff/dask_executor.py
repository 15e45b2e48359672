"""Positions as tasks on a Dask distributed cluster (a ``distributed.Client`` the caller owns).

Why Dask: it is the engine our users' clusters already run (dask-jobqueue starts its workers
through Slurm, PBS, SGE …), it reschedules the tasks of a worker that dies, and the caller keeps
control of the cluster: this module never starts one, it takes a client (as bioio and dask-image
do). Each position is one task (``client.submit``): positions are independent, long and
streaming, so there is nothing to gain from a finer graph, and the scheduler's work stealing
balances them.

What holds as in the local pool:

* **Progress.** Workers publish ``(run, position, attempt, planes done)`` events on a topic
  (``Worker.log_event``, distributed/worker.py); the client subscribes
  (``Client.subscribe_topic``, distributed/client.py). Counts are cumulative per attempt and the
  largest per position is kept, so a retried position never counts its planes twice. Several
  runs can share a cluster (a facility converting many experiments at once): the scheduler
  sends every subscribed client every event of the topic, and a client holds one handler per
  topic, so each event names its run and one handler per client hands it to that run only.
* **Errors.** The task is :func:`~posdir2ometiff.executors.convert_guarded`: it never raises, a
  bad position comes back as a failed entry with its one-line error.
* **A lost worker.** The scheduler re-runs the task of a worker that dies on another worker
  (up to ``distributed.scheduler.allowed-failures`` times, then ``KilledWorker``, reported here
  as that position's one-line error). The lost attempt's ``.partial`` file has its own name and is
  never renamed; the run deletes it at the end.
* **--fail-fast.** Only as many positions as the cluster has task slots are submitted at a time,
  so nothing queued has to be cancelled once a position failed.
* **An interrupted run** (Ctrl-C, a driver killed) leaves no work behind on a shared cluster.
  Its client goes, the scheduler lets go of its tasks, and a worker cannot stop a running task
  (distributed/worker_state_machine.py: "We can't stop executing a task just because the
  scheduler asked us to, so we're entering cancelled state and waiting until it completes"):
  so the task looks at its own state after every plane and, once cancelled, stops as a failed
  position does, its partial file deleted. Otherwise it would run to its end, taking a worker
  for up to a position's whole time, and leave an output that no manifest lists.

* **A worker that cannot see the folders** (a node without the mount) would otherwise take
  position after position and fail each at once, faster than the others convert theirs. The task
  returns :class:`Unshared` instead of converting; the run warns once, sends the position to
  another worker, and from then on submits only to the workers that can see the folders
  (``workers=`` restrictions, distributed/scheduler.py ``valid_workers``). With only such
  workers connected, the positions wait for one that can see, :data:`BLIND_WAIT` seconds at
  most; then the run ends in one line, as it does at once when none of the workers connected at
  its start can see them. A cluster started for the run (``--cluster slurm``) is told of each
  such worker instead: it cancels the worker's job, so that the node goes back to the queue's
  other jobs, and the run waits for those as for any job still queued (cluster.py).

Input and output must be on a filesystem all workers share (:func:`check_shared_filesystem`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import queue as queue_mod
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posdir2ometiff.cores import cores_each, placement, usable_cores
from posdir2ometiff.errors import ClusterError, ConversionError
from posdir2ometiff.executors import SideWork, convert_guarded, wants_io_helper
from posdir2ometiff.position import PositionJob, failed_entry
from posdir2ometiff.progress import Progress
from posdir2ometiff.startup import heap_for_plane_buffers, return_free_heap

logger = logging.getLogger(__name__)

#: Event topic of the workers' progress messages.
PROGRESS_TOPIC = "posdir2ometiff-progress"
#: Seconds between a worker's progress events for one position.
REPORT_INTERVAL = 0.5


@dataclass(frozen=True)
class Unshared:
    """A worker that cannot see the run's folders, in its own words: the answer of a position's
    task run there (not a result: a dataclass, not a tuple, so that no caller unpacks it as
    ``(entry, detail)``), or of the run's start check.

    Where it runs, so that the user can tell which machine lacks the mount: ``host`` (its host
    name) and, for a worker in a Slurm job, ``slurm_job`` and ``slurm_node`` (``SLURM_JOB_ID``
    and ``SLURMD_NODENAME`` of the job's environment: what ``scancel`` and ``--exclude`` take).
    """

    worker: str
    unseen: tuple[str, ...]
    host: str = ""
    slurm_job: str | None = None
    slurm_node: str | None = None

    def line(self) -> str:
        on = f" on {self.host}" if self.host else ""
        return (f"Dask worker {self.worker}{on} cannot see {', '.join(self.unseen)}: input and "
                "output must be on a filesystem every worker shares (same path on every machine)")


def _look(paths: list[str], dask_worker: Any = None) -> Unshared | None:
    """Run on a worker: its :class:`Unshared` answer if it cannot see every folder of ``paths``,
    else None (``Client.run`` passes the worker as ``dask_worker``)."""
    unseen = tuple(p for p in paths if not os.path.isdir(p))
    if not unseen:
        return None
    return Unshared(dask_worker.address if dask_worker is not None else "", unseen,
                    socket.gethostname(), os.environ.get("SLURM_JOB_ID") or None,
                    os.environ.get("SLURMD_NODENAME") or None)


def _slurm_job_id() -> str | None:
    """Run on a worker: the Slurm job it runs in, if any."""
    return os.environ.get("SLURM_JOB_ID") or None


def _same_job(client: Any, found: Unshared) -> set[str]:
    """``found``'s worker and the others of its Slurm job (a job of several worker processes,
    all on its node): the workers that go when a cluster that owns the job cancels it."""
    doomed = {found.worker}
    if found.slurm_job is None:
        return doomed
    from distributed.comm import get_address_host

    host = get_address_host(found.worker)
    near = [w for w in client.nthreads() if get_address_host(w) == host]
    ids = client.run(_slurm_job_id, workers=near, on_error="return")
    return doomed | {w for w, job in ids.items() if job == found.slurm_job}


def run_position_task(job: PositionJob, run: str = "") -> tuple[dict, str | None] | Unshared:
    """The task a Dask worker runs for one position (module-level: importable by workers);
    ``run`` names the run in its progress events."""
    from distributed import get_worker

    # The nanny's MALLOC_TRIM_THRESHOLD_ is overridden (see heap_for_plane_buffers).
    heap_for_plane_buffers(override=("MALLOC_TRIM_THRESHOLD_",))
    worker = get_worker()
    key = worker.get_current_task()
    unshared = _look([str(job.src), str(job.out)], worker)
    if unshared is not None:  # a worker that joined after the run's check (a queued Slurm job)
        return unshared
    if job.threads < 1:  # the caller left it to the cluster: this worker's share of its host
        share = (job.worker_threads or {}).get(worker.address)
        slots = max(1, worker.state.nthreads)
        if share:  # the host's cores divided among all its workers' slots: none is spare
            job.threads, job.io_helper = share, share > 1
        else:
            cores = usable_cores()
            job.threads = cores_each(cores, slots)
            job.io_helper = wants_io_helper(job.threads, cores, slots)
    attempt = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    state = {"done": 0, "sent": 0.0}

    def publish() -> None:
        worker.log_event(PROGRESS_TOPIC, {"run": run, "position": job.layout.name,
                                          "attempt": attempt, "done": state["done"]})

    def report(n: int) -> None:
        # After every plane: the writer deletes the partial file of a position that raises.
        if _released(worker, key):
            raise ConversionError(f"{job.layout.folder}: stopped, the run that asked for it is "
                                  "gone (its Dask task was released)")
        state["done"] += n
        now = time.monotonic()
        if now - state["sent"] >= REPORT_INTERVAL:
            state["sent"] = now
            publish()

    try:
        result = convert_guarded(job, report)
    finally:
        return_free_heap()
    publish()
    return result


def _released(worker: Any, key: Any) -> bool:
    """Whether the task ``key`` running on ``worker`` has no one left to take its result: the
    scheduler let go of it (its client went), so the worker's own record of it says
    "cancelled" or is gone; or the worker is closing (its scheduler is gone: a worker closes
    when that connection breaks, distributed/worker.py ``handle_scheduler``), and whatever it
    finishes now reaches no one: the run that asked for it ended when it lost the scheduler."""
    ts = worker.state.tasks.get(key)
    return ts is None or ts.state == "cancelled" or worker.status in _closing()


@functools.cache
def _closing() -> frozenset:
    """A Dask worker's states on its way down (not ``closing_gracefully``: a worker being
    retired finishes its tasks)."""
    from distributed.core import Status

    return frozenset({Status.closing, Status.closed, Status.failed})


def _import_converter() -> None:
    """Runs on each worker: the converter's modules (numpy, pandas, ome-types: 1–2 s)."""
    import posdir2ometiff.position  # noqa: F401


def preload_workers(client: Any) -> None:
    """Have every connected worker import the converter now, without waiting for it.

    A worker otherwise pays the imports inside its first position, after the driver has
    parsed the metadata; started first, they overlap that parsing (and cost nothing on a
    worker that has converted before: imports happen once per process)."""
    try:
        client.run(_import_converter, wait=False)
    except Exception as exc:  # noqa: BLE001 - an optimisation; the positions report real errors
        logger.debug("could not preload the Dask workers: %s", exc)


def threads_per_worker(client: Any) -> dict[str, int]:
    """Threads per position for each connected worker: its usable cores over the task slots of
    every worker on its host that runs on the same cores (its own included).

    Two one-thread workers on a 2-core machine each get 1, not 2: a worker alone cannot see its
    neighbours, and giving each position every core oversubscribed them (measured: 25 % more
    CPU per position than the local pool, with its one thread per position). Workers whose CPU
    sets do not overlap (Slurm jobs packed on one node, each with cores of its own) do not share:
    each keeps its own cores for its own slots; nor do the workers of two Slurm jobs that Slurm
    did not pin to their CPUs (:func:`~posdir2ometiff.cores.placement`). Where a worker cannot
    say which CPUs it has, it is taken to share with every worker on its host. Workers that
    join later fall back to their own cores over their own slots.
    """
    try:
        placements = client.run(placement)
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except Exception as exc:  # noqa: BLE001 - an optimisation; the task has a fallback
        logger.debug("could not ask the Dask workers for their cores: %s", exc)
        return {}
    by_host: dict[str, list[str]] = {}
    for address, info in workers.items():
        by_host.setdefault(str(info.get("host")), []).append(address)

    def shares_cores(a: str, b: str) -> bool:
        _, ids_a, job_a = placements.get(a) or (1, None, None)
        _, ids_b, job_b = placements.get(b) or (1, None, None)
        if job_a and job_b:  # Slurm jobs not pinned to their CPUs: each has its own allotment
            return job_a == job_b
        return ids_a is None or ids_b is None or bool(set(ids_a) & set(ids_b))

    shares = {}
    for address, info in workers.items():
        slots = sum(max(1, int(workers[other].get("nthreads", 1)))
                    for other in by_host[str(info.get("host"))] if shares_cores(address, other))
        cores = (placements.get(address) or (1, None, None))[0]
        shares[address] = cores_each(int(cores or 1), slots)
    return shares


def check_shared_filesystem(client: Any, src: Path, out: Path,
                            more_may_come: bool = False) -> dict[str, Unshared]:
    """The connected workers that cannot see ``src`` or ``out``, each warned about; one line
    (ConversionError) when workers are connected and none of them can see both, unless
    ``more_may_come`` (a cluster started for the run, whose other jobs may still be queued:
    its watch says when none can come).

    The run gives the others its positions (:func:`run_jobs_dask`). Workers that join later (a
    Slurm job still queued: with ``--cluster slurm``, every worker) are checked by the task
    itself (:class:`Unshared`).
    """
    answers = client.run(_look, [str(src), str(out)])
    # Named by the scheduler's address for it (the key), as the run's other calls name it.
    found = {worker: dataclasses.replace(answer, worker=worker)
             for worker, answer in sorted(answers.items()) if answer is not None}
    if found and len(found) == len(answers) and not more_may_come:
        raise ConversionError(next(iter(found.values())).line())
    for answer in found.values():
        _warn_blind(answer)
    return found


def _warn_blind(blind: Unshared) -> None:
    logger.warning("%s; the run gives its positions to the other workers", blind.line())


class _ProgressEvents:
    """Client-side: turns the workers' cumulative per-attempt counts into progress increments."""

    def __init__(self) -> None:
        self.inbox: queue_mod.Queue[dict] = queue_mod.Queue()
        self._best: dict[str, int] = {}

    def drain(self, progress: Progress) -> None:
        while True:
            try:
                msg = self.inbox.get_nowait()
            except queue_mod.Empty:
                return
            name, done = str(msg.get("position")), int(msg.get("done", 0))
            if done > self._best.get(name, 0):
                progress.update(done - self._best.get(name, 0))
                self._best[name] = done

    def settle(self, expected: dict[str, int], progress: Progress, timeout: float = 2.0) -> None:
        """Wait (briefly) for the last events of finished positions: an event and the task's
        result travel separately, so the result can arrive first."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain(progress)
            if all(self._best.get(n, 0) >= c for n, c in expected.items()):
                return
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)


#: The runs listening for progress, by client: ``Client.subscribe_topic`` keeps one handler per
#: topic, so two runs in one process sharing a client share one handler, which hands each event
#: to the run it names (and drops other processes' runs' events, which the scheduler sends too).
_listeners: dict[int, dict[str, _ProgressEvents]] = {}
_listeners_lock = threading.Lock()


def _listen(client: Any, run: str, events: _ProgressEvents) -> None:
    with _listeners_lock:
        runs = _listeners.setdefault(id(client), {})
        if not runs:
            def handler(event: tuple[float, Any], runs: dict[str, _ProgressEvents] = runs) -> None:
                # Called on the client's event-loop thread: only hand the message over.
                msg = event[1]
                target = runs.get(msg.get("run")) if isinstance(msg, dict) else None
                if target is not None:
                    target.inbox.put(msg)

            client.subscribe_topic(PROGRESS_TOPIC, handler)
        runs[run] = events


def _stop_listening(client: Any, run: str) -> None:
    with _listeners_lock:
        runs = _listeners.get(id(client), {})
        runs.pop(run, None)
        if not runs:
            _listeners.pop(id(client), None)
            client.unsubscribe_topic(PROGRESS_TOPIC)


#: Seconds without any worker before the run says it is waiting for one.
WAIT_NOTICE = 10.0


#: Seconds a run waits with only workers that cannot see its folders connected, for one that
#: can (a worker still starting), before it ends in one line: when none of a cluster's nodes
#: has the mount (the usual mistake: a home folder the nodes do not mount) nothing will come.
#: A worker that joins is given a position before it is known to be blind, so each one found
#: blind starts the wait again (workers that start one by one). Not for a cluster started for
#: the run (``on_blind``): its jobs are known, and its watch says when none can come.
BLIND_WAIT = 60.0


def _seeing(client: Any, blind: dict[str, Unshared]) -> tuple[dict[str, int], list[str]]:
    """Task slots (threads) of each connected worker that can see the run's folders, as far
    as the run knows (those not in ``blind``), and the blind ones connected. ``Client.nthreads``
    asks the scheduler for a number per worker, not the metrics of every worker that
    ``scheduler_info`` brings: the run asks several times a second."""
    connected = client.nthreads()
    return ({w: max(1, int(n)) for w, n in connected.items() if w not in blind},
            sorted(w for w in connected if w in blind))


def run_jobs_dask(
    jobs: list[PositionJob], client: Any, fail_fast: bool, progress: Progress,
    beside: SideWork, check: Callable[[], str | None] | None = None,
    blind: dict[str, Unshared] | None = None,
    on_blind: Callable[[Unshared], None] | None = None,
) -> Iterator[tuple[PositionJob, tuple[dict, str | None]]]:
    """Run each job as a task on ``client``'s cluster, yielding results as they come.

    ``beside`` is attempted while the first tasks run, and finished after the last. ``check``
    (``convert(cluster_check=...)``) is asked on every round of waiting; a text ends the run:
    the tasks not done are cancelled and :class:`ClusterError` is raised with it. ``blind``:
    workers known not to see the run's folders (:func:`check_shared_filesystem`); the run adds
    those its tasks find, gives them no position, and counts them as no worker at all: with
    only blind workers connected, positions wait for one that can see, as they wait for a
    worker on a cluster that has none yet, but for :data:`BLIND_WAIT` seconds at most, then
    :class:`ClusterError`. ``on_blind``: told of each blind worker (those of ``blind`` first)
    by a cluster started for the run, which may stop it (``--cluster slurm`` cancels its job:
    :meth:`~posdir2ometiff.cluster.SlurmWatch.blind_worker`) and knows, through ``check``,
    whether others can still come: with it, the run waits on ``check``, not on
    :data:`BLIND_WAIT` (a job queued behind a blind one may start long after it).
    """
    from distributed import TimeoutError as DaskTimeout
    from distributed import wait
    from distributed.scheduler import KilledWorker
    from distributed.utils import CancelledError

    events = _ProgressEvents()
    # Positions to submit, in order; one back from a blind worker, or whose workers are all
    # gone, goes first again.
    todo: deque[PositionJob] = deque(jobs)
    futures: dict[Any, PositionJob] = {}
    # Tasks submitted with a restriction to these workers (once a blind one is known).
    allowed: dict[Any, frozenset[str]] = {}
    blind = dict(blind or {})
    for known in blind.values() if on_blind is not None else ():
        on_blind(known)
    seeing, _ = _seeing(client, blind)
    blind_only_since: float | None = None  # only blind workers connected since
    run = uuid.uuid4().hex[:12]
    tries: dict[str, int] = {}  # submissions of each position: each its own task key
    order = {job.layout.name: i for i, job in enumerate(jobs)}
    _listen(client, run, events)

    def submit(job: PositionJob) -> Any:
        n = tries[job.layout.name] = tries.get(job.layout.name, 0) + 1
        key = f"posdir2ometiff-{job.layout.name}-{run}" + (f"-{n}" if n > 1 else "")
        where: dict[str, Any] = {}
        if blind and seeing:  # once a blind worker is known, only the others
            where = {"workers": sorted(seeing), "allow_other_workers": False}
        fut = client.submit(run_position_task, job, run, pure=False, key=key, **where)
        futures[fut] = job
        if where:
            allowed[fut] = frozenset(seeing)
        return fut

    def take_back(found: Unshared) -> None:
        # The owner of the cluster is about to stop found's job: the positions its other
        # workers hold (sent there before they were known blind; a task's first seconds on a
        # new worker are its imports) come back first. A task whose worker dies counts toward
        # the scheduler's allowed-failures, and a few blind jobs cancelled one after another
        # made a position fail with KilledWorker (seen in CI).
        doomed = _same_job(client, found)
        for worker in doomed - set(blind):
            blind[worker] = dataclasses.replace(found, worker=worker)
            seeing.pop(worker, None)
        held = {key for keys in client.processing(sorted(doomed)).values() for key in keys}
        requeue([fut for fut in pending if fut.key in held])

    def requeue(back: list[Any]) -> None:
        """Cancel these pending tasks and put their positions back at the head of the queue,
        in the run's order (each is submitted again under a key of its own)."""
        if not back:
            return
        client.cancel(back)  # the scheduler has let go of them when this returns
        for fut in sorted(back, key=lambda f: order[futures[f].layout.name], reverse=True):
            pending.discard(fut)
            allowed.pop(fut, None)
            todo.appendleft(futures.pop(fut))

    def slots() -> int:
        # With no worker at all, one task waits in the scheduler for the first to join; with
        # only blind ones, none (it would go to them).
        return sum(seeing.values()) or (0 if blind else 1)

    finished: dict[str, int] = {}  # planes of the positions converted, for the last events
    try:
        pending = {submit(todo.popleft()) for _ in range(min(slots(), len(todo)))}
        beside.attempt()
        stop = False
        alone_since: float | None = None if seeing else time.monotonic()
        while pending or (todo and not stop):
            try:
                if not pending:  # waiting for a worker that can see the folders
                    time.sleep(0.2)
                    done = set()
                else:
                    done, pending = wait(pending, timeout=0.2, return_when="FIRST_COMPLETED")
            except (DaskTimeout, TimeoutError):
                done = set()
            except CancelledError as exc:  # the client cancels every future when it does
                raise ClusterError(_cancelled(client, exc)) from None
            events.drain(progress)
            seeing, blind_here = _seeing(client, blind)
            for fut in done:
                job = futures.pop(fut)
                allowed.pop(fut, None)
                outcome = _outcome(fut, job, KilledWorker)
                # Its result taken: the worker need not keep it until this future object is
                # collected (a run's frames can sit in reference cycles until the next GC).
                fut.release()
                if isinstance(outcome, Unshared):  # not done: again, on a worker that can see
                    todo.appendleft(job)
                    if outcome.worker not in blind:
                        blind[outcome.worker] = outcome
                        seeing.pop(outcome.worker, None)
                        blind_here.append(outcome.worker)
                        _warn_blind(outcome)
                        if on_blind is not None:
                            take_back(outcome)
                            on_blind(outcome)
                    continue
                entry, detail = outcome
                if entry["status"] == "ok":
                    finished[job.layout.name] = job.layout.plane_count
                yield job, (entry, detail)
                if fail_fast and entry["status"] != "ok" and not stop:
                    stop = True
                    logger.warning("--fail-fast: no further position is started")
            connected = {*seeing, *blind_here}
            # Tasks every worker they may run on is gone from (the scheduler would hold them
            # for ever): again, on the workers there are now.
            requeue([fut for fut, workers in allowed.items()
                     if fut in pending and not workers & connected])
            problem = check() if check is not None else None
            if seeing or not blind_here or on_blind is not None:
                blind_only_since = None
            elif blind_only_since is None:
                blind_only_since = time.monotonic()
            elif time.monotonic() - blind_only_since > BLIND_WAIT and not problem:
                problem = (f"no Dask worker connected to {client.scheduler.address} can see the "
                           f"input and output folders ({blind[blind_here[0]].line()}): the "
                           "positions done before are in the manifest")
            if problem:  # after this round's results: they are in the manifest
                client.cancel(list(pending))
                raise ClusterError(problem)
            if seeing:
                alone_since = None
            elif alone_since is None:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > WAIT_NOTICE:
                # A cluster whose workers are yet to come (Slurm jobs in a queue, workers not
                # started) or cannot see the folders: say so once each time, rather than a
                # progress bar standing at 0.
                logger.info("no Dask worker%s is connected to %s %s: the positions start when "
                            "one joins", " that can see the input and output folders"
                            if blind else "", client.scheduler.address,
                            "now" if blind or finished else "yet")
                alone_since = float("inf")
            # Keep the cluster's slots busy (workers joining later get work too).
            while not stop and todo and len(futures) < slots():
                pending.add(submit(todo.popleft()))
        events.settle(finished, progress)
    finally:
        _stop_listening(client, run)
    beside.finish()


def _cancelled(client: Any, exc: BaseException) -> str:
    """One line for the run's tasks cancelled under it: the client lost its scheduler (it
    cancels every future, reason ``scheduler-connection-lost``: distributed/client.py
    ``Client._reconnect``), or someone cancelled them."""
    reasons = {e.reason for group in getattr(exc, "error_groups", ()) for e in group.errors}
    where = getattr(getattr(client, "scheduler", None), "address", None) or "the scheduler"
    if "scheduler-connection-lost" in reasons:
        return (f"lost the connection to the Dask scheduler at {where}: the positions done "
                "before are in the manifest; re-run to convert the rest")
    why = ", ".join(sorted(reasons)) or "no reason given"
    return f"the Dask cluster at {where} cancelled the run's positions ({why})"


def _outcome(
    fut: Any, job: PositionJob, killed: type[Exception]
) -> tuple[dict, str | None] | Unshared:
    """The task's (entry, detail) or :class:`Unshared`; a task the cluster could not run
    becomes a failed entry."""
    try:
        return fut.result()
    except killed as exc:
        return failed_entry(
            f"{job.layout.folder}: lost the Dask workers running it ({exc}); re-run to try again"
        ), None
    except Exception as exc:  # the cluster failed (not the position: that never raises)
        return failed_entry(f"{job.layout.folder}: Dask task failed: {type(exc).__name__}: {exc}"), None

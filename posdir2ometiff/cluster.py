"""The CLI's way to a Dask client: connect to a running scheduler, or start workers through Slurm.

Library code never starts a cluster (:func:`posdir2ometiff.convert.convert` takes the caller's
``distributed.Client``); this module is what the command line does on the user's say:

* ``--scheduler tcp://host:8786``: connect to a scheduler someone runs (``dask scheduler``, a
  ``dask-jobqueue`` cluster in a notebook, a Dask Gateway …).
* ``--cluster slurm``: a ``dask_jobqueue.SLURMCluster`` (its scheduler runs in this process; its
  workers are Slurm jobs). Queue, cores, memory, walltime … come, as dask-jobqueue users expect,
  from Dask's configuration (``~/.config/dask/jobqueue.yaml``, ``$DASK_CONFIG``, the
  ``jobqueue.slurm`` section) or a file given with ``--cluster-config``, and the ``--slurm-*``
  options override single values. Without cores and memory from any of them dask-jobqueue
  refuses, and we say so in one line.

Inputs and outputs must be on a filesystem every worker shares (same path everywhere).

dask-jobqueue submits the worker jobs in the background and waits for their workers to join. A
refused ``sbatch`` (a partition that does not exist, an account over its limits) is only logged
as a traceback, and a job that ends before its worker joins (a node without our environment, a
failing prologue, a walltime run out) is not noticed at all: the positions would wait, without a
word, for workers that never come. :class:`SlurmWatch` follows this run's jobs, and the run asks
it every few seconds (``convert(cluster_check=...)``) whether any worker can still come.

A job can also start on a node that does not mount the folders (a facility where only some
nodes have the lab's share). The run gives its worker nothing (dask_executor.py) and tells the
watch (``convert(on_blind_worker=...)``), which cancels that job: otherwise it would hold its
node, given nothing, until its walltime, while the run's other jobs wait behind it in the queue.
The watch counts such workers as none, so the run waits for the jobs still queued, and ends in
one line, naming the nodes, once every job has ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posdir2ometiff.errors import ClusterError

if TYPE_CHECKING:
    from posdir2ometiff.dask_executor import Unshared

logger = logging.getLogger(__name__)

CLUSTERS = ("slurm",)
#: Seconds between two looks at Slurm's queue while no worker is connected.
SLURM_POLL = 5.0
__all__ = ["CLUSTERS", "ClusterError", "SlurmOptions", "SlurmWatch", "dask_client",
           "load_cluster_config"]


@dataclass
class SlurmOptions:
    """``--slurm-*`` overrides of dask-jobqueue's ``jobqueue.slurm`` settings (None: from config)."""

    queue: str | None = None
    cores: int | None = None
    memory: str | None = None
    walltime: str | None = None
    #: Slurm jobs (each one ``dask worker``) to start.
    jobs: int = 1

    def cluster_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in (("queue", self.queue), ("cores", self.cores),
                                  ("memory", self.memory), ("walltime", self.walltime))
                if v is not None}


def load_cluster_config(path: Path) -> dict[str, Any]:
    """A Dask configuration YAML (same layout as ``~/.config/dask/jobqueue.yaml``)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ClusterError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ClusterError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ClusterError(f"{path}: expected a mapping such as 'jobqueue: {{slurm: {{...}}}}'")
    return data


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists and scalars are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_dotted(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ClusterError(
            "--scheduler/--cluster need Dask: pip install 'posdir2ometiff[dask]'"
        ) from None
    return distributed


def _sbatch_reason(exc: BaseException) -> str:
    """The line of a refused submission that says why (``sbatch: error: …`` from the stderr
    dask-jobqueue puts into its RuntimeError), else the error's first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("sbatch: error:")]
    return (errors[-1] if errors else lines[0] if lines else type(exc).__name__)


class SlurmWatch:
    """What became of the Slurm jobs this run submitted, asked by the run every few seconds.

    :meth:`problem` gives a one-line reason once no worker can come any more: every job was
    refused by ``sbatch``, or every submitted job has left Slurm's queue (ended, failed, timed
    out, cancelled) while no Dask worker that can see the run's folders is connected. While a
    job waits in the queue it says nothing, however long (a facility's queue can hold a job for
    hours), but logs the reason Slurm gives for the wait whenever it changes (``Resources``,
    ``Priority``, or one that will not pass by itself, such as ``PartitionConfig``: more cores
    than a node of the partition has).

    ``workers``: the addresses of the connected Dask workers. Those the run found unable to see
    its folders (:meth:`blind_worker`) count as none, and their jobs are cancelled."""

    def __init__(self, jobs: int, workers: Callable[[], Collection[str]],
                 poll: float = SLURM_POLL, squeue: str = "squeue",
                 scancel: str = "scancel") -> None:
        self._expected = jobs
        self._workers = workers
        self._poll = poll
        self._squeue = squeue
        self._scancel = scancel
        self._blind: set[str] = set()  # worker addresses
        self._blind_jobs: dict[str, Unshared] = {}  # job id → its worker's answer
        self._lock = threading.Lock()
        self._logs: dict[str, str] = {}  # job id → where Slurm writes its log
        self.refusals: list[BaseException] = []
        self._next = 0.0
        self._waiting: dict[str, str] = {}

    def submitted(self, job_id: str, log: str) -> None:
        with self._lock:
            self._logs[job_id] = log
        logger.info("Slurm: job %s submitted (its log: %s)", job_id, log)

    def refused(self, exc: BaseException) -> None:
        with self._lock:
            self.refusals.append(exc)
        logger.warning("Slurm refused a worker job: %s", _sbatch_reason(exc))

    def problem(self) -> str | None:
        """Why no Dask worker can come any more, or None (one may, or it cannot be told)."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self._poll
        with self._lock:
            logs, refusals = dict(self._logs), list(self.refusals)
        if not logs:
            if refusals and len(refusals) >= self._expected:
                return f"Slurm refused the worker job: {_sbatch_reason(refusals[-1])}"
            return None  # still submitting
        with self._lock:
            blind, blind_jobs = set(self._blind), dict(self._blind_jobs)
        if any(worker not in blind for worker in self._workers()):
            return None
        queued = self._queued(list(logs))
        if queued is None:
            return None
        if queued:
            if queued != self._waiting:
                self._waiting = queued
                logger.info("Slurm: waiting for job(s) %s",
                            ", ".join(f"{j} ({why})" for j, why in sorted(queued.items())))
            return None
        ended = ", ".join(sorted(logs))
        where = "; ".join(sorted(set(logs.values())))
        why = ""
        if blind_jobs:
            answers = list(blind_jobs.values())
            nodes = ", ".join(sorted({a.slurm_node or a.host for a in answers}))
            unseen = ", ".join(dict.fromkeys(p for a in answers for p in a.unseen))
            why = (f"job(s) {', '.join(sorted(blind_jobs))} ran on node(s) {nodes}, which cannot "
                   f"see {unseen}; ")
        return (f"Slurm job(s) {ended} of this run ended and no Dask worker is left to convert "
                f"the positions: {why}see the job log(s) {where}")

    def blind_worker(self, found: Unshared) -> None:
        """The run found a worker that cannot see its folders: count it as none, and cancel its
        job (this run's, by the job id in its environment), so that its node goes back to the
        queue; say which node, and how to keep the run's jobs off it."""
        job = found.slurm_job
        with self._lock:
            self._blind.add(found.worker)
            ours = job is not None and job in self._logs
            again = job in self._blind_jobs  # another worker of the same job (--slurm-cores > 1)
            if ours and not again:
                self._blind_jobs[str(job)] = found
        if not ours:
            logger.warning("%s is not in a Slurm job of this run: it is given nothing, and left "
                           "running", found.worker)
            return
        if again:
            return
        node = found.slurm_node or found.host
        try:
            done = subprocess.run([self._scancel, str(job)], capture_output=True, text=True,
                                  timeout=60, check=False)
            failed = (done.stderr.strip().splitlines() or ["exit status"])[-1] \
                if done.returncode else ""
        except (OSError, subprocess.SubprocessError) as exc:
            failed = str(exc)
        if failed:
            logger.warning("Slurm: job %s on node %s cannot see the run's folders; cancelling it "
                           "failed (%s): it holds the node, given nothing, until its walltime",
                           job, node, failed)
            return
        logger.warning("Slurm: job %s on node %s cannot see %s: cancelled (to keep the run's "
                       "jobs off that node: job-extra-directives: ['--exclude=%s'] in the "
                       "jobqueue.slurm config)", job, node, ", ".join(found.unseen), node)

    def _queued(self, job_ids: list[str]) -> dict[str, str] | None:
        """{job id: its state and reason} of the jobs still in Slurm's queue (pending, running,
        completing…); None when ``squeue`` cannot tell."""
        try:
            done = subprocess.run(
                [self._squeue, "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%r"],
                capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.debug("squeue failed: %s", exc)
            return None
        if done.returncode:
            # Jobs Slurm has forgotten (past MinJobAge) make squeue fail with this message.
            return {} if "Invalid job id" in done.stderr else None
        queued = {}
        for line in done.stdout.splitlines():
            job, _, rest = line.partition("|")
            state, _, reason = rest.partition("|")
            if job.strip() in job_ids:
                queued[job.strip()] = state if reason in ("", "None") else f"{state}: {reason}"
        return queued


class _DropReported(logging.Filter):
    """Drops the traceback the event loop logs for a refused job: the run reports it in one
    line (:meth:`SlurmWatch.refused`)."""

    def __init__(self, watch: SlurmWatch) -> None:
        super().__init__()
        self._watch = watch

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not any(exc is seen for seen in self._watch.refusals)


def _watched_job_class(base: type, watch: SlurmWatch) -> type:
    """dask-jobqueue's job class, telling ``watch`` what ``sbatch`` made of each job."""

    from distributed.core import Status

    class WatchedSLURMJob(base):  # type: ignore[valid-type, misc]
        async def start(self) -> None:
            try:
                await super().start()
            except Exception as exc:
                watch.refused(exc)
                # Failed, as closing the cluster expects of every job it made (SpecCluster._close
                # asserts it): left "created", the close raised AssertionError over our error.
                self.status = Status.failed
                raise
            # Where dask-jobqueue's job script sends the job's stderr, else Slurm's default.
            log = (f"{self.log_directory}/{self.job_name or 'worker'}-{self.job_id}.err"
                   if self.log_directory else
                   os.path.join(os.getcwd(), f"slurm-{self.job_id}.out"))
            watch.submitted(str(self.job_id), log)

    return WatchedSLURMJob


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    cluster: str | None = None,
    slurm: SlurmOptions | None = None,
    config_file: Path | None = None,
    timeout: float = 30.0,
) -> Iterator[tuple[Any, SlurmWatch | None]]:
    """Yield ``(client, watch)``: a ``distributed.Client`` (None when neither ``scheduler`` nor
    ``cluster``) and, for a cluster started here, its :class:`SlurmWatch` (else None), whose
    ``problem`` and ``blind_worker`` go to ``convert(cluster_check=..., on_blind_worker=...)``;
    close the client, and a cluster started here, on exit."""
    if scheduler is None and cluster is None:
        yield None, None
        return
    distributed = _import_distributed()
    import dask

    config = load_cluster_config(config_file) if config_file is not None else {}
    # Dotted keys merge into Dask's defaults; a nested dict would replace whole sections.
    with dask.config.set(_dotted(config)):
        if scheduler is not None:
            try:
                client = distributed.Client(scheduler, timeout=timeout)
            except OSError as exc:
                raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") \
                    from None
            with client:
                yield client, None
            return
        if cluster != "slurm":
            raise ClusterError(f"--cluster must be one of {', '.join(CLUSTERS)}, not {cluster!r}")
        yield from _slurm_client(distributed, slurm or SlurmOptions())


def _slurm_client(
    distributed: Any, slurm: SlurmOptions
) -> Iterator[tuple[Any, SlurmWatch]]:
    from dask_jobqueue import SLURMCluster
    from dask_jobqueue.slurm import SLURMJob

    client: Any = None

    def workers() -> Collection[str]:
        return list(client.nthreads()) if client else []

    watch = SlurmWatch(slurm.jobs, workers)
    try:
        cluster = SLURMCluster(job_cls=_watched_job_class(SLURMJob, watch),
                               **slurm.cluster_kwargs())
    except ValueError as exc:  # e.g. no cores/memory in options or config
        first = str(exc).splitlines()[0].split(", for example")[0]
        raise ClusterError(
            f"--cluster slurm: {first} (give --slurm-cores and --slurm-memory, or jobqueue.slurm "
            "cores and memory in the Dask config (~/.config/dask/jobqueue.yaml or --cluster-config))"
        ) from None
    quiet = _DropReported(watch)
    loop_log = logging.getLogger("tornado.application")  # tornado/ioloop.py: app_log
    loop_log.addFilter(quiet)
    try:
        with cluster, distributed.Client(cluster) as client:
            logger.info("Slurm: submitting %d job(s); scheduler at %s", slurm.jobs,
                        cluster.scheduler_address)
            logger.debug("Slurm job script:\n%s", cluster.job_script())
            cluster.scale(jobs=slurm.jobs)
            yield client, watch
    finally:
        loop_log.removeFilter(quiet)

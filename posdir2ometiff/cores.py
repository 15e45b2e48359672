"""How many cores this process may use (a module of its own: the CLI asks before importing the
converter)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (what ``srun -c``, a Slurm allocation or
    a container allots), else the machine's count; inside a Slurm job, at most the CPUs Slurm
    allotted it on this node. On a 64-core node where Slurm gave us 4, 4.

    Slurm pins a job's processes to its CPUs only with its affinity or cgroup task plug-ins; a
    cluster run with ``TaskPlugin=task/none`` leaves them the whole node, where every process
    that trusted its affinity would take all 64 cores beside the other jobs. The job's count is
    ``SLURM_CPUS_ON_NODE`` (sbatch(1), srun(1): the CPUs allocated to the job or step on this
    node), which every process of a Slurm job inherits, a Dask worker it runs included."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return min(cores, _slurm_cpus() or cores)


def _slurm_cpus() -> int | None:
    """``SLURM_CPUS_ON_NODE`` when it is a positive whole number (not set outside Slurm)."""
    text = os.environ.get("SLURM_CPUS_ON_NODE", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def cpu_ids() -> list[int] | None:
    """The CPUs this process may run on (its affinity), or None where that is not known.

    Two processes on one host share cores only where these overlap: two Slurm jobs packed on
    one node each get CPUs of their own (cgroups), while processes started side by side
    without an allotment see the same set."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


def cores_each(cores: int, slots: int) -> int:
    """Threads for each of ``slots`` positions converting at once on ``cores`` cores: the share
    rounded to the nearest whole core, at least 1.

    Rounded down, 20 positions on a 32-core machine got one thread each and left a quarter of
    it to their output helpers at most; rounded to the nearest they get two, 40 threads on 32
    cores, which the scheduler spreads. That is at most 1.33 threads a core (a share of 1.5
    made 2), and the converter loses little at 1.5: one position on 2 cores with 3 threads
    against 2, two sets of 8 and 10 alternated runs, median 0.770 against 0.788 s and 0.850
    against 0.838 s, CPU seconds 0-3 % more (at 2 a core, 4 threads, 6-8 % slower)."""
    return max(1, (2 * cores + slots) // (2 * max(1, slots)))


def placement() -> tuple[int, list[int] | None, str | None]:
    """Where this process's cores come from, for a Dask driver sharing a host's cores among the
    workers on it (``dask_executor.threads_per_worker``): (usable cores, the CPUs of its
    affinity or None, and the Slurm job it belongs to where Slurm allotted it fewer CPUs than
    its affinity shows, else None).

    A Slurm job that is not pinned to its CPUs sees the whole node, as every other job there
    does, so its CPU set cannot tell it apart from them: its allotment is its own all the same,
    shared with the other workers of its job only."""
    ids = cpu_ids()
    cores = usable_cores()
    unpinned = ids is not None and cores < len(ids) and _slurm_cpus() is not None
    return cores, ids, (os.environ.get("SLURM_JOB_ID") or None) if unpinned else None

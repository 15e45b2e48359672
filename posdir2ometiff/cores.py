"""How many cores this process may use (a module of its own: the CLI asks before importing the
converter)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (what ``srun -c``, a Slurm allocation or
    a container allots), else the machine's count. On a 64-core node where Slurm gave us 4, 4."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cpu_ids() -> list[int] | None:
    """The CPUs this process may run on (its affinity), or None where that is not known.

    Two processes on one host share cores only where these overlap: two Slurm jobs packed on
    one node each get CPUs of their own (cgroups), while processes started side by side
    without an allotment see the same set."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None

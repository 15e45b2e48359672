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

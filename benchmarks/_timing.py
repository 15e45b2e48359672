"""Seconds a benchmark's run spends inside named functions of the code it measures.

Shared by ``bench_rerun.py`` (the parts of an up-to-date re-run) and ``bench_push.py`` (the
steps of an import): each wraps the functions in place for the run and puts them back after.
"""

from __future__ import annotations

import functools
import time
from typing import Any


class TimedCalls:
    """Wall seconds inside wrapped functions, summed per label over every call (calls in
    several threads overlap, so the sum can exceed the run's own time).

    :meth:`wrap` replaces ``module.name`` until :meth:`undo` (or the end of a ``with`` block).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, module: Any, name: str, label: str) -> None:
        real = getattr(module, name)

        @functools.wraps(real)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0

        setattr(module, name, timed)
        self._undo.append((module, name, real))

    def undo(self) -> None:
        while self._undo:
            module, name, real = self._undo.pop()
            setattr(module, name, real)

    def __enter__(self) -> TimedCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()

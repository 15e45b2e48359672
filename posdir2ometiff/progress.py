"""Progress reporting: a tqdm bar on a terminal, plain periodic log lines otherwise.

A bar is what a person watching a terminal wants; in a batch job or CI log it would be thousands
of carriage returns, so there we log a line every ``interval`` seconds instead. Both count
planes (done of total) and show the rate in planes/s.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

logger = logging.getLogger(__name__)


class Progress:
    """Counts planes written across all positions; use as a context manager."""

    def __init__(
        self,
        total: int,
        *,
        mode: str = "auto",
        interval: float = 10.0,
        stream: TextIO | None = None,
    ) -> None:
        """``mode``: ``auto`` (bar if ``stream`` is a TTY, else log lines), ``bar``, ``log``, ``off``."""
        self.total = total
        self.done = 0
        self.interval = interval
        self._stream = stream or sys.stderr
        if mode == "auto":
            isatty = getattr(self._stream, "isatty", lambda: False)
            mode = "bar" if isatty() else "log"
        self.mode = mode
        self._bar = None
        self._start = time.monotonic()
        self._last = self._start

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from tqdm import tqdm

            class _Bar(tqdm):
                # No monitor thread: worker processes are forked while the bar exists, and
                # forking a process that has extra threads risks inheriting a held lock.
                monitor_interval = 0

            self._bar = _Bar(
                total=self.total, unit="plane", file=self._stream, dynamic_ncols=True,
                desc="planes",
            )
        return self

    def update(self, n: int = 1) -> None:
        """Record ``n`` more planes written."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self._log(now)

    def _log(self, now: float) -> None:
        rate = self.done / max(now - self._start, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        logger.info("%d/%d planes (%.0f%%), %.1f planes/s", self.done, self.total, pct, rate)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log" and self.total:
            self._log(time.monotonic())

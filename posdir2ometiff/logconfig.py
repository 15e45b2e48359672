"""Logging set-up for the command lines (``posdir2ometiff`` and ``omero-push``), and only for them.

Library modules just ``getLogger(__name__)``; the CLIs call :func:`cli_logging` around their work.
It adds one stderr handler beside whatever an embedding program (or pytest) has, sets our packages'
level from ``-v``/``-q`` and keeps third-party libraries at WARNING, and puts everything back on
exit, so ``main()`` called from another program leaves no handler bound to a closed stream.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: The loggers whose INFO messages are ours to show.
OUR_PACKAGES = ("posdir2ometiff", "omero_push")


class _OursOrWarnings(logging.Filter):
    """Another library's records only from WARNING up. The root logger's WARNING does not hold
    them back where a library sets its own loggers' level: Dask's ``distributed`` sets its
    loggers to INFO from its configuration when imported (distributed/config.py), and a
    ``--cluster slurm`` run then printed a dozen lines of its scheduler's life before its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] in OUR_PACKAGES


class _OneLineForOthers(logging.Formatter):
    """Another library's record as one line, naming it, without its traceback (``-v`` shows
    it all): a lost Dask scheduler otherwise ended a run with distributed's traceback of its
    client's reconnection above our own one-line error."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name.split(".")[0] in OUR_PACKAGES:
            return super().format(record)
        lines = record.getMessage().strip().splitlines()
        text = lines[0] if lines else ""
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            first = (str(exc).strip().splitlines() or [""])[0]
            detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            text = f"{text} ({detail})" if text else detail
        return f"{record.levelname}: {record.name}: {text}"


@contextmanager
def cli_logging(
    verbose: bool,
    quiet: bool,
    *,
    quiet_level: int = logging.WARNING,
    fmt: str = "%(levelname)s: %(message)s",
    log_file: str | None = None,
) -> Iterator[None]:
    """Log to stderr while the block runs: INFO (DEBUG with ``verbose``, ``quiet_level`` with
    ``quiet``) for our packages, WARNING for everyone else (DEBUG for all with ``verbose``).

    ``log_file`` also keeps a DEBUG log of our packages (with times) in that file, while stderr
    keeps its level: the file is for after the fact, the terminal for now.
    """
    level = logging.DEBUG if verbose else quiet_level if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s") if verbose
                         else _OneLineForOthers(fmt))
    if not verbose:
        handler.addFilter(_OursOrWarnings())
    extra: list[logging.Handler] = []
    if log_file:
        handler.setLevel(level if not verbose else logging.DEBUG)
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
        )
        if not verbose:
            to_file.addFilter(_OursOrWarnings())
        extra.append(to_file)
    root = logging.getLogger()
    ours = [logging.getLogger(name) for name in OUR_PACKAGES]
    saved = (root.level, [lg.level for lg in ours])
    root.addHandler(handler)
    for h in extra:
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for lg in ours:
        lg.setLevel(logging.DEBUG if log_file else level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for h in extra:
            root.removeHandler(h)
            h.close()
        root.setLevel(saved[0])
        for lg, lv in zip(ours, saved[1], strict=True):
            lg.setLevel(lv)

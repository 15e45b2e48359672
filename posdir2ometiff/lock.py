"""One run per output folder: an advisory lock file that names its holder.

Two converters (or two pushes) on one OUT would race: each writes the same OME-TIFFs and the
manifest, and one run's clean-up could delete the other's finished file. So a run takes
``OUT/.posdir2ometiff.lock`` first and a second run refuses (or waits, with ``wait_s``) with one
line naming the holder's pid, host and start time.

The lock is ``fcntl.flock`` on that file, as the ``filelock`` package takes it
(tox-dev/filelock ``src/filelock/_unix.py``, ``UnixFileLock._acquire``: ``LOCK_EX | LOCK_NB``): the
kernel releases it when the holder dies, however it dies (SIGKILL included), so a lock is never
stale in fact. The file's *content* (pid, host, time) can outlive its holder; a run that finds such
a file with no lock on it says so ("stale lock of pid N") and takes it over. Worker processes
forked while the lock is held share it, so the lock stays taken while any of them still writes.
A clean release removes the file (so a finished OUT holds only outputs); a file found with content
and no lock on it was therefore left by a killed run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

LOCK_NAME = ".posdir2ometiff.lock"
#: sysexits.h EX_TEMPFAIL: "temporary failure; the user is invited to retry" (the folder is busy).
EXIT_LOCKED = 75


class LockedError(RuntimeError):
    """Another live run holds the folder's lock; the message names it."""

    exit_code = EXIT_LOCKED


class FolderLock:
    """``with FolderLock(out, "posdir2ometiff convert"):`` — exclusive use of ``out``.

    ``wait_s`` > 0 waits up to that many seconds for the holder to finish before refusing.
    """

    def __init__(self, folder: Path | str, purpose: str, wait_s: float = 0.0) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.purpose = purpose
        self.wait_s = wait_s
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + max(self.wait_s, 0.0)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = _describe(_read_holder(fd))
                    os.close(fd)
                    raise LockedError(
                        f"{self.folder}: in use by {holder}; wait for it to finish "
                        f"(the lock is {self.path})"
                    ) from None
                os.close(fd)
                time.sleep(0.2)
                continue
            if _same_file(fd, self.path):
                break
            # The holder released and removed the file between our open and our flock: the lock
            # we hold is on a file nobody else will open. Start again on the current one.
            os.close(fd)
        previous = _read_holder(fd)
        if previous.get("pid") and not _alive(previous):
            logger.info("%s: stale lock of %s taken over", self.path, _describe(previous))
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the file, then unlock. Removing while still locked is safe because a waiting
        run checks, once it holds the lock, that its file is still the one at the path."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            if _same_file(fd, self.path):
                self.path.unlink()
        os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_holder(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(holder: dict) -> bool:
    """Whether the recorded pid still runs on this host (unknowable for another host: assume so)."""
    if holder.get("host") not in (None, socket.gethostname()):
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except (ValueError, TypeError, KeyError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another run"
    where = f" on {holder['host']}" if holder.get("host") else ""
    since = f" since {holder['since']}" if holder.get("since") else ""
    what = holder.get("purpose") or "a run"
    return f"{what} (pid {holder['pid']}{where}{since})"


__all__ = ["EXIT_LOCKED", "LOCK_NAME", "FolderLock", "LockedError"]

"""Files that are complete or absent under their final name, even on a full disk or a crash.

Every file the tools write (OME-TIFFs, ``experiment.h5``, ``manifest.json``, reports) goes through
:func:`atomic_path`: the content is written to a temporary file in the same folder with a name
unique to this process and call (``.pos001.ome.tiff.<pid>-<random>.partial``), flushed and
``fsync``-ed, renamed over the final name with ``os.replace`` and the folder fsync-ed — the
sequence SQLite and git use so that a power cut leaves the old or the new file, never a mix
(sqlite.org "Atomic Commit In SQLite"; git ``lockfile.c``: commit_lock_file → rename). A
write error (ENOSPC on a full disk, EIO) is re-raised naming the *final* file, and the temporary
is removed.

Unique names matter: with a fixed ``pos001.ome.tiff.partial``, a second run's clean-up deleted the
first run's file in the middle of its write. A run that was killed leaves its temporaries behind;
:func:`remove_stale_temporaries` (called by the next run, under the folder's lock) deletes those
whose writer no longer runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".partial"
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[0-9a-f]{8}\.partial$")


class AtomicWriteError(OSError):
    """Writing a file failed (disk full, I/O error); the message names the final file."""


def _host_tag() -> str:
    """Eight hex digits naming this host, so a pid from another machine sharing OUT is not
    taken for one of ours."""
    import hashlib

    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_path_for(path: Path) -> Path:
    """A temporary name next to ``path``, unique to this process and this call; hidden (dot)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{_host_tag()}-{secrets.token_hex(4)}"
                          f"{TEMP_SUFFIX}")


def fsync_path(path: Path) -> None:
    """fsync a file or folder by name (a folder's fsync makes a rename in it durable)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """``with atomic_path(final) as tmp: write(tmp)`` — ``final`` appears only when complete.

    The caller writes and *closes* ``tmp`` inside the block (closing is where HDF5 and buffered
    writers flush, and where a full disk often shows). On leaving the block the temporary is
    fsync-ed and renamed; on any error it is removed, and an ``OSError`` is re-raised as
    :class:`AtomicWriteError` naming ``final``.
    """
    final = Path(path)
    tmp = temp_path_for(final)
    try:
        yield tmp
        if not tmp.exists():
            raise AtomicWriteError(f"{final}: nothing was written")
        commit_temporary(tmp, final)
    except OSError as exc:
        _discard(tmp)
        raise write_error(exc, final) from exc
    except BaseException:
        _discard(tmp)
        raise


def commit_temporary(tmp: Path, final: Path) -> None:
    """fsync the finished temporary, rename it over ``final``, fsync the folder."""
    fsync_path(tmp)
    os.replace(tmp, final)
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on a folder
        fsync_path(Path(final).parent)


def write_error(exc: OSError, final: Path) -> AtomicWriteError:
    """``exc`` as an :class:`AtomicWriteError` whose message names the final file (a full disk
    otherwise reports a temporary name, or no name at all)."""
    if isinstance(exc, AtomicWriteError):
        return exc
    reason = exc.strerror or str(exc) or type(exc).__name__
    return AtomicWriteError(exc.errno, f"{final}: cannot be written ({reason})")


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    final = Path(path)
    with atomic_path(final) as tmp, open(tmp, "xb") as fh:
        fh.write(data)
        fh.flush()
    return final


def write_text_atomic(path: Path | str, text: str) -> Path:
    """UTF-8 text, atomically. Lone surrogates (file names that were not UTF-8, kept by
    ``os.fsdecode``) are written as their original bytes, not refused."""
    return write_bytes_atomic(path, text.encode("utf-8", "surrogateescape"))


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


def _writer_alive(pid: int, host: str) -> bool:
    if host != _host_tag():
        return True  # another machine's process: not ours to judge
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Delete the temporaries in ``folder`` left by writers that no longer run; return them.

    Also removes other ``*.partial`` files (the writer's ``pos001.ome.tiff.<random>.partial``,
    earlier versions' fixed names): call this only while holding the folder's lock, so no live
    run can be writing them.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.endswith(TEMP_SUFFIX) or not entry.is_file() or entry.is_symlink():
            continue
        m = _TEMP_RE.match(name)
        if m and _writer_alive(int(m["pid"]), m["host"]):
            continue
        try:
            entry.unlink()
        except OSError as exc:
            logger.warning("%s: cannot remove a temporary left by a killed run (%s)", entry, exc)
            continue
        removed.append(entry)
    if removed:
        logger.info("%s: removed %d temporary file(s) left by an interrupted run: %s",
                    folder, len(removed), ", ".join(p.name for p in removed[:5]))
    return removed


__all__ = [
    "AtomicWriteError",
    "atomic_path",
    "commit_temporary",
    "fsync_path",
    "remove_stale_temporaries",
    "temp_path_for",
    "write_bytes_atomic",
    "write_error",
    "write_text_atomic",
]

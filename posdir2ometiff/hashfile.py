"""A file that is hashed while it is written, so a finished output is never read back for its SHA-1.

A TIFF writer does not write front to back: tifffile (``TiffWriter.write`` in tifffile.py) skips
each IFD, writes the tiles, then seeks back to fill in the IFD, and on the next page seeks back
once more to patch the previous IFD's next-IFD offset and the SubIFDs pointers of the current
plane. So the bytes of the most recent region are not final yet. :class:`HashingFile` keeps the
not-yet-final tail in memory, where tifffile's seeks and patches land, and only what lies before
a *checkpoint* the caller sets once a region can no longer change (the writer: the end of the
plane before the last one) becomes final. Memory is therefore about two planes' compressed bytes
(plus a few planes queued for the disk), whatever the file size.

Final bytes are fed to the hash and written to the file, in order, in one ``pwritev`` per plane.
With ``background`` one helper thread does this, so the converting thread makes no system call
per write: measured with two decoding threads, its seeks and small writes each gave the GIL away
and cost 0.5 ms to get it back, a quarter of a 300-plane position's time. Without it the
converting thread does it itself: the choice for a one-thread position where every core already
converts a position (executors.wants_io_helper).

Every :data:`SYNC_EVERY` bytes a thread of its own (:class:`Syncer`) calls ``fdatasync``, so the
final ``fsync`` before the rename (atomic.py) waits for the last few megabytes, not the whole file,
and neither writer waits for the disk in between: measured on a 300-plane position (100 MB), the
``fdatasync`` calls the helper made itself blocked it 0.21-0.24 s, long enough to fill its queue
and stop the converting thread.

Nor does it copy: the tail is a list of the written buffers themselves. A ``bytes`` object (what
the tile compressor returns, and most of a file) is immutable, so it is kept as it is; anything
else (a NumPy array's memory, which its owner may reuse) is copied once. Only a chunk that a later
write patches is copied, into a ``bytearray`` (those are IFDs: a few hundred bytes). Measured on
a 300-plane position, the two copies of every byte that a ``bytearray`` tail made (append, then
cut off the final part) cost the converting thread 0.15 s of its 1.3 s, holding the GIL. A disk
error surfaces at the next checkpoint or at :meth:`HashingFile.close`.

Should a write ever land in bytes already final (another tifffile version, another layout), it
is written to the file where it belongs, the hash is marked stale and :meth:`HashingFile.sha1`
falls back to reading the file back: a slower answer, never a wrong one.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import logging
import os
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from posdir2ometiff.manifest import sha1_file

logger = logging.getLogger(__name__)

#: Bytes written before the next background ``fdatasync`` starts (0: none). Each call is also a
#: disk cache flush; 8 MB leaves the final ``fsync`` about 15 ms on a disk writing 500 MB/s.
SYNC_EVERY = 8 << 20
#: Final chunks queued for the helper thread before the writer waits for it (a slow disk).
MAX_QUEUED = 4
#: Buffers per ``pwritev`` call (POSIX guarantees at least 16; Linux allows 1024).
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16
try:
    IOV_MAX = max(16, int(IOV_MAX))
except (TypeError, ValueError):  # sysconf returned -1 or None: no stated limit
    IOV_MAX = 16


def write_all(fd: int, buffers: Sequence[bytes | bytearray | memoryview], offset: int) -> None:
    """Write ``buffers`` back to back at ``offset`` (``pwritev``: one system call for many
    buffers, no joined copy; short writes continued)."""
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    if not hasattr(os, "pwritev"):  # Windows
        for view in views:
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        return
    while views:
        n = os.pwritev(fd, views[:IOV_MAX], offset)
        offset += n
        while n:  # drop what was written, keep the rest of a partly written buffer
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0], n = views[0][n:], 0


class Syncer:
    """``fdatasync`` of a file being written, in a thread of its own, so writing never waits for it.

    :meth:`wrote` counts the bytes written; once ``every`` more have come since the last call
    started, the next one is due, and starts as soon as the running one (if any) returns. The
    writers go on meanwhile: Linux lets other threads ``pwrite`` a file while one is in
    ``fdatasync`` on it, which then flushes at least what was written before it began. (Only
    one call runs or waits at a time, and the thread is started at the first one: a small file
    costs no thread.) This is not what makes the file durable: the ``fsync`` before the rename
    does (atomic.py); it leaves that one little to wait for. An error (``EIO``, ``ENOSPC`` on a
    filesystem that reports it only then) is raised at the next :meth:`wrote` or at
    :meth:`close`.
    """

    def __init__(self, fd: int, every: int) -> None:
        self._fd = fd
        self._every = every
        self._pending = 0  # bytes written since the last call was asked for
        self._due = False
        self._closing = False
        self._error: OSError | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def wrote(self, size: int) -> None:
        """``size`` more bytes were written (called by one writing thread at a time)."""
        if self._error is not None:
            raise self._error
        if not self._every:
            return
        self._pending += size
        if self._pending < self._every:
            return
        with self._cond:
            if self._due:  # the next call is already waiting for the running one
                return
            self._pending = 0
            self._due = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fdatasync", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due and not self._closing:
                    self._cond.wait()
                if not self._due:  # closing, nothing left to start
                    return
                self._due = False
            try:
                # macOS has no fdatasync; fsync flushes the same data (and the metadata too).
                getattr(os, "fdatasync", os.fsync)(self._fd)
            except OSError as exc:
                self._error = exc
                return

    def close(self) -> None:
        """Wait for the running call (the file descriptor is closed after this); raise its error."""
        with self._cond:
            self._closing = True
            self._due = False  # a call not yet started is not needed: the final fsync follows
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error


class HashingFile(io.RawIOBase):
    """Binary write-only file whose SHA-1 is computed from the writes themselves."""

    def __init__(self, path: Path, sync_every: int = SYNC_EVERY, *, background: bool = True
                 ) -> None:
        super().__init__()
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        self._hash = hashlib.sha1()
        self._base = 0  # bytes before this offset are final (hashed or queued to be)
        # File content from _base to the end written so far: the written buffers, back to back
        # (_starts[i] is where _chunks[i] begins in the file).
        self._chunks: list[bytes | bytearray | memoryview] = []
        self._starts: list[int] = []
        self._pos = 0
        self._end = 0  # size of the file
        self._checkpoint = 0
        self._syncer = Syncer(self._fd, sync_every)
        self._helper = (ThreadPoolExecutor(1, thread_name_prefix="hashwrite") if background
                        else None)
        self._queued: deque[Future[None]] = deque()
        #: True when a write touched final bytes; sha1() then reads the file back.
        self.stale = False

    # io.RawIOBase interface (no fileno(): numpy's tofile must come through write()).
    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._pos = offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self._end + offset
        return self._pos

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        pos = self._pos
        whole = type(data) is bytes  # immutable: kept as it is, no copy
        if pos < self._base:  # into final bytes: on disk where it belongs, and no hash from writes
            if not self.stale:
                logger.debug("%s: write at %d into final bytes; will re-read", self.path, pos)
            self.stale = True
            self._drain()
            below = min(n, self._base - pos)
            os.pwrite(self._fd, view[:below], pos)
            view, pos, whole = view[below:], pos + below, False
        if len(view):
            if pos < self._end:  # a patch (tifffile filling in an IFD): copy what it touches
                view, pos, whole = self._patch(pos, view), self._end, False
            if len(view):
                if pos > self._end:  # a seek past the end: zeros in between
                    self._append(bytes(pos - self._end))
                self._append(data if whole else bytes(view))
        self._pos += n  # (an empty write past the end does not extend the file)
        return n

    def _append(self, chunk: bytes) -> None:
        self._starts.append(self._end if not self._chunks else
                            self._starts[-1] + len(self._chunks[-1]))
        self._chunks.append(chunk)
        self._end = self._starts[-1] + len(chunk)

    def _patch(self, pos: int, view: memoryview) -> memoryview:
        """Overwrite the tail's bytes from ``pos`` with ``view``; return what lies past the end."""
        i = bisect.bisect_right(self._starts, pos) - 1
        while len(view) and i < len(self._chunks):
            chunk = self._chunks[i]
            at = pos - self._starts[i]
            k = min(len(chunk) - at, len(view))
            if not isinstance(chunk, bytearray):  # bytes, or a slice of a settled chunk
                chunk = self._chunks[i] = bytearray(chunk)
            chunk[at : at + k] = view[:k]
            view, pos, i = view[k:], pos + k, i + 1
        return view

    def truncate(self, size: int | None = None) -> int:
        raise io.UnsupportedOperation("truncate")

    def checkpoint(self) -> None:
        """Mark the current end of file; the bytes before the *previous* mark become final.

        tifffile patches at most one page back, so everything before the start of the previous
        plane is final once the current plane is complete.
        """
        self._settle(self._checkpoint)
        self._checkpoint = self._end

    def _settle(self, upto: int) -> None:
        """Hand the bytes before ``upto`` to the helper thread (hash, then write, in order)."""
        if upto <= self._base:
            return
        k = bisect.bisect_right(self._starts, upto - 1) - 1  # the chunk holding byte upto - 1
        final = self._chunks[:k]
        last = memoryview(self._chunks[k]).cast("B")
        cut = upto - self._starts[k]
        if cut == len(last):  # upto falls on a chunk boundary
            final.append(self._chunks[k])
            k += 1
        else:  # a straddling chunk: its head is final, its tail stays (a view; patched = copied)
            final.append(last[:cut])
            self._chunks[k], self._starts[k] = last[cut:], upto
        del self._chunks[:k], self._starts[:k]
        offset, self._base = self._base, upto
        if self._helper is None:  # in this thread; a disk error surfaces here
            self._commit(final, offset)
            return
        while self._queued and self._queued[0].done():
            self._queued.popleft().result()  # a disk error surfaces here
        if len(self._queued) >= MAX_QUEUED:  # the disk is behind: wait, bounding memory
            self._queued.popleft().result()
        self._queued.append(self._helper.submit(self._commit, final, offset))

    def _commit(self, chunks: list[bytes | bytearray | memoryview], offset: int) -> None:
        """Hash and write final chunks (they come in file order), in the helper thread if any."""
        size = 0
        for chunk in chunks:
            if not self.stale:
                self._hash.update(chunk)
            size += len(chunk)
        write_all(self._fd, chunks, offset)
        self._syncer.wrote(size)  # raises the error of an earlier fdatasync

    def _drain(self) -> None:
        """Wait for every queued chunk (and raise the first disk error)."""
        while self._queued:
            self._queued.popleft().result()

    def close(self) -> None:
        """Write the rest, stop the threads, close the descriptor; raise the first error.

        Closed even when a step fails: ``IOBase.__del__`` calls ``close`` again, and a second
        ``os.close`` of the number would close whatever file has been given it since."""
        if self.closed:
            return
        with contextlib.ExitStack() as steps:  # run last to first, each whatever came before
            steps.callback(super().close)
            steps.callback(os.close, self._fd)
            steps.callback(self._syncer.close)  # waits for a running fdatasync; raises its error
            if self._helper is not None:
                steps.callback(self._helper.shutdown, wait=True)
            self._settle(self._end)  # the rest is final now
            self._drain()

    def sha1(self) -> str:
        """SHA-1 of the whole file; call after :meth:`close`."""
        if self.stale:
            return sha1_file(self.path)
        return self._hash.hexdigest()

    @property
    def size(self) -> int:
        """Bytes written (the file's size)."""
        return self._end

"""A file that is hashed while it is written, so a finished output is never read back for its SHA-1.

A TIFF writer does not write front to back: tifffile (``TiffWriter.write`` in tifffile.py) skips
each IFD, writes the tiles, then seeks back to fill in the IFD, and on the next page seeks back
once more to patch the previous IFD's next-IFD offset and the SubIFDs pointers of the current
plane. So the bytes of the most recent region are not final yet. :class:`HashingFile` keeps the
not-yet-final tail in memory, where tifffile's seeks and patches land, and only what lies before
a *checkpoint* the caller sets once a region can no longer change (the writer: the end of the
plane before the last one) becomes final. Memory is therefore about two planes' compressed bytes
(plus a few planes queued for the disk), whatever the file size.

Final bytes go to one helper thread that feeds them to the hash and writes them to the file, in
order, in one sequential write per plane, with an ``fdatasync`` every :data:`SYNC_EVERY` bytes
(the final ``fsync`` before the rename, atomic.py, then waits for the last few megabytes instead
of the whole file). The converting thread therefore makes no system call per write: measured with
two decoding threads, its seeks and small writes each gave the GIL away and cost 0.5 ms to get
it back, a quarter of a 300-plane position's time. A disk error surfaces at the next checkpoint
or at :meth:`HashingFile.close`.

Should a write ever land in bytes already final (another tifffile version, another layout), it
is written to the file where it belongs, the hash is marked stale and :meth:`HashingFile.sha1`
falls back to reading the file back: a slower answer, never a wrong one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from posdir2ometiff.manifest import sha1_file

logger = logging.getLogger(__name__)

#: Bytes written between two background ``fdatasync`` calls (0: none).
SYNC_EVERY = 16 << 20
#: Final chunks queued for the helper thread before the writer waits for it (a slow disk).
MAX_QUEUED = 4


class HashingFile(io.RawIOBase):
    """Binary write-only file whose SHA-1 is computed from the writes themselves."""

    def __init__(self, path: Path, sync_every: int = SYNC_EVERY) -> None:
        super().__init__()
        self._sync_every = sync_every
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        self._hash = hashlib.sha1()
        self._base = 0  # bytes before this offset are final (hashed or queued to be)
        self._tail = bytearray()  # file content from _base to the end written so far
        self._pos = 0
        self._end = 0  # size of the file
        self._checkpoint = 0
        self._unsynced = 0  # bytes written by the helper since its last fdatasync
        self._helper = ThreadPoolExecutor(1, thread_name_prefix="hashwrite")
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
        start = self._pos - self._base
        if start < 0:  # into final bytes: on disk where it belongs, and no hash from writes
            if not self.stale:
                logger.debug("%s: write at %d into final bytes; will re-read", self.path,
                             self._pos)
            self.stale = True
            self._drain()
            below = min(n, -start)
            os.pwrite(self._fd, view[:below], self._pos)
            view, start = view[below:], 0
        if len(view):
            end = start + len(view)
            if start == len(self._tail):  # appending, the usual case: one copy
                self._tail += view
            else:
                if end > len(self._tail):  # a seek past the end: zeros in between
                    self._tail.extend(bytes(end - len(self._tail)))
                self._tail[start:end] = view
        self._pos += n
        self._end = max(self._end, self._pos)
        return n

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
        n = upto - self._base
        chunk = bytes(memoryview(self._tail)[:n])
        del self._tail[:n]
        offset, self._base = self._base, upto
        while self._queued and self._queued[0].done():
            self._queued.popleft().result()  # a disk error surfaces here
        if len(self._queued) >= MAX_QUEUED:  # the disk is behind: wait, bounding memory
            self._queued.popleft().result()
        self._queued.append(self._helper.submit(self._commit, chunk, offset))

    def _commit(self, chunk: bytes, offset: int) -> None:
        """In the helper thread: hash and write one final chunk (chunks come in file order)."""
        if not self.stale:
            self._hash.update(chunk)
        view = memoryview(chunk)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written
        self._unsynced += len(chunk)
        if self._sync_every and self._unsynced >= self._sync_every:
            self._unsynced = 0
            os.fdatasync(self._fd)  # the disk writes while the converter goes on

    def _drain(self) -> None:
        """Wait for every queued chunk (and raise the first disk error)."""
        while self._queued:
            self._queued.popleft().result()

    def close(self) -> None:
        if not self.closed:
            try:
                self._settle(self._end)  # the rest is final now
                self._drain()
            finally:
                self._helper.shutdown(wait=True)
                os.close(self._fd)
        super().close()

    def sha1(self) -> str:
        """SHA-1 of the whole file; call after :meth:`close`."""
        if self.stale:
            return sha1_file(self.path)
        return self._hash.hexdigest()

    @property
    def size(self) -> int:
        """Bytes written (the file's size)."""
        return self._end

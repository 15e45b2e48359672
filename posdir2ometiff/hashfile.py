"""A file that is hashed while it is written, so a finished output is never read back for its SHA-1.

A TIFF writer does not write front to back: tifffile (``TiffWriter.write`` in tifffile.py) skips
each IFD, writes the tiles, then seeks back to fill in the IFD, and on the next page seeks back
once more to patch the previous IFD's next-IFD offset and the SubIFDs pointers of the current
plane. So the bytes of the most recent region are not final yet. :class:`HashingFile` keeps the
not-yet-final tail in memory and feeds the hash only what lies before a *checkpoint* the caller
sets once a region can no longer change (the writer: the end of the plane before the last one).
Memory is therefore about two planes' compressed bytes, whatever the file size.

While it is written, the file is also handed to the kernel for writing out in the background
(``fdatasync`` in a helper thread every :data:`SYNC_EVERY` bytes): the final ``fsync`` before the
rename (atomic.py) then waits for the last few megabytes instead of the whole file, which took
a tenth of a 300-plane position's conversion. The disk writes while we decode and compress.

Should a write ever land in already-hashed bytes (another tifffile version, another layout), the
hash is marked stale and :meth:`HashingFile.sha1` falls back to reading the file back: a slower
answer, never a wrong one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from posdir2ometiff.manifest import sha1_file

logger = logging.getLogger(__name__)

#: Bytes written between two background ``fdatasync`` calls (0: none).
SYNC_EVERY = 16 << 20


class HashingFile(io.RawIOBase):
    """Binary write-only file whose SHA-1 is computed from the writes themselves."""

    def __init__(self, path: Path, sync_every: int = SYNC_EVERY) -> None:
        super().__init__()
        self._sync_every = sync_every
        self._synced = 0  # bytes handed to the background fdatasync
        self._syncer: ThreadPoolExecutor | None = None
        self._sync: Future[None] | None = None
        self.path = Path(path)
        self._fh = open(self.path, "w+b")  # noqa: SIM115 - closed in close()
        self._hash = hashlib.sha1()
        self._base = 0  # bytes before this offset are hashed and final
        self._tail = bytearray()  # file content from _base to the end written so far
        self._pos = 0
        self._end = 0  # size of the file
        self._checkpoint = 0
        #: True when a write touched hashed bytes; sha1() then reads the file back.
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
        self._fh.seek(self._pos)
        self._fh.write(view)
        start = self._pos - self._base
        if start < 0:
            if not self.stale:
                logger.debug("%s: write at %d into hashed bytes; will re-read", self.path, self._pos)
            self.stale = True
        elif not self.stale:
            end = start + n
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
        if self._sync_every and self._end - self._synced >= self._sync_every:
            self._start_sync()

    def _start_sync(self) -> None:
        """Let the kernel write what we have while we go on (one fdatasync at a time)."""
        if self._sync is not None:
            if not self._sync.done():
                return
            self._sync.result()  # an I/O error of the disk surfaces here, naming no temp
        self._fh.flush()
        self._synced = self._end
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(1, thread_name_prefix="writeback")
        self._sync = self._syncer.submit(os.fdatasync, self._fh.fileno())

    def _settle(self, upto: int) -> None:
        if self.stale or upto <= self._base:
            return
        n = upto - self._base
        self._hash.update(memoryview(self._tail)[:n])
        del self._tail[:n]
        self._base = upto

    def close(self) -> None:
        if not self.closed:
            try:
                if self._syncer is not None:
                    self._syncer.shutdown(wait=True)
                    if self._sync is not None:
                        self._sync.result()
            finally:
                self._fh.close()
        super().close()

    def sha1(self) -> str:
        """SHA-1 of the whole file; call after :meth:`close`."""
        if self.stale:
            return sha1_file(self.path)
        digest = self._hash.copy()
        digest.update(self._tail)
        return digest.hexdigest()

    @property
    def size(self) -> int:
        """Bytes written (the file's size)."""
        return self._end

"""``RawFileStore`` for the OMERO stand-in: the bytes of OriginalFile objects.

OMERO keeps every OriginalFile's content in its binary repository and serves it through a
stateful RawFileStore (``setFileId``, ``read``/``write`` at offsets, ``save`` which recomputes
size and checksum). The stand-in keeps the content at ``<store>/files/originals/<id>``; the same
servant class is the uploader the managed repository hands out during an import
(``ImportProcess.getUploader``) and what OMERO.tables uses to refresh a table's file object.

Writes are unbuffered (straight to the OS), so what a client wrote before the server was
killed is still there after a restart — the resumable upload the pusher relies on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any, BinaryIO

import Ice
import omero
import omero.api
import omero.model
from omero.rtypes import rlong, rstring

from .server import ServerContext, StatefulService, servant

log = logging.getLogger(__name__)

#: The checksum OMERO uses by default and the pusher sends (``omero.model.enums``).
SHA1 = "SHA1-160"


def original_path(ctx: ServerContext, file_id: int) -> Path:
    """Where the content of OriginalFile *file_id* lives in the store."""
    return ctx.store.blob_dir("originals") / str(file_id)


def sha1_of(path: Path, block: int = 1 << 20) -> str:
    """Hex SHA-1 of a file (what ``omero.client.sha1`` computes on the client side)."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def refresh_file_object(
    ctx: ServerContext, session: Any, file_id: int, sha1: str | None = None
) -> Any:
    """Set an OriginalFile's size and SHA-1 from its stored content; returns it saved.

    What OMERO's ``RawFileStore.save`` does; also used after an import (which passes the
    *sha1* it has just verified, so a large file is not hashed twice) and when a table closes.
    """
    ofile = ctx.store.load("OriginalFile", file_id, fetch=("hasher",))
    if ofile is None:
        raise omero.ValidationException(None, None, f"OriginalFile:{file_id} does not exist")
    path = original_path(ctx, file_id)
    size = path.stat().st_size if path.exists() else 0
    ofile.setSize(rlong(size))
    if sha1 is None:
        sha1 = sha1_of(path) if path.exists() else hashlib.sha1().hexdigest()
    ofile.setHash(rstring(sha1))
    hasher = ctx.store.enum("ChecksumAlgorithm", SHA1)
    if hasher is not None:
        ofile.setHasher(omero.model.ChecksumAlgorithmI(hasher.getId().getValue(), False))
    session.save(ofile)
    return ctx.store.load("OriginalFile", file_id, fetch=("hasher",))


@servant
class RawFileStoreI(StatefulService, omero.api.RawFileStore):
    """A stateful reader/writer of one OriginalFile's bytes.

    ``file_id`` may be given at creation (the import's uploader) or later by ``setFileId``.
    ``refresh_on_close`` False for the uploader: ``verifyUpload`` hashes the file once.
    """

    def __init__(
        self,
        ctx: ServerContext,
        session: Any,
        file_id: int | None = None,
        refresh_on_close: bool = True,
    ) -> None:
        self.ctx = ctx
        self.session = session
        # an import's uploader leaves size and checksum to verifyUpload (no second hash)
        self.refresh_on_close = refresh_on_close
        self.file_id: int | None = None
        self.fh: BinaryIO | None = None
        self.dirty = False
        self.lock = threading.RLock()
        if file_id is not None:
            self._open(file_id)

    def _open(self, file_id: int) -> None:
        if not self.ctx.store.exists("OriginalFile", file_id):
            raise omero.ValidationException(None, None, f"OriginalFile:{file_id} does not exist")
        path = original_path(self.ctx, file_id)
        if not path.exists():
            path.touch()
        self._release()
        self.fh = open(path, "r+b", buffering=0)  # noqa: SIM115 - held until close()
        self.file_id = file_id

    def _handle(self) -> BinaryIO:
        if self.fh is None:
            raise omero.ApiUsageException(None, None, "setFileId must be called first")
        return self.fh

    def setFileId(self, fileId: int, current: Ice.Current | None = None) -> None:
        with self.lock:
            self._open(fileId)

    def getFileId(self, current: Ice.Current | None = None) -> Any:
        return None if self.file_id is None else rlong(self.file_id)

    def read(self, position: int, length: int, current: Ice.Current | None = None) -> bytes:
        if position < 0 or length < 0:
            raise omero.ApiUsageException(None, None, f"read({position}, {length})")
        with self.lock:
            fh = self._handle()
            return os.pread(fh.fileno(), length, position)

    def write(
        self, buf: bytes, position: int, length: int, current: Ice.Current | None = None
    ) -> None:
        if position < 0 or length < 0 or length > len(buf):
            raise omero.ApiUsageException(
                None, None, f"write of {len(buf)} bytes at {position} with length {length}"
            )
        with self.lock:
            fh = self._handle()
            if length:
                os.pwrite(fh.fileno(), bytes(buf[:length]), position)
            self.dirty = True

    def size(self, current: Ice.Current | None = None) -> int:
        with self.lock:
            return os.fstat(self._handle().fileno()).st_size

    def truncate(self, length: int, current: Ice.Current | None = None) -> bool:
        """Shorten the file to *length* bytes; False (as OMERO) if it is not longer than that."""
        with self.lock:
            fh = self._handle()
            if os.fstat(fh.fileno()).st_size <= length:
                return False
            os.ftruncate(fh.fileno(), length)
            self.dirty = True
            return True

    def exists(self, current: Ice.Current | None = None) -> bool:
        return self.file_id is not None and original_path(self.ctx, self.file_id).exists()

    def save(self, current: Ice.Current | None = None) -> Any:
        """Store size and SHA-1 of the content in the OriginalFile and return it."""
        with self.lock:
            self._handle()
            self.dirty = False
            return refresh_file_object(self.ctx, self.session, int(self.file_id or 0))

    def _release(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def close(self, current: Ice.Current | None = None) -> None:
        """Release the file; like OMERO, unsaved writes still update size and checksum."""
        with self.lock:
            if (
                self.fh is not None
                and self.dirty
                and self.file_id is not None
                and (self.refresh_on_close)
            ):
                refresh_file_object(self.ctx, self.session, self.file_id)
            self._release()
        if current is not None:
            self.ctx.remove_servant(current)



def register(ctx: ServerContext) -> None:
    """Plug RawFileStore (one servant per ``createRawFileStore()``) into the core."""
    ctx.register_service("RawFileStore", RawFileStoreI)

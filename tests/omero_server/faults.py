"""Fault injection: what the pusher must survive, switched on from the command line.

Why: "kill the server mid-push", "the connection drops after N tiles", "the server is slow" and
"OMERO.tables is not installed" are the failures users meet; tests need them on demand and
repeatable. One :class:`Faults` lives in the :class:`~tests.omero_server.server.ServerContext`;
servants consult it, nothing else changes behaviour.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import Ice

log = logging.getLogger(__name__)

#: The first Bio-Formats that decodes zstd-compressed TIFF (compression 50000).
ZSTD_BIOFORMATS = (7, 0)


@dataclass
class Faults:
    """Fault settings of one server process.

    drop_after_pixel_writes: after this many pixel writes (RawPixelsStore setPlane/setTile/...,
        counted server-wide) the client's connection is closed once — as a crashing or
        restarting server would. None: never.
    delay_ms: every API call (IQuery, IUpdate, ... and the data services that call
        :meth:`delay`) waits this long before answering.
    tables_enabled: False makes ``SharedResources.areTablesEnabled()`` answer False and
        ``newTable`` return None, as on a server without OMERO.tables.
    bioformats_version: the Bio-Formats the server pretends to run, e.g. (6, 10); below 7.0
        an import's pixel-data step fails on zstd-compressed TIFFs, as on OMERO before 5.6.9.
        None: a current one.
    import_step_ms: every step of a background import waits this long before it runs, so a
        test can catch an import still running (``ManagedRepository.listImports``).
    """

    drop_after_pixel_writes: int | None = None
    delay_ms: int = 0
    tables_enabled: bool = True
    bioformats_version: tuple[int, ...] | None = None
    import_step_ms: int = 0
    pixel_writes: int = 0
    dropped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def omero_version(self) -> str:
        """The OMERO.server release that shipped this Bio-Formats, as ``IConfig.getVersion`` says it.

        Why: clients (omero_push's ``imports.check_server_reads``) decide from the server's
        version whether it reads zstd TIFFs, so the version must agree with what the import
        then does. OMERO.server 5.6.9 (September 2023) is the first to ship Bio-Formats 7.0,
        taken as the first to decode TIFF compression 50000 (zstd); 5.6.8 shipped 6.14.0.
        Source: ome/omero-server ``build.gradle`` at v5.6.9 takes omero-common(-test) 5.6.3,
        which takes omero-model 5.6.12, whose ``build.gradle`` has ``ome:formats-gpl:7.0.0``
        (v5.6.8 → 5.6.2 → omero-model 5.6.11 → ``formats-gpl:6.14.0``).
        """
        if self.bioformats_version is not None and self.bioformats_version < ZSTD_BIOFORMATS:
            return "5.6.8-ice36-standin"
        return "5.6.9-ice36-standin"

    def import_step(self) -> None:
        """Sleep ``import_step_ms`` (called by the import worker before each step)."""
        if self.import_step_ms > 0:
            time.sleep(self.import_step_ms / 1000.0)

    def delay(self) -> None:
        """Sleep ``delay_ms`` (called by servants before they answer)."""
        if self.delay_ms > 0:
            time.sleep(self.delay_ms / 1000.0)

    def count_pixel_write(self, current: Any | None,
                          drop: Callable[[Any], None] | None = None) -> bool:
        """Count one pixel write; on the N-th, close the caller's connection and return True.

        The pixels servant calls this *before* storing the data, and when it returns True it
        raises instead of storing (the answer goes nowhere: the connection is gone), so the
        write is lost, as when a server dies, and the dispatch still finishes (an unanswered
        request would hold up the server's shutdown). The drop happens once per server
        process, so a retrying client can finish. *drop* replaces the default (closing the
        request's connection): behind Glacier2 that connection is the router's, shared by all
        clients, so the pixels service ends the client's router session instead; without it,
        the stand-in's router ends the connection's logins and then closes it
        (``session.RouterI.lose_connection``).
        """
        with self._lock:
            self.pixel_writes += 1
            limit = self.drop_after_pixel_writes
            hit = limit is not None and not self.dropped and self.pixel_writes > limit
            if hit:
                self.dropped = True
        if hit:
            log.warning("fault injection: dropping the connection after %d pixel writes", limit)
            (drop or self.drop_connection)(current)
        return hit

    @staticmethod
    def drop_connection(current: Any | None) -> None:
        """Forcefully close the connection a request came in on (Ice 3.6: ``close(True)``)."""
        con = getattr(current, "con", None)
        if con is None:
            return
        with contextlib.suppress(Ice.LocalException):  # already closed: nothing to do
            con.close(True)

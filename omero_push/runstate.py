"""The state one push carries through its steps, and the helpers every step shares.

Results (:class:`ImageResult`, :class:`PushResult`) survive reconnects within one push in a
:class:`RunState`; :func:`record` notes each image once.  :func:`guarded` turns OMERO's
SecurityViolation into :class:`~omero_push.errors.NoPermissionError` and lets everything else through
unchanged, so the reconnect loop still sees Ice errors.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omero_push.errors import NoPermissionError
from omero_push.ometiff import ImageMeta, PushItem
from omero_push.plan import PushPlan
from omero_push.progress import Progress
from omero_push.session import Session

log = logging.getLogger(__name__)


@dataclass
class ImageResult:
    """One OMERO image of the push and what happened to it."""

    source: Path
    series: int
    name: str
    image_id: int
    #: "created"; "resumed" (half-made by an earlier run: completed now in import mode, deleted and
    #: made again in pixels mode); "present"
    status: str
    annotations_created: int = 0


@dataclass
class PushResult:
    """What a push did: ids to use next, and counts for the summary."""

    plan: PushPlan
    mode: str
    dry_run: bool = False
    project_id: int | None = None
    dataset_id: int | None = None
    images: list[ImageResult] = field(default_factory=list)
    tags_created: list[str] = field(default_factory=list)
    tags_reused: list[str] = field(default_factory=list)
    dataset_annotations_created: int = 0
    tables_created: list[str] = field(default_factory=list)
    tables_present: list[str] = field(default_factory=list)
    tables_file_fallback: bool = False
    reconnects: int = 0

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self.images]

    @property
    def created_image_ids(self) -> list[int]:
        return [r.image_id for r in self.images if r.status != "present"]

    def summary(self) -> str:
        """A few lines for the user: where things went and what was created or reused."""
        if self.dry_run:
            return "dry run: nothing was sent"
        n_new = sum(r.status == "created" for r in self.images)
        n_res = sum(r.status == "resumed" for r in self.images)
        n_old = sum(r.status == "present" for r in self.images)
        where = f"Dataset:{self.dataset_id}"
        if self.project_id is not None:
            where = f"Project:{self.project_id} / {where}"
        lines = [
            f"{where} ({self.plan.dataset}): {len(self.images)} image(s) — "
            f"{n_new} new, {n_res} resumed, {n_old} already there"
        ]
        for r in self.images:
            lines.append(f"  Image:{r.image_id}  {r.name}  ({r.status})")
        ann = sum(r.annotations_created for r in self.images) + self.dataset_annotations_created
        tags = ""
        if self.tags_created or self.tags_reused:
            tags = f"; tags: {len(self.tags_created)} new, {len(self.tags_reused)} reused"
        lines.append(f"annotations created: {ann}{tags}")
        if self.tables_created or self.tables_present:
            lines.append(
                f"tables: {len(self.tables_created)} new ({', '.join(self.tables_created) or '-'}), "
                f"{len(self.tables_present)} already there"
            )
        if self.tables_file_fallback:
            lines.append(
                "tables: OMERO.tables is off on the server; the HDF5 file is attached instead"
            )
        if self.reconnects:
            lines.append(f"connection lost and re-established {self.reconnects} time(s)")
        for path, why in self.plan.skipped:
            lines.append(f"NOT pushed: {path}: {why}")
        return "\n".join(lines)


class LockedProgress:
    """Serialises progress reports from the upload threads."""

    def __init__(self, inner: Progress) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def start(self, total_bytes: int, total_images: int) -> None:
        with self._lock:
            self._inner.start(total_bytes, total_images)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._inner.advance(nbytes)

    def rewind(self, nbytes: int) -> None:
        with self._lock:
            self._inner.rewind(nbytes)

    def image_done(self, name: str, image_id: int | None, status: str) -> None:
        with self._lock:
            self._inner.image_done(name, image_id, status)

    def close(self) -> None:
        with self._lock:
            self._inner.close()


@dataclass
class RunState:
    """Survives reconnects within one push: results by (sha1, series) and resolved ids."""

    result: PushResult
    statuses: dict[tuple[str, int], ImageResult] = field(default_factory=dict)
    counted: set[tuple[str, int]] = field(default_factory=set)
    started: bool = False


def guarded(session: Session, fn: Any, what: str) -> Any:
    try:
        return fn()
    except Exception as exc:
        raise permission_or(exc, what) from None


def permission_or(exc: Exception, what: str) -> Exception:
    """SecurityViolation → NoPermissionError; anything else unchanged (retries see Ice errors)."""
    try:
        import omero
    except ImportError:  # pragma: no cover
        return exc
    if isinstance(exc, omero.SecurityViolation):
        return NoPermissionError(
            f"{what}: no permission ({getattr(exc, 'message', '') or 'SecurityViolation'})"
        )
    return exc


def note_tags(res: PushResult, texts: Sequence[str], created: Sequence[str]) -> None:
    for t in texts:
        if t in created and t not in res.tags_created:
            res.tags_created.append(t)
        elif t not in created and t not in res.tags_reused and t not in res.tags_created:
            res.tags_reused.append(t)


def record(
    state: RunState,
    item: PushItem,
    im: ImageMeta,
    iid: int,
    status: str,
    n_ann: int,
    progress: Progress,
) -> None:
    key = (item.sha1, im.index)
    prev = state.statuses.get(key)
    if prev is not None:
        # A retry after reconnecting found what this push made before the drop: keep "created",
        # but take the new id (pixels mode makes a half-made image again).
        prev.image_id = iid
        prev.annotations_created += n_ann
        return
    state.statuses[key] = ImageResult(item.path, im.index, im.name, iid, status, n_ann)
    if key not in state.counted:
        state.counted.add(key)
        progress.image_done(im.name, iid, status)


def in_parallel(jobs: list[Any], parallel: int) -> None:
    """Run ``jobs`` with up to ``parallel`` at once (in order when 1); the first error is raised.

    Pixels mode writes the next image while the server finishes this one's channels, statistics
    and annotations, so the connection is never idle between images.
    """
    if parallel <= 1 or len(jobs) <= 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="omero-push") as ex:
        futures = [ex.submit(job) for job in jobs]
        try:
            for fut in futures:
                fut.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise


@contextmanager
def bytes_counted(progress: Progress) -> Iterator[Callable[[int], None]]:
    """An ``on_bytes`` callback that advances ``progress``, for one file's or image's upload.

    If the block fails, the bytes it reported are taken back off the bar: a retry after
    reconnecting (or the user's re-run) sends them again, and the bar must not count them twice.
    """
    sent = 0

    def on_bytes(n: int) -> None:
        nonlocal sent
        sent += n
        progress.advance(n)

    try:
        yield on_bytes
    except BaseException:
        progress.rewind(sent)
        raise

"""The push: plan → session → upload (import or pixels) → annotate → provenance, repeatable.

:func:`push` is the Python API the CLI mirrors.  Its run is written to be repeated: every step looks
for what exists before creating anything, an image counts as done only once its receipt (the
provenance MapAnnotation, written last) is present, and an image left half-made by an interrupted
run (recognised by its "incomplete" description) is reused, not duplicated.  Because a repeat is
safe, a lost connection is handled by reconnecting with exponential backoff and simply running
again; the same holds for a user re-running the command after a crash.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omero_push import annotate, pixels, provenance, tables, upload
from omero_push.config import ConnectionSettings, Secret, resolve_settings
from omero_push.errors import InputError, NoPermissionError, PushError
from omero_push.plan import ImageMeta, PushItem, PushPlan, build_plan
from omero_push.progress import NullProgress, Progress
from omero_push.session import Session, open_session, translate, with_backoff
from posdir2ometiff import __version__

log = logging.getLogger(__name__)

MODES = ("import", "pixels")


@dataclass
class ImageResult:
    """One OMERO image of the push and what happened to it."""

    source: Path
    series: int
    name: str
    image_id: int
    status: str  # "created", "resumed" (half-made by an earlier run, completed now), "present"
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


def push(
    paths: Sequence[str | os.PathLike[str]],
    *,
    server: str | None = None,
    port: int | None = None,
    user: str | None = None,
    password: str | Secret | None = None,
    session_key: str | Secret | None = None,
    group: str | None = None,
    config: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    project: str | None = None,
    mode: str = "import",
    provenance_on: bool = True,
    dry_run: bool = False,
    convert: bool = False,
    convert_out: str | os.PathLike[str] | None = None,
    convert_options: dict[str, Any] | None = None,
    chunk_size: int = upload.DEFAULT_CHUNK,
    tile: tuple[int, int] | None = None,
    retries: int = 5,
    backoff_s: float = 1.0,
    keepalive_s: int = 60,
    progress: Progress | None = None,
    interactive: bool = False,
    parallel: int = 2,
) -> PushResult:
    """Push OME-TIFFs (or converter output folders, or raw experiments with ``convert``) to OMERO.

    ``dataset`` is a name (found or created, inside ``project`` when given) or ``Dataset:ID``.
    ``parallel`` files (import mode) or images (pixels mode) are in flight at once: the next one
    uploads while the server finishes the previous one.
    Returns a :class:`PushResult` with the dataset and image ids.  Raises subclasses of
    :class:`~omero_push.errors.PushError` only; the password never appears in them.
    """
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    progress = progress or NullProgress()
    settings: ConnectionSettings | None = None
    if not dry_run:
        # Before any conversion: a missing password should fail in a second, not after an hour.
        settings = resolve_settings(
            server=server,
            port=port,
            user=user,
            group=group,
            password=password,
            session_key=session_key,
            config=config,
            interactive=interactive,
        )
    tmp_out: Path | None = None
    try:
        if convert:
            if dry_run:
                plan = PushPlan(items=[], dataset=dataset or "?", project=project)
                for p in paths:
                    plan.skipped.append((Path(p), "would be converted first (--convert)"))
                return PushResult(plan=plan, mode=mode, dry_run=True)
            if convert_out is None:
                tmp_out = Path(tempfile.mkdtemp(prefix="omero_push-convert-"))
            paths = _convert_all(
                paths, Path(convert_out) if convert_out else tmp_out, convert_options
            )
        plan = build_plan(paths, dataset=dataset, project=project)
        if dry_run:
            return PushResult(plan=plan, mode=mode, dry_run=True)
        assert settings is not None
        return _execute(
            plan,
            settings,
            mode=mode,
            provenance_on=provenance_on,
            chunk_size=chunk_size,
            tile=tile,
            retries=retries,
            backoff_s=backoff_s,
            keepalive_s=keepalive_s,
            progress=progress,
            parallel=parallel,
        )
    finally:
        if tmp_out is not None:
            shutil.rmtree(tmp_out, ignore_errors=True)


def _convert_all(
    paths: Sequence[str | os.PathLike[str]], out: Path | None, options: dict[str, Any] | None
) -> list[Path]:
    """Convert each raw experiment folder with posdir2ometiff; returns the output folders."""
    try:
        from posdir2ometiff.convert import convert as convert_experiment
    except ImportError as exc:  # pragma: no cover - the converter ships with this package
        raise InputError(f"--convert needs posdir2ometiff.convert ({exc})") from None
    assert out is not None
    outs: list[Path] = []
    for i, p in enumerate(paths):
        src = Path(p)
        if not src.is_dir():
            raise InputError(f"{src}: --convert expects a raw experiment folder")
        dest = out if len(paths) == 1 else out / (src.name or f"experiment{i}")
        log.info("converting %s into %s", src, dest)
        try:
            result = convert_experiment(src, dest, **(options or {}))
        except (ValueError, OSError) as exc:  # ConversionError is a ValueError
            raise InputError(f"{src}: conversion failed: {exc}") from None
        for failed in getattr(result, "failed", []):
            log.warning("%s: position %s not converted: %s", src, failed.name, failed.error)
        outs.append(dest)
    return outs


class _LockedProgress:
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


# --- the run ------------------------------------------------------------------------------------


@dataclass
class _State:
    """Survives reconnects within one push: results by (sha1, series) and resolved ids."""

    result: PushResult
    statuses: dict[tuple[str, int], ImageResult] = field(default_factory=dict)
    counted: set[tuple[str, int]] = field(default_factory=set)
    started: bool = False


def _execute(
    plan: PushPlan,
    settings: ConnectionSettings,
    *,
    mode: str,
    provenance_on: bool,
    chunk_size: int,
    tile: tuple[int, int] | None,
    retries: int,
    backoff_s: float,
    keepalive_s: int,
    progress: Progress,
    parallel: int,
) -> PushResult:
    state = _State(result=PushResult(plan=plan, mode=mode))
    progress = _LockedProgress(progress)

    def attempt() -> None:
        with open_session(settings, keepalive_s=keepalive_s) as session:
            _run(session, plan, state, mode, provenance_on, chunk_size, tile, progress, parallel)

    def on_retry(n: int, exc: BaseException, delay: float) -> None:
        state.result.reconnects += 1
        log.warning(
            "connection lost (%s); reconnecting in %.0f s (attempt %d of %d)",
            exc.__class__.__name__,
            delay,
            n,
            retries,
        )

    try:
        with_backoff(attempt, retries=retries, base_delay_s=backoff_s, on_retry=on_retry)
    except PushError:
        raise
    except Exception as exc:
        raise translate(exc, f"push to {settings.describe()}") from None
    finally:
        progress.close()
    # Report images in plan order.
    order = {(i.sha1, m.index): n for n, (i, m) in enumerate(_pairs(plan))}
    state.result.images = sorted(
        state.statuses.values(), key=lambda r: order.get((_sha_of(plan, r), r.series), 0)
    )
    return state.result


def _pairs(plan: PushPlan) -> list[tuple[PushItem, ImageMeta]]:
    return [(item, im) for item in plan.items for im in item.images]


def _sha_of(plan: PushPlan, r: ImageResult) -> str:
    for item in plan.items:
        if item.path == r.source:
            return item.sha1
    return ""


def _run(
    session: Session,
    plan: PushPlan,
    state: _State,
    mode: str,
    provenance_on: bool,
    chunk_size: int,
    tile: tuple[int, int] | None,
    progress: Progress,
    parallel: int = 2,
) -> None:
    res = state.result
    try:
        project_id, dataset_id = _ensure_target(session, plan)
    except Exception as exc:
        raise _permission_or(exc, f"target {plan.dataset!r}") from None
    res.project_id, res.dataset_id = project_id, dataset_id

    # Dataset-level annotations: description and the experiment's tags.
    if plan.description:
        _guarded(
            session,
            lambda: annotate.set_description(session, "Dataset", dataset_id, plan.description),
            "dataset description",
        )
    if plan.tags:
        existing = annotate.linked_annotations(session, "Dataset", dataset_id)
        ids, created, links = _guarded(
            session,
            lambda: annotate.ensure_tags(session, "Dataset", dataset_id, plan.tags, existing),
            "dataset tags",
        )
        res.dataset_annotations_created += links
        _note_tags(res, plan.tags, created)

    if plan.kv_pairs:
        _aid, made = _guarded(
            session,
            lambda: annotate.ensure_map_annotation(
                session, "Dataset", dataset_id, plan.kv_pairs, annotate.KV_NS
            ),
            "dataset key-value pairs",
        )
        res.dataset_annotations_created += int(made)

    done = _find_receipts(session, dataset_id)
    todo_bytes = 0
    for item, im in _pairs(plan):
        if (item.sha1, im.index) not in done:
            todo_bytes += item.size if mode == "import" else im.nbytes
    if not state.started:
        progress.start(todo_bytes, plan.n_images)
        state.started = True

    to_import: list[PushItem] = []
    to_write: list[tuple[PushItem, ImageMeta]] = []
    for item in plan.items:
        missing = [im for im in item.images if (item.sha1, im.index) not in done]
        if not missing:
            for im in item.images:
                iid, desc = done[(item.sha1, im.index)]
                if desc is not None and desc.startswith(provenance.PENDING_PREFIX):
                    # Receipt written but the run stopped before the final description.
                    annotate.set_name_and_description(
                        session, "Image", iid, im.name, im.description
                    )
                _record(state, item, im, iid, "present", 0, progress)
            continue
        if mode == "import":
            to_import.append(item)
            continue
        to_write.extend((item, im) for im in missing)
        for im in item.images:
            if (item.sha1, im.index) in done:
                _record(state, item, im, done[(item.sha1, im.index)][0], "present", 0, progress)
    _in_parallel(
        [
            (
                lambda item=item, im=im: _push_pixels_image(
                    session, item, im, dataset_id, state, provenance_on, tile, progress
                )
            )
            for item, im in to_write
        ],
        parallel,
    )
    _push_imports(
        session, to_import, dataset_id, state, provenance_on, chunk_size, progress, done, parallel
    )

    for source in plan.tables:
        outcome = tables.ensure_tables(session, dataset_id, source)
        res.tables_created += [t for t in outcome.tables_created if t not in res.tables_created]
        res.tables_present += [t for t in outcome.tables_present if t not in res.tables_present]
        res.tables_file_fallback = res.tables_file_fallback or outcome.fallback_file


def _guarded(session: Session, fn: Any, what: str) -> Any:
    try:
        return fn()
    except Exception as exc:
        raise _permission_or(exc, what) from None


def _permission_or(exc: Exception, what: str) -> Exception:
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


def _note_tags(res: PushResult, texts: Sequence[str], created: Sequence[str]) -> None:
    for t in texts:
        if t in created and t not in res.tags_created:
            res.tags_created.append(t)
        elif t not in created and t not in res.tags_reused and t not in res.tags_created:
            res.tags_reused.append(t)


def _ensure_target(session: Session, plan: PushPlan) -> tuple[int | None, int]:
    """(project id, dataset id): ``Dataset:ID`` is used as is; a name is found or created."""
    spec = plan.dataset
    if spec.lower().startswith("dataset:") and spec.split(":", 1)[1].strip().isdigit():
        did = int(spec.split(":", 1)[1])
        ds = _get_or_none(session, "Dataset", did)
        if ds is None:
            raise InputError(
                f"Dataset:{did} does not exist or is not visible to {session.settings.user}"
            )
        perms = _permissions(ds)
        if perms is not None and not perms.canLink():
            raise NoPermissionError(
                f"Dataset:{did}: {session.settings.user} may not add images to it"
            )
        return None, did
    project_id = None
    if plan.project:
        project_id, created = annotate.get_or_create_project(session, plan.project)
        if created:
            log.info("created project %r (id %d)", plan.project, project_id)
    did, created = annotate.get_or_create_dataset(session, spec, project_id)
    if created:
        log.info("created dataset %r (id %d)", spec, did)
    return project_id, did


def _get_or_none(session: Session, kind: str, obj_id: int) -> Any | None:
    import omero

    try:
        return session.query().find(kind, obj_id)
    except omero.SecurityViolation:
        raise NoPermissionError(
            f"{kind}:{obj_id}: not visible to {session.settings.user}"
        ) from None


def _permissions(obj: Any) -> Any | None:
    try:
        return obj.getDetails().getPermissions()
    except Exception:
        return None


def _find_receipts(
    session: Session, dataset_id: int
) -> dict[tuple[str, int], tuple[int, str | None]]:
    """(sha1, series) → (image id, description) for the complete images already in the dataset."""
    images = annotate.images_in_dataset(session, dataset_id)
    if not images:
        return {}
    desc = {annotate._val(i.getId()): annotate._val(i.getDescription()) for i in images}
    anns = annotate.linked_annotations_many(session, "Image", list(desc))
    found: dict[tuple[str, int], tuple[int, str | None]] = {}
    for iid, lst in anns.items():
        for a in lst:
            if not annotate.is_kind(a, "MapAnnotation"):
                continue
            if annotate._val(a.getNs()) not in provenance.RECEIPT_NAMESPACES:
                continue
            key = provenance.parse_receipt(annotate.map_pairs(a))
            if key is not None and key not in found:
                found[key] = (iid, desc.get(iid))
    return found


def _record(
    state: _State,
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
        # A retry after reconnecting found what this push made before the drop: keep "created".
        prev.annotations_created += n_ann
        return
    state.statuses[key] = ImageResult(item.path, im.index, im.name, iid, status, n_ann)
    if key not in state.counted:
        state.counted.add(key)
        progress.image_done(im.name, iid, status)


def _in_parallel(jobs: list[Any], parallel: int) -> None:
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
def _bytes_counted(progress: Progress) -> Iterator[Callable[[int], None]]:
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


def _import_phase(
    session: Session,
    item: PushItem,
    dataset_id: int,
    chunk_size: int,
    progress: Progress,
) -> tuple[list[int], str]:
    """Upload and import one file (or find the images an interrupted run imported).

    Runs in a worker thread so the next file uploads while the server imports this one.
    Returns (image ids in series order, "created" or "resumed").
    """
    pending = provenance.pending_description(item.sha1)
    leftovers = annotate.find_images_by_description(session, pending)
    if leftovers:
        # An earlier run imported the file but stopped before finishing: complete those images.
        ids = sorted(annotate._val(i.getId()) for i in leftovers)
        log.info("%s: completing %d image(s) left by an interrupted push", item.path.name, len(ids))
        return ids, "resumed"
    orphans = upload.unfinished_filesets(session, item)
    if orphans:
        log.info("%s: removing %d upload(s) an interrupted push left", item.path.name, len(orphans))
        upload.delete_filesets(session, orphans)
    with _bytes_counted(progress) as on_bytes:
        ids = _guarded(
            session,
            lambda: upload.import_file(
                session,
                item,
                dataset_id,
                description=pending,
                chunk=chunk_size,
                on_bytes=on_bytes,
            ),
            f"import into Dataset:{dataset_id}",
        )
    # Not every server honours the import's description: make sure, right away.
    for iid in ids:
        img = session.query().get("Image", iid)
        if annotate._val(img.getDescription()) != pending:
            img.setDescription(_rstring(pending))
            session.update().saveObject(img)
    return ids, "created"


def _finish_import(
    session: Session,
    item: PushItem,
    ids: list[int],
    status: str,
    dataset_id: int,
    state: _State,
    provenance_on: bool,
    progress: Progress,
    done: dict[tuple[str, int], tuple[int, str | None]],
) -> None:
    """Dataset link, annotations and receipts for the images of one imported file."""
    _guarded(
        session,
        lambda: annotate.link_images_to_dataset(session, dataset_id, ids),
        f"linking to Dataset:{dataset_id}",
    )
    if len(ids) != len(item.images):
        log.warning(
            "%s: the server made %d image(s) from a file whose OME-XML lists %d",
            item.path.name,
            len(ids),
            len(item.images),
        )
    for im, iid in zip(item.images, ids, strict=False):
        if (item.sha1, im.index) in done:
            _record(state, item, im, done[(item.sha1, im.index)][0], "present", 0, progress)
            continue
        n = _annotate_image(session, item, im, iid, "import", provenance_on, state.result)
        _record(state, item, im, iid, status, n, progress)


def _push_imports(
    session: Session,
    items: list[PushItem],
    dataset_id: int,
    state: _State,
    provenance_on: bool,
    chunk_size: int,
    progress: Progress,
    done: dict[tuple[str, int], tuple[int, str | None]],
    parallel: int,
) -> None:
    """Import ``items`` with up to ``parallel`` files in flight; annotate them in plan order.

    As ``omero import --parallel-fileset``: while the server imports one file (reading it,
    computing statistics) the next one uploads, so neither side idles.
    """
    if not items:
        return
    if parallel <= 1:  # strictly one file after the other
        for item in items:
            ids, status = _import_phase(session, item, dataset_id, chunk_size, progress)
            _finish_import(
                session, item, ids, status, dataset_id, state, provenance_on, progress, done
            )
        return
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="omero-push") as ex:
        futures = [
            ex.submit(_import_phase, session, item, dataset_id, chunk_size, progress)
            for item in items
        ]
        try:
            for item, fut in zip(items, futures, strict=True):
                ids, status = fut.result()
                _finish_import(
                    session, item, ids, status, dataset_id, state, provenance_on, progress, done
                )
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _push_pixels_image(
    session: Session,
    item: PushItem,
    im: ImageMeta,
    dataset_id: int,
    state: _State,
    provenance_on: bool,
    tile: tuple[int, int] | None,
    progress: Progress,
) -> None:
    pending = provenance.pending_description(item.sha1, im.index)
    leftovers = sorted(
        annotate._val(i.getId()) for i in annotate.find_images_by_description(session, pending)
    )
    if leftovers:
        iid = leftovers[0]
        status = "resumed"
        log.info("%s: rewriting image %d left by an interrupted push", im.name, iid)
        if len(leftovers) > 1:  # only possible if two pushes ran at once; keep one
            log.warning(
                "%s: %d half-made copies found; deleting the extra ones", im.name, len(leftovers)
            )
            annotate.delete_objects(session, "Image", leftovers[1:])
    else:
        dtype = pixels.reader_dtype(item.path, im.index)
        iid = _guarded(
            session, lambda: pixels.create_image(session, im, dtype, pending), "creating an image"
        )
        status = "created"
    _guarded(
        session,
        lambda: annotate.link_images_to_dataset(
            session, dataset_id, [iid], check=status == "resumed"
        ),
        f"linking to Dataset:{dataset_id}",
    )
    with _bytes_counted(progress) as on_bytes:
        pixels.push_pixels(session, item.path, im, iid, tile=tile, on_bytes=on_bytes)
    n = _annotate_image(session, item, im, iid, "pixels", provenance_on, state.result)
    _record(state, item, im, iid, status, n, progress)


def _annotate_image(
    session: Session,
    item: PushItem,
    im: ImageMeta,
    iid: int,
    mode: str,
    provenance_on: bool,
    res: PushResult,
) -> int:
    """Tags, key-value pairs, comments; then the receipt; then the real name and description."""
    existing = annotate.linked_annotations(session, "Image", iid)
    n = 0
    _ids, created, links = annotate.ensure_tags(session, "Image", iid, list(im.tags), existing)
    _note_tags(res, im.tags, created)
    n += links
    if im.kv_pairs:
        _aid, made = annotate.ensure_map_annotation(
            session, "Image", iid, list(im.kv_pairs), annotate.KV_NS, existing
        )
        n += int(made)
    n += annotate.ensure_comments(session, "Image", iid, list(im.comments), existing)
    ns, pairs = provenance.receipt_pairs(
        item, im, mode=mode, provenance=provenance_on, tool_version=__version__
    )
    if annotate.find_map_annotation(existing, ns) is None:
        annotate.create_and_link(session, "Image", iid, annotate.new_map_annotation(pairs, ns))
        n += 1
    # Last: the real description replaces the "incomplete" marker; the name is the OME Image's
    # (OMERO's import names images of multi-image files "file [series]").
    annotate.set_name_and_description(session, "Image", iid, im.name, im.description)
    return n


def _rstring(text: str) -> Any:
    from omero.rtypes import rstring

    return rstring(text)

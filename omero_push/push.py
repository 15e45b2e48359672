"""The push: plan → session → upload (import or pixels) → annotate → provenance, repeatable.

:func:`push` is the Python API the CLI mirrors.  Its run is written to be repeated: every step looks
for what exists before creating anything, an image counts as done only once its receipt (the
provenance MapAnnotation, written last) is present, and an image left half-made by an interrupted
run (recognised by its "incomplete" description) is reused, not duplicated.  Because a repeat is
safe, a lost connection is handled by reconnecting with exponential backoff and simply running
again; the same holds for a user re-running the command after a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omero_push import annotate, pixels, provenance, tables, upload
from omero_push.config import ConnectionSettings, Secret, resolve_settings
from omero_push.errors import FolderInUseError, InputError, PushError
from omero_push.imports import push_imports
from omero_push.ometiff import ImageMeta, PushItem
from omero_push.pixels_mode import push_pixels_image
from omero_push.plan import (
    ImageOverrides,
    PushPlan,
    build_plan,
    target_from_options,
)
from omero_push.progress import NullProgress, Progress
from omero_push.receipts import earlier_pushes, find_receipts
from omero_push.runstate import (
    ImageResult,
    LockedProgress,
    PushResult,
    RunState,
    guarded,
    in_parallel,
    note_tags,
    permission_or,
    record,
)
from omero_push.runstate import bytes_counted as _bytes_counted  # noqa: F401 (tests import it here)
from omero_push.session import (
    Session,
    borrow,
    open_session,
    rejoin_settings,
    translate,
    with_backoff,
)
from omero_push.target import ensure_target
from posdir2ometiff.lock import FolderLock, LockedError

log = logging.getLogger(__name__)

MODES = ("import", "pixels")


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
    dataset: str | int | None = None,
    project: str | None = None,
    target: str | None = None,
    overrides: ImageOverrides | None = None,
    conn: Any = None,
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

    ``dataset``/``project``/``target`` have ``omero import``'s meanings: a number is a Dataset
    ID, another value a name (found or created, inside ``project`` when given), ``target`` an
    ``omero import -T`` template (:func:`omero_push.plan.target_from_options`).  ``overrides``
    (name, description, tags, key-value pairs, comments) apply to every image.  ``conn`` is an open
    connection to push on instead of logging in (a ``BlitzGateway`` or ``omero.client``; it stays
    open, ours to use, not to close).
    ``parallel`` files (import mode) or images (pixels mode) are in flight at once: the next one
    uploads while the server finishes the previous one.
    Returns a :class:`PushResult` with the dataset and image ids.  Raises subclasses of
    :class:`~omero_push.errors.PushError` only; the password never appears in them.
    """
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    target_from_options(dataset, project, target)  # a bad target fails before any conversion
    progress = progress or NullProgress()
    settings: ConnectionSettings | None = None
    if not dry_run and conn is None:
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
                plan = PushPlan(items=[], dataset=str(dataset or target or "?"), project=project)
                for p in paths:
                    plan.skipped.append((Path(p), "would be converted first (--convert)"))
                return PushResult(plan=plan, mode=mode, dry_run=True)
            if convert_out is None:
                tmp_out = Path(tempfile.mkdtemp(prefix="omero_push-convert-"))
            paths = _convert_all(
                paths, Path(convert_out) if convert_out else tmp_out, convert_options
            )
        if dry_run:
            plan = build_plan(
                paths, dataset=dataset, project=project, target=target, overrides=overrides
            )
            return PushResult(plan=plan, mode=mode, dry_run=True)
        borrowed = None if conn is None else borrow(conn, group)
        if borrowed is not None:  # a reconnect joins the caller's session again, by its key
            settings = rejoin_settings(borrowed)
        assert settings is not None
        # One run per output folder (posdir2ometiff/lock.py): a converter still writing it, or a
        # second push of it, makes this push refuse instead of racing it.
        with contextlib.ExitStack() as locks:
            for p in dict.fromkeys(Path(p) for p in paths if Path(p).is_dir()):
                try:
                    locks.enter_context(FolderLock(p, "omero-push"))
                except LockedError as exc:
                    raise FolderInUseError(str(exc)) from None
                except OSError as exc:  # someone else's read-only folder: nobody converts into it
                    log.info("%s: not locked (%s)", p, exc.strerror or exc)
            plan = build_plan(
                paths, dataset=dataset, project=project, target=target, overrides=overrides
            )
            if mode == "pixels":  # before anything is created on the server
                for item in plan.items:
                    for im in item.images:
                        pixels.check_planes(item.path, im)
            return _execute(
                plan,
                settings,
                borrowed=borrowed,
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


# --- the run ------------------------------------------------------------------------------------


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
    borrowed: Session | None = None,
) -> PushResult:
    state = RunState(result=PushResult(plan=plan, mode=mode))
    progress = LockedProgress(progress)
    first = [borrowed] if borrowed is not None else []

    def attempt() -> None:
        if first:  # the caller's connection, first: used as is, never closed
            _run(first.pop(), plan, state, mode, provenance_on, chunk_size, tile, progress, parallel)
            return
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


def _images_by_position(plan: PushPlan, state: RunState) -> dict[str, tuple[int, str]]:
    """Position and image names (lower case) → (image id, image name) of this push's images,
    for the ``Image`` column of the tables whose rows are positions."""
    out: dict[str, tuple[int, str]] = {}
    for item, im in _pairs(plan):
        r = state.statuses.get((item.sha1, im.index))
        if r is None:
            continue
        out.setdefault(im.name.lower(), (r.image_id, im.name))
        position = item.position or (item.conversion or {}).get("position")
        if position and len(item.images) == 1:
            out.setdefault(str(position).lower(), (r.image_id, im.name))
    return out


def _sha_of(plan: PushPlan, r: ImageResult) -> str:
    for item in plan.items:
        if item.path == r.source:
            return item.sha1
    return ""


def _run(
    session: Session,
    plan: PushPlan,
    state: RunState,
    mode: str,
    provenance_on: bool,
    chunk_size: int,
    tile: tuple[int, int] | None,
    progress: Progress,
    parallel: int = 2,
) -> None:
    res = state.result
    try:
        project_id, dataset_id = ensure_target(session, plan)
    except Exception as exc:
        raise permission_or(exc, f"target {plan.dataset!r}") from None
    res.project_id, res.dataset_id = project_id, dataset_id

    # Dataset-level annotations: description and the experiment's tags.
    if plan.description:
        guarded(
            session,
            lambda: annotate.set_description(session, "Dataset", dataset_id, plan.description),
            "dataset description",
        )
    if plan.tags:
        existing = annotate.linked_annotations(session, "Dataset", dataset_id)
        ids, created, links = guarded(
            session,
            lambda: annotate.ensure_tags(session, "Dataset", dataset_id, plan.tags, existing),
            "dataset tags",
        )
        res.dataset_annotations_created += links
        note_tags(res, plan.tags, created)

    if plan.kv_pairs:
        _aid, made = guarded(
            session,
            lambda: annotate.ensure_map_annotation(
                session, "Dataset", dataset_id, plan.kv_pairs, annotate.KV_NS
            ),
            "dataset key-value pairs",
        )
        res.dataset_annotations_created += int(made)

    done = find_receipts(session, dataset_id)
    todo_bytes = 0
    for item, im in _pairs(plan):
        if (item.sha1, im.index) not in done:
            todo_bytes += item.size if mode == "import" else im.nbytes
    if not state.started:
        progress.start(todo_bytes, plan.n_images)
        state.started = True

    to_import: list[PushItem] = []
    to_write: list[tuple[PushItem, ImageMeta]] = []
    earlier: dict[tuple[str, int], list[tuple[int, str]]] | None = None
    for item in plan.items:
        missing = [im for im in item.images if (item.sha1, im.index) not in done]
        if missing:
            earlier = earlier_pushes(session, dataset_id) if earlier is None else earlier
            _say_if_changed(item, missing, earlier)
        if not missing:
            for im in item.images:
                iid, desc = done[(item.sha1, im.index)]
                if desc is not None and desc.startswith(provenance.PENDING_PREFIX):
                    # Receipt written but the run stopped before the final description.
                    annotate.set_name_and_description(
                        session, "Image", iid, im.name, im.description
                    )
                record(state, item, im, iid, "present", 0, progress)
            continue
        if mode == "import":
            to_import.append(item)
            continue
        to_write.extend((item, im) for im in missing)
        for im in item.images:
            if (item.sha1, im.index) in done:
                record(state, item, im, done[(item.sha1, im.index)][0], "present", 0, progress)
    in_parallel(
        [
            (
                lambda item=item, im=im: push_pixels_image(
                    session, item, im, dataset_id, state, provenance_on, tile, progress
                )
            )
            for item, im in to_write
        ],
        parallel,
    )
    push_imports(
        session, to_import, dataset_id, state, provenance_on, chunk_size, progress, done, parallel
    )

    images = _images_by_position(plan, state)
    for source in plan.tables:
        outcome = tables.ensure_tables(session, dataset_id, source, images)
        res.tables_created += [t for t in outcome.tables_created if t not in res.tables_created]
        res.tables_present += [t for t in outcome.tables_present if t not in res.tables_present]
        res.tables_file_fallback = res.tables_file_fallback or outcome.fallback_file


def _say_if_changed(
    item: PushItem, missing: list[ImageMeta], earlier: dict[tuple[str, int], list[tuple[int, str]]]
) -> None:
    """A file of the same name was pushed into this dataset before with other bytes (re-converted
    with other options, edited): say that a new image is made and which one it does not replace,
    rather than duplicating silently. (Same bytes are recognised by SHA-1 and never pushed again.)
    """
    for im in missing:
        before = [(iid, sha) for iid, sha in earlier.get((item.path.name, im.index), [])
                  if sha != item.sha1]
        if before:
            olds = ", ".join(f"Image:{iid} (sha1 {sha[:12]})" for iid, sha in sorted(before))
            log.warning(
                "%s: changed since it was pushed as %s; pushing it as a new image "
                "(sha1 %s), the old one stays", item.path.name, olds, item.sha1[:12],
            )

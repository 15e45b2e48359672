"""Import mode: upload each file to the managed repository, let the server import it, complete it.

While the server imports one file the next one uploads (as ``omero import --parallel-fileset``);
the images are completed (dataset link, annotations, receipt) in plan order.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tifffile

from omero_push import annotate, provenance, receipts, upload
from omero_push.errors import ServerError
from omero_push.ometiff import PushItem
from omero_push.progress import Progress
from omero_push.runstate import RunState, bytes_counted, guarded, record
from omero_push.session import Session

log = logging.getLogger(__name__)


#: The first OMERO whose Bio-Formats (7.0) decodes zstd-compressed TIFFs (TIFF compression 50000).
ZSTD_SINCE = (5, 6, 9)
ZSTD_COMPRESSION = 50000


def server_version(session: Session) -> tuple[int, ...] | None:
    """OMERO's version from ``IConfig.getVersion`` ("5.6.9-ice36-b..." → (5, 6, 9)), or None."""
    if "server_version" not in session.cache:
        text = str(session.sf.getConfigService().getVersion())
        m = re.match(r"\s*(\d+)\.(\d+)\.(\d+)", text)
        session.cache["server_version"] = tuple(int(g) for g in m.groups()) if m else None
        if m is None:
            log.warning("the server's version %r is not of the form X.Y.Z", text)
    return session.cache["server_version"]


def uses_zstd(item: PushItem) -> bool:
    """Whether any image of the file is zstd-compressed (first IFD of the file and of each series)."""
    with tifffile.TiffFile(item.path) as tif:
        pages = [tif.pages.first] + [s.pages[0] for s in tif.series if len(s.pages)]
        return any(p is not None and int(p.compression) == ZSTD_COMPRESSION for p in pages)


def check_server_reads(session: Session, items: list[PushItem]) -> None:
    """Stop before any upload if the server cannot decode a file's compression.

    OMERO before 5.6.9 ships a Bio-Formats without zstd: its import would save the images and
    then fail reading the pixels.  One line says so and what to do instead.
    """
    zstd = [i for i in items if uses_zstd(i)]
    if not zstd:
        return
    version = server_version(session)
    if version is not None and version < ZSTD_SINCE:
        names = ", ".join(i.path.name for i in zstd[:3]) + (" ..." if len(zstd) > 3 else "")
        raise ServerError(
            f"{names}: zstd-compressed, which OMERO {'.'.join(map(str, version))} cannot read "
            f"(zstd needs OMERO 5.6.9 or later): convert with 'posdir2ometiff --compression zlib', "
            "or push with '--mode pixels'"
        )


def import_phase(
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
    found = [
        annotate._val(i.getId()) for i in annotate.find_images_by_description(session, pending)
    ]
    # Only a push into the same dataset completes what an interrupted push left (issue #14).
    here, _nowhere, elsewhere = annotate.leftovers_of(session, found, dataset_id)
    for iid, dids in sorted(elsewhere.items()):
        log.info("%s: half-made image %d belongs to Dataset:%s; left for a push there",
                 item.path.name, iid, ",".join(map(str, sorted(dids))))
    if here and _earlier_import_finished(session, item, here):
        # An earlier run imported the file but stopped before finishing: complete those images.
        log.info("%s: completing %d image(s) left by an interrupted push", item.path.name,
                 len(here))
        return here, "resumed"
    _remove_unfinished_uploads(session, item)
    with bytes_counted(progress) as on_bytes:
        ids = guarded(
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
    # The receipt comes only on complete images (a finished import has computed StatsInfo).
    if not upload.images_complete(session, ids):
        raise ServerError(
            f"import of {item.path.name}: the server finished without the images' pixel "
            "statistics; re-run the push to import it again"
        )
    # Not every server honours the import's description: make sure, right away.
    for iid in ids:
        img = session.query().get("Image", iid)
        if annotate._val(img.getDescription()) != pending:
            img.setDescription(_rstring(pending))
            session.update().saveObject(img)
    return ids, "created"


def _earlier_import_finished(session: Session, item: PushItem, ids: list[int]) -> bool:
    """Whether the images an earlier run's import of ``item`` saved are complete; if that import
    is still running on the server, wait for it first; if it failed, delete its images.

    OMERO imports in the background and saves the images before it reads their pixels
    (ome/omero-blitz ``ManagedImportRequestI``), so images carrying our marker may belong to an
    import that is still running (never to be deleted under it: ``listImports``) or one that
    failed after saving them (no StatsInfo: deleted here, and the file is imported again).
    """
    filesets = upload.filesets_of(session, ids)
    running = upload.running_imports(session).handles
    for fid in filesets:
        if fid in running:
            log.info(
                "%s: the server is still importing it (Fileset:%d); waiting", item.path.name, fid
            )
            try:
                upload.wait_for(session, running[fid], f"import of {item.path.name}")
            except ServerError as exc:
                log.warning("%s", exc)
    if upload.images_complete(session, ids):
        return True
    log.warning(
        "%s: an earlier import saved %d image(s) but did not finish them; deleting them and "
        "importing the file again",
        item.path.name,
        len(ids),
    )
    annotate.delete_objects(session, "Image", ids)
    return False


def _remove_unfinished_uploads(session: Session, item: PushItem) -> None:
    """Delete our filesets of ``item`` that hold no image, unless the server is still on them.

    ``importFileset`` saves the Fileset before a byte is sent, and the import saves the images
    only in its first step: a fileset without images is either an upload an interrupted push
    left, or an import in progress (``ManagedRepository.listImports``), which is left alone.
    """
    orphans = upload.unfinished_filesets(session, item)
    if not orphans:
        return
    found = upload.running_imports(session)
    if found.unknown_upload:
        log.info(
            "%s: an upload is in progress on the server; leaving %d unfinished upload(s) of this "
            "file for a later run",
            item.path.name,
            len(orphans),
        )
        return
    running = found.handles
    busy = [f for f in orphans if f in running]
    if busy:
        log.info("%s: the server is still importing Fileset %s", item.path.name, busy)
    orphans = [f for f in orphans if f not in running]
    if orphans:
        log.info("%s: removing %d upload(s) an interrupted push left", item.path.name, len(orphans))
        upload.delete_filesets(session, orphans)


def finish_import(
    session: Session,
    item: PushItem,
    ids: list[int],
    status: str,
    dataset_id: int,
    state: RunState,
    provenance_on: bool,
    progress: Progress,
    done: dict[tuple[str, int], tuple[int, str | None]],
) -> None:
    """Dataset link, annotations and receipts for the images of one imported file."""
    guarded(
        session,
        lambda: annotate.link_images_to_dataset(session, dataset_id, ids),
        f"linking to Dataset:{dataset_id}",
    )
    # The import made its own copy of every tag in the OME-XML: link the push's one tag instead.
    guarded(
        session,
        lambda: annotate.adopt_imported_tags(session, "Image", ids),
        "replacing the tags the import made",
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
            record(state, item, im, done[(item.sha1, im.index)][0], "present", 0, progress)
            continue
        n = receipts.complete_image(session, item, im, iid, "import", provenance_on, state.result)
        record(state, item, im, iid, status, n, progress)


def push_imports(
    session: Session,
    items: list[PushItem],
    dataset_id: int,
    state: RunState,
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
    check_server_reads(session, items)
    if parallel <= 1:  # strictly one file after the other
        for item in items:
            ids, status = import_phase(session, item, dataset_id, chunk_size, progress)
            finish_import(
                session, item, ids, status, dataset_id, state, provenance_on, progress, done
            )
        return
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="omero-push") as ex:
        futures = [
            ex.submit(import_phase, session, item, dataset_id, chunk_size, progress)
            for item in items
        ]
        try:
            for item, fut in zip(items, futures, strict=True):
                ids, status = fut.result()
                finish_import(
                    session, item, ids, status, dataset_id, state, provenance_on, progress, done
                )
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _rstring(text: str) -> Any:
    from omero.rtypes import rstring

    return rstring(text)

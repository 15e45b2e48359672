"""Import mode: the OME-TIFF goes up as an original file through OMERO's managed repository.

This is what ``omero import`` does, without Java: ``ManagedRepository.importFileset`` gives an
import process; the bytes go through its ``RawFileStore`` uploader in chunks; ``verifyUpload``
with the SHA-1 of what was sent starts the server-side import (Bio-Formats on the server reads the
file); a ``CmdCallbackI`` waits on the handle; the ``ImportResponse`` lists the new Pixels.

The original file is kept in OMERO (downloadable, re-readable by newer Bio-Formats), which is why
this is the default mode.
"""

from __future__ import annotations

import locale
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omero_push.errors import InputError, ServerError
from omero_push.ometiff import PushItem
from omero_push.session import AsyncWindow, Session, command_response, is_connection_lost

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 4 * 1024 * 1024
#: Chunks in flight at once (see session.AsyncWindow); 3 × 4 MiB stays far below Ice's limits.
IN_FLIGHT = 3
#: How long to wait for the server to finish one file's import before giving up on waiting
#: (the import goes on on the server; a re-run completes it).  Generous: a 100 GB fileset with
#: a pyramid to build takes hours on a busy server.
IMPORT_WAIT_CAP_S = 12 * 3600.0
#: How often the wait reports where the import is (log line at INFO).
IMPORT_REPORT_EVERY_S = 30.0


def new_fileset(item: PushItem) -> Any:
    """A Fileset with one entry for the file and an UploadJob that says who uploaded it."""
    import omero
    from omero.rtypes import rstring

    fileset = omero.model.FilesetI()
    entry = omero.model.FilesetEntryI()
    entry.setClientPath(rstring(str(item.path)))
    fileset.addFilesetEntry(entry)
    system, _node, release, _version, machine, _proc = platform.uname()
    info = [
        omero.model.NamedValue("omero.version", _omero_version()),
        omero.model.NamedValue("os.name", system),
        omero.model.NamedValue("os.version", release),
        omero.model.NamedValue("os.architecture", machine),
    ]
    lang = locale.getlocale()[0]
    if lang:
        info.append(omero.model.NamedValue("locale", lang))
    job = omero.model.UploadJobI()
    job.setVersionInfo(info)
    fileset.linkJob(job)
    return fileset


def import_settings(dataset_id: int, description: str | None, name: str | None = None) -> Any:
    """Import settings: target dataset, SHA-1 checksums, and our 'incomplete' description.

    ``name`` (the OME Image name, for single-image files) replaces OMERO's default image name,
    the file name, as ``omero import --name`` does: both modes then give the same image names.
    """
    import omero
    import omero.grid  # noqa: F401
    from omero.rtypes import rbool, rstring

    settings = omero.grid.ImportSettings()
    settings.doThumbnails = rbool(True)
    settings.noStatsInfo = rbool(False)
    settings.userSpecifiedTarget = omero.model.DatasetI(dataset_id, False)
    settings.userSpecifiedName = rstring(name) if name else None
    settings.userSpecifiedDescription = rstring(description) if description else None
    settings.userSpecifiedAnnotationList = None
    settings.userSpecifiedPixels = None
    algo = omero.model.ChecksumAlgorithmI()
    algo.setValue(rstring("SHA1-160"))
    settings.checksumAlgorithm = algo
    return settings


def upload_to(
    uploader: Any,
    item: PushItem,
    *,
    chunk: int = DEFAULT_CHUNK,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Write the file through ``uploader`` (a RawFileStore) in chunks; returns the bytes sent.

    The file is not hashed again here: ``verifyUpload`` makes the server hash what it received
    and compare it with the planned SHA-1, so a file changed since planning fails there
    (``ChecksumValidationException``) instead of being imported under the wrong checksum.
    """
    offset = 0
    window = AsyncWindow(IN_FLIGHT)
    try:
        with open(item.path, "rb") as fh:
            while block := fh.read(chunk):
                window.call(uploader.begin_write, uploader.end_write, block, offset, len(block))
                offset += len(block)
                if on_bytes is not None:
                    on_bytes(len(block))
        window.drain()
    finally:
        try:
            uploader.close()
        except Exception as exc:
            if is_connection_lost(exc):
                raise
            log.debug("closing the uploader failed: %s", exc)
    return offset


def wait_for(
    session: Session,
    handle: Any,
    what: str,
    *,
    cap_s: float = IMPORT_WAIT_CAP_S,
    poll_s: float = 5.0,
    report_every_s: float = IMPORT_REPORT_EVERY_S,
) -> Any:
    """Wait for an import's handle until the server is done, saying where it is on the way.

    OMERO runs the import in the background after ``verifyUpload`` (ome/omero-blitz
    ``ManagedImportRequestI``: metadata, pixel data, thumbnails, ...), which can take far longer
    than a minute.  As omero-py's ``CmdCallbackI.loop`` but without its fixed count: block on the
    callback for ``poll_s`` at a time (a dead server then raises instead of hanging), log
    "step i of n" every ``report_every_s``, and stop waiting after ``cap_s`` with a
    :class:`ServerError` that says the import goes on and a re-run completes it.  The handle is
    then left open: closing it early would lose the server's answer.  An ``omero.cmd.ERR``
    becomes a :class:`ServerError` naming ``what``.
    """
    import omero.callbacks

    cb = omero.callbacks.CmdCallbackI(session.client, handle)
    started = last_report = time.monotonic()
    done = False
    try:
        while not cb.block(int(poll_s * 1000)):
            cb.poll()
            if cb.block(0):
                break
            now = time.monotonic()
            if now - started >= cap_s:
                raise ServerError(
                    f"{what}: the server is still importing after {_duration(now - started)}; "
                    "it goes on without us: re-run the same push later to complete it"
                )
            if now - last_report >= report_every_s:
                last_report = now
                log.info("%s: %s (%s so far)", what, _step_text(handle), _duration(now - started))
        rsp = cb.getResponse()
        done = True
    finally:
        try:
            cb.close(done)
        except Exception as exc:
            log.debug("closing the callback failed: %s", exc)
    return command_response(rsp, what)


def _step_text(handle: Any) -> str:
    """ "step 2 of 5" from the handle's status, or "importing" if the server does not say."""
    try:
        st = handle.getStatus()
        return f"step {st.currentStep + 1} of {st.steps}" if st is not None else "importing"
    except Exception as exc:
        if is_connection_lost(exc):
            raise
        return "importing"


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


@dataclass
class RunningImports:
    """What ``listImports`` says: handles of running imports by fileset, and whether an upload
    whose fileset cannot be told (no handle yet) is also in progress."""

    handles: dict[int, Any] = field(default_factory=dict)
    unknown_upload: bool = False


def running_imports(session: Session) -> RunningImports:
    """The imports the server is still running for this user, by fileset id.

    ``ManagedRepository.listImports()`` lists the import processes still alive (ome/omero-blitz
    ``ManagedRepositoryI.listImports``); a process's handle carries the ``ImportRequest`` whose
    ``activity`` is the fileset's job link (``ManagedImportProcessI.verifyUpload``).  A process
    without a handle is an upload in progress whose fileset cannot be told (``unknown_upload``):
    the caller must then leave filesets without images alone.  A server that cannot list its
    imports (every OMERO 5.x can) is taken to run none.
    """
    out = RunningImports()
    try:
        repo = session.client.getManagedRepository()
        procs = list(repo.listImports() or []) if repo is not None else []
    except Exception as exc:
        if is_connection_lost(exc):
            raise
        log.warning("the server cannot list its running imports (%s)", exc.__class__.__name__)
        return out
    for proc in procs:
        try:
            handle = proc.getHandle()
            if handle is None:
                out.unknown_upload = True
                continue
            fileset_id = handle.getRequest().activity.getParent().getId().getValue()
            if handle.getResponse() is None:
                out.handles[int(fileset_id)] = handle
        except Exception as exc:
            if is_connection_lost(exc):
                raise
            log.debug("an import process could not be read: %s", exc)
            out.unknown_upload = True
    return out


def unfinished_filesets(session: Session, item: PushItem) -> list[int]:
    """Our filesets for this file that hold no image: uploads an interrupted push left behind.

    ``importFileset`` saves the Fileset and its OriginalFiles before a byte is sent, so a push
    killed during the upload leaves them (with a partial file) in the managed repository.
    """
    import omero.sys

    params = omero.sys.ParametersI()
    params.addString("path", str(item.path))
    params.addLong("uid", session.user_id)
    entries = session.query().findAllByQuery(
        "select fe from FilesetEntry fe where fe.clientPath = :path and fe.details.owner.id = :uid",
        params,
    )
    fileset_ids = sorted({e.getFileset().getId().getValue() for e in entries})
    if not fileset_ids:
        return []
    params = omero.sys.ParametersI()
    params.addIds(fileset_ids)
    images = session.query().findAllByQuery(
        "select i from Image i where i.fileset.id in (:ids)", params
    )
    used = {i.getFileset().getId().getValue() for i in images}
    return [f for f in fileset_ids if f not in used]


def images_complete(session: Session, image_ids: list[int]) -> bool:
    """Whether the import finished these images: pixels readable, statistics computed.

    OMERO's import saves the images in its metadata step and only then reads the pixels and
    computes each channel's StatsInfo (ome/omero-blitz ``ManagedImportRequestI.pixelData``); an
    import that failed after the metadata step leaves images without StatsInfo.
    """
    images = session.container().getImages("Image", list(image_ids), None)
    if len(images) != len(set(image_ids)):
        return False
    for img in images:
        pixels = img.getPrimaryPixels()
        if pixels is None:
            return False
        desc = session.pixels().retrievePixDescription(pixels.getId().getValue())
        channels = list(desc.copyChannels())
        if not channels or any(ch.getStatsInfo() is None for ch in channels):
            return False
    return True


def filesets_of(session: Session, image_ids: list[int]) -> list[int]:
    """The filesets of these images (sorted, none for images without one)."""
    import omero.sys

    params = omero.sys.ParametersI()
    params.addIds(list(image_ids))
    images = session.query().findAllByQuery("select i from Image i where i.id in (:ids)", params)
    return sorted({i.getFileset().getId().getValue() for i in images if i.getFileset()})


def delete_filesets(session: Session, fileset_ids: list[int]) -> None:
    """Delete filesets (entries, original files and their bytes) with OMERO's Delete2."""
    from omero_push.annotate import delete_objects

    delete_objects(session, "Fileset", fileset_ids)


def import_file(
    session: Session,
    item: PushItem,
    dataset_id: int,
    *,
    description: str | None,
    chunk: int = DEFAULT_CHUNK,
    on_bytes: Callable[[int], None] | None = None,
) -> list[int]:
    """Import one OME-TIFF into ``dataset_id``; returns the new image ids in series order."""
    import omero

    repo = session.client.getManagedRepository()
    if repo is None:
        raise ServerError("the server offers no managed repository: use --mode pixels")
    name = item.images[0].name if len(item.images) == 1 else None
    proc = repo.importFileset(new_fileset(item), import_settings(dataset_id, description, name))
    try:
        sent = upload_to(proc.getUploader(0), item, chunk=chunk, on_bytes=on_bytes)
        if sent != item.size:
            raise InputError(f"{item.path}: size changed while uploading ({sent} != {item.size})")
        try:
            # OMERO compares with String.equals against its own lower-case hex digest
            # (ome/omero-blitz ManagedImportProcessI.verifyUpload).
            handle = proc.verifyUpload([item.sha1.lower()])
        except omero.ChecksumValidationException:
            raise InputError(
                f"{item.path}: content changed since it was planned (the server's SHA-1 of the "
                "upload differs); re-run the conversion or the push"
            ) from None
        rsp = wait_for(session, handle, f"import of {item.path.name}")
    finally:
        try:
            proc.close()
        except Exception as exc:
            log.debug("closing the import process failed: %s", exc)
    image_ids: list[int] = []
    for px in rsp.pixels:
        iid = px.getImage().getId().getValue()
        if iid not in image_ids:
            image_ids.append(iid)
    if not image_ids:
        raise ServerError(f"import of {item.path.name}: the server created no image")
    return image_ids


def _omero_version() -> str:
    try:
        from omero_version import omero_version

        return str(omero_version)
    except ImportError:  # pragma: no cover
        return "unknown"

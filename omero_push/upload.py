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
from collections.abc import Callable
from typing import Any

from omero_push.errors import InputError, ServerError
from omero_push.plan import PushItem
from omero_push.session import AsyncWindow, Session, is_connection_lost, wait_for_command

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 4 * 1024 * 1024
#: Chunks in flight at once (see session.AsyncWindow); 3 × 4 MiB stays far below Ice's limits.
IN_FLIGHT = 3


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


def wait_for(session: Session, handle: Any, what: str) -> Any:
    """Wait on an OMERO command handle (see :func:`omero_push.session.wait_for_command`)."""
    return wait_for_command(session, handle, what)


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
            handle = proc.verifyUpload([item.sha1])
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

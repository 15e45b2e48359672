"""The managed repository of the OMERO stand-in: OMERO's import ("OMERO.fs") without Java.

OMERO imports a file in four steps, all driven by the client (omero-py's own code does exactly
this, see ``omero.testlib.ITest.full_import`` and ``omero.plugins.fs.prep_directory``)::

    mrepo = client.getManagedRepository()       # SharedResources.repositories() + checkedCast
    proc = mrepo.importFileset(fileset, settings)   # Fileset of FilesetEntry(clientPath)
    rfs = proc.getUploader(i); rfs.write(...); rfs.close()   # one RawFileStore per file
    handle = proc.verifyUpload([sha1, ...])     # server checks the SHA-1s, then imports
    cb = omero.callbacks.CmdCallbackI(client, handle)   # polls handle.getResponse() once
    rsp = cb.loop(...)                          # omero.grid.ImportResponse(pixels=[...])
    proc.close()

As OMERO (ome/omero-blitz ``ManagedImportProcessI.verifyUpload``, ``ManagedImportRequestI``,
``omero/cmd/HandleI``), ``verifyUpload`` checks the checksums exactly and returns the handle at
once; the import runs in a background thread in OMERO's five steps (metadata, pixel data,
thumbnails, processing, objects), and each registered ``CmdCallback`` gets ``step`` after every
step and ``finished`` at the end (through the client's connection, or through Glacier2's server
endpoints when a real router is in front). Images are saved in the metadata step, so a later
failure leaves them behind, as in OMERO; the handle then answers ``omero.cmd.ERR``.

What the import creates, as OMERO's import does for an OME-TIFF: one Image per OME ``Image``
(named after the file, with `` [image name]`` appended when the file holds several), Pixels with
sizes/type/dimension order/physical sizes/time increment, Channels with colour and a
LogicalChannel (name, wavelengths, fluor), PlaneInfo (ΔT, exposure, stage position),
StatsInfo per channel (unless ``settings.noStatsInfo``), new Tag, Comment and Map annotations
from the OME-XML's StructuredAnnotations (namespace and description kept, linked to the images
that refer to them), a Fileset with its FilesetEntries and OriginalFiles, and a
DatasetImageLink when ``settings.userSpecifiedTarget`` is a Dataset.
``userSpecifiedName``/``Description`` replace the image name/description,
``userSpecifiedPixels`` fills physical sizes (µm) the file lacks, and
``userSpecifiedAnnotationList`` annotations are linked to every image.
Pixels stay in the uploaded file and are read with tifffile on demand (see :mod:`.pixels`),
including RGB files (samples become channels) and SubIFD pyramids (resolution levels).

Not supported (the handle answers ``omero.cmd.ERR`` naming the file): TIFFs without OME-XML,
multi-file OME-TIFF (TiffData pointing at other files), companion files, Screen/Plate
targets, ``bit``/``complex`` pixel types.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import Ice
import numpy as np
import omero
import omero.api
import omero.cmd
import omero.grid
import omero.model
from omero.rtypes import rdouble, rint, rlong, rstring, rtime

from . import tables as tables_service
from .pixels import (
    PIXELS_DTYPES,
    Geometry,
    PixelsError,
    TiffBuffer,
    TiffSource,
    new_pixels_graph,
    plane_ifds,
    record_tiff_source,
    samples_per_ifd,
    tiff_pointer_path,
)
from .rawfile import SHA1, RawFileStoreI, original_path, refresh_file_object, sha1_of
from .server import ServerContext, StatefulService, servant, server_error

log = logging.getLogger(__name__)

#: Checksum algorithms the stand-in can verify: OMERO name -> hex digest of a file.
CHECKSUMS: dict[str, Callable[[Any], str]] = {
    SHA1: lambda path: sha1_of(path),
    "MD5-128": lambda path: _hashlib_of(path, "md5"),
    "File-Size-64": lambda path: f"{os.path.getsize(path):x}",
}

#: Name of the repository's own description file (what ``root()`` returns).
REPO_NAME = "ManagedRepository"
#: Where the store remembers that file's id.
REPO_META_KEY = "managed_repository_file"


def _hashlib_of(path: Any, name: str) -> str:
    digest = hashlib.new(name)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def remote(fn: Callable[..., Any]) -> Callable[..., Any]:
    """For synchronous Slice operations: the delay fault, and Python errors as OMERO exceptions.

    (The core's ``servant`` decorator does both for asynchronous-dispatch operations only.)
    """

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any) -> Any:
        try:
            ctx = getattr(self, "ctx", None)
            if ctx is not None:
                ctx.faults.delay()
            return fn(self, *args)
        except Ice.Exception:
            raise
        except Exception as exc:  # noqa: BLE001 - the client must get an OMERO exception
            log.debug("error in %s", fn.__name__, exc_info=True)
            raise server_error(exc) from exc

    return wrapper


def unwrap_str(value: Any) -> str | None:
    """The Python string of an RString (or None)."""
    return None if value is None else value.getValue()


# --------------------------------------------------------------------------- the repository


def repository_file(ctx: ServerContext, session: Any) -> Any:
    """The OriginalFile describing the managed repository (created once, kept in the store).

    Its id is remembered in the store's own key-value table, so finding it costs one lookup.
    """
    with ctx.lock:
        known = ctx.store.meta(REPO_META_KEY)
        if known is not None:
            repo = ctx.store.load("OriginalFile", int(known))
            if repo is not None:
                return repo
        repo = omero.model.OriginalFileI()
        repo.setName(rstring(REPO_NAME))
        repo.setPath(rstring("/"))
        repo.setMimetype(rstring("Repository"))
        repo.setHash(rstring(str(uuid.uuid4())))
        repo.setSize(rlong(0))
        repo = session.save(repo)
        ctx.store.set_meta(REPO_META_KEY, str(repo.getId().getValue()))
        return ctx.store.load("OriginalFile", repo.getId().getValue())


def template_prefix(session: Any, now: float | None = None) -> str:
    """OMERO's default managed-repository template: ``user_id/YYYY-MM/DD/HH-MM-SS.mmm/``."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m/%d/%H-%M-%S", time.localtime(now))
    millis = int((now % 1) * 1000)
    return f"{session.user_name}_{session.user_id}/{stamp}.{millis:03d}/"


def shortened_paths(client_paths: list[str]) -> tuple[str, list[str]]:
    """(shared base, paths relative to it) as OMERO shortens the client paths it is given."""
    parts = [PurePosixPath(p.replace("\\", "/")).parts for p in client_paths]
    if len(parts) == 1:
        base = parts[0][:-1]
    else:
        base = ()
        for level in zip(*(p[:-1] for p in parts), strict=False):
            if len(set(level)) != 1:
                break
            base += (level[0],)
    rel = ["/".join(p[len(base) :]) for p in parts]
    return (str(PurePosixPath(*base)) if base else ""), rel


@servant
class SharedResourcesI(omero.grid.SharedResources):
    """SharedResources: the managed repository and OMERO.tables (one servant per session)."""

    def __init__(self, ctx: ServerContext, session: Any) -> None:
        self.ctx = ctx
        self.session = session
        self._repo_prx: Any = None
        self._lock = threading.Lock()

    def _managed(self) -> Any:
        with self._lock:
            if self._repo_prx is None:
                servant_ = ManagedRepositoryI(self.ctx, self.session)
                prx = self.ctx.add_servant(servant_, self.session.uuid)
                self._repo_prx = omero.grid.ManagedRepositoryPrx.uncheckedCast(prx)
            return self._repo_prx

    @remote
    def repositories(self, current: Ice.Current | None = None) -> Any:
        """One repository, the managed one (what ``client.getManagedRepository()`` looks for)."""
        repo = repository_file(self.ctx, self.session)
        return omero.grid.RepositoryMap([repo], [self._managed()])

    @remote
    def areTablesEnabled(self, current: Ice.Current | None = None) -> bool:
        return bool(self.ctx.faults.tables_enabled)

    @remote
    def newTable(self, repoId: int, path: str, current: Ice.Current | None = None) -> Any:
        return tables_service.new_table(self.ctx, self.session, repoId, path)

    @remote
    def openTable(self, file: Any, current: Ice.Current | None = None) -> Any:  # noqa: A002
        return tables_service.open_table(self.ctx, self.session, file)


@servant
class ManagedRepositoryI(omero.grid.ManagedRepository):
    """The managed repository: start imports, list checksum algorithms."""

    def __init__(self, ctx: ServerContext, session: Any) -> None:
        self.ctx = ctx
        self.session = session

    @remote
    def root(self, current: Ice.Current | None = None) -> Any:
        return repository_file(self.ctx, self.session)

    @remote
    def listChecksumAlgorithms(self, current: Ice.Current | None = None) -> list[Any]:
        return [self._algorithm(name) for name in CHECKSUMS]

    @remote
    def suggestChecksumAlgorithm(
        self, supported: list[Any], current: Ice.Current | None = None
    ) -> Any:
        names = [unwrap_str(a.getValue()) for a in supported or []]
        for name in CHECKSUMS:
            if name in names:
                return self._algorithm(name)
        return None

    def _algorithm(self, name: str) -> Any:
        algo = omero.model.ChecksumAlgorithmI()
        algo.setValue(rstring(name))
        return algo

    @remote
    def listImports(self, current: Ice.Current | None = None) -> list[Any]:
        """The import processes still alive whose fileset the caller may edit.

        As ome/omero-blitz ``repo/ManagedRepositoryI.listImports``: the processes of the
        caller's groups (``processes.listProcesses(ec.memberOfGroups)``), keeping those whose
        Fileset the caller ``canEdit``. A process is listed until its client closes it or its
        session ends, and while its import still runs (a re-run of the push, in a new
        session, must see it). A process of another session is returned as a
        proxy in the caller's session (behind Glacier2 the caller reaches only those).
        """
        from .permissions import can_update

        out = []
        for proc in live_import_processes(self.ctx):
            flat = self.ctx.store.flat("Fileset", proc.fileset_id)
            if flat is None:
                continue
            gid = flat.getDetails().getGroup().getId().getValue()
            if gid not in self.session.member_of and not self.session.is_admin:
                continue
            if not can_update(self.session, flat):
                continue
            out.append(proc.proxy_for(self.session.uuid))
        return out

    @remote
    def importPaths(self, filePaths: list[str], current: Ice.Current | None = None) -> Any:
        """``importFileset`` with a Fileset built from the paths and default settings."""
        fileset = omero.model.FilesetI()
        for path in filePaths:
            entry = omero.model.FilesetEntryI()
            entry.setClientPath(rstring(path))
            fileset.addFilesetEntry(entry)
        settings = omero.grid.ImportSettings()
        settings.checksumAlgorithm = self._algorithm(SHA1)
        return self.importFileset(fileset, settings, current)

    @remote
    def importFileset(self, fileset: Any, settings: Any, current: Ice.Current | None = None) -> Any:
        """Save the Fileset with one OriginalFile per entry and return an ImportProcess."""
        if fileset is None:
            raise omero.ApiUsageException(None, None, "importFileset needs a Fileset")
        settings = settings or omero.grid.ImportSettings()
        algorithm = SHA1
        if settings.checksumAlgorithm is not None:
            algorithm = unwrap_str(settings.checksumAlgorithm.getValue()) or SHA1
        if algorithm not in CHECKSUMS:
            raise omero.ApiUsageException(
                None, None, f"checksum algorithm {algorithm} is not supported by the stand-in"
            )
        entries = list(fileset.copyUsedFiles()) if fileset.sizeOfUsedFiles() > 0 else []
        if not entries:
            raise omero.ApiUsageException(None, None, "the Fileset names no files")
        client_paths = []
        for i, entry in enumerate(entries):
            path = unwrap_str(entry.getClientPath())
            if not path:
                raise omero.ApiUsageException(None, None, f"FilesetEntry {i} has no clientPath")
            client_paths.append(path)
        shared, used = shortened_paths(client_paths)
        prefix = template_prefix(self.session)
        fileset.setTemplatePrefix(rstring(prefix))
        repo = repository_file(self.ctx, self.session)
        repo_uuid = unwrap_str(repo.getHash()) or ""
        for entry, rel in zip(entries, used, strict=True):
            ofile = omero.model.OriginalFileI()
            rel_path = PurePosixPath(prefix + rel)
            ofile.setName(rstring(rel_path.name))
            ofile.setPath(rstring(str(rel_path.parent) + "/"))
            ofile.setRepo(rstring(repo_uuid))
            ofile.setMimetype(rstring("application/octet-stream"))
            ofile.setSize(rlong(0))
            entry.setOriginalFile(ofile)
        with self.ctx.lock:
            saved = self.session.save(fileset)
        fileset_id = saved.getId().getValue()
        loaded = self.ctx.store.load("Fileset", fileset_id, fetch=("usedFiles.originalFile",))
        file_ids = [e.getOriginalFile().getId().getValue() for e in loaded.copyUsedFiles()]
        for fid in file_ids:
            original_path(self.ctx, fid).touch()
        location = omero.grid.ImportLocation(
            sharedPath=shared, omittedLevels=0, usedFiles=used, directory=None
        )
        proc = ImportProcessI(
            self.ctx, self.session, fileset_id, file_ids, settings, algorithm, location, repo_uuid
        )
        prx = self.ctx.add_servant(proc, self.session.uuid)
        proc.proxy = omero.grid.ImportProcessPrx.uncheckedCast(prx)
        with self.ctx.lock:
            self.ctx.import_processes[fileset_id] = proc
        log.info("import of fileset %d started: %s", fileset_id, used)
        return proc.proxy


def live_import_processes(ctx: ServerContext) -> list[ImportProcessI]:
    """The import processes ``listImports`` may show; forgets those that are over.

    Over: their import is not running (never started, or finished) and their client has
    closed them or its session has ended. A running import is listed until it finishes: its
    client may close the process or leave (as a push that stops waiting does) while the
    server goes on importing.
    """
    with ctx.lock:
        procs = list(ctx.import_processes.items())
    live = []
    for fileset_id, proc in procs:
        if not proc.running() and (proc.closed or proc.session.uuid not in ctx.sessions):
            with ctx.lock:
                ctx.import_processes.pop(fileset_id, None)
            continue
        live.append(proc)
    return live


@servant
class ImportProcessI(StatefulService, omero.grid.ImportProcess):
    """One running import: uploaders for its files, then verification and the import itself."""

    def __init__(
        self,
        ctx: ServerContext,
        session: Any,
        fileset_id: int,
        file_ids: list[int],
        settings: Any,
        algorithm: str,
        location: Any,
        repo_uuid: str,
    ) -> None:
        self.ctx = ctx
        self.session = session
        self.fileset_id = fileset_id
        self.file_ids = file_ids
        self.settings = settings
        self.algorithm = algorithm
        self.location = location
        self.repo_uuid = repo_uuid
        self.proxy: Any = None
        self.handle: Any = None
        self.handle_servant: HandleI | None = None
        self.uploaders: list[Any] = []
        #: closed by a client (``close``); a session's end alone does not set it
        self.closed = False

    def _file_id(self, i: int) -> int:
        if not 0 <= i < len(self.file_ids):
            raise omero.ApiUsageException(
                None, None, f"file index {i} outside 0..{len(self.file_ids) - 1}"
            )
        return self.file_ids[i]

    @remote
    def getUploader(self, i: int, current: Ice.Current | None = None) -> Any:
        """A RawFileStore already pointing at the i-th file of the fileset."""
        store = RawFileStoreI(self.ctx, self.session, self._file_id(i), refresh_on_close=False)
        prx = self.ctx.add_servant(store, self.session.uuid)
        self.uploaders.append(prx.ice_getIdentity())
        return omero.api.RawFileStorePrx.uncheckedCast(prx)

    @remote
    def getUploadOffset(self, i: int, current: Ice.Current | None = None) -> int:
        """How many bytes of file i are already uploaded (to resume an interrupted upload)."""
        path = original_path(self.ctx, self._file_id(i))
        return path.stat().st_size if path.exists() else 0

    @remote
    def getImportSettings(self, current: Ice.Current | None = None) -> Any:
        return self.settings

    def running(self) -> bool:
        """Whether the import was started (``verifyUpload``) and has not finished."""
        return self.handle_servant is not None and self.handle_servant.response is None

    def proxy_for(self, category: str) -> Any:
        """This process as a proxy in the session *category* (its own proxy in its session).

        Not tracked by that session: the process's own client may still be using it.
        """
        if self.proxy is None or self.proxy.ice_getIdentity().category == category:
            return self.proxy
        prx = self.ctx.adapter.add(self, Ice.Identity(str(uuid.uuid4()), category))
        return omero.grid.ImportProcessPrx.uncheckedCast(prx)

    @remote
    def getHandle(self, current: Ice.Current | None = None) -> Any:
        """The import's handle (None before ``verifyUpload``), reachable from the caller's
        session: a process listed to another session gives that session its own proxy."""
        category = getattr(getattr(current, "id", None), "category", None)
        if self.handle is None or category is None:
            return self.handle
        if self.handle.ice_getIdentity().category == category:
            return self.handle
        prx = self.ctx.adapter.add(self.handle_servant, Ice.Identity(str(uuid.uuid4()), category))
        return omero.cmd.HandlePrx.uncheckedCast(prx)

    @remote
    def verifyUpload(self, hashes: list[str], current: Ice.Current | None = None) -> Any:
        """Check every file's checksum, then import and return the (finished) Handle.

        As ome/omero-blitz ``ManagedImportProcessI.verifyUpload``: the client's hashes are
        compared with ``String.equals`` (so exactly, case included) to the server's lowercase
        hex; the messages are OMERO's.
        """
        if hashes is None:
            raise omero.ApiUsageException(None, None, "hashes list cannot be null")
        if len(hashes) != len(self.file_ids):
            raise omero.ApiUsageException(
                None, None, f"hashes size should be {len(self.file_ids)} not {len(hashes)}"
            )
        failing: dict[int, str] = {}  # file index -> checksum the server computed
        computed: list[str] = []
        for i, (fid, expected) in enumerate(zip(self.file_ids, hashes, strict=True)):
            actual = CHECKSUMS[self.algorithm](original_path(self.ctx, fid))
            computed.append(actual)
            if actual != expected:
                failing[i] = actual
        if failing:
            raise omero.ChecksumValidationException(
                None,
                str(omero.ChecksumValidationException),
                "A checksum mismatch has occurred.",
                failing,
            )
        for fid, actual in zip(self.file_ids, computed, strict=True):
            known = actual.lower() if self.algorithm == SHA1 else None
            refresh_file_object(self.ctx, self.session, fid, known)
        fileset = self.ctx.store.load("Fileset", self.fileset_id)
        activity = omero.model.FilesetJobLinkI()
        activity.setParent(fileset)
        activity.setChild(omero.model.MetadataImportJobI())
        request = omero.grid.ImportRequest(
            clientUuid=self.session.uuid,
            repoUuid=self.repo_uuid,
            process=self.proxy,
            activity=activity,
            settings=self.settings,
            location=self.location,
            logFile=None,
        )
        handle = HandleI(self.ctx, request, len(IMPORT_STEPS))
        prx = self.ctx.add_servant(handle, self.session.uuid)
        self.handle_servant = handle
        self.handle = omero.cmd.HandlePrx.uncheckedCast(prx)
        job = _ImportJob(self.ctx, self.session, self.fileset_id, self.settings, None, [])
        threading.Thread(target=run_import, args=(job, handle), daemon=True,
                         name=f"import-fileset-{self.fileset_id}").start()
        return self.handle

    # -- StatefulServiceInterface (asynchronous dispatch, through the core's decorator)

    def close(self, current: Ice.Current | None = None) -> None:
        for ident in self.uploaders:
            self.ctx.remove_servant(ident)
        self.uploaders = []
        if current is not None:  # a client's close; None: its session ended (listImports)
            self.closed = True
            self.ctx.remove_servant(current)



@servant
class HandleI(omero.cmd.Handle):
    """A command running in the background, with OMERO's states, steps and callbacks.

    ome/omero-blitz ``src/main/java/omero/cmd/HandleI.java``: ``getResponse`` is null until the
    request has finished; after each step every callback added with ``addCallback`` gets
    ``step(j, steps)`` and at the end ``finished(response, status)`` (one-way calls; a callback
    that cannot be reached is dropped). A failed step sets an ``omero.cmd.ERR`` whose category
    is the request's Ice id and status flags FAILURE and CANCELLED (``omero/cmd/Helper.java``
    ``fail``/``cancel``).
    """

    def __init__(self, ctx: ServerContext, request: Any, steps: int) -> None:
        self.ctx = ctx
        self.request = request
        self.response: Any = None
        self.lock = threading.Lock()
        started = int(time.time() * 1000)
        self.status = omero.cmd.Status(
            source=None, category=request.ice_id() if request is not None else "",
            name="import", flags=[], parameters={}, currentStep=0, steps=steps,
            startTime=started, stepStartTimes=[0] * steps, stepStopTimes=[0] * steps,
            stopTime=0)
        self.callbacks: dict[str, Any] = {}

    # -- what the background worker calls

    def step_started(self, step: int) -> None:
        with self.lock:
            self.status.currentStep = step
            self.status.stepStartTimes[step] = int(time.time() * 1000)

    def step_done(self, step: int) -> None:
        with self.lock:
            self.status.stepStopTimes[step] = int(time.time() * 1000)
            self.status.currentStep = step + 1
        self._notify(lambda cb: cb.step(step + 1, self.status.steps))

    def finish(self, response: Any, failed: bool = False) -> None:
        with self.lock:
            if failed:
                self.status.flags = [omero.cmd.State.FAILURE, omero.cmd.State.CANCELLED]
            self.status.stopTime = int(time.time() * 1000)
            self.response = response
        self._notify(lambda cb: cb.finished(response, self.status))

    def _notify(self, call: Callable[[Any], None]) -> None:
        with self.lock:
            callbacks = list(self.callbacks.items())
        for key, cb in callbacks:
            try:
                call(cb)
            except Ice.Exception as exc:  # the client is gone: as OMERO, stop calling it
                log.debug("callback %s unreachable: %s", key, exc)
                with self.lock:
                    self.callbacks.pop(key, None)

    # -- omero.cmd.Handle

    @remote
    def addCallback(self, cb: Any, current: Ice.Current | None = None) -> None:
        """Keep a one-way proxy of the client's callback (reached through the router)."""
        ident = cb.ice_getIdentity()
        prx = self.ctx.callback_proxy(cb, current)
        with self.lock:
            self.callbacks[Ice.identityToString(ident)] = omero.cmd.CmdCallbackPrx.uncheckedCast(
                prx.ice_oneway())

    @remote
    def removeCallback(self, cb: Any, current: Ice.Current | None = None) -> None:
        with self.lock:
            self.callbacks.pop(Ice.identityToString(cb.ice_getIdentity()), None)

    @remote
    def getRequest(self, current: Ice.Current | None = None) -> Any:
        return self.request

    @remote
    def getResponse(self, current: Ice.Current | None = None) -> Any:
        with self.lock:
            return self.response

    @remote
    def getStatus(self, current: Ice.Current | None = None) -> Any:
        with self.lock:
            return self.status

    @remote
    def cancel(self, current: Ice.Current | None = None) -> bool:
        """An import cannot be cancelled (ManagedImportRequestI has no cancel support)."""
        return False

    @remote
    def close(self, current: Ice.Current | None = None) -> None:
        with self.lock:
            self.callbacks.clear()
        if current is not None:
            self.ctx.remove_servant(current)


# --------------------------------------------------------------------------- the import


class ImportFailure(Exception):
    """An uploaded fileset that the stand-in cannot import (the message names the file)."""

    def __init__(self, message: str, file_name: str = "") -> None:
        super().__init__(message)
        self.file_name = file_name


@dataclass
class _ImportJob:
    """What every image of one import shares: who imports, into which fileset and target."""

    ctx: ServerContext
    session: Any
    fileset_id: int
    settings: Any
    target: Any  # unloaded Dataset or None
    extra_annotations: list[Any]  # userSpecifiedAnnotationList, as unloaded refs
    #: what this import made, by id (deleted again if the import fails)
    made_images: list[int] = field(default_factory=list)
    made_pixels: list[int] = field(default_factory=list)
    made_annotations: list[int] = field(default_factory=list)


@dataclass
class _OmeTiff:
    """One uploaded OME-TIFF: where it is, its name, its OME root and page count."""

    path: Path
    name: str
    ome: Any  # ome_types.OME
    page_count: int
    #: OME-XML annotation id -> saved annotation (one per id even if several images refer)
    created: dict[str, Any] = field(default_factory=dict)

    @property
    def annotations(self) -> dict[str, Any]:
        """The file's Tag, Comment and Map annotations by OME-XML id (what OMERO imports)."""
        sa = self.ome.structured_annotations
        out: dict[str, Any] = {}
        for kind in ("tag_annotations", "comment_annotations", "map_annotations"):
            out.update({a.id: a for a in (getattr(sa, kind, None) or [])})
        return out


#: ome/omero-blitz ``ManagedImportRequestI.step``: metadata (images saved), pixel data
#: (checksums, min/max), thumbnails, processing, and the objects for the response.
IMPORT_STEPS = ("metadata", "pixel data", "thumbnails", "processing", "objects")

#: Bio-Formats reads zstd-compressed TIFFs from 7.0 on (OMERO 5.6.9); an older version given
#: with ``--bioformats-version`` fails the pixel-data step on them (TIFF compression 50000).
ZSTD_SINCE = (7, 0)
ZSTD_COMPRESSION = 50000


@dataclass
class _MadeImage:
    """One image saved by the metadata step, waiting for the pixel-data step."""

    image: Any
    pixels_id: int
    source: TiffSource
    file_name: str


class PixelDataFailure(Exception):
    """The pixel-data step could not read the planes (Bio-Formats' error text)."""


def run_import(job: _ImportJob, handle: HandleI) -> None:
    """Run an import's steps in the background, as OMERO's ``HandleI`` runs its request.

    The metadata step saves the images (and undoes them if it fails itself, as its one
    transaction would); once it is done, they stay even if a later step fails, as in OMERO
    (ome/omero-blitz ``ManagedImportRequestI.importMetadata`` saves through
    ``store.saveToDB``). Failures end as ``omero.cmd.ERR`` with OMERO's names.
    """
    made: list[_MadeImage] = []
    step = 0
    try:
        for step, _name in enumerate(IMPORT_STEPS):
            job.ctx.faults.import_step()
            handle.step_started(step)
            if step == 0:
                made = import_metadata(job)
            elif step == 1:
                pixel_data(job, made)
            handle.step_done(step)
        handle.finish(import_response(job.ctx, made))
    except Exception as exc:  # noqa: BLE001 - reported to the client as omero.cmd.ERR
        log.warning("import of fileset %d failed in step %d (%s): %s", job.fileset_id, step,
                    IMPORT_STEPS[step], exc)
        handle.finish(import_error(exc, handle), failed=True)


def import_error(exc: Exception, handle: HandleI) -> Any:
    """``omero.cmd.ERR`` as ``ManagedImportRequestI.step``'s handlers and ``Helper.fail`` make it."""
    name, params = "import-request-failure", {}
    if isinstance(exc, ImportFailure):
        name = "import-file-exception"
        if exc.file_name:
            params["filename"] = exc.file_name
    return omero.cmd.ERR(
        category=handle.status.category,
        name=name,
        parameters={**params, "message": str(exc),
                    "stacktrace": "".join(traceback.format_exception(exc))},
    )


def import_metadata(job: _ImportJob) -> list[_MadeImage]:
    """Step 0: read every OME-TIFF of the fileset and save its images (undone if this fails)."""
    ctx = job.ctx
    fileset = ctx.store.load("Fileset", job.fileset_id, fetch=("usedFiles.originalFile",))
    made: list[_MadeImage] = []
    try:
        job.target = _target(ctx, job.settings)
        job.extra_annotations = _user_annotations(ctx, job.settings)
        for entry in fileset.copyUsedFiles():
            tiff = _read_ome_tiff(ctx, entry.getOriginalFile())
            if tiff is None:
                continue
            for index in range(len(tiff.ome.images)):
                made.append(_create_image(job, tiff, index))
            ofile = ctx.store.load("OriginalFile", entry.getOriginalFile().getId().getValue())
            ofile.setMimetype(rstring("OMETiff"))
            job.session.save(ofile)
        if not made:
            raise ImportFailure("no OME-TIFF image in the fileset", fileset_name(fileset))
    except BaseException:
        _undo(job)
        raise
    return made


def fileset_name(fileset: Any) -> str:
    """The first file's client path (what OMERO's errors name), else the fileset id."""
    for entry in fileset.copyUsedFiles():
        if entry.getClientPath() is not None:
            return entry.getClientPath().getValue()
    return f"Fileset:{fileset.getId().getValue()}"


def pixel_data(job: _ImportJob, made: list[_MadeImage]) -> None:
    """Step 1: point each Pixels at its file, check the planes decode, compute min/max.

    ``ManagedImportRequestI.pixelData``: ``setPixelsFile`` per series, then the planes are
    parsed for min/max unless ``noStatsInfo``. With ``--bioformats-version`` below 7.0 a
    zstd-compressed plane fails here, as Bio-Formats' ``TiffCompression.get`` does.
    """
    version = job.ctx.faults.bioformats_version
    for item in made:
        if version is not None and version < ZSTD_SINCE and _has_zstd(item.source):
            raise PixelDataFailure(
                f"{item.file_name}: Unable to find TiffCompresssion with code: {ZSTD_COMPRESSION}"
                f" (Bio-Formats {'.'.join(map(str, version))} reads no zstd)")
        record_tiff_source(job.ctx.store_dir, item.pixels_id, item.source)
        if not _flag(getattr(job.settings, "noStatsInfo", None)):
            _stats(job.ctx, job.session, item.pixels_id, item.source)


def _has_zstd(source: TiffSource) -> bool:
    import tifffile

    with tifffile.TiffFile(source.path) as tif:
        return any(int(tif.pages[i].compression) == ZSTD_COMPRESSION
                   for i in set(source.ifds.values()))


def import_response(ctx: ServerContext, made: list[_MadeImage]) -> Any:
    """``ManagedImportRequestI.buildResponse``: the Pixels, and Plates then Images as objects."""
    pixels = [ctx.store.load("Pixels", m.pixels_id, fetch=("image", "pixelsType")) for m in made]
    images = [ctx.store.load("Image", m.image.getId().getValue(), fetch=("pixels.pixelsType",
                                                                          "fileset"))
              for m in made]
    return omero.grid.ImportResponse(pixels=pixels, objects=images)


def _undo(job: _ImportJob) -> None:
    """Delete what a failed import made: images (with pixels, channels, links), annotations."""
    for image_id in job.made_images:
        with contextlib.suppress(Exception):
            job.ctx.store.delete("Image", image_id)
    for aid in job.made_annotations:
        with contextlib.suppress(Exception):
            job.ctx.store.delete("Annotation", aid)
    for pid in job.made_pixels:
        tiff_pointer_path(job.ctx.store_dir, pid).unlink(missing_ok=True)


def _read_ome_tiff(ctx: ServerContext, ofile: Any) -> _OmeTiff | None:
    """Parse an uploaded file's OME-XML; None for a file that is not a TIFF at all."""
    import ome_types
    import tifffile

    name = unwrap_str(ofile.getName()) or "file"
    path = original_path(ctx, ofile.getId().getValue())
    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
            page_count = len(tif.pages)
    except Exception as exc:  # noqa: BLE001 - not a TIFF (a companion or stray file)
        log.debug("%s is not a TIFF (%s)", name, exc)
        return None
    if not xml:
        raise ImportFailure(f"{name}: a TIFF without OME-XML (only OME-TIFF is supported)", name)
    try:
        ome = ome_types.from_xml(xml)
    except Exception as exc:  # noqa: BLE001
        raise ImportFailure(f"{name}: invalid OME-XML: {exc}", name) from exc
    return _OmeTiff(path, name, ome, page_count)


def _target(ctx: ServerContext, settings: Any) -> Any:
    """The Dataset named by ``settings.userSpecifiedTarget`` (checked), or None."""
    target = getattr(settings, "userSpecifiedTarget", None)
    if target is None:
        return None
    if not isinstance(target, omero.model.Dataset):
        raise ImportFailure(
            f"import target {type(target).__name__} is not supported by the stand-in "
            "(only a Dataset)"
        )
    tid = target.getId().getValue()
    if not ctx.store.exists("Dataset", tid):
        raise ImportFailure(f"import target Dataset:{tid} does not exist")
    return omero.model.DatasetI(tid, False)


def _user_annotations(ctx: ServerContext, settings: Any) -> list[Any]:
    """Existing annotations from ``settings.userSpecifiedAnnotationList`` (as unloaded refs)."""
    out = []
    for ann in getattr(settings, "userSpecifiedAnnotationList", None) or []:
        if ann is None or ann.getId() is None:
            raise ImportFailure("userSpecifiedAnnotationList holds an unsaved annotation")
        aid = ann.getId().getValue()
        kind = ctx.store.kind("Annotation", aid)
        if kind is None:
            raise ImportFailure(f"Annotation:{aid} does not exist")
        out.append(getattr(omero.model, kind + "I")(aid, False))
    return out


def _length(value: float | None, unit: Any) -> Any:
    if value is None:
        return None
    return omero.model.LengthI(float(value), unit.name if unit is not None else "MICROMETER")


def _time(value: float | None, unit: Any) -> Any:
    if value is None:
        return None
    return omero.model.TimeI(float(value), unit.name if unit is not None else "SECOND")


def _image_name(file_name: str, index: int, count: int, ome_image: Any, settings: Any) -> str:
    """OMERO's naming: the file name, plus `` [image name]`` when the file holds several."""
    user = unwrap_str(getattr(settings, "userSpecifiedName", None))
    if user:
        return user
    if count == 1:
        return file_name
    return f"{file_name} [{ome_image.name or index}]"


def _create_image(job: _ImportJob, tiff: _OmeTiff, index: int) -> _MadeImage:
    """Save the Image graph of OME Image *index* of a file (the metadata step's part)."""
    ctx, session, settings = job.ctx, job.session, job.settings
    file_name, path = tiff.name, tiff.path
    ome_image = tiff.ome.images[index]
    px = ome_image.pixels
    ptype = px.type.value
    if ptype not in PIXELS_DTYPES:
        raise ImportFailure(f"{file_name}: PixelType {ptype} is not supported by the stand-in",
                            file_name)
    try:
        ifds = plane_ifds(px, tiff.ome.uuid, file_name)
    except PixelsError as exc:
        raise ImportFailure(f"{file_name}: {exc}", file_name) from exc
    bad = [i for i in ifds.values() if i >= tiff.page_count]
    if bad:
        raise ImportFailure(f"{file_name}: TiffData points at IFD {bad[0]} of {tiff.page_count}",
                            file_name)
    description = unwrap_str(getattr(settings, "userSpecifiedDescription", None))
    if description is None:
        description = ome_image.description
    image = new_pixels_graph(
        ctx,
        px.size_x,
        px.size_y,
        px.size_z,
        px.size_t,
        px.size_c,
        ptype,
        _image_name(file_name, index, len(tiff.ome.images), ome_image, settings),
        description,
    )
    image.setSeries(rint(index))
    ome_tiff = ctx.store.enum("Format", "OMETiff")
    if ome_tiff is not None:
        image.setFormat(omero.model.FormatI(ome_tiff.getId().getValue(), False))
    image.setFileset(omero.model.FilesetI(job.fileset_id, False))
    if ome_image.acquisition_date is not None:
        image.setAcquisitionDate(rtime(int(ome_image.acquisition_date.timestamp() * 1000)))
    else:
        image.setAcquisitionDate(None)
    pixels = image.getPrimaryPixels()
    order = ctx.store.enum("DimensionOrder", px.dimension_order.value)
    pixels.setDimensionOrder(omero.model.DimensionOrderI(order.getId().getValue(), False))
    if px.significant_bits:
        pixels.setSignificantBits(rint(px.significant_bits))
    pixels.setPhysicalSizeX(_length(px.physical_size_x, px.physical_size_x_unit))
    pixels.setPhysicalSizeY(_length(px.physical_size_y, px.physical_size_y_unit))
    pixels.setPhysicalSizeZ(_length(px.physical_size_z, px.physical_size_z_unit))
    pixels.setTimeIncrement(_time(px.time_increment, px.time_increment_unit))
    user_sizes = list(getattr(settings, "userSpecifiedPixels", None) or [])
    for getter, setter, value in zip(
        (pixels.getPhysicalSizeX, pixels.getPhysicalSizeY, pixels.getPhysicalSizeZ),
        (pixels.setPhysicalSizeX, pixels.setPhysicalSizeY, pixels.setPhysicalSizeZ),
        user_sizes,
        strict=False,
    ):
        # ome/omero-blitz ome/formats/model/PixelsProcessor.java: the user's size (µm) is
        # used only where the file gives none
        if value is not None and getter() is None:
            setter(omero.model.LengthI(float(value), "MICROMETER"))
    spp = samples_per_ifd(px)
    rgb = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    for c, channel in enumerate(pixels.copyChannels()):
        if c // spp < len(px.channels):
            _fill_channel(channel, px.channels[c // spp])
        if spp == 3:  # an RGB file: one OMERO channel per sample, coloured as OMERO shows them
            channel.setRed(rint(rgb[c % 3][0]))
            channel.setGreen(rint(rgb[c % 3][1]))
            channel.setBlue(rint(rgb[c % 3][2]))
            channel.setAlpha(rint(255))
    for plane in px.planes:
        info = omero.model.PlaneInfoI()
        info.setTheZ(rint(plane.the_z))
        info.setTheC(rint(plane.the_c))
        info.setTheT(rint(plane.the_t))
        info.setDeltaT(_time(plane.delta_t, plane.delta_t_unit))
        info.setExposureTime(_time(plane.exposure_time, plane.exposure_time_unit))
        info.setPositionX(_length(plane.position_x, plane.position_x_unit))
        info.setPositionY(_length(plane.position_y, plane.position_y_unit))
        info.setPositionZ(_length(plane.position_z, plane.position_z_unit))
        pixels.addPlaneInfo(info)
    image = session.save(image)
    image_id = image.getId().getValue()
    pixels_id = image.getPrimaryPixels().getId().getValue()
    job.made_images.append(image_id)
    job.made_pixels.append(pixels_id)
    dtype = PIXELS_DTYPES[ptype]
    geometry = Geometry(px.size_x, px.size_y, px.size_z, px.size_c, px.size_t, dtype)
    source = TiffSource(path, index, ifds, geometry, samples_per_ifd(px))
    links: list[Any] = []
    annotations = tiff.annotations
    for ref in ome_image.annotation_refs:
        ome_ann = annotations.get(ref.id)
        if ome_ann is None:
            continue  # a kind OMERO's import does not bring in here (file, XML, ...)
        ann = tiff.created.get(ref.id)
        if ann is None:
            ann = session.save(_annotation(ome_ann))
            tiff.created[ref.id] = ann
            job.made_annotations.append(ann.getId().getValue())
        links.append(type(ann)(ann.getId().getValue(), False))
    links.extend(job.extra_annotations)
    for ann in links:
        link = omero.model.ImageAnnotationLinkI()
        link.setParent(omero.model.ImageI(image_id, False))
        link.setChild(ann)
        session.save(link)
    if job.target is not None:
        link = omero.model.DatasetImageLinkI()
        link.setParent(job.target)
        link.setChild(omero.model.ImageI(image_id, False))
        session.save(link)
    saved = ctx.store.load("Image", image_id, fetch=("pixels.pixelsType", "fileset"))
    return _MadeImage(saved, pixels_id, source, file_name)


def _flag(value: Any) -> bool:
    return bool(value.getValue()) if value is not None else False


def _fill_channel(channel: Any, ome_channel: Any) -> None:
    """Colour on the Channel; name, wavelengths and fluor on its LogicalChannel."""
    if ome_channel.color is not None:
        r, g, b, *rest = ome_channel.color.as_rgb_tuple(alpha=True)
        alpha = int(round(rest[0] * 255)) if rest else 255
        channel.setRed(rint(r))
        channel.setGreen(rint(g))
        channel.setBlue(rint(b))
        channel.setAlpha(rint(alpha))
    logical = channel.getLogicalChannel()
    if ome_channel.name is not None:
        logical.setName(rstring(ome_channel.name))
    logical.setEmissionWave(
        _length(ome_channel.emission_wavelength, ome_channel.emission_wavelength_unit)
    )
    logical.setExcitationWave(
        _length(ome_channel.excitation_wavelength, ome_channel.excitation_wavelength_unit)
    )
    if ome_channel.fluor:
        logical.setFluor(rstring(ome_channel.fluor))
    if ome_channel.samples_per_pixel:
        logical.setSamplesPerPixel(rint(ome_channel.samples_per_pixel))


def _annotation(ome_ann: Any) -> Any:
    """A new OMERO Tag, Comment or Map annotation from an OME-XML one, namespace kept.

    As Bio-Formats' ``MetadataConverter`` hands them to ome/omero-blitz
    ``OMEROMetadataStoreClient`` (``setTagAnnotationValue``/``Namespace``/``Description``,
    ``setCommentAnnotation*``, ``setMapAnnotation*``): each is a new object, never an
    existing tag looked up by its text; the map's pairs keep their order.
    """
    from ome_types import model as om

    if isinstance(ome_ann, om.MapAnnotation):
        ann = omero.model.MapAnnotationI()
        pairs = []
        for m in ome_ann.value.ms if ome_ann.value is not None else []:
            pairs.append(omero.model.NamedValue(m.k or "", m.value or ""))
        ann.setMapValue(pairs)
    elif isinstance(ome_ann, om.TagAnnotation):
        ann = omero.model.TagAnnotationI()
        ann.setTextValue(rstring(ome_ann.value))
    else:
        ann = omero.model.CommentAnnotationI()
        ann.setTextValue(rstring(ome_ann.value))
    if ome_ann.namespace:
        ann.setNs(rstring(ome_ann.namespace))
    if ome_ann.description:
        ann.setDescription(rstring(ome_ann.description))
    return ann


def _stats(ctx: ServerContext, session: Any, pixels_id: int, source: TiffSource) -> None:
    """Per-channel global min/max over all planes, as OMERO's import computes (StatsInfo)."""
    g = source.geometry
    buffer = TiffBuffer(source)
    try:
        lows = [np.inf] * g.size_c
        highs = [-np.inf] * g.size_c
        # strips of at most ~32 MB: a huge tiled plane is never decoded whole
        rows = max(1, min(g.size_y, (32 << 20) // g.row_size))
        low, high = (np.nanmin, np.nanmax) if g.dtype.kind == "f" else (np.min, np.max)
        for z, c, t in source.ifds:
            for y in range(0, g.size_y, rows):
                h = min(rows, g.size_y - y)
                strip = np.frombuffer(buffer.read_tile(z, c, t, 0, y, g.size_x, h), g.dtype)
                lows[c] = min(lows[c], float(low(strip)))
                highs[c] = max(highs[c], float(high(strip)))
    finally:
        buffer.close()
    pixels = ctx.store.load("Pixels", pixels_id, fetch=("channels.statsInfo",))
    for c, channel in enumerate(pixels.copyChannels()):
        if lows[c] == np.inf:
            continue
        stats = omero.model.StatsInfoI()
        stats.setGlobalMin(rdouble(lows[c]))
        stats.setGlobalMax(rdouble(highs[c]))
        channel.setStatsInfo(stats)
        session.save(channel)


def register(ctx: ServerContext) -> None:
    """Plug SharedResources (repository and tables) into the core; one servant per session."""
    ctx.register_service("SharedResources", SharedResourcesI)

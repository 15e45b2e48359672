"""OMERO.tables for the stand-in, served by omero-py's own table code.

OMERO.tables is itself Python: ``omero.tables.TableI`` (the ``omero.grid.Table`` servant) over
``omero.hdfstorageV2.HdfStorage`` (PyTables), with the typed columns of ``omero.columns``. The
stand-in reuses those classes unchanged and replaces only what ties them to a real grid: the
Tables server that looks the file's path up in the repository, and the refresh of the table's
OriginalFile on close (done here directly in the store instead of through a client
RawFileStore). So the HDF5 layout, column types, ``getWhereList`` queries and metadata are
exactly OMERO's.

A table is an OriginalFile (mimetype ``OMERO.tables``) whose content — the HDF5 file — lives at
``<store>/files/originals/<id>``, where ``RawFileStore`` reads it too. With the
``tables_enabled`` fault off, ``areTablesEnabled()`` is False and ``newTable``/``openTable``
return None, as on a server without OMERO.tables.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import types
import uuid
from pathlib import PurePosixPath
from typing import Any

import Ice
import omero
import omero.columns
import omero.grid
import omero.model
import omero.tables
from omero.hdfstorageV2 import HDFLIST
from omero.rtypes import rlong, rstring
from omero.util.decorators import remoted

from .rawfile import original_path, refresh_file_object
from .server import ServerContext

log = logging.getLogger(__name__)

#: The mimetype OMERO gives a table's OriginalFile (what openTable and clients look for).
TABLES_MIMETYPE = "OMERO.tables"


class _Admin:
    """The one IAdmin call TableI makes: may this user write the file? (Owner or admin.)"""

    def __init__(self, ctx: ServerContext, session: Any) -> None:
        self.ctx = ctx
        self.session = session

    def canUpdate(self, obj: Any, ctx: Any = None) -> bool:  # noqa: N802 - OMERO's name
        flat = self.ctx.store.flat("OriginalFile", obj.getId().getValue())
        if flat is None:
            return False
        owner = flat.getDetails().getOwner()
        return bool(self.session.is_admin) or (
            owner is not None and owner.getId().getValue() == self.session.user_id
        )


class _Factory:
    """Just enough of a ServiceFactory for TableI's constructor (it asks IAdmin.canUpdate)."""

    def __init__(self, ctx: ServerContext, session: Any) -> None:
        self._admin = _Admin(ctx, session)

    def getAdminService(self) -> _Admin:  # noqa: N802 - OMERO's name
        return self._admin


class StandInTableI(omero.tables.TableI):
    """omero-py's TableI, with close/delete writing to the stand-in's store directly.

    Everything else — initialize, addData, read, slice, getWhereList, metadata — is omero-py's
    code over omero-py's HdfStorage.
    """

    def __init__(self, ctx: ServerContext, session: Any, file_obj: Any, read_only: bool) -> None:
        self.stand_in = ctx
        self.session = session
        server_ctx = types.SimpleNamespace(
            stop_event=threading.Event(), communicator=ctx.communicator, getSession=None
        )
        name = str(uuid.uuid4())
        super().__init__(
            server_ctx,
            file_obj,
            str(original_path(ctx, file_obj.getId().getValue())),
            _Factory(ctx, session),
            HDFLIST,
            read_only=read_only,
            uuid=name,
            call_context=None,
            adapter=None,
        )
        self.id = Ice.Identity(name, session.uuid)

    @remoted
    def close(self, current: Ice.Current | None = None) -> None:
        """Release the HDF5 file; if it changed, refresh the OriginalFile's size and SHA-1."""
        try:
            if not self._closed:
                modified = self.storage.modified() if self.storage else False
                self.cleanup()
                self._closed = True
                if modified and self.can_write:
                    refresh_file_object(
                        self.stand_in, self.session, self.file_obj.getId().getValue()
                    )
        finally:
            self.stand_in.remove_servant(self.id)

    @remoted
    def delete(self, current: Ice.Current | None = None) -> None:
        """Close the table, then delete its OriginalFile and HDF5 file."""
        self.assert_write()
        self.close(current)
        fid = self.file_obj.getId().getValue()
        self.stand_in.store.delete("OriginalFile", fid)
        original_path(self.stand_in, fid).unlink(missing_ok=True)


def _table_proxy(ctx: ServerContext, session: Any, file_obj: Any) -> Any:
    table = StandInTableI(ctx, session, file_obj, read_only=False)
    prx = ctx.add_servant(table, table.id.category, table.id.name)  # recorded by the session
    return omero.grid.TablePrx.uncheckedCast(prx)


def new_table(ctx: ServerContext, session: Any, repo_id: int, path: str) -> Any:
    """``SharedResources.newTable``: a new OriginalFile (OMERO.tables) and its open Table.

    *path* becomes the file's name (its last part) and path, as in OMERO.
    """
    if not ctx.faults.tables_enabled:
        return None
    if not path:
        raise omero.ApiUsageException(None, None, "newTable needs a path (the table's name)")
    pure = PurePosixPath(path)
    ofile = omero.model.OriginalFileI()
    ofile.setName(rstring(pure.name))
    parent = str(pure.parent)
    ofile.setPath(rstring("" if parent == "." else parent + "/"))
    ofile.setMimetype(rstring(TABLES_MIMETYPE))
    ofile.setSize(rlong(0))
    saved = session.save(ofile)
    file_obj = ctx.store.load("OriginalFile", saved.getId().getValue())
    original_path(ctx, file_obj.getId().getValue()).unlink(missing_ok=True)
    return _table_proxy(ctx, session, file_obj)


def open_table(ctx: ServerContext, session: Any, file_obj: Any) -> Any:
    """``SharedResources.openTable``: the Table of an existing OMERO.tables OriginalFile."""
    if not ctx.faults.tables_enabled:
        return None
    if file_obj is None or file_obj.getId() is None:
        raise omero.ApiUsageException(None, None, "openTable needs a saved OriginalFile")
    fid = file_obj.getId().getValue()
    loaded = ctx.store.load("OriginalFile", fid)
    if loaded is None:
        raise omero.ValidationException(None, None, f"OriginalFile:{fid} does not exist")
    mimetype = loaded.getMimetype().getValue() if loaded.getMimetype() is not None else None
    if mimetype != TABLES_MIMETYPE:
        raise omero.ApiUsageException(
            None, None, f"OriginalFile:{fid} is not a table (mimetype {mimetype!r})"
        )
    return _table_proxy(ctx, session, loaded)


def register(ctx: ServerContext) -> None:
    """Teach the server's communicator omero-py's column classes (the table data types).

    A column arrives as ``omero.grid.LongColumn`` etc.; the object factories of
    ``omero.columns`` make them ``LongColumnI``, whose methods HdfStorage calls.
    SharedResources itself is registered by :mod:`.repository`.
    """
    for factory in omero.columns.ObjectFactories.values():
        with contextlib.suppress(Ice.AlreadyRegisteredException):
            factory.register(ctx.communicator)

"""An ezomero-style API: functions that take an open ``BlitzGateway`` (conn first) and return ids.

For scripts that already hold a connection, as ezomero's users do::

    from omero.gateway import BlitzGateway
    from omero_push import api

    with BlitzGateway(user, password, host=host, secure=True) as conn:
        conn.connect()
        did = api.find_or_create_dataset(conn, "exp42", project="Screens")
        image_ids = api.push_folder(conn, "OUT/", dataset_id=did)
        api.link_tags(conn, "Image", image_ids[0], ["yeast"])

Every function also accepts a plain ``omero.client`` (what ``omero`` CLI plug-ins get from
``ctx.conn``).  The connection stays the caller's: nothing here closes it, and a failure raises a
:class:`~omero_push.errors.PushError` subclass with a one-line message (never ``None`` for "failed",
the ezomero habit STYLE.md asks us to avoid).  Like ezomero's verbs each one finds before it
creates, so calling it twice makes nothing new.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omero_push import annotate, tables
from omero_push.manifest import TablesSource, read_manifest
from omero_push.plan import ContainerRef, Target
from omero_push.session import Session, borrow, translate
from omero_push.target import resolve_target

__all__ = [
    "attach_key_values",
    "attach_tables",
    "find_or_create_dataset",
    "link_tags",
    "push_files",
    "push_folder",
]

PathLike = str | os.PathLike[str]


def push_files(
    conn: Any,
    paths: Sequence[PathLike],
    dataset_id: int | None = None,
    *,
    target: str | None = None,
    mode: str = "import",
    **options: Any,
) -> list[int]:
    """Push OME-TIFF files into ``Dataset:dataset_id`` (or an ``omero import -T`` ``target``);
    returns the image ids in file order.  ``options`` are :func:`omero_push.push.push`'s
    (``provenance_on``, ``parallel``, ``overrides``, ``progress``, …)."""
    from omero_push.push import push

    if (dataset_id is None) == (target is None):
        raise TypeError("give exactly one of dataset_id and target")
    result = push(
        list(paths),
        conn=conn,
        dataset=dataset_id,
        target=target,
        mode=mode,
        **options,
    )
    return result.image_ids


def push_folder(
    conn: Any,
    folder: PathLike,
    dataset_id: int | None = None,
    *,
    target: str | None = None,
    mode: str = "import",
    **options: Any,
) -> list[int]:
    """Push a posdir2ometiff output folder (its manifest gives description, tags, key-value pairs
    and tables); without ``dataset_id``/``target`` the manifest's dataset is used.  Returns the
    image ids, one per position in the manifest's order."""
    from omero_push.push import push

    read_manifest(Path(folder))  # a one-line InputError now rather than after connecting
    result = push([folder], conn=conn, dataset=dataset_id, target=target, mode=mode, **options)
    return result.image_ids


def find_or_create_dataset(
    conn: Any,
    name: str,
    project: str | int | None = None,
    *,
    description: str | None = None,
) -> int:
    """The id of the user's dataset ``name`` (the newest of several, as ``omero import -T``),
    inside ``project`` (a name, found or created, or a Project id) when given; created if none.
    ``description`` is set when given."""
    proj = None
    if project is not None:
        proj = (
            ContainerRef("Project", id=int(project))
            if isinstance(project, int) or str(project).isdigit()
            else ContainerRef("Project", name=str(project))
        )
    session = _session(conn)
    target = Target(ContainerRef("Dataset", name=name), proj)
    _pid, did = _call(session, lambda: resolve_target(session, target), f"dataset {name!r}")
    if description is not None:
        _call(
            session,
            lambda: annotate.set_description(session, "Dataset", did, description),
            f"Dataset:{did} description",
        )
    return did


def link_tags(conn: Any, object_type: str, object_id: int, tags: Sequence[str]) -> list[int]:
    """Link tags (reused by name, created when new) to ``object_type:object_id``; returns the
    tag ids in the order given.  A tag already linked is not linked twice."""
    session = _session(conn)
    ids, _created, _links = _call(
        session,
        lambda: annotate.ensure_tags(session, object_type, object_id, list(tags)),
        f"tags on {object_type}:{object_id}",
    )
    return ids


def attach_key_values(
    conn: Any,
    object_type: str,
    object_id: int,
    pairs: Mapping[str, str] | Sequence[tuple[str, str]],
    ns: str = annotate.KV_NS,
) -> int:
    """Attach key-value pairs as one MapAnnotation (OMERO.web's editable namespace by default);
    an identical one already linked is reused.  Returns the MapAnnotation id."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    if not items:
        raise ValueError("no key-value pairs to attach")
    session = _session(conn)
    aid, _made = _call(
        session,
        lambda: annotate.ensure_map_annotation(
            session, object_type, object_id, [(str(k), str(v)) for k, v in items], ns
        ),
        f"key-value pairs on {object_type}:{object_id}",
    )
    assert aid is not None
    return int(aid)


def attach_tables(
    conn: Any, dataset_id: int, h5_path: PathLike, names: Sequence[str] = ()
) -> list[int]:
    """Every table of an HDF5 file (or those in ``names``) as an OMERO.table on the dataset;
    returns the FileAnnotation ids.  With OMERO.tables off, the file itself is attached (one id)."""
    session = _session(conn)
    source = TablesSource(Path(h5_path), None, tuple(names))
    outcome = _call(
        session,
        lambda: tables.ensure_tables(session, dataset_id, source),
        f"tables on Dataset:{dataset_id}",
    )
    return list(outcome.file_annotation_ids)


def _session(conn: Any) -> Session:
    return borrow(conn)


def _call(session: Session, fn: Any, what: str) -> Any:
    try:
        return fn()
    except Exception as exc:
        raise translate(exc, what) from None

"""The experiment's HDF5 tables as OMERO.tables on the dataset (or, without the service, the file).

Column types follow the data, never the column name: integer → LongColumn, float → DoubleColumn,
bool → BoolColumn, string → StringColumn sized to the longest value in UTF-8 bytes, and datetimes
(which OMERO.tables cannot hold) → ISO-8601 StringColumn.  Each table becomes one OMERO.table
linked to the dataset as a FileAnnotation.

Where the rows belong to images (a column naming the positions, as the positions table's
``name``), the table follows omero-metadata's convention (ome/omero-metadata
``src/omero_metadata/populate.py``: an ``ImageColumn`` named ``Image`` and a ``StringColumn``
``Image Name``) and goes in the bulk-annotations namespace, which OMERO.web, omero-metadata and
OMERO.parade read: OMERO.web shows each image its own rows by querying ``(Image==id)``
(ome/omero-web ``omeroweb/webgateway/views.py``, ``perform_table_query``).  A table whose rows
belong to no image would break that query, so it goes under our own namespace :data:`TABLE_NS`.

Re-runs recognise a table by its FileAnnotation's description, which names the table and the
HDF5 file's SHA-1; a changed HDF5 file (a re-conversion) gets new tables beside the old ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omero_push.manifest import TablesSource
from omero_push.session import Session
from posdir2ometiff.manifest import sha1_file

log = logging.getLogger(__name__)

BULK_NS = "openmicroscopy.org/omero/bulk_annotations"
#: Tables whose rows belong to no image (channels, pumps, ...): not OMERO.web's per-image tables.
TABLE_NS = "posdir2ometiff/omero_push/table"
IMAGE_COLUMN = "Image"
IMAGE_NAME_COLUMN = "Image Name"
#: Column names (case-insensitive) that may name a table row's position, hence its image.
POSITION_COLUMNS = ("position", "name", "position name", "pos", "image name")
HDF5_FILE_NS = "posdir2ometiff/omero_push/hdf5"
HDF5_MIMETYPE = "application/x-hdf5"


@dataclass(frozen=True)
class ColumnSpec:
    """One OMERO.tables column before it meets omero-py: kind is Long/Double/Bool/String/Image."""

    name: str
    kind: str
    values: list[Any]
    size: int = 0  # StringColumn width in bytes


def column_specs(df: pd.DataFrame) -> list[ColumnSpec]:
    """Map a DataFrame's columns to OMERO.tables column kinds by dtype.

    Nullable integers with missing values become doubles (NaN is the only missing value OMERO.tables
    can store); missing strings become "".
    """
    specs: list[ColumnSpec] = []
    for raw_name in df.columns:
        name = str(raw_name).replace("/", "_") or "column"
        s = df[raw_name]
        dt = s.dtype
        if pd.api.types.is_bool_dtype(dt) and not s.isna().any():
            specs.append(ColumnSpec(name, "Bool", [bool(v) for v in s]))
        elif pd.api.types.is_integer_dtype(dt):
            if s.isna().any():
                specs.append(
                    ColumnSpec(
                        name, "Double", [float("nan") if pd.isna(v) else float(v) for v in s]
                    )
                )
            else:
                specs.append(ColumnSpec(name, "Long", [int(v) for v in s]))
        elif pd.api.types.is_float_dtype(dt):
            specs.append(ColumnSpec(name, "Double", [float(v) for v in s.astype("float64")]))
        elif pd.api.types.is_datetime64_any_dtype(dt):
            vals = ["" if pd.isna(v) else pd.Timestamp(v).isoformat() for v in s]
            specs.append(_string_spec(name, vals))
        else:
            vals = [
                "" if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v) for v in s
            ]
            specs.append(_string_spec(name, vals))
    return specs


def _string_spec(name: str, values: list[str]) -> ColumnSpec:
    size = max([len(v.encode("utf-8")) for v in values] + [1])
    return ColumnSpec(name, "String", values, size)


def to_omero_columns(specs: list[ColumnSpec], with_values: bool = True) -> list[Any]:
    """omero.grid column objects for ``specs`` (empty for ``initialize``, full for ``addData``)."""
    import omero.grid  # noqa: F401 - registers the column classes
    from omero.grid import BoolColumn, DoubleColumn, ImageColumn, LongColumn, StringColumn

    cols: list[Any] = []
    for s in specs:
        vals = s.values if with_values else []
        if s.kind == "Long":
            cols.append(LongColumn(s.name, "", vals))
        elif s.kind == "Image":
            cols.append(ImageColumn(s.name, "", vals))
        elif s.kind == "Double":
            cols.append(DoubleColumn(s.name, "", vals))
        elif s.kind == "Bool":
            cols.append(BoolColumn(s.name, "", vals))
        else:
            cols.append(StringColumn(s.name, "", s.size, vals))
    return cols


def image_columns(df: pd.DataFrame, images: dict[str, tuple[int, str]]) -> list[ColumnSpec] | None:
    """``Image`` and ``Image Name`` columns when every row names a pushed image, else None.

    ``images`` maps a position or image name (lower case) to (image id, image name).  The first
    column named like a position (:data:`POSITION_COLUMNS`) whose every value is one of them
    decides; a table with rows of positions that were not pushed stays an image-less table.
    """
    if not images or len(df) == 0:
        return None
    existing = {str(c).strip().lower() for c in df.columns}
    if IMAGE_COLUMN.lower() in existing:
        return None  # the table has its own "Image" column: not ours to replace
    for raw in df.columns:
        if str(raw).strip().lower() not in POSITION_COLUMNS:
            continue
        keys = [str(v).strip().lower() for v in df[raw]]
        if all(k in images for k in keys):
            out = [ColumnSpec(IMAGE_COLUMN, "Image", [images[k][0] for k in keys])]
            if IMAGE_NAME_COLUMN.lower() not in existing:
                out.append(_string_spec(IMAGE_NAME_COLUMN, [images[k][1] for k in keys]))
            return out
    return None


def read_hdf5_tables(path: Path) -> dict[str, pd.DataFrame]:
    """All tables of the HDF5 file, through the converter's own reader when it is installed."""
    try:
        from posdir2ometiff.metadata.tables import read_tables
    except ImportError:  # pragma: no cover - the converter ships with us
        with pd.HDFStore(path, mode="r") as store:
            return {k.lstrip("/"): store.get(k) for k in store}
    return read_tables(path)


def table_marker(table: str, source: TablesSource) -> str:
    """The FileAnnotation description that identifies one table of one HDF5 file."""
    return f"posdir2ometiff table {table!r} from {source.path.name} (sha1 {source.sha1})"


def file_marker(source: TablesSource) -> str:
    return f"posdir2ometiff tables file {source.path.name} (sha1 {source.sha1})"


def tables_enabled(session: Session) -> bool:
    try:
        return bool(session.sf.sharedResources().areTablesEnabled())
    except Exception as exc:
        from omero_push.session import is_connection_lost

        if is_connection_lost(exc):
            raise
        log.debug("areTablesEnabled failed: %s", exc)
        return False


def create_table(
    session: Session, name: str, df: pd.DataFrame, extra: list[ColumnSpec] | None = None
) -> int:
    """Create one OMERO.table from ``df`` (plus ``extra`` columns); returns its OriginalFile id.

    Rows go in batches so a long table (plane times of a full experiment: ~90,000 rows) stays far
    below Ice's message size limit.
    """
    sr = session.sf.sharedResources()
    repos = sr.repositories()
    repo_id = repos.descriptions[0].getId().getValue()
    table = sr.newTable(repo_id, name)
    if table is None:
        raise RuntimeError("the tables service returned no table")
    try:
        specs = column_specs(df) + list(extra or [])
        table.initialize(to_omero_columns(specs, with_values=False))
        n = len(df)
        batch = 10_000
        for start in range(0, max(n, 1), batch):
            part = [
                ColumnSpec(s.name, s.kind, s.values[start : start + batch], s.size) for s in specs
            ]
            if n:
                table.addData(to_omero_columns(part))
        return table.getOriginalFile().getId().getValue()
    finally:
        table.close()


def upload_file(
    session: Session,
    path: Path,
    *,
    name: str | None = None,
    mimetype: str | None = None,
    chunk: int = 4 * 1024 * 1024,
    sha1: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Upload a local file as an OriginalFile through RawFileStore; returns its id."""
    import omero
    from omero.rtypes import rlong, rstring

    size = path.stat().st_size
    of = omero.model.OriginalFileI()
    of.setName(rstring(name or path.name))
    of.setPath(rstring("omero_push/"))
    of.setSize(rlong(size))
    of.setHash(rstring((sha1 or sha1_file(path)).lower()))  # OMERO's hex digests are lower case
    algo = omero.model.ChecksumAlgorithmI()
    algo.setValue(rstring("SHA1-160"))
    of.setHasher(algo)
    if mimetype:
        of.setMimetype(rstring(mimetype))
    of = session.update().saveAndReturnObject(of)
    rfs = session.sf.createRawFileStore()
    try:
        rfs.setFileId(of.getId().getValue())
        with open(path, "rb") as fh:
            offset = 0
            while block := fh.read(chunk):
                rfs.write(block, offset, len(block))
                offset += len(block)
                if on_bytes:
                    on_bytes(len(block))
        rfs.save()
    finally:
        rfs.close()
    return of.getId().getValue()


@dataclass
class TablesOutcome:
    """What happened to one HDF5 source: tables created/reused, or the file attached instead."""

    tables_created: list[str]
    tables_present: list[str]
    file_annotation_ids: list[int]
    fallback_file: bool = False


def ensure_tables(
    session: Session,
    dataset_id: int,
    source: TablesSource,
    images: dict[str, tuple[int, str]] | None = None,
) -> TablesOutcome:
    """Every table of ``source`` as an OMERO.table on the dataset (once); falls back to the file.

    ``images``: position or image name (lower case) → (image id, image name) of the pushed images,
    for the ``Image`` column of tables whose rows belong to them (see :func:`image_columns`).
    """
    from omero_push import annotate

    if source.sha1 is None:
        source = TablesSource(source.path, sha1_file(source.path), source.names)
    anns = annotate.linked_annotations(session, "Dataset", dataset_id)
    have = {
        annotate._val(a.getDescription()): annotate._val(a.getId())
        for a in anns
        if annotate.is_kind(a, "FileAnnotation")
    }
    outcome = TablesOutcome([], [], [])
    if not tables_enabled(session):
        marker = file_marker(source)
        if marker in have:
            outcome.file_annotation_ids.append(have[marker])
            outcome.fallback_file = True
            return outcome
        log.warning(
            "OMERO.tables is not enabled on the server: attaching %s itself to the dataset instead "
            "(its tables can be made into OMERO.tables later)",
            source.path.name,
        )
        fid = upload_file(session, source.path, mimetype=HDF5_MIMETYPE, sha1=source.sha1)
        ann_id = _link_file_annotation(session, dataset_id, fid, HDF5_FILE_NS, marker)
        outcome.file_annotation_ids.append(ann_id)
        outcome.fallback_file = True
        return outcome
    frames = read_hdf5_tables(source.path)
    names = list(source.names) or list(frames)
    for name in names:
        if name not in frames:
            log.warning(
                "%s: table %r listed in the manifest but not in the file", source.path, name
            )
            continue
        marker = table_marker(name, source)
        if marker in have:
            outcome.tables_present.append(name)
            outcome.file_annotation_ids.append(have[marker])
            continue
        extra = image_columns(frames[name], images or {})
        fid = create_table(session, name, frames[name], extra)
        ns = BULK_NS if extra else TABLE_NS
        ann_id = _link_file_annotation(session, dataset_id, fid, ns, marker)
        outcome.tables_created.append(name)
        outcome.file_annotation_ids.append(ann_id)
        log.info("table %r: %d rows -> OMERO.table (file %d)", name, len(frames[name]), fid)
    return outcome


def _link_file_annotation(
    session: Session, dataset_id: int, file_id: int, ns: str, desc: str
) -> int:
    import omero
    from omero.rtypes import rstring

    from omero_push import annotate

    fa = omero.model.FileAnnotationI()
    fa.setNs(rstring(ns))
    fa.setDescription(rstring(desc))
    fa.setFile(omero.model.OriginalFileI(file_id, False))
    return annotate.create_and_link(session, "Dataset", dataset_id, fa)

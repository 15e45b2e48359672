"""The experiment's tabular metadata as one HDF5 file (pandas + PyTables), for archiving and OMERO.tables.

Every table the parsers kept (channels, z-sectioning, time settings, positions, pumps, switching, ...)
plus the per-plane acquisition times go into one file per experiment, one node per table, in
PyTables' "table" format so that each column keeps its type (int64, float64, str, datetime) and any
HDF5 tool, or ``pandas.read_hdf(path, name)``, reads it back. The file is written under a temporary
name and renamed when complete, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import errno
import logging
import re
import warnings
from pathlib import Path

import pandas as pd
import tables

from posdir2ometiff.atomic import AtomicWriteError, write_bytes_atomic
from posdir2ometiff.metadata.model import ExperimentMetadata

log = logging.getLogger(__name__)

PLANE_TIMES = "plane_times"


def _node_name(name: str) -> str:
    """An HDF5 node name PyTables accepts as a natural name (letters, digits, underscores)."""
    clean = re.sub(r"\W+", "_", name.strip()).strip("_") or "table"
    return clean if not clean[0].isdigit() else f"t_{clean}"


def plane_times_frame(meta: ExperimentMetadata) -> pd.DataFrame:
    """The per-plane acquisition records as a typed table (z is -1 where the log gives whole stacks)."""
    return pd.DataFrame(
        {
            "position": pd.Series([p.position for p in meta.plane_times], dtype="str"),
            "t": pd.Series([p.t for p in meta.plane_times], dtype="int64"),
            "channel": pd.Series([p.channel for p in meta.plane_times], dtype="str"),
            "z": pd.Series([-1 if p.z is None else p.z for p in meta.plane_times], dtype="int64"),
            "time": pd.Series([p.time for p in meta.plane_times], dtype="datetime64[us]"),
            # The focus drive before the stack (NaN: not logged) and why it was not captured
            # ("" when it was): what the log says about each capture.
            "drive_z_um": pd.Series(
                [float("nan") if p.drive_z_um is None else p.drive_z_um for p in meta.plane_times],
                dtype="float64",
            ),
            "not_captured": pd.Series(
                [p.not_captured or "" for p in meta.plane_times], dtype="str"
            ),
        }
    )


def _for_hdf(df: pd.DataFrame) -> pd.DataFrame:
    """PyTables' table format needs plain column labels and no all-object columns of mixed type."""
    out = df.copy()
    out.columns = [str(c) for c in out.columns]
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: "" if v is None else str(v)).astype("str")
    return out.reset_index(drop=True)


def table_frames(meta: ExperimentMetadata) -> dict[str, pd.DataFrame | None]:
    """The tables :func:`write_tables` writes, by node name, in order; the plane times as None
    (their frame, one row per capture, is built by :func:`tables_image`). What is left out is
    logged here: a caller building the file in a child process calls this first, so that the
    messages come from its own process (and its progress bar's logging)."""
    frames: dict[str, pd.DataFrame | None] = {}
    for name, df in meta.tables.items():
        node = _node_name(name)
        if node in frames:
            log.warning("table %r written as %r clashes with another table; skipped", name, node)
            continue
        if df.empty:
            # PyTables' table format cannot store zero rows (pandas silently writes nothing);
            # listing a node that is not there would mislead the manifest and omero_push.
            log.info("table %r has no rows; not written", name)
            continue
        frames[node] = df
    if meta.plane_times and PLANE_TIMES not in frames:
        frames[PLANE_TIMES] = None
    return frames


def tables_image(
    meta: ExperimentMetadata, path: Path, frames: dict[str, pd.DataFrame | None] | None = None
) -> tuple[list[str], bytes]:
    """The node names and the bytes of the HDF5 file :func:`write_tables` writes at ``path``
    (``([], b"")`` when no table has rows), of ``frames`` (default :func:`table_frames`).
    Nothing touches the disk: the caller may build it in another process (forked.py) and write
    it here."""
    frames = table_frames(meta) if frames is None else frames
    if not frames:
        return [], b""
    full = {node: plane_times_frame(meta) if df is None else df for node, df in frames.items()}
    return list(full), _hdf5_image(Path(path), full)


def write_tables(
    meta: ExperimentMetadata, path: Path, image: tuple[list[str], bytes] | None = None
) -> list[str]:
    """Write every table of ``meta`` (and its plane times) to the HDF5 file ``path``.

    Returns the node names written, in order (the manifest lists them for omero_push). Tables
    without rows are left out; when nothing is left, writes nothing and returns ``[]`` rather
    than leaving an empty file behind. ``image``: what :func:`tables_image` returned for them,
    when it was built elsewhere.
    """
    path = Path(path)
    names, data = image if image is not None else tables_image(meta, path)
    if not names:
        return []
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)  # fsync, rename (atomic.py)
    return names


def _hdf5_image(path: Path, frames: dict[str, pd.DataFrame]) -> bytes:
    """The HDF5 file of ``frames`` (one node each), built in memory: HDF5 never touches the disk.

    Written to disk by HDF5 itself, a full disk was reported as an HDF5 error, or not at all:
    measured on a full tmpfs, HDF5's flush at close could fail silently, leaving a sparse file
    of the right size, or fail in PyTables' ``File.close`` (tables/file.py) before it closed
    the HDF5 file, which then stayed open, its removed temporary holding its blocks, until
    the interpreter exited. Built in memory (HDF5's core driver, no backing store; the tables
    are kilobytes to a few megabytes) the bytes reach the disk in our own write, where a full
    disk is an ``OSError`` naming the file. The image is the same bytes HDF5 writes to a file.
    """
    with warnings.catch_warnings():
        # Column names such as "Z sect." are kept as the lab wrote them; PyTables only warns
        # that they cannot be used as Python attributes, which we never do.
        warnings.filterwarnings("ignore", category=Warning, module="tables")
        try:
            store = pd.HDFStore(path, mode="w", complevel=5, complib="zlib",
                                driver="H5FD_CORE", driver_core_backing_store=0)
            try:
                for node, df in frames.items():
                    # No timestamps and no PyTables index (its arrays carry creation times):
                    # the same tables give a byte-identical file, so a re-conversion's tables
                    # are recognised by SHA-1 in OMERO instead of attached again (issue #14).
                    store.put(node, _for_hdf(df), format="table", encoding="utf-8",
                              track_times=False, index=False)
                store.flush()
                return store._handle.get_file_image()  # pandas exposes no public accessor
            finally:
                store.close()
        except (tables.HDF5ExtError, ValueError, KeyError, TypeError) as exc:
            raise AtomicWriteError(errno.EIO, f"{path}: cannot be written ({_hdf5_reason(exc)})"
                                   ) from None


def _hdf5_reason(exc: BaseException) -> str:
    """One line for an HDF5 error: PyTables puts HDF5's whole back trace into the message
    ("HDF5 error back trace / File "H5F.c", line 827 ... / End of HDF5 error back trace"); the
    innermost cause (e.g. "file signature not found") is the last line before its end."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "End of HDF5 error back trace" in lines:
        trace = lines[: lines.index("End of HDF5 error back trace")]
        causes = [ln for ln in trace if not ln.startswith("File ") and "back trace" not in ln]
        if causes:
            return causes[-1]
    return lines[0] if lines else type(exc).__name__


class TablesReadError(ValueError):
    """An HDF5 file that cannot be read as our tables; the message is one line naming it."""


def read_tables(path: Path) -> dict[str, pd.DataFrame]:
    """Read back every table written by :func:`write_tables`, by node name.

    A file that is not HDF5, truncated, or holds nodes pandas cannot read raises
    :class:`TablesReadError` with one line, not HDF5's multi-line back trace.
    """
    try:
        with pd.HDFStore(Path(path), mode="r") as store:
            return {key.lstrip("/"): store.get(key) for key in store}
    except (tables.HDF5ExtError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TablesReadError(f"{path}: not readable as HDF5 tables ({_hdf5_reason(exc)})"
                              ) from None


__all__ = ["PLANE_TIMES", "TablesReadError", "plane_times_frame", "read_tables", "table_frames",
           "tables_image", "write_tables"]

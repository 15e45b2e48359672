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
import os
import re
import warnings
from pathlib import Path

import pandas as pd
import tables

from posdir2ometiff.atomic import AtomicWriteError, atomic_path
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


def write_tables(meta: ExperimentMetadata, path: Path) -> list[str]:
    """Write every table of ``meta`` (and its plane times) to the HDF5 file ``path``.

    Returns the node names written, in order (the manifest lists them for omero_push). Tables
    without rows are left out; when nothing is left, writes nothing and returns ``[]`` rather
    than leaving an empty file behind.
    """
    path = Path(path)
    frames: dict[str, pd.DataFrame] = {}
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
        frames[PLANE_TIMES] = plane_times_frame(meta)
    if not frames:
        return []
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique temporary, fsync, rename (atomic.py). HDF5 reports a full disk as HDF5ExtError, or
    # not at all (see _check_written), never as OSError: either becomes one line naming the file.
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # Column names such as "Z sect." are kept as the lab wrote them; PyTables only warns
        # that they cannot be used as Python attributes, which we never do.
        warnings.filterwarnings("ignore", category=Warning, module="tables")
        written = {node: _for_hdf(df) for node, df in frames.items()}
        try:
            with pd.HDFStore(tmp, mode="w", complevel=5, complib="zlib") as store:
                for node, df in written.items():
                    # No timestamps and no PyTables index (its arrays carry creation times):
                    # the same tables give a byte-identical file, so a re-conversion's tables
                    # are recognised by SHA-1 in OMERO instead of attached again (issue #14).
                    store.put(node, df, format="table", encoding="utf-8", track_times=False,
                              index=False)
            if _has_hole(tmp):
                _check_written(tmp, written)
        except (tables.HDF5ExtError, ValueError, KeyError) as exc:
            # A write HDF5 lost shows only as a table missing on reading back ("No object
            # named ..."): on a full disk, say so.
            reason = NO_SPACE if _nearly_full(tmp.parent) else _hdf5_reason(exc)
            raise AtomicWriteError(errno.EIO, f"{path}: cannot be written ({reason})"
                                   ) from None
    return list(frames)


NO_SPACE = os.strerror(errno.ENOSPC)
#: Free bytes below which a failed HDF5 write is put down to a full disk.
NEARLY_FULL = 1 << 20


def _nearly_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # gone, or not POSIX
        return False
    return st.f_bavail * st.f_frsize < NEARLY_FULL


def _has_hole(path: Path) -> bool:
    """True when ``path`` has a hole before its end (or its holes cannot be asked about).

    The failure :func:`_check_written` catches leaves exactly that: blocks never written. A
    file HDF5 wrote completely has none, so the read-back (a third of the tables' cost) is
    only paid when the filesystem shows a hole, or cannot say (``SEEK_HOLE`` unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        size = os.fstat(fd).st_size
        return size == 0 or os.lseek(fd, 0, os.SEEK_HOLE) < size
    except (OSError, AttributeError):
        return True
    finally:
        os.close(fd)


def _check_written(tmp: Path, written: dict[str, pd.DataFrame]) -> None:
    """Read the closed file back and compare it with what was put.

    Measured on a full tmpfs: HDF5's metadata-cache flush at close can fail without any error
    reaching Python, leaving a sparse file of the right size whose blocks were never written.
    Only reading it back shows that; the tables are small (kilobytes), so this is cheap.
    """
    if os.stat(tmp).st_size == 0:
        raise ValueError("the file is empty after writing")
    with pd.HDFStore(tmp, mode="r") as store:
        for node, df in written.items():
            back = store.get(node).reset_index(drop=True)
            if back.shape != df.shape or list(back.columns) != list(df.columns):
                raise ValueError(f"table {node!r} reads back with another shape")
            # Numbers must come back exactly (never-written blocks read as zeros). Strings are
            # not compared: HDF5's fixed-width strings legitimately drop NUL bytes.
            numeric = [c for c in df.columns if df[c].dtype.kind in "biufM"]
            if numeric and not back[numeric].equals(df[numeric]):
                raise ValueError(f"table {node!r} reads back different from what was written")


def _hdf5_reason(exc: BaseException) -> str:
    """One line for an HDF5 error: PyTables puts HDF5's whole back trace into the message
    ("HDF5 error back trace / File "H5F.c", line 827 ... / End of HDF5 error back trace"); the
    innermost cause (e.g. "file signature not found") is the last line before its end."""
    text = str(exc)
    if "No space left" in text or "ENOSPC" in text:
        return NO_SPACE
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


__all__ = ["PLANE_TIMES", "TablesReadError", "plane_times_frame", "read_tables", "write_tables"]

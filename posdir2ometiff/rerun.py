"""Re-runs: is a position's previous output still up to date with its sources and metadata?"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from datetime import datetime
from pathlib import Path

from posdir2ometiff.layout import PositionLayout
from posdir2ometiff.manifest import sha1_file
from posdir2ometiff.metadata.model import ExperimentMetadata
from posdir2ometiff.position import relative


def metadata_fingerprint(meta: ExperimentMetadata | None) -> str:
    """SHA-1 of the metadata model (tables excluded): a change re-converts every position.

    The text hashed is ``json.dumps(dataclasses.asdict(meta), sort_keys=True, default=str)``,
    so manifests written before keep matching; but the plane times, one record per capture
    (14,400 in the demo generator's log of 20 positions × 240 timepoints × 3 channels, one per
    channel stack as the lab's software logs them), are turned into dicts directly: ``asdict``
    recurses into and deep-copies every value of every record, which took 0.35 s of every
    run's serial start for that log, skipped positions or not (now 0.09-0.10 s; 72,000
    records, one per plane: 1.25 -> 0.43 s; measured in one process, the same text)."""
    if meta is None:
        return hashlib.sha1(b"none").hexdigest()
    data = dataclasses.asdict(dataclasses.replace(meta, tables={}, plane_times=[]))
    data["plane_times"] = [_flat_asdict(pt) for pt in meta.plane_times]
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _flat_asdict(record: object) -> dict:
    """``dataclasses.asdict(record)`` for a record whose values are scalars (str, numbers,
    datetimes, None), which it then copies as they are; anything else takes ``asdict``."""
    names = _FIELD_NAMES.get(type(record))
    if names is None:
        names = _FIELD_NAMES[type(record)] = tuple(f.name for f in dataclasses.fields(record))
    values = [getattr(record, name) for name in names]
    if all(v is None or type(v) in _SCALARS for v in values):
        # A datetime as the text json.dumps(default=str) would give it, without the call back.
        return {n: str(v) if type(v) is datetime else v for n, v in zip(names, values, strict=True)}
    return dataclasses.asdict(record)  # type: ignore[call-overload]


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_SCALARS = frozenset({str, int, float, bool, datetime})


def _same_source(prev: dict, path: Path) -> bool:
    """Size must match; then mtime (fast path) or else the SHA-1 (content really unchanged)."""
    try:
        stat = os.stat(path)  # not Path.stat: 72,000 of these in a re-run of the lab's size
    except OSError:
        return False
    if stat.st_size != prev.get("size"):
        return False
    if stat.st_mtime_ns == prev.get("mtime_ns"):
        return True
    return sha1_file(path) == prev.get("sha1")


def is_up_to_date(entry: dict | None, layout: PositionLayout, out: Path, src: Path) -> bool:
    """True when ``entry`` (previous manifest) matches the output on disk and the current sources."""
    if not entry or entry.get("status") != "ok" or not entry.get("output"):
        return False
    output = out / entry["output"]
    try:
        stat = output.stat()
    except OSError:
        return False
    if stat.st_size != entry.get("size"):
        return False
    if stat.st_mtime_ns != entry.get("mtime_ns") and sha1_file(output) != entry.get("sha1"):
        return False
    prev_sources = {s["path"]: s for s in entry.get("sources", [])}
    current = {relative(p, src): p for p in layout.files.values()}
    if set(prev_sources) != set(current):
        return False
    # Same files but another hypercube (a channel that another position now brings in is
    # missing here): the missing planes differ.
    # Planes not captured (by the log) are listed apart from the other missing ones.
    missing = sorted(layout.describe(k) for k in layout.missing())
    listed = entry.get("missing_planes", []) + entry.get("not_captured_planes", [])
    if sorted(str(m.get("label")) for m in listed) != missing:
        return False
    return all(_same_source(prev_sources[rel], p) for rel, p in current.items())

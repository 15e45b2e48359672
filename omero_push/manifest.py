"""A converter output folder's ``manifest.json``, read as untrusted input.

The manifest gives each position's OME-TIFF with its checksum (nothing has to be re-hashed), the
experiment's description, tags and key-value pairs, and the HDF5 tables file. It may come from
someone else's folder: every key the push reads is type-checked once (:func:`check_manifest_shape`)
and every path it names must stay inside the folder (:func:`contained_path`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omero_push.errors import InputError
from omero_push.ometiff import PushItem, images_from_ome, read_ome
from posdir2ometiff.manifest import MANIFEST_NAME, sha1_file

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TablesSource:
    """An HDF5 file whose tables become OMERO.tables on the dataset."""

    path: Path
    sha1: str | None
    names: tuple[str, ...]


def read_manifest(folder: Path) -> dict[str, Any]:
    """The converter's manifest, with a one-line error when it is missing or broken."""
    path = folder / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{folder}: no {MANIFEST_NAME}; not a posdir2ometiff output folder"
        ) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("positions"), dict):
        raise InputError(f"{path}: no 'positions' mapping; not a posdir2ometiff manifest")
    check_manifest_shape(data, path)
    return data


#: Keys the push reads from a manifest and the JSON types it accepts for each (None = null).
_POSITION_TYPES: dict[str, tuple[type, ...]] = {
    "output": (str, type(None)),
    "status": (str, type(None)),
    "error": (str, type(None)),
    "sha1": (str, type(None)),
    "size": (int, type(None)),
    "mtime_ns": (int, type(None)),
    "sources": (list, type(None)),
    "missing_planes": (list, type(None)),
}
_TOP_TYPES: dict[str, tuple[type, ...]] = {
    "metadata": (dict, type(None)),
    "tables": (dict, type(None)),
}
_METADATA_TYPES: dict[str, tuple[type, ...]] = {
    "description": (str, type(None)),
    "tags": (list, type(None)),
    "key_values": (list, type(None)),
    "omero_project": (str, type(None)),
    "omero_dataset": (str, type(None)),
}
_TABLES_TYPES: dict[str, tuple[type, ...]] = {
    "path": (str, type(None)),
    "sha1": (str, type(None)),
    "names": (list, type(None)),
}


def check_manifest_shape(data: dict[str, Any], path: Path) -> None:
    """Refuse, with the file and key named, a manifest whose values have the wrong JSON type.

    A manifest may come from someone else's output folder, so every key the push reads is checked
    here once: later code can then rely on the types instead of failing with a traceback deep in
    the push (``int(entry["size"])`` on a list, ``.get`` on a string).  ``bool`` is refused where
    a number is expected, because JSON ``true`` is not a size.
    """

    def check(obj: dict[str, Any], types: dict[str, tuple[type, ...]], where: str) -> None:
        for key, allowed in types.items():
            value = obj.get(key)
            if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
                names = "/".join("null" if t is type(None) else _JSON_NAMES[t] for t in allowed)
                raise InputError(
                    f"{path}: {where}{key} is {_json_type(value)}, expected {names}"
                )

    check(data, _TOP_TYPES, "")
    check(data.get("metadata") or {}, _METADATA_TYPES, "metadata.")
    check(data.get("tables") or {}, _TABLES_TYPES, "tables.")
    for name, entry in data["positions"].items():
        if not isinstance(entry, dict):
            raise InputError(
                f"{path}: positions.{name} is {_json_type(entry)}, expected an object"
            )
        check(entry, _POSITION_TYPES, f"positions.{name}.")
        for key in ("size", "mtime_ns"):
            if isinstance(entry.get(key), int) and entry[key] < 0:
                raise InputError(f"{path}: positions.{name}.{key} is negative ({entry[key]})")


_JSON_NAMES = {str: "a string", int: "an integer", list: "an array", dict: "an object"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a number"
    return _JSON_NAMES.get(type(value), type(value).__name__)


def contained_path(folder: Path, relative: str, manifest: Path, key: str) -> Path:
    """``folder / relative`` resolved, refused unless it stays inside ``folder``.

    A manifest can come from someone else's output folder; without this check a crafted
    ``"output": "../../elsewhere.ome.tiff"`` or ``"tables": {"path": "/etc/passwd"}`` would make
    the push upload any local file.  ``..`` and symbolic links are resolved first (a link inside
    the folder that points out of it is refused too): the check CPython's ``tarfile.data_filter``
    makes (``Lib/tarfile.py``, ``_get_filtered_attrs``: realpath of the member, then refuse it
    when it is not under the realpath of the destination).
    """
    root = folder.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise InputError(
            f"{manifest}: {key} {relative!r} points outside the manifest's folder ({target}); "
            "refused"
        )
    return target


def items_from_manifest(
    folder: Path, manifest: dict[str, Any]
) -> tuple[list[PushItem], list[tuple[Path, str]]]:
    """Push items for the manifest's converted positions; failed or missing ones are skipped."""
    items: list[PushItem] = []
    skipped: list[tuple[Path, str]] = []
    conversion = {
        "tool": manifest.get("tool"),
        "version": manifest.get("version"),
        "created": manifest.get("created"),
        "options": manifest.get("options"),
        "source": manifest.get("source"),
    }
    for name, entry in sorted(manifest["positions"].items()):
        out = entry.get("output") or f"{name}.ome.tiff"
        path = contained_path(folder, out, folder / MANIFEST_NAME, f"positions.{name}.output")
        if entry.get("status", "ok") != "ok":
            skipped.append((path, f"conversion {entry.get('status')}: {entry.get('error') or '?'}"))
            continue
        if not path.is_file():
            skipped.append((path, "listed in the manifest but missing"))
            continue
        st = path.stat()
        size = st.st_size
        sha1 = entry.get("sha1")
        stale = (entry.get("size") is not None and int(entry["size"]) != size) or (
            entry.get("mtime_ns") is not None and int(entry["mtime_ns"]) != st.st_mtime_ns
        )
        if not sha1 or stale:
            # A manifest older than the file (or without checksums): trust the bytes, not the list.
            log.warning("%s: changed since the manifest was written; hashing the file", path)
            sha1 = sha1_file(path)
        images = images_from_ome(read_ome(path))
        sources = entry.get("sources")
        items.append(
            PushItem(
                path=path,
                sha1=str(sha1),
                size=size,
                images=images,
                manifest=folder / MANIFEST_NAME,
                position=name,
                conversion={
                    **conversion,
                    "position": name,
                    "n_sources": len(sources) if isinstance(sources, list) else None,
                    "missing_planes": len(entry.get("missing_planes") or []),
                },
            )
        )
    return items, skipped


def _check_tables_readable(path: Path) -> None:
    """Open the HDF5 tables now (a few KB, no network): an unreadable file is one line before
    anything is pushed, not an HDF5 back trace after every image is."""
    from posdir2ometiff.metadata.tables import TablesReadError, read_tables

    try:
        read_tables(path)
    except TablesReadError as exc:
        raise InputError(str(exc)) from None


def tables_from_manifest(folder: Path, manifest: dict[str, Any]) -> list[TablesSource]:
    """The HDF5 tables file the manifest names (inside ``folder``), opened once to check it."""
    tinfo = manifest.get("tables") or {}
    if not tinfo.get("path"):
        return []
    path = contained_path(folder, tinfo["path"], folder / MANIFEST_NAME, "tables.path")
    if not path.is_file():
        log.warning("%s: tables file %s listed but missing", folder, path)
        return []
    _check_tables_readable(path)
    return [TablesSource(path=path, sha1=tinfo.get("sha1"), names=tuple(tinfo.get("names") or ()))]

"""``OUT/manifest.json``: what was converted from what, with checksums, for re-runs and omero_push.

The manifest is the converter's contract with omero_push (which reads exactly these keys; the
JSON Schema in ``schemas/manifest.schema.json`` documents them) and with the next run of the
converter (which skips positions whose output and sources still match it). Checksums are SHA-1
because OMERO's managed-repository upload verifies with SHA-1, so the pusher can reuse ours.
The file is written under a unique temporary name, fsync-ed and renamed (``atomic.py``), so a
reader never sees half a manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from posdir2ometiff.atomic import write_text_atomic

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
#: Bumped when a key changes meaning; readers should refuse versions they do not know.
MANIFEST_VERSION = 1
_CHUNK = 1 << 20


def sha1_file(path: Path) -> str:
    """Hex SHA-1 of a file, read in 1 MiB chunks (memory does not grow with the file)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def schema_path() -> Path:
    """The manifest's JSON Schema: ``posdir2ometiff/schemas`` (a link to the repository's
    ``schemas/`` folder in a checkout; real files in a wheel)."""
    return Path(__file__).resolve().parent / "schemas" / "manifest.schema.json"


def validate_manifest(data: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``data`` does not follow the manifest schema."""
    import jsonschema

    schema = json.loads(schema_path().read_text(encoding="utf-8"))
    jsonschema.validate(data, schema)


def load_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest in ``out``, or None if there is none or it cannot be read (then: convert all)."""
    path = Path(out) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable manifest (%s); every position will be converted", path, exc)
        return None
    if not isinstance(data, dict) or data.get("manifest_version") != MANIFEST_VERSION:
        logger.warning("%s: unknown manifest version; every position will be converted", path)
        return None
    import jsonschema

    try:
        validate_manifest(data)
    except jsonschema.ValidationError as exc:
        # Someone else's (or a hand-edited) manifest: its entries cannot be trusted for skipping.
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        logger.warning("%s: %s: %s; every position will be converted", path, where,
                       exc.message.splitlines()[0][:200])
        return None
    return data


def write_manifest(out: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as ``out/manifest.json`` atomically (temporary name, then rename)."""
    return write_text_atomic(Path(out) / MANIFEST_NAME, manifest_json(data))


_SURROGATE = re.compile("[\ud800-\udfff]")


def manifest_json(data: dict[str, Any]) -> str:
    """The manifest as JSON text that is valid UTF-8 whatever the file names were.

    A file name that is not UTF-8 reaches Python as lone surrogates (``os.fsdecode``'s
    surrogateescape); encoding them as UTF-8 would fail and ``ensure_ascii`` would turn every
    "µm" into ``\\u00b5m``. So only the surrogates are written as ``\\udcXX`` escapes: the JSON
    stays readable, and ``json.loads`` + ``os.fsencode`` give back the exact original bytes.
    """
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)

"""``OUT/manifest.json``: what was converted from what, with checksums, for re-runs and omero_push.

The manifest is the converter's contract with omero_push (which reads exactly these keys; the
JSON Schema in ``schemas/manifest.schema.json`` documents them) and with the next run of the
converter (which skips positions whose output and sources still match it). Checksums are SHA-1
because OMERO's managed-repository upload verifies with SHA-1, so the pusher can reuse ours.
The file is written under a unique temporary name, fsync-ed and renamed (``atomic.py``), so a
reader never sees half a manifest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
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
    """Raise ``jsonschema.ValidationError`` if ``data`` does not follow the manifest schema.

    Each position's ``sources`` (one entry per plane: 72,000 for the lab's 20 positions × 3,600
    planes) is checked by :func:`_item_check`, the rest by jsonschema. jsonschema spent 48-58 µs
    per entry there, 3.5-4.2 s of every run's start at that size, whether or not a position
    was then converted; now 0.13 s for the whole manifest (``benchmarks/bench_rerun.py``).
    """
    validator, check = _validators()
    validator.validate(data)
    if check is None:
        return
    for name, position in data["positions"].items():
        for i, item in enumerate(position.get("sources", ())):
            error = check(item)
            if error is not None:
                import jsonschema

                key, message = error
                where = ["positions", name, "sources", i] + ([key] if key is not None else [])
                raise jsonschema.ValidationError(message, path=where)


@functools.cache
def _validators() -> tuple[Any, Callable[[Any], tuple[str | None, str] | None] | None]:
    """The schema's validator, and the check of a ``sources`` entry; once per process.

    When the entries' schema can be checked by :func:`_item_check`, the validator gets the
    schema with ``sources`` as an array of anything (checked apart); otherwise the whole
    schema, and None."""
    import jsonschema

    schema = json.loads(schema_path().read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    sources = schema.get("$defs", {}).get("position", {}).get("properties", {}).get("sources", {})
    check = _item_check(sources.get("items", {}))
    if check is not None:
        del sources["items"]  # (an empty schema still had jsonschema visit every entry)
    return cls(schema), check


#: Keywords :func:`_item_check` knows (the rest of a schema it leaves to jsonschema).
_NOTES = {"description", "title", "$comment"}
_TYPES: dict[str, Callable[[Any], bool]] = {
    # JSON Schema's types (jsonschema's TypeChecker: a bool is no number, 1.0 is an integer).
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def _item_check(schema: dict[str, Any]) -> Callable[[Any], tuple[str | None, str] | None] | None:
    """A check of one object against ``schema``, or None if the schema says more than it knows:
    ``type: object``, ``required``, and ``properties`` each of a ``type`` (one, or a list) and
    a ``pattern``. The check returns None, or the key at fault (None: the object) and
    jsonschema's message. What it knows is the schema's, read from it, not restated here;
    ``tests/test_manifest_check.py`` holds it to jsonschema's verdict entry by entry."""
    if set(schema) - _NOTES - {"type", "required", "properties"} or schema.get("type") != "object":
        return None
    required = list(schema.get("required", []))
    props: list[tuple[str, list[str], Callable[[Any], bool], re.Pattern[str] | None]] = []
    for key, sub in schema.get("properties", {}).items():
        if not isinstance(sub, dict) or set(sub) - _NOTES - {"type", "pattern"}:
            return None
        kinds = sub.get("type", [])
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        if any(k not in _TYPES for k in kinds):
            return None
        tests = [_TYPES[k] for k in kinds]
        is_a = (tests[0] if len(tests) == 1 else
                (lambda v, tests=tests: any(t(v) for t in tests)) if tests else (lambda v: True))
        pattern = sub.get("pattern")
        props.append((key, kinds, is_a, re.compile(pattern) if pattern is not None else None))

    def check(item: Any) -> tuple[str | None, str] | None:
        if not isinstance(item, dict):
            return None, f"{item!r} is not of type 'object'"
        for key in required:
            if key not in item:
                return None, f"{key!r} is a required property"
        for key, kinds, is_a, pattern in props:
            if key not in item:
                continue
            value = item[key]
            if not is_a(value):
                shown = kinds[0] if len(kinds) == 1 else kinds
                return key, f"{value!r} is not of type {shown!r}"
            if pattern is not None and isinstance(value, str) and not pattern.search(value):
                return key, f"{value!r} does not match {pattern.pattern!r}"
        return None

    return check


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
    skeleton = json.dumps(_with_placeholders(data, lines := {}), indent=2, ensure_ascii=False)
    text = _PLACEHOLDER.sub(lambda m: _fill(m, lines), skeleton) if lines else skeleton
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text + "\n")


#: Encodes one ``sources`` entry on one line, with json's C encoder (``indent`` would take the
#: pure-Python one: 0.8 s for the lab's 72,000 entries, against 0.2).
_ONE_LINE = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))


def _with_placeholders(data: dict[str, Any], lines: dict[str, list[Any]]) -> dict[str, Any]:
    """``data`` with each position's ``sources`` list replaced by a unique placeholder string
    (kept in ``lines``): those lists are written one entry per line (:func:`_fill`)."""
    positions = data.get("positions")
    if not isinstance(positions, dict):
        return data
    tag = uuid.uuid4().hex
    shown: dict[str, Any] = {}
    for name, entry in positions.items():
        if isinstance(entry, dict) and isinstance(entry.get("sources"), list) and entry["sources"]:
            placeholder = f"@sources-{tag}-{len(lines)}@"
            lines[placeholder] = entry["sources"]
            entry = {**entry, "sources": placeholder}
        shown[name] = entry
    return {**data, "positions": shown}


#: Where ``sources`` stands in for its list in the indented text: its line's indent and its name.
_PLACEHOLDER = re.compile(r'^( *)"sources": "(@sources-[0-9a-f]{32}-[0-9]+@)"', re.MULTILINE)


def _fill(m: re.Match[str], lines: dict[str, list[Any]]) -> str:
    """The list a placeholder stands for: one entry per line, one step deeper than its key (the
    indented text is small; the entries are put in once, in one pass)."""
    indent, items = m.group(1), lines[m.group(2)]
    pad = indent + "  "
    body = f",\n{pad}".join(_ONE_LINE.encode(item) for item in items)
    return f'{indent}"sources": [\n{pad}{body}\n{indent}]'

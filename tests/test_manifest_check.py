"""The manifest's ``sources`` entries are checked apart from jsonschema (manifest._item_check,
48 µs an entry there): the same verdict as jsonschema on every entry, the same one-line error
naming the entry, and jsonschema again for a schema the check does not know."""

from __future__ import annotations

import copy
import json
import logging
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from posdir2ometiff import manifest
from posdir2ometiff.convert import convert
from posdir2ometiff.demo import make_demo
from posdir2ometiff.manifest import manifest_json


def _schema() -> dict[str, Any]:
    return json.loads(manifest.schema_path().read_text(encoding="utf-8"))


def _item_schema() -> dict[str, Any]:
    return _schema()["$defs"]["position"]["properties"]["sources"]["items"]


GOOD = {"path": "pos001/demo_000000_Brightfield_000.png", "size": 123, "sha1": "a" * 40,
        "mtime_ns": 1_700_000_000_000_000_000, "t": 0, "c": 0, "z": 0}
#: Values of every JSON type and the edge cases of JSON Schema's types.
ODD = [None, True, False, 0, -1, 1.0, 1.5, float("inf"), "", "x", "A" * 40, "a" * 39,
       "a" * 40 + "\n", "0123456789abcdef0123456789abcdef01234567", [], [1], {}, {"a": 1}]


def _entries() -> list[Any]:
    rng = random.Random(11)
    out: list[Any] = [GOOD, {}, [], "entry", None, 3]
    for key in GOOD:
        out.append({k: v for k, v in GOOD.items() if k != key})  # one key left out
        for value in ODD:
            out.append({**GOOD, key: value})
    for _ in range(2000):  # a few keys changed at once, and keys the schema does not name
        item = dict(GOOD)
        for key in rng.sample(sorted(GOOD) + ["extra"], rng.randint(1, 3)):
            if rng.random() < 0.2:
                item.pop(key, None)
            else:
                item[key] = rng.choice(ODD)
        out.append(item)
    return out


def test_the_check_gives_jsonschemas_verdict_on_every_entry() -> None:
    schema = _item_schema()
    check = manifest._item_check(schema)
    assert check is not None  # the schema's entries are of the kind it knows
    reference = jsonschema.validators.validator_for(_schema())(schema)
    entries = _entries()
    valid = 0
    for item in entries:
        expected = reference.is_valid(item)
        got = check(item)
        assert (got is None) == expected, (item, got)
        if got is not None:  # the message is jsonschema's for the same fault
            messages = {e.message for e in reference.iter_errors(item)}
            assert got[1] in messages, (item, got, messages)
        valid += expected
    assert 50 < valid < len(entries) - 1000  # both verdicts well represented


@pytest.mark.parametrize("extra", [{"minimum": 0}, {"enum": [1]}, {"format": "date-time"}])
def test_a_schema_it_does_not_know_is_left_to_jsonschema(extra: dict[str, Any]) -> None:
    schema = copy.deepcopy(_item_schema())
    schema["properties"]["size"].update(extra)
    assert manifest._item_check(schema) is None
    outer = copy.deepcopy(_item_schema())
    outer["additionalProperties"] = False
    assert manifest._item_check(outer) is None


def _manifest(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    demo = make_demo(tmp_path / "exp", positions=1, z=1, t=2, size=32)
    out = tmp_path / "out"
    convert(demo.folder, out, progress="off")
    data = json.loads((out / manifest.MANIFEST_NAME).read_text())
    manifest.validate_manifest(data)  # as written: valid
    return out, data


@pytest.mark.parametrize("change, where, message", [
    (lambda s: s.update(sha1="not hex"), "positions/pos001/sources/1/sha1", "does not match"),
    (lambda s: s.update(size="12"), "positions/pos001/sources/1/size", "is not of type 'integer'"),
    (lambda s: s.pop("path"), "positions/pos001/sources/1", "'path' is a required property"),
])
def test_a_bad_entry_is_one_line_naming_it_and_the_manifest_is_not_trusted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change, where: str, message: str
) -> None:
    out, data = _manifest(tmp_path)
    change(data["positions"]["pos001"]["sources"][1])
    with pytest.raises(jsonschema.ValidationError) as info:
        manifest.validate_manifest(data)
    assert "/".join(map(str, info.value.absolute_path)) == where
    (out / manifest.MANIFEST_NAME).write_text(json.dumps(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="posdir2ometiff.manifest"):
        assert manifest.load_manifest(out) is None  # (convert then converts every position)
    lines = [r.getMessage() for r in caplog.records if r.name == "posdir2ometiff.manifest"]
    assert len(lines) == 1 and where in lines[0] and message in lines[0], lines
    assert "every position will be converted" in lines[0]


def test_a_bad_entry_elsewhere_is_still_jsonschemas(tmp_path: Path) -> None:
    """The rest of the manifest is validated as before (the entries' array too: a string is no
    array of sources)."""
    _, data = _manifest(tmp_path)
    bad = copy.deepcopy(data)
    bad["positions"]["pos001"]["sources"] = "all of them"
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'array'"):
        manifest.validate_manifest(bad)
    bad = copy.deepcopy(data)
    bad["positions"]["pos001"]["sha1"] = "xyz"
    with pytest.raises(jsonschema.ValidationError):
        manifest.validate_manifest(bad)


def test_sources_are_written_one_per_line_and_read_back_the_same(tmp_path: Path) -> None:
    """manifest_json writes each ``sources`` entry on one line (json's C encoder: the indented
    pure-Python one took 0.8 s for the lab's 72,000 entries) and the rest indented; the text
    reads back as the same data, names that are not UTF-8 and look like its placeholders
    included."""
    _, data = _manifest(tmp_path)
    sources = data["positions"]["pos001"]["sources"]
    sources.append({**sources[0], "path": "pos001/caf\udce9 \"@sources-0-0@\".png"})
    data["positions"]["pos002"] = {**data["positions"]["pos001"], "sources": []}
    text = manifest_json(data)
    text.encode("utf-8")  # valid UTF-8: the lone surrogate written as an escape
    assert json.loads(text) == data
    lines = text.splitlines()
    assert sum(line.lstrip().startswith('{"path": ') for line in lines) == len(sources)
    assert '      "sources": [],' in lines or '      "sources": []' in lines
    assert '      "sources": [' in lines
    assert lines[1] == '  "manifest_version": 1,'  # the rest: indented as before

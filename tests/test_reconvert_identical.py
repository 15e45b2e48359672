"""Re-converting gives a byte-identical file: the OME-XML's UUID derives from the inputs
(issue #14, point 3); non-UTF-8 names survive a whole run (point 5)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import tifffile

from posdir2ometiff.convert import convert
from posdir2ometiff.demo import make_demo
from tests.test_push_support import isolate_root_logging

_clean_logging = pytest.fixture(autouse=True)(isolate_root_logging)
FAST = dict(workers=1, progress="off")


def _uuid(path: Path) -> str:
    with tifffile.TiffFile(path) as tif:
        return re.search(r'UUID="(urn:uuid:[^"]+)"', tif.ome_metadata).group(1)


def test_same_sources_same_options_same_bytes(tmp_path: Path) -> None:
    spec = make_demo(tmp_path / "exp", positions=2, channels=["DIC", "GFP"], z=2, t=2, size=40)
    convert(spec.folder, tmp_path / "a", **FAST)
    convert(spec.folder, tmp_path / "b", **FAST)
    convert(spec.folder, tmp_path / "a", overwrite=True, **FAST)
    for name in ("pos001.ome.tiff", "pos002.ome.tiff"):
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b, name
    assert _uuid(tmp_path / "a" / "pos001.ome.tiff") != _uuid(tmp_path / "a" / "pos002.ome.tiff")


def test_changed_source_or_option_changes_the_uuid(tmp_path: Path) -> None:
    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=1, t=2, size=40)
    convert(spec.folder, tmp_path / "a", **FAST)
    convert(spec.folder, tmp_path / "b", compression="zlib", **FAST)
    assert _uuid(tmp_path / "a" / "pos001.ome.tiff") != _uuid(tmp_path / "b" / "pos001.ome.tiff")
    first = sorted((spec.folder / "pos001").glob("*.png"))[0]
    data = bytearray(first.read_bytes())
    os.truncate(first, 0)
    first.write_bytes(bytes(data))  # same bytes: same file
    convert(spec.folder, tmp_path / "c", **FAST)
    assert _uuid(tmp_path / "a" / "pos001.ome.tiff") == _uuid(tmp_path / "c" / "pos001.ome.tiff")


def test_metadata_holding_the_nil_uuid_text_keeps_it(tmp_path: Path) -> None:
    """The XML is rendered once with a nil UUID that is then replaced: metadata that holds the
    nil UUID's own text must keep it (the XML is rendered again with the real UUID)."""
    nil = "urn:uuid:00000000-0000-0000-0000-000000000000"
    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=1, t=1, size=32)
    (spec.folder / "experiment.yml").write_text(f"description: '{nil}'\n", encoding="utf-8")
    assert convert(spec.folder, tmp_path / "out", **FAST).ok
    with tifffile.TiffFile(tmp_path / "out" / "pos001.ome.tiff") as tif:
        xml = tif.ome_metadata
    assert nil in xml and _uuid(tmp_path / "out" / "pos001.ome.tiff") != nil


def test_non_utf8_names_convert_and_are_kept_in_the_manifest(tmp_path: Path) -> None:
    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=1, t=1, size=32)
    (plane,) = (spec.folder / "pos001").glob("*.png")
    odd = os.fsencode(plane.name).replace(b"_", b"\xe9_", 1)  # Latin-1 "é" in the prefix
    os.rename(plane, spec.folder / "pos001" / os.fsdecode(odd))
    (spec.folder / "pos001" / os.fsdecode(b"notes-\xff.txt")).write_text("x")
    result = convert(spec.folder, tmp_path / "out", **FAST)
    assert result.ok
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    entry = manifest["positions"]["pos001"]
    assert os.fsencode(entry["sources"][0]["path"]) == b"pos001/" + odd
    assert [os.fsencode(p) for p in entry["unmatched_files"]] == [b"pos001/notes-\xff.txt"]


def test_non_utf8_position_folder_converts(tmp_path: Path, caplog) -> None:
    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=1, t=1, size=32)
    os.rename(spec.folder / "pos001", spec.folder / os.fsdecode(b"pos\xe9001"))
    result = convert(spec.folder, tmp_path / "out", **FAST)
    assert result.ok and r"not valid UTF-8, e.g. pos\xe9001" in caplog.text
    assert (tmp_path / "out" / os.fsdecode(b"pos\xe9001.ome.tiff")).is_file()
    again = convert(spec.folder, tmp_path / "out", **FAST)  # the manifest reads back
    assert [p.status for p in again.positions] == ["skipped"]


def test_experiment_h5_is_byte_identical_across_runs(
    tmp_path: Path, swainlab_sample: Path
) -> None:
    """Two writes of the same tables, seconds apart, give the same bytes (no creation times)."""
    import time as time_mod

    from posdir2ometiff.metadata.plugins import load_metadata
    from posdir2ometiff.metadata.tables import write_tables

    meta = load_metadata(swainlab_sample, "auto", None)
    write_tables(meta, tmp_path / "a.h5")
    time_mod.sleep(1.1)  # HDF5 stores times in whole seconds
    write_tables(meta, tmp_path / "b.h5")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()

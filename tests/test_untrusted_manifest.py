"""omero-push reads a manifest that may come from someone else's folder: it never leaves the folder
and a manifest of the wrong shape is one line naming the file and the key (issue #14, points 1, 5)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from omero_push import cli
from omero_push.errors import InputError
from omero_push.plan import build_plan
from tests.test_push_support import isolate_root_logging, make_converter_output, make_ome_tiff

_clean_logging = pytest.fixture(autouse=True)(isolate_root_logging)


def _edit(folder: Path, change) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_output_outside_the_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    elsewhere = tmp_path / "elsewhere.ome.tiff"
    make_ome_tiff(elsewhere, name="secret")
    _edit(out, lambda m: m["positions"]["pos001"].update(output="../elsewhere.ome.tiff"))
    with pytest.raises(InputError, match=r"positions\.pos001\.output .*outside the manifest"):
        build_plan([out], dataset="D")


def test_absolute_tables_path_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    _edit(out, lambda m: m["tables"].update(path="/etc/passwd"))
    with pytest.raises(InputError, match=r"tables\.path '/etc/passwd' points outside"):
        build_plan([out], dataset="D")


def test_symlink_leading_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    target = tmp_path / "other.ome.tiff"
    make_ome_tiff(target, name="other")
    os.replace(out / "pos001.ome.tiff", tmp_path / "moved.ome.tiff")
    (out / "pos001.ome.tiff").symlink_to(target)
    with pytest.raises(InputError, match="outside the manifest's folder"):
        build_plan([out], dataset="D")


def test_paths_inside_the_folder_still_work(tmp_path: Path) -> None:
    """A sub-folder and a harmless ``./`` are inside: containment is not a name filter."""
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    (out / "sub").mkdir()
    os.replace(out / "pos001.ome.tiff", out / "sub" / "pos001.ome.tiff")
    _edit(out, lambda m: m["positions"]["pos001"].update(output="./sub/../sub/pos001.ome.tiff"))
    plan = build_plan([out], dataset="D")
    assert [i.path for i in plan.items] == [(out / "sub" / "pos001.ome.tiff").resolve()]


def test_cli_refusal_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    _edit(out, lambda m: m["tables"].update(path="../../../../etc/passwd"))
    assert cli.main([str(out), "--dataset", "D", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tables.path" in err and "manifest.json" in err


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda m: m["positions"].update(pos001="not an object"), "positions.pos001 is a string"),
        (lambda m: m["positions"]["pos001"].update(size=[1]), "positions.pos001.size is an array"),
        (lambda m: m["positions"]["pos001"].update(size=-5), "positions.pos001.size is negative"),
        (lambda m: m["positions"]["pos001"].update(size=True), "positions.pos001.size is a boolean"),
        (lambda m: m["positions"]["pos001"].update(output=7), "positions.pos001.output is an integer"),
        (lambda m: m.update(tables=["x"]), "tables is an array"),
        (lambda m: m["metadata"].update(tags="a,b"), "metadata.tags is a string"),
        (lambda m: m["tables"].update(path={"a": 1}), "tables.path is an object"),
    ],
)
def test_manifest_of_the_wrong_shape_is_one_line(tmp_path: Path, capsys, change, key) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    _edit(out, change)
    assert cli.main([str(out), "--dataset", "D", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert key in err and str(out / "manifest.json") in err


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_unreadable_experiment_h5_is_one_line(tmp_path: Path, capsys, damage: str) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    h5 = out / "experiment.h5"
    if damage == "truncate":
        h5.write_bytes(h5.read_bytes()[:3000])
    else:
        h5.write_bytes(b"not HDF5 at all")
    assert cli.main([str(out), "--dataset", "D", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "experiment.h5: not readable as HDF5 tables (" in err and "H5F.c" not in err


def test_unreadable_ome_tiff_is_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    tif = out / "pos001.ome.tiff"
    tif.write_bytes(tif.read_bytes()[:100])
    assert cli.main([str(out), "--dataset", "D", "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # a warning (size changed), then it
    assert lines[-1].startswith("omero-push: error: ") and "pos001.ome.tiff: not a readable" in lines[-1]
    assert len(lines) == 2 and "Traceback" not in "".join(lines)

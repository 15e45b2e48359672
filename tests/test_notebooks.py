"""The notebooks in notebooks/ run end to end (nbclient), the OMERO ones against the stand-in,
and are committed without outputs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import tifffile

nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (the [test] extra)")
nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (the [test] extra)")
pytest.importorskip("ipykernel", reason="ipykernel not installed (the [test] extra)")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch) -> Path:
    """A 'python3' kernel that is this interpreter (a system-wide kernelspec could be another
    Python without the project), found first through JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for var in ("P2O_EXPERIMENT", "P2O_OUT", "OMERO_HOST", "OMERO_PORT", "OMERO_USER",
                "OMERO_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    return work


def run(name: str, cwd: Path) -> Any:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def texts(nb: Any) -> list[str]:
    """Each code cell's outputs as one string (text/plain, text/html and streams)."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        parts = []
        for o in cell.outputs:
            if o.get("output_type") == "stream":
                parts.append(o.get("text", ""))
            for key in ("text/plain", "text/html"):
                parts.append(o.get("data", {}).get(key, ""))
        out.append("".join(parts))
    return out


def test_notebooks_are_committed_without_outputs() -> None:
    books = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [b.name for b in books] == ["01_convert_and_look.ipynb", "02_push_and_see.ipynb",
                                       "03_query_and_fetch.ipynb"]
    for book in books:
        nb = nbformat.read(book, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, book.name


def test_convert_and_look(kernel_env: Path) -> None:
    nb = run("01_convert_and_look.ipynb", kernel_env)
    out = "\n".join(texts(nb))
    assert "pos001: ok" in out and "pos002: ok" in out
    assert "axes TCZYX shape (4, 3, 5, 256, 256)" in out
    # planes, channels, max projections and the time course are pictures
    assert out.count("data:image/png;base64,") >= 5 + 3 + 3 + 3 * 4
    # the metadata as tables: channels, planes (ΔT per plane), key-value pairs, HDF5 tables
    assert "GFP" in out and "#00ff00" in out.lower() and "ΔT s" in out
    assert "Demoscope" in out and "positions" in out
    assert (kernel_env / "converted" / "report.html").is_file()


def test_push_then_query_against_the_stand_in(kernel_env: Path, omero_server_factory: Any,
                                              monkeypatch) -> None:
    omero_server = omero_server_factory(password="nb-secret-7f3a")  # findable if it leaked
    monkeypatch.setenv("OMERO_HOST", omero_server.url)
    monkeypatch.setenv("OMERO_PORT", str(omero_server.port))
    monkeypatch.setenv("OMERO_USER", omero_server.user)
    monkeypatch.setenv("OMERO_PASSWORD", omero_server.password)
    nb = run("02_push_and_see.ipynb", kernel_env)
    out = texts(nb)
    everything = "\n".join(out)
    assert "2 image(s) — 2 new" in everything
    assert re.search(r"pos001.*created", everything) and "Demoscope" in everything
    assert "key-value" in everything and "openmicroscopy.org/omero/client/mapAnnotation" in everything
    assert "plane_times" in everything  # an OMERO.table read back as a DataFrame
    assert omero_server.password not in json.dumps(nb)  # never written into the notebook

    nb3 = run("03_query_and_fetch.ipynb", kernel_env)
    out3 = texts(nb3)
    everything3 = "\n".join(out3)
    assert "pos001" in everything3 and "pos002" in everything3  # found by tag and by pair
    # the pixels fetched from OMERO are the converted ones: compare the max projection
    line = next(t for t in out3 if "(3, 128, 128)" in t)  # name, sizes, dtype, stack shape
    name = line.split()[0]
    with tifffile.TiffFile(kernel_env / "converted" / f"{name}.ome.tiff") as tf:
        stack = tf.series[0].asarray()[0, 0]  # TCZYX: the z-stack of c=0 at t=0
    stats = re.search(r"min\s+([\d.]+)\s+max\s+([\d.]+)", everything3)
    assert stats, everything3[-500:]
    assert (float(stats.group(1)), float(stats.group(2))) == (stack.max(axis=0).min(), stack.max())
    assert "data:image/png;base64," in everything3

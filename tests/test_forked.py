"""Work beside an inline position in a forked child (posdir2ometiff/forked.py).

Each check runs in a fresh interpreter: whether a fork is safe depends on the threads alive in
the process, and pytest's own process may hold some (a Dask client's, a timeout's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork: Linux")


def _run(code: str, tmp_path: Path) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_work_runs_in_a_child_and_its_errors_come_back_as_one_line(tmp_path: Path) -> None:
    got = _run("""
        import json, os, threading, time
        from posdir2ometiff.forked import ChildFailed, start

        out = {"parent": os.getpid(), "child": start(os.getpid, "pid").result()}
        def fails():
            raise ValueError("no space left\\nsecond line")
        for name, fn in (("raised", fails), ("died", lambda: os._exit(3)),
                         ("stuck", lambda: time.sleep(60))):
            child = start(fn, name)
            try:
                child.result(timeout=0.5)
            except ChildFailed as exc:
                out[name] = str(exc)
            out[name + "_alive"] = child._proc.is_alive()
        # Another Python thread alive: a lock it holds would stay held in a child: no fork.
        gate = threading.Event()
        t = threading.Thread(target=gate.wait)
        t.start()
        out["with_a_thread"] = start(os.getpid, "pid") is None
        gate.set()
        t.join()
        out["after"] = start(os.getpid, "pid") is not None
        print(json.dumps(out))
    """, tmp_path)
    assert got["child"] != got["parent"]
    assert got["raised"] == "raised: ValueError: no space left"
    assert got["died"] == "died: the child process exited with status 3 before answering"
    assert got["stuck"] == "stuck: no answer from the child process in 0.5 s; stopped"
    assert not (got["raised_alive"] or got["died_alive"] or got["stuck_alive"])
    assert got["with_a_thread"] and got["after"]


_CONVERT = """
    import json, os, sys
    from pathlib import Path
    from posdir2ometiff.convert import convert
    from posdir2ometiff.demo import make_demo
    from posdir2ometiff.metadata import tables as tables_mod

    parent = os.getpid()
    built_in = []  # pids that built the HDF5 image (a child's are read back from a file)
    real = tables_mod.tables_image

    def recording(meta, path, frames=None):
        with open("pids", "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        if os.getpid() != parent and FAIL_IN_CHILD:
            raise OSError("the child's attempt fails")
        return real(meta, path, frames)

    tables_mod.tables_image = recording
    # A table without rows: left out, and said so once, by this process (the child's log
    # records would go to its own copy of this list).
    import logging
    import pandas as pd
    from posdir2ometiff.metadata import plugins
    said = []
    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())
    logging.getLogger("posdir2ometiff.metadata.tables").addHandler(Keep())
    logging.getLogger("posdir2ometiff.metadata.tables").setLevel(logging.INFO)
    real_load = plugins.load_metadata
    def with_an_empty_table(*args):
        meta = real_load(*args)
        meta.tables["no rows"] = pd.DataFrame()
        return meta
    plugins.load_metadata = with_an_empty_table
    spec = make_demo(Path("exp"), positions=1, channels=["DIC", "GFP"], z=2, t=3, size=64)
    result = convert(spec.folder, Path("out"), workers=1, threads=THREADS, progress="off")
    pids = [int(p) for p in Path("pids").read_text().split()]
    manifest = json.loads(result.manifest.read_text())
    print(json.dumps({"parent": parent, "pids": pids, "ok": result.ok,
                      "tables": manifest["tables"], "said": said}))
"""


@pytest.mark.parametrize(("threads", "fail_in_child"), [(2, False), (2, True), (1, False)])
def test_an_inline_position_has_its_tables_built_in_a_child(
    tmp_path: Path, threads: int, fail_in_child: bool
) -> None:
    from posdir2ometiff.demo import make_demo
    from posdir2ometiff.manifest import sha1_file
    from posdir2ometiff.metadata.plugins import load_metadata
    from posdir2ometiff.metadata.tables import read_tables, tables_image

    got = _run(f"FAIL_IN_CHILD = {fail_in_child}\nTHREADS = {threads}\n"
               + textwrap.dedent(_CONVERT), tmp_path)
    assert got["ok"]
    left_out = "table 'no rows' has no rows; not written"
    assert got["said"].count(left_out) == (2 if fail_in_child else 1)  # twice: built twice
    if threads == 1:  # one core asked for: no second one for a child; a thread beside
        assert got["pids"] == [got["parent"]]
    elif fail_in_child:  # the child's error: built again in the process, as any failed attempt
        assert len(got["pids"]) == 2 and got["pids"][0] != got["parent"]
        assert got["pids"][1] == got["parent"]
    else:
        assert len(got["pids"]) == 1 and got["pids"][0] != got["parent"]
    h5 = tmp_path / "out" / "experiment.h5"
    assert got["tables"]["sha1"] == sha1_file(h5)
    # The same bytes the process itself would have written (the file is deterministic).
    spec = make_demo(tmp_path / "again", positions=1, channels=["DIC", "GFP"], z=2, t=3,
                     size=64)
    names, image = tables_image(load_metadata(spec.folder, "auto", None), h5)
    assert got["tables"]["names"] == names and "plane_times" in names
    assert h5.read_bytes() == image
    assert set(read_tables(h5)) == set(names)

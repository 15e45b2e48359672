"""The converter under attack: a second run, a killed run, a full disk, a killed parent
(issue #14, points 2, 4, 6)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from posdir2ometiff import cli
from posdir2ometiff.atomic import temp_path_for
from posdir2ometiff.convert import convert
from posdir2ometiff.demo import make_demo
from posdir2ometiff.lock import EXIT_LOCKED
from tests.test_lock_atomic import _holder, _mount_tmpfs
from tests.test_push_support import isolate_root_logging

_clean_logging = pytest.fixture(autouse=True)(isolate_root_logging)
FAST = dict(workers=1, progress="off")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo(tmp_path: Path):
    return make_demo(tmp_path / "exp", positions=2, channels=["DIC", "GFP"], z=2, t=2, size=48,
                     seed=3)


def test_second_converter_on_one_out_refuses_and_keeps_the_first_ones_files(
    demo, tmp_path: Path, capsys
) -> None:
    """The race made deterministic: run A holds OUT (here: its lock, held by another process at
    the moment run B starts); B must neither write nor clean up anything of A's."""
    out = tmp_path / "out"
    convert(demo.folder, out, **FAST)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    a_partial = temp_path_for(out / "pos001.ome.tiff")  # A's file mid-write
    proc = _holder(out)
    try:
        a_partial = a_partial.with_name(a_partial.name.replace(f".{os.getpid()}-",
                                                               f".{proc.pid}-"))
        a_partial.write_bytes(b"A is writing")
        rc = cli.main([str(demo.folder), "-o", str(out), "--overwrite", "-q"])
        err = capsys.readouterr().err.strip()
    finally:
        proc.communicate("")
    assert rc == EXIT_LOCKED
    assert len(err.splitlines()) == 1 and f"in use by test holder (pid {proc.pid}" in err
    assert a_partial.read_bytes() == b"A is writing"
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p != a_partial}
    assert after == before  # outputs and manifest untouched; the holder removed its lock file


def test_temporaries_of_a_killed_run_are_removed_by_the_next(demo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = temp_path_for(out / "pos001.ome.tiff")
    left = out / mine.name.replace(f".{os.getpid()}-", f".{dead.pid}-")
    left.write_bytes(b"half a file")
    old_style = out / "pos002.ome.tiff.3f2a9c1b7d0e.partial"
    old_style.write_bytes(b"half")
    (out / ".previews").mkdir()
    preview = out / ".previews" / left.name.replace("pos001.ome.tiff", "pos001.json")
    preview.write_bytes(b"{")
    convert(demo.folder, out, **FAST)
    assert not left.exists() and not old_style.exists() and not preview.exists()
    names = {p.name for p in out.iterdir()}
    assert {"manifest.json", "pos001.ome.tiff", "pos002.ome.tiff"} <= names
    assert not [n for n in names if n.endswith(".partial")]


def test_output_inside_a_position_folder_exits_non_zero(demo, capsys) -> None:
    rc = cli.main([str(demo.folder), "-o", str(demo.folder / "pos001" / "out"), "-q"])
    assert rc == 1 and "inside position folder" in capsys.readouterr().err
    assert not (demo.folder / "pos001" / "out").exists()


def test_pattern_matching_nothing_exits_non_zero(demo, tmp_path: Path, capsys) -> None:
    rc = cli.main([str(demo.folder), "-o", str(tmp_path / "out"), "-q",
                   "--pattern", r"(?P<t>\d+)-(?P<c>\w+)-(?P<z>\d+)\.jpg"])
    assert rc == 1 and "matches no file" in capsys.readouterr().err


@pytest.fixture
def small_disk(tmp_path: Path):
    where = tmp_path / "disk"
    _mount_tmpfs(where, "160k")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("threads", [1, 2])  # written by the converting thread / a helper
def test_disk_full_fails_the_position_naming_the_file_and_leaves_nothing(
    tmp_path: Path, small_disk: Path, threads: int
) -> None:
    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=2, t=2, size=256, seed=1)
    out = small_disk / "out"
    result = convert(spec.folder, out, compression="none", threads=threads, **FAST)
    (pos,) = result.positions
    assert pos.status == "failed"
    assert f"{out / 'pos001.ome.tiff'}: cannot be written (No space left on device)" in pos.error
    assert not (out / "pos001.ome.tiff").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


def test_disk_full_for_experiment_h5_names_it(
    small_disk: Path, swainlab_sample: Path
) -> None:
    """The HDF5 tables do not fit: one error naming experiment.h5, no half file."""
    from posdir2ometiff.atomic import AtomicWriteError
    from posdir2ometiff.metadata import tables as tables_mod
    from posdir2ometiff.metadata.plugins import load_metadata

    meta = load_metadata(swainlab_sample, "auto", None)
    # Fill the disk but for 8 KiB, so the store fails mid-write or at its final flush.
    (small_disk / "keep").write_bytes(b"\0" * (160 * 1024 - 8 * 1024))
    with pytest.raises(AtomicWriteError, match=r"experiment\.h5: cannot be written"):
        tables_mod.write_tables(meta, small_disk / "experiment.h5")
    assert sorted(p.name for p in small_disk.iterdir()) == ["keep"]


@pytest.mark.parametrize("free_kib", [2, 8, 20, 32, 44, 50])
def test_tables_on_a_full_disk_say_the_disk_is_full(
    small_disk: Path, swainlab_sample: Path, free_kib: int
) -> None:
    """However far HDF5 got (an error, or writes lost without one and found on reading back:
    "No object named ..."), the user is told the disk is full."""
    from posdir2ometiff.atomic import AtomicWriteError
    from posdir2ometiff.metadata import tables as tables_mod
    from posdir2ometiff.metadata.plugins import load_metadata

    meta = load_metadata(swainlab_sample, "auto", None)
    (small_disk / "keep").write_bytes(b"\0" * ((160 - free_kib) * 1024))
    with pytest.raises(AtomicWriteError) as info:
        tables_mod.write_tables(meta, small_disk / "experiment.h5")
    assert info.value.strerror == (f"{small_disk / 'experiment.h5'}: cannot be written "
                               "(No space left on device)")
    assert sorted(p.name for p in small_disk.iterdir()) == ["keep"]
    # Nothing left open: a removed temporary held open would keep its blocks on the full disk.
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
    assert not [f for f in held if f.startswith(str(small_disk))]


def _flaky_tables(monkeypatch: pytest.MonkeyPatch, out: Path, failures: int) -> list[dict]:
    """write_tables failing its first ``failures`` calls with a full disk; each call records
    whether a position's partial file was in OUT at that moment (the position still writing)."""
    from posdir2ometiff.atomic import AtomicWriteError
    from posdir2ometiff.metadata import tables as tables_mod

    real = tables_mod.write_tables
    calls: list[dict] = []

    def flaky(meta, path, image=None):
        calls.append({"beside": any(p.name.endswith(".partial") for p in out.iterdir())})
        if len(calls) <= failures:
            raise AtomicWriteError(f"{path}: cannot be written (No space left on device, "
                                   f"call {len(calls)})")
        return real(meta, path, image)

    monkeypatch.setattr(tables_mod, "write_tables", flaky)
    return calls


@pytest.mark.parametrize("workers", [1, 2])
def test_tables_failing_beside_the_positions_are_written_again_after_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """experiment.h5 is written while the positions convert; on a nearly full disk it can fail
    only because a position's partial held the space. It is then tried again after them, so
    which of the two got to the disk first never decides the outcome."""
    spec = make_demo(tmp_path / "exp", positions=2, channels=["GFP"], z=2, t=30, size=256,
                     seed=1)
    out = tmp_path / "out"
    out.mkdir()
    calls = _flaky_tables(monkeypatch, out, failures=1)
    result = convert(spec.folder, out, workers=workers, threads=2, progress="off")
    assert [p.status for p in result.positions] == ["ok", "ok"]
    assert len(calls) == 2
    assert calls[1]["beside"] is False  # the second attempt: after the positions
    if workers == 1:  # inline: the first attempt ran beside the position, in a thread
        assert calls[0]["beside"] is True
    assert result.tables is not None and result.tables.is_file()
    import json

    assert json.loads(result.manifest.read_text())["tables"]["path"] == "experiment.h5"


def test_tables_failing_again_after_the_positions_raise_that_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from posdir2ometiff.atomic import AtomicWriteError

    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=2, t=4, size=64, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    calls = _flaky_tables(monkeypatch, out, failures=2)
    with pytest.raises(AtomicWriteError, match=r"experiment\.h5: cannot be written .*call 2"):
        convert(spec.folder, out, **FAST)
    assert len(calls) == 2
    assert not (out / "experiment.h5").exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killing_the_converter_stops_its_workers(tmp_path: Path, sig: signal.Signals) -> None:
    spec = make_demo(tmp_path / "exp", positions=2, channels=["DIC", "GFP"], z=4, t=40,
                     size=256, seed=2)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "posdir2ometiff", str(spec.folder), "-o", str(out),
         "--workers", "2", "--threads", "1", "-q", "--compression", "zlib"],
        env=env, stderr=subprocess.DEVNULL,
    )
    parent = psutil.Process(proc.pid)
    workers: list[psutil.Process] = []
    deadline = time.monotonic() + 120
    # Wait (no timing assertion) until both workers exist and one is writing into OUT.
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [c for c in parent.children(recursive=True) if "resource_tracker" not in
                   " ".join(c.cmdline())]
        if len(workers) >= 2 and out.is_dir() and any(
                p.name.endswith(".partial") for p in out.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the conversion ended before the test could interrupt it"
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"orphans still running after {sig.name}: {alive}"


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda m: m.update(options=[]), "options"),
        (lambda m: m["positions"].update(pos001="not an entry"), "positions/pos001"),
        (lambda m: m["positions"]["pos001"].update(sources={"a": 1}), "positions/pos001/sources"),
        (lambda m: m["positions"]["pos001"].update(size=float("inf")), "positions/pos001/size"),
    ],
)
def test_manifest_of_the_wrong_shape_is_named_and_ignored(
    demo, tmp_path: Path, caplog, change, key
) -> None:
    import json
    import logging

    out = tmp_path / "out"
    convert(demo.folder, out, **FAST)
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        again = convert(demo.folder, out, **FAST)
    assert [p.status for p in again.positions] == ["ok", "ok"]  # converted, not skipped
    assert f"{path}: {key}: " in caplog.text and "every position will be converted" in caplog.text

"""One run per output folder, and files complete or absent (issue #14, points 2 and 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from posdir2ometiff.atomic import (
    AtomicWriteError,
    atomic_path,
    remove_stale_temporaries,
    temp_path_for,
    write_text_atomic,
)
from posdir2ometiff.lock import LOCK_NAME, FolderLock, LockedError

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from posdir2ometiff.lock import FolderLock
    with FolderLock(sys.argv[1], "test holder"):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def _holder(folder: Path) -> subprocess.Popen:
    """A second process that holds ``folder``'s lock until its stdin closes."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_is_refused_naming_the_holder(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(LockedError, match=rf"test holder \(pid {proc.pid} on .*\)"):
            FolderLock(tmp_path, "second").acquire()
    finally:
        proc.communicate("")
    with FolderLock(tmp_path, "third"):  # released when the holder ends
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["purpose"] == "third"
    assert not (tmp_path / LOCK_NAME).exists()  # a clean release leaves no file behind


def test_lock_of_a_killed_holder_is_stale_and_taken_over(tmp_path: Path, caplog) -> None:
    proc = _holder(tmp_path)
    proc.kill()  # SIGKILL: no clean-up runs; the file still names the dead pid
    proc.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == proc.pid
    with caplog.at_level("INFO"), FolderLock(tmp_path, "next"):
        pass
    assert f"stale lock of test holder (pid {proc.pid}" in caplog.text


def test_wait_for_the_holder(tmp_path: Path) -> None:
    """With wait_s the second run waits; here the holder ends before the deadline."""
    import threading

    proc = _holder(tmp_path)
    threading.Timer(0.5, lambda: proc.communicate("")).start()
    with FolderLock(tmp_path, "patient", wait_s=60):
        pass
    proc.wait()


def test_temporaries_are_unique_and_hidden(tmp_path: Path) -> None:
    a, b = temp_path_for(tmp_path / "x.ome.tiff"), temp_path_for(tmp_path / "x.ome.tiff")
    assert a != b and a.name.startswith(".x.ome.tiff.") and a.name.endswith(".partial")


def test_stale_temporaries_removed_live_ones_kept(tmp_path: Path) -> None:
    """A killed run's temporary goes; a running writer's (another run, here a live child) stays;
    the fixed names of earlier versions go."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        mine = temp_path_for(tmp_path / "pos001.ome.tiff")
        dead_tmp = tmp_path / mine.name.replace(f".{os.getpid()}-", f".{dead.pid}-")
        live_tmp = tmp_path / mine.name.replace(f".{os.getpid()}-", f".{live.pid}-")
        old = tmp_path / "pos002.ome.tiff.partial"
        for p in (dead_tmp, live_tmp, old):
            p.write_bytes(b"x")
        final = tmp_path / "pos003.ome.tiff"
        final.write_bytes(b"done")
        removed = remove_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted([dead_tmp, old])
        assert live_tmp.exists() and final.exists()
    finally:
        live.communicate(b"")


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path: Path) -> None:
    final = tmp_path / "manifest.json"
    final.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash in the middle")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def _mount_tmpfs(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 256 KiB tmpfs: the disk-full case, real ENOSPC from the kernel."""
    where = tmp_path / "disk"
    _mount_tmpfs(where, "256k")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full_names_the_file_and_leaves_nothing(small_disk: Path) -> None:
    final = small_disk / "manifest.json"
    with pytest.raises(AtomicWriteError, match=r"manifest\.json: cannot be written \(No space"):
        write_text_atomic(final, "x" * (1 << 20))
    assert list(small_disk.iterdir()) == []

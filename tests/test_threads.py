"""Threads inside one position: planes decoded ahead (bounded, in order), tiles compressed by
several workers, the default thread count, and the output hashed while it is written."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from posdir2ometiff import convert as convert_mod
from posdir2ometiff import hashfile, planes, position, writer
from posdir2ometiff.convert import convert
from posdir2ometiff.cores import cores_each
from posdir2ometiff.demo import make_demo
from posdir2ometiff.layout import PlaneKey
from posdir2ometiff.writer import write_ometiff_file
from tests.test_convert import assert_matches_sources


def test_read_ahead_keeps_order_and_bounds_planes_in_flight() -> None:
    keys = [PlaneKey(t, 0, 0) for t in range(60)]
    lock = threading.Lock()
    state = {"fetched": 0, "max_ahead": 0, "consumed": 0}
    names: set[str] = set()

    def fetch(key: PlaneKey):
        time.sleep(0.001 * (key.t % 3))  # finish out of order
        with lock:
            state["fetched"] += 1
            state["max_ahead"] = max(state["max_ahead"], state["fetched"] - state["consumed"])
            names.add(threading.current_thread().name)
        return (np.full((2, 2), key.t), 0, "", 0)

    got = []
    for key, item in planes.read_ahead(keys, fetch, threads=3):
        got.append((key, int(item[0][0, 0])))
        with lock:
            state["consumed"] += 1
        time.sleep(0.002)  # a slow writer: decoding must not run away from it
    assert got == [(k, k.t) for k in keys]
    assert state["max_ahead"] <= planes.AHEAD_PER_THREAD * 3 + 1
    assert all(n.startswith("decode") for n in names) and len(names) > 1


def test_read_ahead_with_one_thread_decodes_inline() -> None:
    seen = []

    def fetch(key: PlaneKey):
        seen.append(threading.current_thread())
        return None

    assert [k for k, _ in planes.read_ahead([PlaneKey(0, 0, z) for z in range(3)], fetch)] == [
        PlaneKey(0, 0, z) for z in range(3)]
    assert seen == [threading.main_thread()] * 3


def test_read_ahead_stops_when_closed() -> None:
    calls = []

    def fetch(key: PlaneKey):
        calls.append(key)
        time.sleep(0.01)
        return None

    it = planes.read_ahead([PlaneKey(t, 0, 0) for t in range(1000)], fetch, threads=2)
    next(it)
    it.close()
    assert len(calls) <= 2 * planes.AHEAD_PER_THREAD + 2


def test_read_ahead_starts_decoding_before_the_first_plane_is_asked_for() -> None:
    """The threads start when the read-ahead is created (busy by the time the writer asks),
    up to the given number of planes."""
    started = threading.Event()
    calls: list[PlaneKey] = []
    lock = threading.Lock()

    def fetch(key: PlaneKey):
        with lock:
            calls.append(key)
            if len(calls) == 6:
                started.set()
        return None

    it = planes.read_ahead([PlaneKey(t, 0, 0) for t in range(100)], fetch, threads=2, ahead=6)
    try:
        assert started.wait(10), "nothing decoded before the first next()"
        time.sleep(0.05)
        assert len(calls) == 6  # bounded: not a plane more than asked for
        assert [k for k, _ in it][:3] == [PlaneKey(t, 0, 0) for t in range(3)]
    finally:
        it.close()


def test_planes_ahead_is_a_byte_budget_with_a_floor() -> None:
    tiny = 128 * 128 * 2
    assert planes.planes_ahead(2, tiny) == planes.AHEAD_MAX_PLANES  # 1 MB of 128² planes
    small = 512 * 512 * 2
    assert planes.planes_ahead(2, small) == planes.AHEAD_BYTES // small == 16  # 8 MB
    assert planes.planes_ahead(3, 2 << 20) == planes.AHEAD_PER_THREAD * 3  # the floor: 6 > 4
    big = 2048 * 2048 * 2
    assert planes.planes_ahead(2, big) == planes.AHEAD_PER_THREAD * 2  # 4 planes = 32 MB
    assert planes.planes_ahead(8, big) == planes.AHEAD_PER_THREAD * 8  # the floor
    assert planes.planes_ahead(1, small) == 1  # one thread: nothing ahead
    assert planes.planes_ahead(4, 10**9) == planes.AHEAD_PER_THREAD * 4


def _threads_calling(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> set[str]:
    """Names of the threads that call ``module.name`` from now on (the call still happens)."""
    names: set[str] = set()
    real = getattr(module, name)

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        names.add(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return names


def test_threads_decode_ahead_and_compress_tiles_in_parallel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_demo(tmp_path / "exp", positions=1, channels=["DIC", "GFP"], z=2, t=3, size=96,
                     seed=3)
    readers = _threads_calling(monkeypatch, position, "read_plane")
    compressors = _threads_calling(monkeypatch, imagecodecs, "zstd_encode")
    writes = _threads_calling(monkeypatch, hashfile, "write_all")  # the output's bytes
    out2 = tmp_path / "t2"
    assert convert(spec.folder, out2, threads=2, tile=32, progress="off").ok
    assert readers and all(n.startswith("decode") for n in readers)
    assert compressors and all(n.startswith("compress") for n in compressors)
    assert writes and all(n.startswith("hashwrite") for n in writes)
    assert_matches_sources(out2, spec.folder, "pos001")

    readers.clear()
    compressors.clear()
    writes.clear()
    out1 = tmp_path / "t1"
    monkeypatch.setattr(convert_mod, "usable_cores", lambda: 1)  # no core spare for a helper
    assert convert(spec.folder, out1, threads=1, tile=32, progress="off").ok
    assert readers == compressors == writes == {"MainThread"}
    with tifffile.TiffFile(out1 / "pos001.ome.tiff") as a, tifffile.TiffFile(
            out2 / "pos001.ome.tiff") as b:
        np.testing.assert_array_equal(a.series[0].asarray(), b.series[0].asarray())


def test_single_tile_planes_are_compressed_by_the_writing_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One tile, one level, two decoders: the writer compresses inline (a hand-off costs more
    than the 1 ms of zstd); several tiles or more decoders: in threads."""
    assert writer.compress_threads(2, (512, 512), 512) == 1
    assert writer.compress_threads(3, (512, 512), 512) == 1
    assert writer.compress_threads(4, (512, 512), 512) == 4
    assert writer.compress_threads(2, (1024, 1024), 512) == 2  # 4 tiles and a pyramid
    assert writer.compress_threads(2, (512, 512), 512, pyramid=2) == 2
    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=2, t=2, size=64, seed=3)
    compressors = _threads_calling(monkeypatch, imagecodecs, "zstd_encode")
    assert convert(spec.folder, tmp_path / "out", threads=2, tile=64, progress="off").ok
    assert compressors == {"MainThread"}
    assert_matches_sources(tmp_path / "out", spec.folder, "pos001")


def test_default_threads_share_the_cores_between_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_demo(tmp_path / "exp", positions=2, channels=["GFP"], z=1, t=1, size=32,
                     metadata=False)
    seen: list[tuple[int, list[int]]] = []
    real = convert_mod._run_jobs

    def recording(jobs, workers, *args):
        seen.append((workers, [j.threads for j in jobs]))
        return real(jobs, 1, *args)

    monkeypatch.setattr(convert_mod, "_run_jobs", recording)
    monkeypatch.setattr("posdir2ometiff.executors.usable_cores", lambda: 8)
    monkeypatch.setattr(convert_mod, "usable_cores", lambda: 8)
    assert convert(spec.folder, tmp_path / "a", progress="off").ok  # 2 workers → 4 threads each
    assert convert(spec.folder, tmp_path / "b", workers=1, progress="off").ok  # 1 → 8
    assert convert(spec.folder, tmp_path / "c", threads=3, progress="off").ok  # as asked
    assert seen == [(2, [4, 4]), (1, [8, 8]), (2, [3, 3])]
    with pytest.raises(convert_mod.ConversionError, match="--threads"):
        convert(spec.folder, tmp_path / "d", threads=0)
    # 3 cores, 2 positions: 1.5 cores each, rounded to 2 threads (not down to 1, which left a
    # core to the output helpers only).
    monkeypatch.setattr("posdir2ometiff.executors.usable_cores", lambda: 3)
    monkeypatch.setattr(convert_mod, "usable_cores", lambda: 3)
    assert convert(spec.folder, tmp_path / "e", progress="off").ok
    assert seen[-1] == (2, [2, 2])


@pytest.mark.parametrize(("slurm", "usable"), [
    (None, 8), ("4", 4), ("16", 8), ("0", 8), ("four", 8), ("", 8),
])
def test_usable_cores_are_at_most_what_slurm_allots(
    monkeypatch: pytest.MonkeyPatch, slurm: str | None, usable: int
) -> None:
    """Affinity, capped by ``SLURM_CPUS_ON_NODE`` where Slurm set it to a count."""
    from posdir2ometiff import cores

    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    if slurm is None:
        monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)
    else:
        monkeypatch.setenv("SLURM_CPUS_ON_NODE", slurm)
    assert cores.usable_cores() == usable


@pytest.mark.parametrize(("slurm", "expected"), [
    (None, (8, list(range(8)), None)),
    ("8", (8, list(range(8)), None)),  # pinned, or the whole node allotted: its CPUs say it
    ("4", (4, list(range(8)), "77")),  # 4 allotted, 8 in sight: Slurm did not pin the job
])
def test_placement_names_the_slurm_job_only_where_slurm_did_not_pin_it(
    monkeypatch: pytest.MonkeyPatch, slurm: str | None, expected: tuple
) -> None:
    from posdir2ometiff import cores

    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    if slurm is None:
        monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)
    else:
        monkeypatch.setenv("SLURM_CPUS_ON_NODE", slurm)
    assert cores.placement() == expected


@pytest.mark.parametrize(("cores", "slots", "each"), [
    (32, 1, 32), (8, 2, 4), (32, 20, 2), (32, 17, 2), (32, 13, 2), (32, 11, 3), (32, 24, 1),
    (3, 2, 2), (5, 2, 3), (2, 2, 1), (1, 1, 1), (1, 4, 1), (2, 0, 2),
])
def test_each_position_gets_its_share_of_the_cores_rounded_to_the_nearest(
    cores: int, slots: int, each: int
) -> None:
    """20 positions on 32 cores get 2 threads each (40 threads: at most 1.33 a core, where
    rounding down left 12 cores to the output helpers); never 0."""
    assert cores_each(cores, slots) == each
    assert each * max(1, slots) <= max(cores, max(1, slots)) * 4 / 3  # bounded oversubscription


@pytest.mark.parametrize(("cores", "workers", "threads", "helper"), [
    (8, 2, None, True),  # 4 threads each: the helper keeps system calls off the GIL
    (8, 2, 4, True),
    (2, 1, None, True),  # 2 threads
    (2, 1, 2, True),
    (3, 2, None, True),  # 1.5 cores each: two threads each
    (3, 2, 1, False),  # --threads 1 asked for: one core, which a helper would overrun
    (2, 1, 1, False),
    (2, 2, None, False),  # every core converts a position
    (1, 1, None, False),  # a one-core Slurm task
    (8, 8, None, False),
])
def test_the_output_helper_thread_only_where_a_core_is_spare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int, workers: int,
    threads: int | None, helper: bool,
) -> None:
    spec = make_demo(tmp_path / "exp", positions=workers, channels=["GFP"], z=1, t=1, size=32,
                     metadata=False)
    seen: list[tuple[int, bool]] = []
    real = convert_mod._run_jobs

    def recording(jobs, workers_, *args):
        seen.extend((j.threads, j.io_helper) for j in jobs)
        return real(jobs, 1, *args)

    monkeypatch.setattr(convert_mod, "_run_jobs", recording)
    monkeypatch.setattr("posdir2ometiff.executors.usable_cores", lambda: cores)
    monkeypatch.setattr(convert_mod, "usable_cores", lambda: cores)
    writes = _threads_calling(monkeypatch, hashfile, "write_all")
    assert convert(spec.folder, tmp_path / "out", workers=workers, threads=threads,
                   progress="off").ok
    assert seen == [(threads or cores_each(cores, workers), helper)] * workers
    assert writes == ({"hashwrite_0"} if helper else {"MainThread"})


def test_output_is_hashed_while_written_never_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=2, t=4, size=200, seed=2)
    out = tmp_path / "out"
    real_open = builtins.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if "r" in mode and "+" not in mode and str(file).startswith(str(out)) and (
                ".ome.tiff" in str(file)):
            raise AssertionError(f"output read back: {file}")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    assert convert(spec.folder, out, threads=2, tile=64, progress="off").ok
    monkeypatch.setattr(builtins, "open", real_open)
    entry = json.loads((out / "manifest.json").read_text())["positions"]["pos001"]
    data = (out / "pos001.ome.tiff").read_bytes()
    assert entry["sha1"] == hashlib.sha1(data).hexdigest() and entry["size"] == len(data)
    assert entry["pyramid_levels"] == 3  # SubIFDs: the writer seeks back more than once


@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("tile", [128, 512])  # a pyramid, one tifffile call per plane; one level
def test_hashing_file_matches_the_bytes_on_disk_without_falling_back(
    tmp_path: Path, compression: str, background: bool, tile: int
) -> None:
    """Hashed from the writes, never read back, and with at most about two planes' bytes held
    in memory (a checkpoint after every plane, in one tifffile call for every plane too)."""
    rng = np.random.default_rng(5)
    shape = (300, 500)
    planes_ = [rng.integers(0, 4000, shape).astype(np.uint16) for _ in range(6)]
    path = tmp_path / "x.ome.tiff"
    stale: list[bool] = []
    held: list[int] = []
    real_close, real_checkpoint = hashfile.HashingFile.close, hashfile.HashingFile.checkpoint

    def spy_close(self):
        stale.append(self.stale)
        real_close(self)

    def spy_checkpoint(self):
        real_checkpoint(self)
        held.append(self._end - self._base)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hashfile.HashingFile, "close", spy_close)
        mp.setattr(hashfile.HashingFile, "checkpoint", spy_checkpoint)
        written = write_ometiff_file(path, iter(planes_), count=6, shape=shape,
                                     dtype=np.dtype("uint16"), ome_xml="<OME/>", tile=tile,
                                     compression=compression, threads=2,
                                     background=background)
    assert stale and not any(stale)  # hashed from the writes, no read-back fallback
    assert written.levels == (3 if tile == 128 else 1)
    assert len(held) == 6 and max(held) < 2.5 * planes_[0].nbytes, held
    assert written.sha1 == hashlib.sha1(path.read_bytes()).hexdigest()
    assert written.size == path.stat().st_size
    with tifffile.TiffFile(path) as tf:
        np.testing.assert_array_equal(tf.pages[4].asarray(), planes_[4])


@pytest.mark.parametrize("background", [True, False])
def test_hashing_file_falls_back_when_hashed_bytes_change(tmp_path: Path, background: bool
                                                         ) -> None:
    path = tmp_path / "f.bin"
    with hashfile.HashingFile(path, background=background) as fh:
        fh.write(b"a" * 100)
        fh.checkpoint()
        fh.write(b"b" * 100)
        fh.checkpoint()  # the first 100 bytes are hashed now
        fh.seek(10)
        fh.write(b"XYZ")
        fh.seek(0, 2)
        fh.write(b"c")
    assert fh.stale
    assert fh.sha1() == hashlib.sha1(path.read_bytes()).hexdigest()


_ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 3), st.binary(min_size=0, max_size=300)),
    st.tuples(st.just("seek"), st.integers(0, 2000), st.just(b"")),
    st.tuples(st.just("end"), st.just(0), st.just(b"")),
    st.tuples(st.just("checkpoint"), st.just(0), st.just(b"")),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=_ops, background=st.booleans())
def test_hashing_file_is_a_file(tmp_path_factory: pytest.TempPathFactory, ops: list,
                                background: bool) -> None:
    """Any writes, seeks (past the end too) and checkpoints, with bytes, bytearrays and NumPy
    buffers, leave the bytes an ordinary file would hold, and a SHA-1 of exactly them (hashed
    and written by a helper thread or by the writing thread)."""
    path = tmp_path_factory.mktemp("hf") / "f.bin"
    model = bytearray()
    pos = 0
    with hashfile.HashingFile(path, sync_every=512, background=background) as fh:
        for op, kind, data in ops:
            if op == "seek":
                pos = fh.seek(min(pos, len(model)) if kind == 0 else kind)
            elif op == "end":
                pos = fh.seek(0, 2)
            elif op == "checkpoint":
                fh.checkpoint()
            else:
                buf = [data, bytearray(data), np.frombuffer(data, np.uint8).copy(),
                       memoryview(data)][kind]
                assert fh.write(buf) == len(data)
                if isinstance(buf, (bytearray, np.ndarray)) and len(data):
                    # The caller reuses its buffer: what was written must not change.
                    buf[:] = 0 if isinstance(buf, np.ndarray) else bytes(len(data))
                if pos > len(model) and data:  # an empty write does not extend a file
                    model.extend(bytes(pos - len(model)))
                model[pos : pos + len(data)] = data
                pos += len(data)
            assert fh.tell() == pos
    assert path.read_bytes() == bytes(model)
    assert fh.size == len(model)
    assert fh.sha1() == hashlib.sha1(bytes(model)).hexdigest()


@pytest.mark.parametrize("background", [True, False])
def test_hashing_file_keeps_bytes_without_copying_them(tmp_path: Path, background: bool) -> None:
    """The compressed tiles (``bytes``) are held by reference until written, not copied."""
    import tracemalloc

    tiles = [bytes([i]) * (1 << 20) for i in range(8)]
    with hashfile.HashingFile(tmp_path / "f.bin", background=background) as fh:
        tracemalloc.start()
        try:
            for tile in tiles:
                fh.write(tile)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < (1 << 20), peak  # one copy of one tile would already be 1 MiB
    assert fh.sha1() == hashlib.sha1(b"".join(tiles)).hexdigest()


@pytest.mark.parametrize("background", [True, False])
def test_writing_never_waits_for_a_running_fdatasync(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, background: bool
) -> None:
    """An ``fdatasync`` that does not return (a slow disk) stops neither the writing thread nor the
    helper: the file is written to its end while it hangs. Only :meth:`close` waits for it, and
    the descriptor is closed after it returns. (Before: the helper called it itself, its queue
    filled, and the writer waited for the disk at every sync.)"""
    release, started = threading.Event(), threading.Event()
    events: list[str] = []
    real_close = os.close

    def slow_fdatasync(fd: int) -> None:
        events.append("sync")
        started.set()
        assert release.wait(30)
        events.append("sync returned")

    def spy_close(fd: int) -> None:
        events.append("close")
        real_close(fd)

    monkeypatch.setattr(hashfile.os, "fdatasync", slow_fdatasync)
    chunks = [bytes([i]) * 1000 for i in range(4 * hashfile.MAX_QUEUED + 8)]
    fh = hashfile.HashingFile(tmp_path / "f.bin", sync_every=1000, background=background)
    done = threading.Event()

    def write() -> None:
        for chunk in chunks:
            fh.write(chunk)
            fh.checkpoint()
        done.set()

    writer_thread = threading.Thread(target=write, daemon=True)
    writer_thread.start()
    assert started.wait(30)
    assert done.wait(30), "the writer waited for fdatasync"
    assert events == ["sync"]  # one call runs; the next due one waits for it, never a second
    monkeypatch.setattr(hashfile.os, "close", spy_close)
    closer = threading.Thread(target=fh.close, daemon=True)
    closer.start()
    time.sleep(0.2)  # close must now be waiting for the running call, not closing under it
    assert "close" not in events
    release.set()
    closer.join(30)
    assert not closer.is_alive()
    assert events[-2:] == ["sync returned", "close"], events
    assert (tmp_path / "f.bin").read_bytes() == b"".join(chunks)
    assert fh.sha1() == hashlib.sha1(b"".join(chunks)).hexdigest()


@pytest.mark.parametrize("background", [True, False])
def test_a_failed_fdatasync_fails_the_file_without_a_partial(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, background: bool
) -> None:
    """``EIO`` from a background ``fdatasync`` is the file's error: write_ometiff_file raises it
    naming the file, and neither the final name nor the partial one is left."""
    import errno

    failed = threading.Event()

    def failing(fd: int) -> None:
        failed.set()
        raise OSError(errno.EIO, "Input/output error")

    def planes_() -> Iterator[np.ndarray]:
        for i in range(8):
            if i == 4:  # the failed call has happened before the rest is written
                assert failed.wait(30)
            yield np.full((64, 64), i, np.uint16)

    monkeypatch.setattr(hashfile.os, "fdatasync", failing)
    monkeypatch.setattr(hashfile.HashingFile.__init__, "__defaults__", (1,))  # sync_every
    out = tmp_path / "p.ome.tiff"
    with pytest.raises(OSError, match="p.ome.tiff") as info:
        write_ometiff_file(out, planes_(), count=8, shape=(64, 64), dtype=np.uint16,
                           ome_xml="<OME/>", tile=64, background=background)
    assert "Input/output error" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_close_closes_the_descriptor_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A close that fails (here the background fdatasync's EIO) still closes the file: a second
    close (``IOBase.__del__`` makes one) must not close the number again, which by then may be
    another file's (it was: the next test's output lost its descriptor)."""
    import errno

    called = threading.Event()

    def failing(fd: int) -> None:
        called.set()
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(hashfile.os, "fdatasync", failing)
    fh = hashfile.HashingFile(tmp_path / "f.bin", sync_every=10)
    fh.write(b"x" * 100)
    fh.checkpoint()
    fh.checkpoint()
    assert called.wait(30)
    with pytest.raises(OSError, match="Input/output error"):
        fh.close()
    assert fh.closed
    closed: list[int] = []
    monkeypatch.setattr(hashfile.os, "close", closed.append)
    fh.close()
    del fh
    import gc

    gc.collect()
    assert closed == []


def test_the_syncer_uses_fsync_where_there_is_no_fdatasync(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """macOS has no ``os.fdatasync``: the background flush is then an ``fsync``, not an
    AttributeError in the thread that fails every file over the threshold."""
    flushed = threading.Event()
    monkeypatch.delattr(hashfile.os, "fdatasync", raising=False)
    monkeypatch.setattr(hashfile.os, "fsync", lambda fd: flushed.set())
    data = bytes(range(256)) * 64
    with hashfile.HashingFile(tmp_path / "f.bin", sync_every=1000) as fh:
        fh.write(data)
        fh.checkpoint()
        fh.checkpoint()
        assert flushed.wait(30), "no flush was made"
    assert (tmp_path / "f.bin").read_bytes() == data


def test_the_syncer_starts_no_thread_for_a_small_file(tmp_path: Path) -> None:
    """A file smaller than ``sync_every`` never calls ``fdatasync`` nor starts a thread for it."""
    before = {t.name for t in threading.enumerate()}
    with hashfile.HashingFile(tmp_path / "f.bin", sync_every=1 << 20) as fh:
        fh.write(b"x" * 1000)
        fh.checkpoint()
        assert "fdatasync" not in {t.name for t in threading.enumerate()} - before
    assert fh._syncer._thread is None


def test_one_call_writer_checks_the_plane_count_and_hands_over_every_plane(
    tmp_path: Path
) -> None:
    """Single-level planes go to tifffile in one call: a plane too many or too few is still the
    file's error (no output left), and previews and progress still come plane by plane, each
    plane handed over once it is written and before the next is asked for."""
    shape = (64, 64)
    args = dict(shape=shape, dtype=np.dtype("uint16"), ome_xml="<OME/>")
    for n, count, message in ((3, 2, "more than the 2 planes announced"),
                              (2, 3, "got 2 planes, expected 3")):
        with pytest.raises(writer.WriterError, match=message):
            write_ometiff_file(tmp_path / "p.ome.tiff",
                               iter([np.zeros(shape, np.uint16)] * n), count=count, **args)
        assert list(tmp_path.iterdir()) == []
    events: list[tuple] = []

    def planes_() -> Iterator[np.ndarray]:
        for i in range(4):
            events.append(("asked", i))
            yield np.full(shape, i, np.uint16)

    written = write_ometiff_file(
        tmp_path / "p.ome.tiff", planes_(), count=4, **args,
        on_level=lambda i, level: events.append(("level", i, int(level[0, 0]), level.shape)),
        on_plane=lambda n: events.append(("done", n)))
    assert written.levels == 1
    assert events == [e for i in range(4) for e in
                      (("asked", i), ("level", i, i, shape), ("done", i + 1))]
    with tifffile.TiffFile(tmp_path / "p.ome.tiff") as tf:
        assert len(tf.pages) == 4 and tf.pages[0].description == "<OME/>"
        assert [p.description for p in tf.pages[1:]] == ["", "", ""]
        np.testing.assert_array_equal(tf.asarray()[:, 0, 0], [0, 1, 2, 3])


def test_write_all_continues_short_writes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = os.pwritev
    monkeypatch.setattr(os, "pwritev", lambda fd, bufs, off: real(fd, [bytes(bufs[0])[:3]], off))
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        hashfile.write_all(fd, [b"abcdefg", b"", bytearray(b"hij"), memoryview(b"klmno")], 2)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"\0\0abcdefghijklmno"


def test_cli_threads_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from posdir2ometiff.cli import main

    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=2, t=2, size=32,
                     metadata=False)
    readers: set[str] = set()
    real_read = position.read_plane

    def recording_read(path: Path):
        readers.add(threading.current_thread().name)
        return real_read(path)

    monkeypatch.setattr(position, "read_plane", recording_read)
    assert main([str(spec.folder), "-o", str(tmp_path / "o"), "--threads", "2", "-q"]) == 0
    assert readers and all(n.startswith("decode") for n in readers)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # a bad command line: argparse's status 2
        main([str(spec.folder), "-o", str(tmp_path / "p"), "--threads", "0", "-q"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("posdir2ometiff: error: argument --threads: 0 is out of range "
                       "(must be from 1 to 1024)")


@pytest.mark.parametrize("compression", ["zstd", "zlib"])
@pytest.mark.parametrize(("shape", "tile"), [((700, 900), 256), ((64, 64), 512)])
def test_tiles_compressed_in_threads_are_the_bytes_tifffile_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str,
    shape: tuple[int, int], tile: int,
) -> None:
    """Pyramid levels and zstd tiles made in our threads are the very tiles tifffile writes
    compressing them itself, in IFDs with the same tags, and the file is the same whatever the
    number of threads. (A single-level position is written in one tifffile call, whose pages
    from the third on point at the second page's resolution values instead of their own
    copies: the same tags, not the same bytes.)"""
    rng = np.random.default_rng(7)
    planes_ = [rng.integers(0, 3000, shape).astype(np.uint16) for _ in range(3)]
    args = dict(count=3, shape=shape, dtype=np.dtype("uint16"), ome_xml="<OME/>", tile=tile,
                compression=compression)
    ours = [write_ometiff_file(tmp_path / f"t{n}.ome.tiff", iter(planes_), threads=n, **args)
            for n in (1, 3)]
    with monkeypatch.context() as mp:
        mp.setattr(writer, "_tile_encoder", lambda *a: None)  # tifffile compresses everything
        write_ometiff_file(tmp_path / "tifffile.ome.tiff", iter(planes_), **args)
    assert ours[0].sha1 == ours[1].sha1

    def pages(path: Path) -> list[tuple[dict, list[bytes]]]:
        out = []
        with tifffile.TiffFile(path) as tf, open(path, "rb") as fh:
            for page in [p for top in tf.pages for p in [top, *(top.pages or [])]]:
                tags = {t.name: t.value for t in page.tags.values()
                        if t.name not in ("TileOffsets", "SubIFDs")}
                tiles = []
                for offset, size in zip(page.dataoffsets, page.databytecounts, strict=True):
                    fh.seek(offset)
                    tiles.append(fh.read(size))
                out.append((tags, tiles))
        return out

    assert pages(tmp_path / "t1.ome.tiff") == pages(tmp_path / "tifffile.ome.tiff")
    with tifffile.TiffFile(tmp_path / "t3.ome.tiff") as tf:
        np.testing.assert_array_equal(tf.pages[1].asarray(), planes_[1])


def test_usable_cores_follow_the_cpu_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``srun -c 4`` on a 64-core node the converter uses 4 cores, not 64."""
    from posdir2ometiff import cores

    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {3, 5, 7, 9}, raising=False)
    monkeypatch.setattr(cores.os, "cpu_count", lambda: 64)
    assert cores.usable_cores() == 4
    monkeypatch.delattr(cores.os, "sched_getaffinity", raising=False)
    assert cores.usable_cores() == 64


def test_plane_files_are_read_whole_in_few_system_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoding threads read each file with open/fstat/read/close (each call gives the GIL
    away); a file that is larger or smaller than fstat said is still read to its end."""
    path = tmp_path / "p.png"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    mtime, got = planes._read_file(path)
    assert got == data and mtime == path.stat().st_mtime_ns

    real_fstat = planes.os.fstat
    class Stat:
        def __init__(self, st, lie: int) -> None:  # type: ignore[no-untyped-def]
            self.st_size, self.st_mtime_ns = st.st_size + lie, st.st_mtime_ns

    for lie in (-1000, +1000):  # grown since fstat; shrunk since fstat
        monkeypatch.setattr(planes.os, "fstat", lambda fd, lie=lie: Stat(real_fstat(fd), lie))
        assert planes._read_file(path)[1] == data


def test_probe_decodes_the_first_planes_in_threads_with_a_loops_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe decodes each channel's first plane in the position's threads: the same Probe
    as one thread, and with bad files the error a loop over the channels meets first."""
    from posdir2ometiff.layout import discover

    spec = make_demo(tmp_path / "exp", positions=1, channels=["DIC", "GFP", "RFP"], z=2, t=2,
                     size=32, seed=4)
    (layout,) = discover(spec.folder)
    names = _threads_calling(monkeypatch, planes, "read_plane")
    one, two = planes.probe(layout, 1), planes.probe(layout, 2)
    assert any(n.startswith("probe") for n in names)
    assert (one.shape, one.dtype, one.samples) == (two.shape, two.dtype, two.samples)
    assert {k: v[2] for k, v in one.cache.items()} == {k: v[2] for k, v in two.cache.items()}

    firsts = [layout.files[k] for k in sorted(two.cache, key=lambda k: k.c)]
    firsts[2].write_bytes(b"not a png")  # RFP unreadable, and GFP of another size:
    imagecodecs_png = imagecodecs.png_encode(np.zeros((8, 8), np.uint16))
    firsts[1].write_bytes(imagecodecs_png)  # the loop stops at GFP's size first
    for threads in (1, 2, 3):
        with pytest.raises(planes.PlaneError, match=r"GFP.*uint16 8x8, but other planes"):
            planes.probe(layout, threads)


@pytest.mark.parametrize(("threads", "sent"), [
    (None, (0, True)),  # left to each worker: its share of its host (dask_executor.py)
    (1, (1, False)),  # a budget of one core on whichever worker runs it
    (3, (3, True)),
])
def test_threads_asked_for_bind_the_positions_of_a_cluster_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int | None,
    sent: tuple[int, bool],
) -> None:
    spec = make_demo(tmp_path / "exp", positions=2, channels=["GFP"], z=1, t=1, size=32,
                     metadata=False)
    seen: list[tuple[int, bool]] = []

    def run_inline(jobs, client, fail_fast, progress, beside, check=None, blind=None,
                   on_blind=None):
        # What the driver sends; here the positions then run in this process, a worker's
        # choice (its share of its host) standing in for 0.
        seen.extend((j.threads, j.io_helper) for j in jobs)
        for job in jobs:
            job.threads = job.threads or 1
        return convert_mod._run_jobs(jobs, 1, fail_fast, progress, beside)

    monkeypatch.setattr(convert_mod, "preload_workers", lambda client: None)
    monkeypatch.setattr(convert_mod, "check_shared_filesystem",
                        lambda client, src, out, more_may_come=False: {})
    monkeypatch.setattr(convert_mod, "threads_per_worker", lambda client: {})
    monkeypatch.setattr(convert_mod, "run_jobs_dask", run_inline)
    assert convert(spec.folder, tmp_path / "out", client=object(), threads=threads,
                   progress="off").ok
    assert seen == [sent, sent]

"""Positions on a real Dask cluster: a ``dask scheduler`` and two ``dask worker`` processes on
loopback, started as separate processes exactly as a user would, one of them killed mid-position."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed", reason="the [dask] extra is not installed")

from posdir2ometiff import convert as convert_mod  # noqa: E402
from posdir2ometiff.convert import convert  # noqa: E402
from posdir2ometiff.dask_executor import PROGRESS_TOPIC, check_shared_filesystem  # noqa: E402
from posdir2ometiff.demo import make_demo  # noqa: E402
from posdir2ometiff.errors import ClusterError, ConversionError  # noqa: E402
from tests.test_convert import assert_matches_sources  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).with_name("dask")


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class LoopbackCluster:
    """``dask scheduler`` + N ``dask worker --no-nanny`` processes on 127.0.0.1."""

    def __init__(self, folder: Path, workers: int = 2) -> None:
        self.folder = folder
        self.scheduler_file = folder / "scheduler.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.env = env
        self.logs = [open(folder / "scheduler.log", "wb")]  # noqa: SIM115
        self.scheduler = subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(self.scheduler_file)],
            stdout=self.logs[0], stderr=subprocess.STDOUT, env=env)
        _wait_for(self.scheduler_file.exists, 60, "the scheduler file")
        self.workers = [self.start_worker(i) for i in range(workers)]

    def start_worker(self, i: int) -> subprocess.Popen:
        log = open(self.folder / f"worker{i}.log", "wb")  # noqa: SIM115
        self.logs.append(log)
        return subprocess.Popen(
            [str(DASK), "worker", "--scheduler-file", str(self.scheduler_file), "--nthreads",
             "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}"],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def close(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, self.scheduler]:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # test processes: no need for a graceful end
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()


def _record_progress(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(planes counted, planes expected) of each run's progress, appended as the run ends."""
    totals: list[tuple[int, int]] = []

    class Recording(convert_mod.Progress):
        def __exit__(self, *exc: object) -> None:
            totals.append((self.done, self.total))
            super().__exit__(*exc)

    monkeypatch.setattr(convert_mod, "Progress", Recording)
    return totals


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[LoopbackCluster, object]]:
    folder = tmp_path / "dask"
    folder.mkdir()
    lc = LoopbackCluster(folder)
    client = None
    try:
        client = distributed.Client(scheduler_file=str(lc.scheduler_file), timeout=60)
        client.wait_for_workers(2, timeout=120)
        yield lc, client
    finally:
        if client is not None:
            client.close()
        lc.close()


def test_positions_run_on_the_cluster_with_progress_manifest_and_reruns(
    cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lc, client = cluster
    spec = make_demo(tmp_path / "exp", positions=3, channels=["DIC", "GFP"], z=2, t=3, size=64,
                     seed=4)
    totals = _record_progress(monkeypatch)
    out = tmp_path / "out"
    result = convert(spec.folder, out, client=client, progress="off")
    assert result.ok and [p.status for p in result.positions] == ["ok"] * 3
    assert totals == [(36, 36)]  # every plane reported by the workers, none twice
    for name in ("pos001", "pos002", "pos003"):
        assert_matches_sources(out, spec.folder, name)
    # The tasks ran in the worker processes, not here.
    pids = {e[1]["attempt"].split(":")[1] for e in client.get_events(PROGRESS_TOPIC)}
    assert str(os.getpid()) not in pids and pids <= {str(w.pid) for w in lc.workers}
    assert not list(out.glob("*.partial"))

    again = convert(spec.folder, out, client=client, progress="off")
    assert [p.status for p in again.positions] == ["skipped"] * 3


def test_one_line_error_and_no_partial_on_the_cluster(cluster, tmp_path: Path) -> None:
    _, client = cluster
    spec = make_demo(tmp_path / "exp", positions=2, channels=["GFP"], z=1, t=3, size=48,
                     metadata=False)
    bad = sorted((spec.folder / "pos002").glob("*.png"))[1]
    bad.write_bytes(bad.read_bytes()[:60])
    out = tmp_path / "out"
    result = convert(spec.folder, out, client=client, progress="off")
    failed = {p.name: p.error for p in result.positions if p.status == "failed"}
    assert list(failed) == ["pos002"]
    assert failed["pos002"].startswith(f"{bad}: truncated or unreadable PNG")
    assert "\n" not in failed["pos002"]
    assert not list(out.glob("*.partial"))
    assert sorted(p.name for p in out.glob("pos001*")) == ["pos001.ome.tiff"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["positions"]["pos002"]["status"] == "failed"


def test_fail_fast_on_the_cluster_starts_no_further_position(cluster, tmp_path: Path) -> None:
    _, client = cluster  # two workers of one thread: two task slots
    spec = make_demo(tmp_path / "exp", positions=4, channels=["GFP"], z=1, t=2, size=32,
                     metadata=False)
    bad = sorted((spec.folder / "pos001").glob("*.png"))[0]
    bad.write_bytes(b"not a PNG")
    # pos002 (in the other slot) may not finish before pos001's failure is seen, or its slot
    # would be refilled before the stop: its first plane waits until the driver says it stopped.
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    _hold(client, gate, marks, sorted((spec.folder / "pos002").glob("*.png"))[0])

    class OpenGateOnStop(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "--fail-fast" in record.getMessage():
                gate.touch()

    handler = OpenGateOnStop()
    logging.getLogger("posdir2ometiff").addHandler(handler)
    try:
        result = convert(spec.folder, tmp_path / "out", client=client, fail_fast=True,
                         progress="off")
    finally:
        logging.getLogger("posdir2ometiff").removeHandler(handler)
        gate.touch()
    by_name = {p.name: p.status for p in result.positions}
    # pos001 and pos002 filled the two slots; pos001 failed, so pos003/pos004 never started.
    assert by_name == {"pos001": "failed", "pos002": "ok"}
    assert not (tmp_path / "out" / "pos003.ome.tiff").exists()


def _install_gate(target: str, gate: str, marks: str) -> None:
    """On a worker: reading ``target`` waits until the file ``gate`` exists (a plane that takes
    as long as the test wants), after leaving a mark with this process's id."""
    from posdir2ometiff import position

    real = position.read_plane

    def gated(path):
        if str(path) == target:
            Path(marks, f"{os.getpid()}").touch()
            while not Path(gate).exists():
                time.sleep(0.02)
        return real(path)

    position.read_plane = gated


def _hold(client, gate: Path, marks: Path, *planes: Path) -> None:
    """On every worker: reading any of ``planes`` waits for ``gate`` (see _install_gate)."""
    for plane in planes:
        client.run(_install_gate, str(plane), str(gate), str(marks))


def test_worker_killed_mid_position_is_retried_and_its_partial_never_becomes_final(
    cluster, tmp_path: Path
) -> None:
    lc, client = cluster
    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=2, t=5, size=64, seed=6)
    target = sorted((spec.folder / "pos001").glob("*.png"))[6]  # mid-position (plane 7 of 10)
    gate, marks = tmp_path / "go", tmp_path / "marks"
    marks.mkdir()
    _hold(client, gate, marks, target)
    out = tmp_path / "out"
    box: dict = {}
    runner = threading.Thread(
        target=lambda: box.update(result=convert(spec.folder, out, client=client, threads=1,
                                                 progress="off")))
    runner.start()
    try:
        first = _wait_for(lambda: list(marks.iterdir()), 120, "the first attempt to reach the plane")
        victim = int(first[0].name)
        partials = list(out.glob("pos001.ome.tiff.*.partial"))
        assert len(partials) == 1 and partials[0].stat().st_size > 0  # planes already written
        os.kill(victim, signal.SIGKILL)
        # The scheduler hands the position to the surviving worker, which starts it again.
        second = _wait_for(lambda: [m for m in marks.iterdir() if m.name != str(victim)], 120,
                           "the retry on the other worker")
        assert int(second[0].name) in {w.pid for w in lc.workers} - {victim}
        assert len(list(out.glob("pos001.ome.tiff.*.partial"))) == 2
        assert not (out / "pos001.ome.tiff").exists()  # the killed attempt's file is not final
    finally:
        gate.touch()
        runner.join(timeout=300)
    result = box["result"]
    assert result.ok and result.positions[0].status == "ok"
    assert_matches_sources(out, spec.folder, "pos001")
    # The killed attempt's partial file was removed, never renamed.
    assert not list(out.glob("*.partial"))
    assert sorted(p.name for p in out.glob("pos001*")) == ["pos001.ome.tiff"]


def _task_states(dask_worker) -> list[str]:
    """On a worker (``client.run`` passes it): the states of the tasks it knows."""
    return sorted(ts.state for ts in dask_worker.state.tasks.values())


def test_an_interrupted_run_leaves_no_work_on_the_cluster(cluster, tmp_path: Path) -> None:
    """Ctrl-C on a ``--scheduler`` run: the scheduler lets go of its task, which a worker cannot
    stop; the task sees it at its next plane and stops, its partial file deleted, instead of
    running to its end and leaving an output that no manifest lists."""
    lc, client = cluster
    address = json.loads(lc.scheduler_file.read_text())["address"]
    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=2, t=5, size=64, seed=6)
    target = sorted((spec.folder / "pos001").glob("*.png"))[6]  # plane 7 of 10
    gate, marks = tmp_path / "go", tmp_path / "marks"
    marks.mkdir()
    _hold(client, gate, marks, target)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "posdir2ometiff", str(spec.folder), "-o", str(out),
         "--scheduler", address, "--threads", "1"],
        env=lc.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: list(marks.iterdir()), 120, "the task to reach the held plane")
        assert len(list(out.glob("pos001.ome.tiff.*.partial"))) == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, proc.stderr.read()
        _wait_for(lambda: any("cancelled" in s for s in client.run(_task_states).values()), 60,
                  "the worker to hear that its task was let go")
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    _wait_for(lambda: not any(client.run(_task_states).values()), 60, "the task to stop")
    assert not (out / "pos001.ome.tiff").exists()  # it stopped, not ran to its end
    assert not list(out.glob("*.partial"))


def test_positions_wait_for_a_worker_that_joins_later_and_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A scheduler without workers yet (Slurm jobs still queued): the run says once that it
    waits for one, rather than a progress bar at 0, and converts once a worker joins."""
    from posdir2ometiff import dask_executor

    monkeypatch.setattr(dask_executor, "WAIT_NOTICE", 0.5)
    folder = tmp_path / "dask"
    folder.mkdir()
    lc = LoopbackCluster(folder, workers=0)
    spec = make_demo(tmp_path / "exp", positions=2, channels=["GFP"], z=1, t=2, size=32,
                     metadata=False)
    caplog.set_level(logging.INFO, logger="posdir2ometiff")
    result: list = []
    try:
        with distributed.Client(scheduler_file=str(lc.scheduler_file), timeout=60) as client:
            run = threading.Thread(target=lambda: result.append(
                convert(spec.folder, tmp_path / "out", client=client, progress="off")))
            run.start()
            notice = _wait_for(lambda: [r.getMessage() for r in caplog.records
                                        if "no Dask worker is connected" in r.getMessage()],
                               60, "the run to say it waits for a worker")
            assert notice == [f"no Dask worker is connected to {client.scheduler.address} yet: "
                              "the positions start when one joins"]
            assert run.is_alive() and not result
            lc.workers.append(lc.start_worker(0))
            run.join(timeout=120)
            assert not run.is_alive()
    finally:
        lc.close()
    assert [p.status for p in result[0].positions] == ["ok", "ok"]
    for name in ("pos001", "pos002"):
        assert_matches_sources(tmp_path / "out", spec.folder, name)


def test_a_cluster_that_can_run_no_more_positions_ends_the_run_in_one_line(
    cluster, tmp_path: Path
) -> None:
    """``convert(cluster_check=...)`` (what ``--cluster slurm`` passes: its jobs were refused,
    or all ended): once it answers, the run stops starting positions, cancels the one held on a
    worker, keeps in the manifest the one that was done, and raises ClusterError with the
    answer. Before, the run waited for workers that would never come."""
    _, client = cluster  # two task slots
    spec = make_demo(tmp_path / "exp", positions=4, channels=["GFP"], z=1, t=3, size=32,
                     metadata=False)
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    # pos003 takes pos001's slot once it is done.
    _hold(client, gate, marks, *(sorted((spec.folder / held).glob("*.png"))[1]
                                 for held in ("pos002", "pos003")))
    out = tmp_path / "out"
    asked: list[bool] = []

    def check() -> str | None:
        asked.append(True)
        # Both workers held (pos003 in the slot of pos001, whose result the run then had).
        held = len(list(marks.iterdir())) == 2
        return "Slurm job(s) 7 of this run ended and no Dask worker is left" if held else None

    try:
        with pytest.raises(ClusterError, match=r"^Slurm job\(s\) 7 of this run ended"):
            convert(spec.folder, out, client=client, cluster_check=check, progress="off")
        manifest = json.loads((out / "manifest.json").read_text())
        # pos001 was done and is kept; pos002, pos003 (held) and pos004 (never started) are not.
        assert {k: v["status"] for k, v in manifest["positions"].items()} == {"pos001": "ok"}
        assert_matches_sources(out, spec.folder, "pos001")
        _wait_for(lambda: any("cancelled" in s for s in client.run(_task_states).values()), 60,
                  "the workers to hear that the held tasks were let go")
    finally:
        gate.touch()
    try:
        _wait_for(lambda: not any(client.run(_task_states).values()), 60, "the held tasks to stop")
    except AssertionError:
        raise AssertionError(str(client.run(_task_states))) from None
    assert sorted(p.name for p in out.glob("pos*")) == ["pos001.ome.tiff"]
    assert not list(out.glob("*.partial"))
    assert len(asked) > 1  # asked again while the positions waited


def test_a_run_that_loses_its_scheduler_ends_in_one_line_and_keeps_what_was_done(
    tmp_path: Path
) -> None:
    """The scheduler dies mid-run. Before, the command line died of a Dask traceback
    (FuturesCancelledError) without writing the manifest, and a worker holding a position, once
    free, finished it under its final name, listed nowhere. Now: one line and exit 1, the
    manifest lists what was done, and the held positions stop (their workers are closing),
    leaving no file."""
    folder = tmp_path / "dask"
    folder.mkdir()
    lc = LoopbackCluster(folder)
    spec = make_demo(tmp_path / "exp", positions=3, channels=["GFP"], z=2, t=4, size=48,
                     metadata=False)
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "out"
    address = json.loads(lc.scheduler_file.read_text())["address"]
    try:
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            # pos003 takes pos001's slot once it is done.
            _hold(client, gate, marks, *(sorted((spec.folder / held).glob("*.png"))[2]
                                         for held in ("pos002", "pos003")))
        proc = subprocess.Popen(
            [sys.executable, "-m", "posdir2ometiff", str(spec.folder), "-o", str(out),
             "--scheduler", address, "--threads", "1"],
            env=lc.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            # Both workers held: pos001 was done and its result taken (pos003 is in its slot).
            _wait_for(lambda: len(list(marks.iterdir())) == 2, 120, "both workers to be held")
            lc.scheduler.kill()
            assert proc.wait(timeout=60) == 1
            err = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        assert err.strip().splitlines()[-1] == (
            f"posdir2ometiff: error: lost the connection to the Dask scheduler at {address}: the "
            "positions done before are in the manifest; re-run to convert the rest"), err
        assert "Traceback" not in err
        manifest = json.loads((out / "manifest.json").read_text())
        assert {k: v["status"] for k, v in manifest["positions"].items()} == {"pos001": "ok"}
        gate.touch()  # the held positions go on: they must stop, not finish
        for worker in lc.workers:
            worker.wait(timeout=60)  # a worker closes once its scheduler is gone
    finally:
        gate.touch()
        lc.close()
    assert sorted(p.name for p in out.glob("pos*")) == ["pos001.ome.tiff"]
    assert not list(out.glob("*.partial"))
    assert_matches_sources(out, spec.folder, "pos001")


def test_a_task_stops_once_its_worker_is_closing() -> None:
    """The per-plane check: a task stops when its record says cancelled or is gone, and also
    when its worker is on its way down (it lost its scheduler: what it finishes reaches no one,
    and an executor's shutdown would wait for it to the end), but not while a worker being
    retired finishes its tasks."""
    from types import SimpleNamespace

    from distributed.core import Status

    from posdir2ometiff.dask_executor import _released

    def worker(status: Status, state: str | None = "executing") -> SimpleNamespace:
        tasks = {} if state is None else {"k": SimpleNamespace(state=state)}
        return SimpleNamespace(status=status, state=SimpleNamespace(tasks=tasks))

    assert not _released(worker(Status.running), "k")
    assert not _released(worker(Status.closing_gracefully), "k")
    assert _released(worker(Status.running, "cancelled"), "k")
    assert _released(worker(Status.running, None), "k")
    for status in (Status.closing, Status.closed, Status.failed):
        assert _released(worker(status), "k")


def test_several_experiments_share_one_cluster_at_once(
    cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A facility's case: experiments converted at the same time through one scheduler, all with
    a ``pos001``. While the first (from Python) holds a worker, a second run from another thread
    of the same process (the same client) and a third from another ``posdir2ometiff`` process
    run on the other worker and finish: no run waits for another's, same-named positions of two
    runs are two tasks (the task key names its run), and each run counts only its own planes,
    although the scheduler sends every client every progress event of the topic."""
    lc, client = cluster
    address = json.loads(lc.scheduler_file.read_text())["address"]
    first = make_demo(tmp_path / "exp_a", positions=1, channels=["GFP"], z=2, t=3, size=48,
                      seed=7)  # 6 planes
    second = make_demo(tmp_path / "exp_b", positions=1, channels=["DIC"], z=1, t=2, size=32,
                       seed=8)  # 2 planes
    third = make_demo(tmp_path / "exp_c", positions=1, channels=["GFP"], z=2, t=6, size=32,
                      seed=9)  # 12 planes: more than the first run's, under the same name
    totals = _record_progress(monkeypatch)
    target = sorted((first.folder / "pos001").glob("*.png"))[2]
    gate, marks = tmp_path / "go", tmp_path / "marks"
    marks.mkdir()
    _hold(client, gate, marks, target)
    box: dict = {}

    def in_thread(key: str, spec, out: str) -> threading.Thread:
        runner = threading.Thread(target=lambda: box.update({key: convert(
            spec.folder, tmp_path / out, client=client, progress="off")}))
        runner.start()
        return runner

    runner = in_thread("a", first, "out_a")
    try:
        held = int(_wait_for(lambda: list(marks.iterdir()), 120, "the first run's task")[0].name)
        in_thread("b", second, "out_b").join(timeout=90)
        assert box.get("b") is not None and box["b"].ok  # done while the first is held
        proc = subprocess.run(
            [sys.executable, "-m", "posdir2ometiff", str(third.folder), "-o",
             str(tmp_path / "out_c"), "--scheduler", address, "--quiet"],
            env=lc.env, capture_output=True, text=True, timeout=90, check=False)
        assert proc.returncode == 0, proc.stderr
        assert runner.is_alive()  # the first run is still held: the others did not wait for it
        assert not (tmp_path / "out_a" / "pos001.ome.tiff").exists()
    finally:
        gate.touch()
        runner.join(timeout=300)
    assert box["a"].ok
    assert sorted(totals) == [(2, 2), (6, 6)]  # each its own planes, none of the others'
    ran = {e[1]["attempt"].split(":")[1] for e in client.get_events(PROGRESS_TOPIC)}
    assert ran == {str(w.pid) for w in lc.workers} and str(held) in ran  # both workers worked
    for spec, out, channel in ((first, "out_a", "GFP"), (second, "out_b", "DIC"),
                               (third, "out_c", "GFP")):
        entry = assert_matches_sources(tmp_path / out, spec.folder, "pos001")
        assert entry["channels"] == [channel]
    assert not list(tmp_path.glob("out_*/*.partial"))


def test_workers_that_cannot_see_the_folders_are_named(caplog: pytest.LogCaptureFixture) -> None:
    class FakeClient:
        def __init__(self, *answers: list[str]) -> None:
            self.answers = answers

        def run(self, fn, paths):
            return {f"tcp://10.0.0.{5 + i}:4000": fn(folders if folders else paths)
                    for i, folders in enumerate(self.answers)}

    # One of two cannot see: warned about, and left out of the run.
    with caplog.at_level(logging.WARNING, logger="posdir2ometiff"):
        blind = check_shared_filesystem(FakeClient(["/no/such/folder", "/"], []), Path("/"),
                                        Path("/"))
    assert set(blind) == {"tcp://10.0.0.5:4000"}
    assert [r.getMessage() for r in caplog.records] == [
        f"Dask worker tcp://10.0.0.5:4000 on {socket.gethostname()} cannot see /no/such/folder: "
        "input and output must be "
        "on a filesystem every worker shares (same path on every machine); the run gives its "
        "positions to the other workers"]
    # None can see: one line, no run.
    with pytest.raises(ConversionError) as err:
        check_shared_filesystem(FakeClient(["/no/such/folder", "/"], ["/gone"]), Path("/"),
                                Path("/"))
    assert str(err.value).startswith(
        f"Dask worker tcp://10.0.0.5:4000 on {socket.gethostname()} cannot see /no/such/folder")
    assert "filesystem every worker shares" in str(err.value)
    # None can see, but a cluster started for the run may still bring one (its queued jobs):
    # each is warned about and left out, and its watch decides when to give up.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="posdir2ometiff"):
        blind = check_shared_filesystem(FakeClient(["/no/such/folder", "/"], ["/gone"]),
                                        Path("/"), Path("/"), more_may_come=True)
    assert sorted(blind) == ["tcp://10.0.0.5:4000", "tcp://10.0.0.6:4000"]
    assert [a.unseen for a in blind.values()] == [("/no/such/folder",), ("/gone",)]
    assert [a.worker for a in blind.values()] == sorted(blind)  # named as the scheduler names it
    assert len(caplog.records) == 2


def test_a_worker_that_cannot_see_the_folders_says_so_instead_of_converting(
    cluster, tmp_path: Path
) -> None:
    """A worker that joins after the run's own check (every worker of ``--cluster slurm``:
    its jobs are still queued when the run starts) checks in the task: it answers that it
    cannot see the folders (the run gives the position to another worker), not with the first
    plane it could not open."""
    from posdir2ometiff.dask_executor import Unshared, run_position_task
    from posdir2ometiff.layout import discover
    from posdir2ometiff.position import PositionJob

    _, client = cluster
    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=1, t=1, size=32,
                     metadata=False)
    (layout,) = discover(spec.folder)
    gone = tmp_path / "not_mounted_here"
    job = PositionJob(layout, None, spec.folder, gone, 512, "zstd", "auto")
    answer = client.submit(run_position_task, job, "run", pure=False).result(timeout=60)
    assert isinstance(answer, Unshared) and answer.unseen == (str(gone),)
    assert answer.worker in client.nthreads()
    assert re.fullmatch(
        rf"Dask worker tcp://127\.0\.0\.1:\d+ on {re.escape(socket.gethostname())} cannot see "
        rf"{re.escape(str(gone))}: input and "
        r"output must be on a filesystem every worker shares \(same path on every machine\)",
        answer.line()), answer.line()


def _can_hide_folders() -> str | None:
    """Why a worker cannot be started in a mount namespace of its own here, or None."""
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True, text=True, check=False)
    return None if probe.returncode == 0 else (
        f"unshare --mount is not allowed here: {probe.stderr.strip()}")


def _blind_worker(lc: LoopbackCluster, hidden: Path, name: str) -> subprocess.Popen:
    """A ``dask worker`` for which ``hidden`` is an empty folder: a node of the cluster on which
    the shared filesystem is not mounted (a tmpfs over it, in a mount namespace of its own)."""
    log = open(lc.folder / f"{name}.log", "wb")  # noqa: SIM115
    lc.logs.append(log)
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs blind "$0" && exec "$@"', str(hidden),
         str(DASK), "worker", "--scheduler-file", str(lc.scheduler_file), "--nthreads", "1",
         "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--name", name],
        stdout=log, stderr=subprocess.STDOUT, env=lc.env)
    lc.workers.append(proc)
    return proc


@contextmanager
def _one_worker(tmp_path: Path) -> Iterator[tuple[LoopbackCluster, Any, list[logging.LogRecord]]]:
    """A loopback cluster of one worker, a client, and the run's "cannot see" warnings as they
    are logged (for the tests that add a blind worker)."""
    folder = tmp_path / "dask"
    folder.mkdir()
    lc = LoopbackCluster(folder, workers=1)
    warned: list[logging.LogRecord] = []

    class Warnings(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "cannot see" in record.getMessage():
                warned.append(record)

    handler = Warnings(logging.WARNING)
    logging.getLogger("posdir2ometiff").addHandler(handler)
    client = None
    try:
        client = distributed.Client(scheduler_file=str(lc.scheduler_file), timeout=60)
        client.wait_for_workers(1, timeout=120)
        yield lc, client, warned
    finally:
        logging.getLogger("posdir2ometiff").removeHandler(handler)
        if client is not None:
            client.close()
        lc.close()


@pytest.mark.skipif(_can_hide_folders() is not None, reason=str(_can_hide_folders()))
def test_a_worker_that_cannot_see_the_folders_takes_no_position_from_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker on a node without the shared filesystem used to fail every position it was
    given, at once, and so took them all from the workers that convert: here it joins while the
    one good worker holds the first position, is given the second, and says it cannot see the
    folders. The run warns once, and the good worker converts every position. A second run,
    with the blind worker connected from the start, leaves it out from the first position."""
    shared = tmp_path / "shared"  # what the blind worker's node has not mounted
    spec = make_demo(shared / "exp", positions=3, channels=["GFP"], z=1, t=2, size=32,
                     metadata=False)
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    totals = _record_progress(monkeypatch)
    with _one_worker(tmp_path) as (lc, client, warned):
        (good,) = client.nthreads()
        _hold(client, gate, marks, sorted((spec.folder / "pos001").glob("*.png"))[1])
        box: dict = {}
        runner = threading.Thread(target=lambda: box.update(result=convert(
            spec.folder, shared / "out", client=client, threads=1, progress="off")))
        runner.start()
        try:
            _wait_for(lambda: list(marks.iterdir()), 120, "the good worker to start pos001")
            _blind_worker(lc, shared, "blind")
            client.wait_for_workers(2, timeout=120)
            blind = next(iter(set(client.nthreads()) - {good}))
            _wait_for(lambda: warned, 120, "the blind worker's answer")
        finally:
            gate.touch()  # the good worker goes on once the blind one has answered
            runner.join(timeout=300)
        result = box["result"]
        assert [(p.name, p.status) for p in result.positions] == [
            ("pos001", "ok"), ("pos002", "ok"), ("pos003", "ok")], result.positions
        assert [r.getMessage() for r in warned] == [
            f"Dask worker {blind} on {socket.gethostname()} cannot see {shared / 'exp'}, "
            f"{shared / 'out'}: input and output "
            "must be on a filesystem every worker shares (same path on every machine); the run "
            "gives its positions to the other workers"]
        for name in ("pos001", "pos002", "pos003"):
            assert_matches_sources(shared / "out", spec.folder, name)
        assert totals == [(6, 6)]
        pids = {e[1]["attempt"].split(":")[1] for e in client.get_events(PROGRESS_TOPIC)}
        assert pids == {str(lc.workers[0].pid)}  # the blind worker converted nothing

        # Connected from the start: found by the run's own check, and given nothing.
        warned.clear()
        again = convert(spec.folder, shared / "out2", client=client, progress="off")
        assert again.ok and len(warned) == 1
        assert warned[0].getMessage().startswith(f"Dask worker {blind} ")
        for name in ("pos001", "pos002", "pos003"):
            assert_matches_sources(shared / "out2", spec.folder, name)
    assert not list(shared.glob("out*/*.partial"))


@pytest.mark.skipif(_can_hide_folders() is not None, reason=str(_can_hide_folders()))
@pytest.mark.parametrize("one_joins", [True, False], ids=["one joins", "none comes"])
def test_positions_for_a_lost_worker_go_to_one_that_joins_not_to_a_blind_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_joins: bool
) -> None:
    """Once a blind worker is known, positions are submitted only to the workers that can see
    the folders, named: if all of those are lost, the scheduler would hold such a position for
    ever. The run takes it back, waits while only the blind worker is connected, and gives it to
    the worker that joins; if none that can see comes within BLIND_WAIT, the run ends in one
    line. A worker that joins meanwhile is given a position (it might see the folders): when it
    turns out blind too, the wait starts again from there (Slurm jobs starting one by one)."""
    from posdir2ometiff import dask_executor

    wait = 3.0 if one_joins else 8.0
    monkeypatch.setattr(dask_executor, "BLIND_WAIT", wait)
    shared = tmp_path / "shared"
    spec = make_demo(shared / "exp", positions=2, channels=["GFP"], z=1, t=3, size=32,
                     metadata=False)
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    totals = _record_progress(monkeypatch)
    with _one_worker(tmp_path) as (lc, client, warned):
        _blind_worker(lc, shared, "blind")
        client.wait_for_workers(2, timeout=120)
        _hold(client, gate, marks, sorted((spec.folder / "pos001").glob("*.png"))[1])
        box: dict = {}

        def run() -> None:
            try:
                box["result"] = convert(spec.folder, shared / "out", client=client, threads=1,
                                        progress="off")
            except ClusterError as exc:
                box["error"] = exc

        runner = threading.Thread(target=run)
        runner.start()
        try:
            _wait_for(lambda: list(marks.iterdir()), 120, "the good worker to start pos001")
            lc.workers[0].kill()  # the only worker that can see the folders
            lc.workers[0].wait()
            _wait_for(lambda: len(client.nthreads()) == 1, 120, "the scheduler to lose it")
            time.sleep(1)  # rounds of the run with only the blind worker connected
            assert runner.is_alive() and not (shared / "out" / "pos001.ome.tiff").exists()
            if not one_joins:
                _blind_worker(lc, shared, "blind2")  # joins within the wait
                _wait_for(lambda: len(warned) == 2, 120, "the second blind worker's answer")
                runner.join(timeout=120)
                assert not runner.is_alive() and "result" not in box
                assert time.time() - warned[1].created >= wait - 0.5  # waited again from its answer
                assert re.fullmatch(
                    r"no Dask worker connected to tcp://127\.0\.0\.1:\d+ can see the input and "
                    r"output folders \(Dask worker tcp://127\.0\.0\.1:\d+ on "
                    rf"{re.escape(socket.gethostname())} cannot see "
                    rf"{re.escape(str(spec.folder))}, {re.escape(str(shared / 'out'))}: input "
                    r"and output must be on a filesystem every worker shares \(same path on every "
                    r"machine\)\): the positions done before are in the manifest",
                    str(box["error"])), box["error"]
                manifest = json.loads((shared / "out" / "manifest.json").read_text())
                assert manifest["positions"] == {}
                return
            joined = lc.start_worker(2)  # no gate on this one
            runner.join(timeout=120)
            assert not runner.is_alive(), "the position stayed with the lost worker"
        finally:
            gate.touch()
            runner.join(timeout=300)
        result = box["result"]
        assert [(p.name, p.status) for p in result.positions] == [("pos001", "ok"),
                                                                  ("pos002", "ok")]
        for name in ("pos001", "pos002"):
            assert_matches_sources(shared / "out", spec.folder, name)
        assert totals == [(6, 6)]
        pids = {e[1]["attempt"].split(":")[1] for e in client.get_events(PROGRESS_TOPIC)}
        assert str(joined.pid) in pids and str(lc.workers[1].pid) not in pids  # not the blind
        assert len(warned) == 1  # the blind worker, found by the run's check
    assert not list(shared.glob("out/*.partial"))


def test_cli_scheduler_option_converts_on_the_cluster(
    cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from posdir2ometiff.cli import main

    lc, client = cluster
    address = json.loads(lc.scheduler_file.read_text())["address"]
    spec = make_demo(tmp_path / "exp", positions=2, channels=["GFP"], z=1, t=2, size=32)
    out = tmp_path / "out"
    assert main([str(spec.folder), "-o", str(out), "--scheduler", address]) == 0
    assert "2 converted, 0 up to date, 0 failed" in capsys.readouterr().err
    pids = {e[1]["attempt"].split(":")[1] for e in client.get_events(PROGRESS_TOPIC)}
    assert pids and pids <= {str(w.pid) for w in lc.workers}
    for name in ("pos001", "pos002"):
        assert_matches_sources(out, spec.folder, name)

    # The README's Python example, pointed at this cluster and these folders.
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**Positions on a cluster: Dask and Slurm**"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("tcp://scheduler:8786", address).replace(
        "/shared/exp_ometiff", str(tmp_path / "readme_out")).replace(
        '"/shared/exp"', repr(str(spec.folder)))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].ok and len(namespace["result"].positions) == 2


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--cluster", "slurm", "--cluster-config", "{missing}"],
         "posdir2ometiff: error: {missing}: cannot be read (No such file or directory)"),
        (["--cluster", "slurm", "--cluster-config", "{bad}"],
         "posdir2ometiff: error: {bad}: not valid YAML"),
        (["--cluster", "slurm", "--cluster-config", "{listy}"],
         "posdir2ometiff: error: {listy}: expected a mapping"),
        (["--cluster", "slurm"],
         "posdir2ometiff: error: --cluster slurm: You must specify how much cores and memory"),
    ],
)
def test_cli_cluster_configuration_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    extra: list[str], expected: str,
) -> None:
    from posdir2ometiff.cli import main

    monkeypatch.setenv("DASK_CONFIG", str(tmp_path / "no-user-config"))
    files = {"missing": tmp_path / "nope.yaml", "bad": tmp_path / "bad.yaml",
             "listy": tmp_path / "list.yaml"}
    files["bad"].write_text("jobqueue: [1")
    files["listy"].write_text("- 1\n- 2\n")
    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=1, t=1, size=32,
                     metadata=False)
    argv = [a.format(**files) for a in extra]
    assert main([str(spec.folder), "-o", str(tmp_path / "out"), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected.format(**files)), err


def _converter_imported() -> bool:
    return "posdir2ometiff.position" in sys.modules


def test_workers_share_their_hosts_cores_and_preload_the_converter(cluster) -> None:
    """Two one-thread workers on one host split its cores (not each all of them), and
    ``preload_workers`` has every worker import the converter without being waited for."""
    from posdir2ometiff.cores import usable_cores
    from posdir2ometiff.dask_executor import preload_workers, threads_per_worker

    _lc, client = cluster
    cores = client.run(usable_cores)
    assert len(cores) == 2
    assert threads_per_worker(client) == {a: max(1, n // 2) for a, n in cores.items()}
    import cloudpickle

    # By value: shipped by reference, the check would import this test module (and with it
    # the converter) on the workers.
    this = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(this)
    try:
        assert not any(client.run(_converter_imported).values())
        preload_workers(client)
        _wait_for(lambda: all(client.run(_converter_imported).values()), 60,
                  "the workers to import the converter")
    finally:
        cloudpickle.unregister_pickle_by_value(this)


def test_workers_on_one_host_share_its_cores_only_where_their_cpus_overlap() -> None:
    """Slurm jobs packed on one node each have CPUs of their own: two one-slot workers with 8
    CPUs each keep 8 threads a position, where two workers seeing the same 8 CPUs get 4 each; a
    worker that cannot say which CPUs it has shares with its host. Slurm jobs not pinned to
    their CPUs see the whole node, each with its own allotment: they share within a job only."""
    from posdir2ometiff.cores import placement
    from posdir2ometiff.dask_executor import threads_per_worker

    Worker = tuple[str, int, list[int] | None] | tuple[str, int, list[int], int, str]

    class FakeClient:
        def __init__(self, workers: dict[str, Worker]) -> None:
            self.workers = workers

        def run(self, fn):
            assert fn is placement
            out = {}
            for a, (_h, _n, cpus, *slurm) in self.workers.items():
                cores, job = slurm if slurm else (len(cpus) if cpus else 8, None)
                out[a] = (cores, cpus, job)
            return out

        def scheduler_info(self, n_workers: int = 5) -> dict:
            assert n_workers == -1  # every worker, not the first five
            return {"workers": {a: {"host": w[0], "nthreads": w[1]}
                                for a, w in self.workers.items()}}

    low, high = list(range(8)), list(range(8, 16))
    assert threads_per_worker(FakeClient({"a": ("node1", 1, low), "b": ("node1", 1, high)})) == {
        "a": 8, "b": 8}
    assert threads_per_worker(FakeClient({"a": ("node1", 1, low), "b": ("node1", 1, low)})) == {
        "a": 4, "b": 4}
    assert threads_per_worker(FakeClient({"a": ("node1", 1, low), "b": ("node2", 1, low)})) == {
        "a": 8, "b": 8}
    # Overlapping sets share; a third worker of its own keeps its cores; unknown sets share.
    assert threads_per_worker(FakeClient({
        "a": ("node1", 2, low), "b": ("node1", 2, list(range(4, 12))),
        "c": ("node1", 1, list(range(16, 20)))})) == {"a": 2, "b": 2, "c": 4}
    assert threads_per_worker(FakeClient({"a": ("node1", 1, None), "b": ("node1", 1, high)})) == {
        "a": 4, "b": 4}
    # Unpinned Slurm jobs (task/none): 8 CPUs allotted each, the whole 32-CPU node in sight.
    node = list(range(32))
    assert threads_per_worker(FakeClient({"a": ("node1", 1, node, 8, "101"),
                                          "b": ("node1", 1, node, 8, "102")})) == {"a": 8, "b": 8}
    assert threads_per_worker(FakeClient({"a": ("node1", 1, node, 8, "101"),
                                          "b": ("node1", 1, node, 8, "101")})) == {"a": 4, "b": 4}


def test_the_task_takes_its_workers_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """``threads`` 0 on a cluster: the share the driver computed for the worker the task landed
    on; a worker it did not know (joined later) divides its own cores by its own slots."""
    from types import SimpleNamespace

    from posdir2ometiff import dask_executor

    seen: list[tuple[int, bool]] = []
    monkeypatch.setattr(dask_executor, "convert_guarded", lambda job, report: (
        seen.append((job.threads, job.io_helper)), ({}, None))[1])
    trims: list[int] = []  # the free heap returned after each position
    monkeypatch.setattr(dask_executor, "return_free_heap", lambda: trims.append(len(seen)))
    cores = [12]
    monkeypatch.setattr(dask_executor, "usable_cores", lambda: cores[0])
    worker = SimpleNamespace(address="tcp://10.0.0.5:4000",
                             state=SimpleNamespace(nthreads=4, tasks={}),
                             log_event=lambda *a: None, get_current_task=lambda: "task")
    monkeypatch.setattr(distributed, "get_worker", lambda: worker)

    def task(threads: int, shares: dict[str, int]) -> None:
        dask_executor.run_position_task(SimpleNamespace(
            threads=threads, worker_threads=shares, io_helper=True, src=REPO, out=REPO,
            layout=SimpleNamespace(name="pos001")))

    task(0, {"tcp://10.0.0.5:4000": 2})
    task(0, {"tcp://10.0.0.5:4000": 1})  # the host's cores all taken: no helper thread
    task(0, {})
    task(5, {})
    cores[0] = 4  # 4 cores, 4 slots: 1 thread each, no core spare for a helper
    task(0, {})
    assert seen == [(2, True), (1, False), (3, True), (5, True), (1, False)]
    assert trims == [1, 2, 3, 4, 5]


_HEAP_PROBE = r'''
import json, resource
import numpy as np, psutil
from posdir2ometiff import startup

startup.heap_for_plane_buffers(override=("MALLOC_TRIM_THRESHOLD_",))
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    plane = np.ones(1 << 20, np.uint8)  # a plane-sized buffer, freed at once
    del plane
before = faults()
for _ in range(100):
    plane = np.ones(1 << 20, np.uint8)
    del plane
reused = faults() - before
rss = lambda: psutil.Process().memory_info().rss
planes = [np.ones(1 << 20, np.uint8) for _ in range(48)]
del planes  # 48 MiB free in the heap, under the trim threshold: kept
kept = rss()
startup.return_free_heap()
print(json.dumps({"faults": reused, "returned": kept - rss()}))
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_workers_reuse_plane_buffers_and_return_them_after_a_position() -> None:
    """Under the nanny's ``MALLOC_TRIM_THRESHOLD_=65536`` a freed 1 MiB buffer went back to
    the OS and the next one faulted in 256 fresh pages; after the position, the free heap is
    given back."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    got = json.loads(out.stdout)
    assert got["faults"] < 100 * 256 // 10, got  # fresh pages for every buffer: 25,600
    assert got["returned"] > 32 << 20, got

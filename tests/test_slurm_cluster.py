"""``--cluster slurm`` through a real single-node Slurm (munged, slurmctld, slurmd started for the
test; skipped with the reason where they cannot be, e.g. not root or slurm-wlm not installed)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm_local import NODE, LocalSlurm, single_node_slurm, unavailable_reason
from tests.test_convert import assert_matches_sources

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalSlurm]:
    pytest.importorskip("dask_jobqueue", reason="the [dask] extra is not installed")
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with single_node_slurm(tmp_path / "slurm") as local:
        for key, value in local.env.items():
            monkeypatch.setenv(key, value)
        # sbatch exports our environment to the job: its dask worker imports this checkout.
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
        yield local


def _jobqueue_yaml(tmp_path: Path, logs: Path, settings: str = "") -> Path:
    """A ``jobqueue.slurm`` config for this single-node Slurm: scheduler and workers on
    loopback, job logs in ``logs``, plus ``settings`` (YAML lines of the section)."""
    path = tmp_path / "jobqueue.yaml"
    path.write_text("jobqueue:\n  slurm:\n    scheduler-options: {host: 127.0.0.1}\n"
                    "    worker-extra-args: [--host, 127.0.0.1]\n"
                    f"    log-directory: {logs}\n{settings}")
    return path


def test_cluster_slurm_converts_through_slurm_jobs(
    slurm: LocalSlurm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from posdir2ometiff.cli import main
    from posdir2ometiff.demo import make_demo

    spec = make_demo(tmp_path / "exp", positions=3, channels=["GFP", "DIC"], z=2, t=2, size=48)
    jobs_logs = tmp_path / "joblogs"
    # As a dask-jobqueue user writes it; the --slurm-* options below override single values.
    config = _jobqueue_yaml(tmp_path, jobs_logs, "    cores: 4\n    memory: 64GB\n"
                                                 "    queue: debug\n")
    out = tmp_path / "out"
    rc = main([str(spec.folder), "-o", str(out), "--cluster", "slurm", "--cluster-config",
               str(config), "--slurm-cores", "1", "--slurm-memory", "1GB", "--slurm-walltime",
               "00:10:00", "--slurm-jobs", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "3 converted, 0 up to date, 0 failed" in err
    for name in ("pos001", "pos002", "pos003"):
        assert_matches_sources(out, spec.folder, name)
    # The positions ran in dask workers that Slurm started from dask-jobqueue's job script,
    # with the overriding options (1 core, 1 GB), not the config file's 4 cores and 64 GB.
    logs = sorted(jobs_logs.glob("*.err"))
    assert logs, f"no Slurm job logs in {jobs_logs}"
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    assert "Registered to:" in text and "tcp://127.0.0.1:" in text
    assert "Threads:                          1" in text


def test_usable_cores_are_the_cpus_slurm_allots_without_pinning(slurm: LocalSlurm) -> None:
    """This Slurm runs ``TaskPlugin=task/none`` (as some clusters do): a job is not pinned to
    its CPUs, so its affinity is the whole node. The converter still takes only the CPUs the
    job was given (``SLURM_CPUS_ON_NODE``): one under ``srun -c 1``, for its default workers
    and threads too, where it took every core of the node beside the other jobs."""
    code = ("import os; from posdir2ometiff.cores import usable_cores; "
            "print(len(os.sched_getaffinity(0)), usable_cores())")
    out = subprocess.run(["srun", "-c", "1", sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    affinity, usable = map(int, out.stdout.split())
    assert (affinity, usable) == (os.cpu_count(), 1)
    cli = subprocess.run(["srun", "-c", "1", sys.executable, "-m", "posdir2ometiff", "--help"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert "usable cores = 1)" in " ".join(cli.stdout.split()), cli.stdout


def _cli_on_slurm(tmp_path: Path, *extra: str, config: str = "") -> tuple[subprocess.CompletedProcess,
                                                                          Path, Path]:
    """``posdir2ometiff --cluster slurm`` in its own process, with a deadline: a run that waits
    for workers that never come fails the test instead of hanging it."""
    from posdir2ometiff.demo import make_demo

    spec = make_demo(tmp_path / "exp", positions=2, channels=["GFP"], z=1, t=2, size=32,
                     metadata=False)
    jobs_logs = tmp_path / "joblogs"
    conf = _jobqueue_yaml(tmp_path, jobs_logs, config)
    out = tmp_path / "out"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "posdir2ometiff", str(spec.folder), "-o", str(out),
             "--cluster", "slurm", "--cluster-config", str(conf), "--slurm-cores", "1",
             "--slurm-memory", "1GB", *extra], capture_output=True, text=True, timeout=180,
            check=False)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        queue = subprocess.run(["squeue", "-h", "-o", "%i %T %r %N"], capture_output=True,
                               text=True, check=False)
        pytest.fail(f"the run did not end within 180 s; it said:\n{err}\nSlurm's queue:\n"
                    f"{queue.stdout}{queue.stderr}")
    return done, out, jobs_logs


def test_a_job_slurm_refuses_ends_the_run_in_one_line(slurm: LocalSlurm, tmp_path: Path) -> None:
    """dask-jobqueue only logs a refused ``sbatch`` (a traceback) and waits for its worker: the
    run waited for ever. It now ends at once, in one line saying what sbatch said, exit 1."""
    done, out, _ = _cli_on_slurm(tmp_path, "--slurm-queue", "nosuch")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert lines[-1] == ("posdir2ometiff: error: Slurm refused the worker job: sbatch: error: "
                         "Batch job submission failed: Invalid partition name specified")
    assert "Traceback" not in done.stderr
    # Dask's scheduler does not narrate its life at INFO (only our own INFO lines, and warnings).
    assert "Scheduler at" not in done.stderr and "State start" not in done.stderr
    assert not list(out.glob("pos*"))


def test_slurm_jobs_that_end_without_a_worker_end_the_run_in_one_line(
    slurm: LocalSlurm, tmp_path: Path
) -> None:
    """Jobs Slurm ran but whose worker never joined (here a prologue that fails, as a node
    without the environment would): once every job of the run has left the queue and no
    worker is connected, the run ends in one line naming the jobs and their logs, exit 1."""
    done, out, logs = _cli_on_slurm(tmp_path, "--slurm-jobs", "2",
                                    config='    job-script-prologue: ["exit 3"]\n')
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"posdir2ometiff: error: Slurm job\(s\) (\d+), (\d+) of this run ended "
                         r"and no Dask worker is left to convert the positions: see the job "
                         r"log\(s\) (\S+); (\S+)", last)
    assert match, done.stderr
    first, second, log1, log2 = match.groups()
    assert (log1, log2) == (f"{logs}/dask-worker-{first}.err", f"{logs}/dask-worker-{second}.err")
    assert Path(log1).exists()
    assert not list(out.glob("pos*"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["positions"] == {}


def test_slurm_watch_tells_a_wait_from_an_end(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                             ) -> None:
    """The watch's reading of ``squeue`` (a stand-in script here): jobs in the queue are a wait
    (its reason logged when it changes), jobs gone from it (or forgotten: "Invalid job id") with
    no worker are the end, and an ``squeue`` that fails otherwise is no reason to stop a run."""
    from posdir2ometiff.cluster import SlurmWatch

    answer = tmp_path / "answer"
    squeue = tmp_path / "squeue"
    squeue.write_text(f"#!/bin/sh\ncat {answer}.out; cat {answer}.err >&2; exit $(cat {answer}.rc)\n")
    squeue.chmod(0o755)

    def says(out: str, err: str = "", rc: int = 0) -> None:
        for suffix, text in ((".out", out), (".err", err), (".rc", str(rc))):
            Path(f"{answer}{suffix}").write_text(text)

    connected: list[str] = []
    watch = SlurmWatch(2, lambda: connected, poll=0, squeue=str(squeue))
    says("")
    assert watch.problem() is None  # nothing submitted yet: still submitting
    watch.refused(RuntimeError("Command exited\nstderr:\nsbatch: error: over the limit\n"))
    assert watch.problem() is None  # one of two refused: the other may still be submitted
    watch.submitted("11", "/logs/dask-worker-11.err")
    caplog.set_level("INFO", logger="posdir2ometiff")
    says("11|PENDING|Resources\n")
    assert watch.problem() is None
    says("11|PENDING|PartitionConfig\n")
    assert watch.problem() is None and watch.problem() is None
    waits = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert waits == ["Slurm: waiting for job(s) 11 (PENDING: Resources)",
                     "Slurm: waiting for job(s) 11 (PENDING: PartitionConfig)"]
    says("", "slurm_load_jobs error: Unable to contact slurm controller\n", 1)
    assert watch.problem() is None  # cannot tell: go on waiting
    connected.append("tcp://10.0.0.5:4000")
    says("")
    assert watch.problem() is None  # gone from the queue, but its worker is still connected
    connected.clear()
    ended = ("Slurm job(s) 11 of this run ended and no Dask worker is left to convert the "
             "positions: see the job log(s) /logs/dask-worker-11.err")
    assert watch.problem() == ended
    says("", "slurm_load_jobs error: Invalid job id specified\n", 1)
    assert watch.problem() == ended
    refused = SlurmWatch(1, lambda: [], poll=0, squeue=str(squeue))
    refused.refused(RuntimeError("stderr:\nsbatch: error: invalid partition specified: x\n"
                                 "sbatch: error: Batch job submission failed: Invalid partition"))
    assert refused.problem() == ("Slurm refused the worker job: sbatch: error: Batch job "
                                 "submission failed: Invalid partition")


def test_slurm_watch_cancels_the_job_of_a_worker_that_cannot_see_the_folders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker the run found blind counts as none, and its job (this run's, by the id in its
    environment) is cancelled with ``scancel``, the node named with how to keep jobs off it;
    the run then waits for the jobs still queued, and ends, naming the node, once all have
    left the queue. A worker of no job of this run is not cancelled, and a failing ``scancel``
    is said. (``squeue`` and ``scancel`` are stand-in scripts here.)"""
    from posdir2ometiff.cluster import SlurmWatch
    from posdir2ometiff.dask_executor import Unshared

    answer, cancelled = tmp_path / "answer", tmp_path / "cancelled"
    squeue, scancel = tmp_path / "squeue", tmp_path / "scancel"
    squeue.write_text(f"#!/bin/sh\ncat {answer}\n")
    scancel.write_text(f"#!/bin/sh\necho \"$@\" >> {cancelled}\n"
                       f"[ \"$1\" = 13 ] && {{ echo 'scancel: error: Access denied' >&2; exit 1; }}\n"
                       "exit 0\n")
    for script in (squeue, scancel):
        script.chmod(0o755)
    connected = ["tcp://10.0.0.5:4000"]
    watch = SlurmWatch(3, lambda: connected, poll=0, squeue=str(squeue), scancel=str(scancel))
    for job in ("11", "12", "13"):
        watch.submitted(job, f"/logs/dask-worker-{job}.err")
    caplog.set_level("INFO", logger="posdir2ometiff")
    answer.write_text("11|RUNNING|None\n12|PENDING|Resources\n13|RUNNING|None\n")
    assert watch.problem() is None
    blind = Unshared("tcp://10.0.0.5:4000", ("/shared/exp", "/shared/out"), "n5.cluster", "11",
                     "n5")
    watch.blind_worker(blind)
    assert cancelled.read_text() == "11\n"
    # The job's other worker (a job of several processes): its job is not cancelled twice.
    watch.blind_worker(Unshared("tcp://10.0.0.5:4001", blind.unseen, "n5.cluster", "11", "n5"))
    assert cancelled.read_text() == "11\n"
    assert caplog.records[-1].getMessage() == (
        "Slurm: job 11 on node n5 cannot see /shared/exp, /shared/out: cancelled (to keep the "
        "run's jobs off that node: job-extra-directives: ['--exclude=n5'] in the jobqueue.slurm "
        "config)")
    # Still connected while its job ends: no worker that can see; job 12 still queued: wait.
    answer.write_text("11|COMPLETING|None\n12|PENDING|Resources\n")
    assert watch.problem() is None
    assert "Slurm: waiting for job(s) 11 (COMPLETING), 12 (PENDING: Resources)" in caplog.text
    # A worker that is not in a job of this run: counted as none, not cancelled.
    watch.blind_worker(Unshared("tcp://10.0.0.9:4000", ("/shared/out",), "n9", "99", "n9"))
    assert cancelled.read_text() == "11\n"
    assert caplog.records[-1].getMessage() == (
        "tcp://10.0.0.9:4000 is not in a Slurm job of this run: it is given nothing, and left "
        "running")
    # Job 13's worker: scancel refuses, and the run says what it holds.
    watch.blind_worker(Unshared("tcp://10.0.0.7:4000", ("/shared/out",), "n7", "13", "n7"))
    assert caplog.records[-1].getMessage() == (
        "Slurm: job 13 on node n7 cannot see the run's folders; cancelling it failed (scancel: "
        "error: Access denied): it holds the node, given nothing, until its walltime")
    # Job 12 started and its worker joined: a worker that can see.
    connected[:] = ["tcp://10.0.0.5:4000", "tcp://10.0.0.9:4000", "tcp://10.0.0.6:4000"]
    answer.write_text("12|RUNNING|None\n")
    assert watch.problem() is None
    # All jobs gone, no worker: the end, with the nodes that could not see.
    connected[:] = []
    answer.write_text("")
    assert watch.problem() == (
        "Slurm job(s) 11, 12, 13 of this run ended and no Dask worker is left to convert the "
        "positions: job(s) 11, 13 ran on node(s) n5, n7, which cannot see /shared/exp, "
        "/shared/out; see the job log(s) /logs/dask-worker-11.err; "
        "/logs/dask-worker-12.err; /logs/dask-worker-13.err")


def _blind_python(tmp_path: Path, hidden: Path, first_only: bool) -> Path:
    """dask-jobqueue's ``python`` for a run whose worker jobs start where ``hidden`` is not
    mounted (a tmpfs over it, in a mount namespace of the job's own): the first job only, or
    every job. As on a cluster where some nodes lack the lab's share."""
    script = tmp_path / "python-on-a-node"
    mark = tmp_path / "first-job-started"
    blind = (f"exec unshare --mount --propagation private sh -c "
             f"'mount -t tmpfs blind \"$0\" && exec \"$@\"' {hidden} {sys.executable} \"$@\"\n")
    script.write_text("#!/bin/sh\n" + (f"if mkdir {mark} 2>/dev/null; then\n  {blind}fi\n"
                                       f"exec {sys.executable} \"$@\"\n" if first_only
                                       else blind))
    script.chmod(0o755)
    return script


def _one_job_at_a_time() -> list[str]:
    """Options for worker jobs that each take the whole node: the next job waits in the queue
    until the one before has ended (as on a busy cluster)."""
    return ["--slurm-cores", str(os.cpu_count() or 1), "--slurm-jobs", "2",
            "--slurm-walltime", "00:30:00"]


@pytest.mark.skipif(subprocess.run(["unshare", "--mount", "true"], capture_output=True,
                                   check=False).returncode != 0,
                    reason="unshare --mount is not allowed here (a node without the folders)")
@pytest.mark.parametrize("every_node", [False, True], ids=["one node", "every node"])
def test_a_job_on_a_node_without_the_folders_is_cancelled_for_the_jobs_queued_behind_it(
    slurm: LocalSlurm, tmp_path: Path, every_node: bool
) -> None:
    """The first worker job starts on a node that does not mount the folders; the second waits
    in the queue behind it. The run gives the blind job's workers nothing, cancels the job (it
    held the node, given nothing, until its walltime, and the run gave up after BLIND_WAIT
    while the second job was still queued), and the second job converts every position. Where
    every job lands on such a node, the run ends in one line naming the node, once all have
    been cancelled."""
    python = _blind_python(tmp_path, tmp_path, first_only=not every_node)
    done, out, logs = _cli_on_slurm(tmp_path, *_one_job_at_a_time(),
                                    config=f"    python: {python}\n")
    exp = tmp_path / "exp"
    unseen = f"{exp}, {out}"
    cancels = re.findall(
        rf"Slurm: job (\d+) on node {NODE} cannot see {re.escape(unseen)}: cancelled \(to keep "
        rf"the run's jobs off that node: job-extra-directives: \['--exclude={NODE}'\] in the "
        r"jobqueue.slurm config\)", done.stderr)
    blind_lines = [ln for ln in done.stderr.splitlines() if "cannot see" in ln
                   and "Slurm:" not in ln and "error:" not in ln]
    assert blind_lines, done.stderr
    for line in blind_lines:  # each blind worker, once, named with its host
        assert re.fullmatch(
            rf"WARNING: Dask worker tcp://127\.0\.0\.1:\d+ on {re.escape(socket.gethostname())} "
            rf"cannot see {re.escape(unseen)}: input and output must be on a filesystem every "
            r"worker shares \(same path on every machine\); the run gives its positions to the "
            r"other workers", line), line
    if not every_node:
        assert done.returncode == 0, done.stderr
        assert len(cancels) == 1, done.stderr
        assert "2 converted, 0 up to date, 0 failed" in done.stderr
        for name in ("pos001", "pos002"):
            assert_matches_sources(out, exp, name)
        assert "CANCELLED" in (logs / f"dask-worker-{cancels[0]}.err").read_text()
        return
    assert done.returncode == 1, done.stderr
    assert len(cancels) == 2, done.stderr
    first, second = sorted(cancels, key=int)
    assert done.stderr.strip().splitlines()[-1] == (
        f"posdir2ometiff: error: Slurm job(s) {first}, {second} of this run ended and no Dask "
        f"worker is left to convert the positions: job(s) {first}, {second} ran on node(s) "
        f"{NODE}, which cannot see {unseen}; see the job log(s) {logs}/dask-worker-{first}.err; "
        f"{logs}/dask-worker-{second}.err")
    assert json.loads((out / "manifest.json").read_text())["positions"] == {}

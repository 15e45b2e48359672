"""``--cluster slurm`` through a real single-node Slurm (munged, slurmctld, slurmd started for the
test; skipped with the reason where they cannot be, e.g. not root or slurm-wlm not installed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm_local import LocalSlurm, single_node_slurm, unavailable_reason
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
    done = subprocess.run(
        [sys.executable, "-m", "posdir2ometiff", str(spec.folder), "-o", str(out), "--cluster",
         "slurm", "--cluster-config", str(conf), "--slurm-cores", "1", "--slurm-memory", "1GB",
         *extra], capture_output=True, text=True, timeout=180, check=False)
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

    workers = [0]
    watch = SlurmWatch(2, lambda: workers[0], poll=0, squeue=str(squeue))
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
    workers[0] = 1
    says("")
    assert watch.problem() is None  # gone from the queue, but its worker is still connected
    workers[0] = 0
    ended = ("Slurm job(s) 11 of this run ended and no Dask worker is left to convert the "
             "positions: see the job log(s) /logs/dask-worker-11.err")
    assert watch.problem() == ended
    says("", "slurm_load_jobs error: Invalid job id specified\n", 1)
    assert watch.problem() == ended
    refused = SlurmWatch(1, lambda: 0, poll=0, squeue=str(squeue))
    refused.refused(RuntimeError("stderr:\nsbatch: error: invalid partition specified: x\n"
                                 "sbatch: error: Batch job submission failed: Invalid partition"))
    assert refused.problem() == ("Slurm refused the worker job: sbatch: error: Batch job "
                                 "submission failed: Invalid partition")

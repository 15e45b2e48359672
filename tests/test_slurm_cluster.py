"""``--cluster slurm`` through a real single-node Slurm (munged, slurmctld, slurmd started for the
test; skipped with the reason where they cannot be, e.g. not root or slurm-wlm not installed)."""

from __future__ import annotations

import os
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


def test_cluster_slurm_converts_through_slurm_jobs(
    slurm: LocalSlurm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from posdir2ometiff.cli import main
    from posdir2ometiff.demo import make_demo

    spec = make_demo(tmp_path / "exp", positions=3, channels=["GFP", "DIC"], z=2, t=2, size=48)
    jobs_logs = tmp_path / "joblogs"
    config = tmp_path / "jobqueue.yaml"
    # As a dask-jobqueue user writes it; the --slurm-* options below override single values.
    config.write_text(
        "jobqueue:\n"
        "  slurm:\n"
        "    cores: 4\n"
        "    memory: 64GB\n"
        "    queue: debug\n"
        f"    log-directory: {jobs_logs}\n"
        "    scheduler-options: {host: 127.0.0.1}\n"
        "    worker-extra-args: [--host, 127.0.0.1]\n"
    )
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
    import subprocess
    import sys

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

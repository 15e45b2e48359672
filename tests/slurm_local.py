"""A throw-away single-node Slurm for tests: munged, slurmctld and slurmd started directly.

Debian's ``slurm-wlm`` and ``munge`` (scripts/setup.d/slurm.sh installs them as root). There is no
systemd here, so the daemons run in the foreground as our child processes, each run with its
own folder, munge key, socket and ports, and are stopped at the end. The settings are the
smallest that run batch jobs without cgroups: ``ProctrackType=proctrack/linuxproc``,
``TaskPlugin=task/none``, no accounting (see slurm.conf(5)).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel")
NODE = "p2onode"


def unavailable_reason() -> str | None:
    """Why a local Slurm cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "a local Slurm needs root (slurmd runs jobs as their user)"
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return (f"Slurm/munge not installed ({', '.join(missing)} missing; "
                "scripts/setup.d/slurm.sh installs slurm-wlm and munge as root)")
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class LocalSlurm:
    folder: Path
    conf: Path

    @property
    def env(self) -> dict[str, str]:
        """What clients (sbatch, squeue, dask-jobqueue) need: where the configuration is."""
        return {"SLURM_CONF": str(self.conf)}

    def log(self, name: str) -> str:
        path = self.folder / "log" / name
        return path.read_text(errors="replace") if path.exists() else ""


def _write_conf(folder: Path, cpus: int, memory_mb: int) -> Path:
    ctld_port, slurmd_port = _free_ports(2)
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=p2otest",
        "SlurmctldHost=localhost(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={folder}/munge/munge.socket",
        f"StateSaveLocation={folder}/state",
        f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid",
        f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/log/slurmctld.log",
        f"SlurmdLogFile={folder}/log/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "MpiDefault=none",
        "ReturnToService=2",
        "SwitchType=switch/none",
        f"NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={socket.gethostname()} "
        f"CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    return conf


@contextlib.contextmanager
def single_node_slurm(folder: Path, *, memory_mb: int = 4000) -> Iterator[LocalSlurm]:
    """Start munged, slurmctld and slurmd in ``folder``; stop them (and cancel jobs) on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("munge", "state", "spool", "log"):
        (folder / sub).mkdir(exist_ok=True)
    # munged refuses a socket folder others can write to, and a key others can read.
    for path in (folder, folder / "munge"):
        path.chmod(0o755)
    key = folder / "munge" / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True,
                   capture_output=True)
    key.chmod(0o400)
    conf = _write_conf(folder, os.cpu_count() or 1, memory_mb)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen] = []
    logs = []

    def start(name: str, argv: list[str]) -> None:
        log = open(folder / "log" / f"{name}.out", "wb")  # noqa: SIM115
        logs.append(log)
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env))

    slurm = LocalSlurm(folder, conf)
    try:
        start("munged", ["munged", "-F", "--force", f"--socket={folder}/munge/munge.socket",
                         f"--key-file={key}", f"--log-file={folder}/log/munged.log",
                         f"--pid-file={folder}/munge/munged.pid",
                         f"--seed-file={folder}/munge/seed"])
        _wait(lambda: (folder / "munge" / "munge.socket").exists(), 20, "munged", slurm)
        start("slurmctld", ["slurmctld", "-D", "-f", str(conf)])
        start("slurmd", ["slurmd", "-D", "-f", str(conf), "-N", NODE])

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=env,
                                 capture_output=True, text=True, check=False)
            return out.stdout.strip() == "idle"

        _wait(idle, 60, "the Slurm node to become idle", slurm)
        yield slurm
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True,
                       check=False)
        with contextlib.suppress(RuntimeError):  # give slurmd a moment to end the jobs
            _wait(lambda: not subprocess.run(["squeue", "-h"], env=env, capture_output=True,
                                             text=True, check=False).stdout.strip(),
                  15, "jobs to end", slurm)
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def _wait(predicate, timeout: float, what: str, slurm: LocalSlurm) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}; slurmctld log:\n"
                       f"{slurm.log('slurmctld.log')[-2000:]}\nslurmd log:\n"
                       f"{slurm.log('slurmd.log')[-2000:]}")

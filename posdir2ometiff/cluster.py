"""The CLI's way to a Dask client: connect to a running scheduler, or start workers through Slurm.

Library code never starts a cluster (:func:`posdir2ometiff.convert.convert` takes the caller's
``distributed.Client``); this module is what the command line does on the user's say:

* ``--scheduler tcp://host:8786``: connect to a scheduler someone runs (``dask scheduler``, a
  ``dask-jobqueue`` cluster in a notebook, a Dask Gateway …).
* ``--cluster slurm``: a ``dask_jobqueue.SLURMCluster`` (its scheduler runs in this process; its
  workers are Slurm jobs). Queue, cores, memory, walltime … come, as dask-jobqueue users expect,
  from Dask's configuration (``~/.config/dask/jobqueue.yaml``, ``$DASK_CONFIG``, the
  ``jobqueue.slurm`` section) or a file given with ``--cluster-config``, and the ``--slurm-*``
  options override single values. Without cores and memory from any of them dask-jobqueue
  refuses, and we say so in one line.

Inputs and outputs must be on a filesystem every worker shares (same path everywhere).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posdir2ometiff.errors import ConversionError

logger = logging.getLogger(__name__)

CLUSTERS = ("slurm",)


class ClusterError(ConversionError):
    """The Dask scheduler cannot be reached or the cluster cannot be started."""


@dataclass
class SlurmOptions:
    """``--slurm-*`` overrides of dask-jobqueue's ``jobqueue.slurm`` settings (None: from config)."""

    queue: str | None = None
    cores: int | None = None
    memory: str | None = None
    walltime: str | None = None
    #: Slurm jobs (each one ``dask worker``) to start.
    jobs: int = 1

    def cluster_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in (("queue", self.queue), ("cores", self.cores),
                                  ("memory", self.memory), ("walltime", self.walltime))
                if v is not None}


def load_cluster_config(path: Path) -> dict[str, Any]:
    """A Dask configuration YAML (same layout as ``~/.config/dask/jobqueue.yaml``)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ClusterError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ClusterError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ClusterError(f"{path}: expected a mapping such as 'jobqueue: {{slurm: {{...}}}}'")
    return data


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists and scalars are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_dotted(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ClusterError(
            "--scheduler/--cluster need Dask: pip install 'posdir2ometiff[dask]'"
        ) from None
    return distributed


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    cluster: str | None = None,
    slurm: SlurmOptions | None = None,
    config_file: Path | None = None,
    timeout: float = 30.0,
) -> Iterator[Any]:
    """Yield a ``distributed.Client`` (or None when neither ``scheduler`` nor ``cluster``);
    close it, and a cluster started here, on exit."""
    if scheduler is None and cluster is None:
        yield None
        return
    distributed = _import_distributed()
    import dask

    config = load_cluster_config(config_file) if config_file is not None else {}
    # Dotted keys merge into Dask's defaults; a nested dict would replace whole sections.
    with dask.config.set(_dotted(config)):
        if scheduler is not None:
            try:
                client = distributed.Client(scheduler, timeout=timeout)
            except OSError as exc:
                raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") \
                    from None
            with client:
                yield client
            return
        if cluster != "slurm":
            raise ClusterError(f"--cluster must be one of {', '.join(CLUSTERS)}, not {cluster!r}")
        yield from _slurm_client(distributed, slurm or SlurmOptions())


def _slurm_client(distributed: Any, slurm: SlurmOptions) -> Iterator[Any]:
    from dask_jobqueue import SLURMCluster

    try:
        cluster = SLURMCluster(**slurm.cluster_kwargs())
    except ValueError as exc:  # e.g. no cores/memory in options or config
        first = str(exc).splitlines()[0].split(", for example")[0]
        raise ClusterError(
            f"--cluster slurm: {first} (give --slurm-cores and --slurm-memory, or jobqueue.slurm "
            "cores and memory in the Dask config (~/.config/dask/jobqueue.yaml or --cluster-config))"
        ) from None
    with cluster, distributed.Client(cluster) as client:
        logger.info("Slurm: submitting %d job(s); scheduler at %s", slurm.jobs,
                    cluster.scheduler_address)
        logger.debug("Slurm job script:\n%s", cluster.job_script())
        cluster.scale(jobs=slurm.jobs)
        yield client

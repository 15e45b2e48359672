"""The conversion pipeline: layout → metadata → OME model → writer, for every position, in parallel.

:func:`convert` is the Python API behind the CLI. It discovers the positions, reads the metadata
once, decides which positions are already up to date (re-runs skip them by the manifest's
checksums), converts the rest in worker processes (one position per task: positions are
independent and a position is a long, streaming job), then writes the HDF5 tables and the
manifest. A position that fails (unreadable plane, wrong size, duplicate files) is reported and
leaves no output file; the others still finish unless ``fail_fast``.

The stages live in their own modules: :mod:`~posdir2ometiff.planes` (reading plane files),
:mod:`~posdir2ometiff.position` (one position), :mod:`~posdir2ometiff.rerun` (what is up to
date), :mod:`~posdir2ometiff.executors` (where positions run); this module orchestrates.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from posdir2ometiff import __version__
from posdir2ometiff.atomic import remove_stale_temporaries
from posdir2ometiff.cores import usable_cores
from posdir2ometiff.dask_executor import (
    Unshared,
    check_shared_filesystem,
    preload_workers,
    run_jobs_dask,
    threads_per_worker,
)
from posdir2ometiff.errors import ClusterError, ConversionError, PlaneError
from posdir2ometiff.executors import SideWork, default_threads, wants_io_helper
from posdir2ometiff.executors import run_jobs as _run_jobs
from posdir2ometiff.forked import Forked, can_fork
from posdir2ometiff.layout import (
    DEFAULT_PATTERN,
    DEFAULT_POSITIONS,
    LayoutError,
    absent_positions,
    check_output_folder,
    discover,
    warn_not_captured,
)
from posdir2ometiff.lock import FolderLock
from posdir2ometiff.manifest import (
    MANIFEST_VERSION,
    load_manifest,
    sha1_file,
    write_manifest,
)
from posdir2ometiff.metadata.model import ExperimentMetadata, TimeSettings, ZSectioning
from posdir2ometiff.metadata.unknown import report_unknowns
from posdir2ometiff.ome import describe_experiment
from posdir2ometiff.planes import read_plane
from posdir2ometiff.position import (
    OUTPUT_SUFFIX,
    PositionJob,
    convert_position,
    remove_stale_partials,
)
from posdir2ometiff.progress import Progress
from posdir2ometiff.report import PREVIEW_DIR
from posdir2ometiff.rerun import is_up_to_date, metadata_fingerprint
from posdir2ometiff.writer import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    DEFAULT_TILE,
    WriterError,
    pyramid_levels,
)

# Names this module has always offered (kept importable from here after the split).
__all__ = [
    "OUTPUT_SUFFIX",
    "TABLES_NAME",
    "ConversionError",
    "ConversionOptions",
    "ConversionResult",
    "PlaneError",
    "PositionJob",
    "PositionResult",
    "convert",
    "convert_position",
    "is_up_to_date",
    "metadata_fingerprint",
    "read_plane",
]

logger = logging.getLogger(__name__)

TABLES_NAME = "experiment.h5"


@dataclass
class ConversionOptions:
    """Every option of a run (the CLI's flags); also recorded in the manifest."""

    positions: str = DEFAULT_POSITIONS
    pattern: str = DEFAULT_PATTERN
    tile: int = DEFAULT_TILE
    compression: str = DEFAULT_COMPRESSION
    pyramid: str = "auto"
    workers: int | None = None
    #: Threads inside one position (decode ahead, compress tiles): the cores it may use, so 1
    #: is one thread, its output hashed and written by it too; None: cores / workers (rounded), with a
    #: helper thread for the output where a core is spare (executors.wants_io_helper).
    threads: int | None = None
    metadata: str = "auto"
    pixel_size_um: float | None = None
    z_step_um: float | None = None
    time_interval_s: float | None = None
    overwrite: bool = False
    fail_fast: bool = False
    #: auto (bar on a terminal, log lines otherwise), bar, log or off.
    progress: str = "auto"
    #: Write OUT/report.html (previews, plane grid, warnings, metadata); --no-report turns it off.
    report: bool = True

    def manifest_dict(self) -> dict[str, Any]:
        """The options that determine the output (workers/progress/overwrite do not)."""
        return {
            "positions": self.positions,
            "pattern": self.pattern,
            "tile": self.tile,
            "compression": self.compression,
            "pyramid": str(self.pyramid),
            "metadata": self.metadata,
            "pixel_size_um": self.pixel_size_um,
            "z_step_um": self.z_step_um,
            "time_interval_s": self.time_interval_s,
        }


@dataclass
class PositionResult:
    """Outcome of one position: ``ok`` (written), ``skipped`` (up to date) or ``failed``."""

    name: str
    status: str
    output: Path | None = None
    error: str | None = None
    planes: int = 0
    missing_planes: int = 0
    #: Full traceback of an unexpected failure (shown with --verbose), else None.
    detail: str | None = None


@dataclass
class ConversionResult:
    """What :func:`convert` did; ``ok`` is False when any position failed."""

    out: Path
    manifest: Path
    positions: list[PositionResult] = field(default_factory=list)
    tables: Path | None = None
    seconds: float = 0.0
    #: OUT/report.html, or None with report=False (or when it could not be written).
    report: Path | None = None

    @property
    def failed(self) -> list[PositionResult]:
        return [p for p in self.positions if p.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed


# --------------------------------------------------------------------------- the run


def _job_metadata(
    meta: ExperimentMetadata | None, name: str, times: dict[str, list] | None = None
) -> ExperimentMetadata | None:
    """The metadata one worker needs: no tables, only this position's stage data and times
    (a log's plane times for all positions would otherwise be pickled to every worker).
    ``times``: plane times already grouped by lower-case position name."""
    if meta is None:
        return None
    low = name.lower()
    if times is None:
        times = _times_by_position(meta)
    return dataclasses.replace(
        meta,
        tables={},
        positions=[p for p in meta.positions if p.name.lower() == low],
        plane_times=times.get(low, []),
    )


def _times_by_position(meta: ExperimentMetadata | None) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for pt in meta.plane_times if meta else ():
        grouped.setdefault(pt.position.lower(), []).append(pt)
    return grouped


def _overrides(opts: ConversionOptions) -> ExperimentMetadata | None:
    if opts.pixel_size_um is None and opts.z_step_um is None and opts.time_interval_s is None:
        return None
    return ExperimentMetadata(
        pixel_size_um=opts.pixel_size_um,
        z=ZSectioning(spacing_um=opts.z_step_um) if opts.z_step_um is not None else None,
        time=(TimeSettings(interval_s=opts.time_interval_s)
              if opts.time_interval_s is not None else None),
    )


def _check_options(opts: ConversionOptions) -> None:
    if opts.compression not in COMPRESSIONS:
        raise ConversionError(
            f"--compression must be one of {', '.join(COMPRESSIONS)}, not {opts.compression!r}"
        )
    if opts.tile <= 0 or opts.tile % 16:
        raise ConversionError(f"--tile must be a positive multiple of 16, not {opts.tile}")
    try:
        pyramid_levels(1024, 1024, opts.tile, opts.pyramid)
    except WriterError as exc:
        raise ConversionError(str(exc)) from None
    if opts.workers is not None and opts.workers < 1:
        raise ConversionError(f"--workers must be at least 1, not {opts.workers}")
    if opts.threads is not None and opts.threads < 1:
        raise ConversionError(f"--threads must be at least 1, not {opts.threads}")


def convert(
    src: Path | str, out: Path | str, *, client: Any = None,
    cluster_check: Callable[[], str | None] | None = None,
    on_blind_worker: Callable[[Unshared], None] | None = None, **options: Any
) -> ConversionResult:
    """Convert the experiment folder ``src`` into ``out`` (see :class:`ConversionOptions`).

    ``client``: a ``distributed.Client``; each position then runs as a task on its cluster
    (``src`` and ``out`` must be on a filesystem the workers share). Without one, positions run
    in a local process pool (``workers``). ``cluster_check``: asked every fraction of a second
    while positions wait on the cluster (it answers at its own pace); a text means no worker can
    come any more (:class:`~posdir2ometiff.cluster.SlurmWatch`): the positions done so far go
    into the manifest, no other is started, and :class:`ClusterError` is raised with that text.
    ``on_blind_worker``: told of each worker found unable to see ``src`` or ``out``
    (:class:`~posdir2ometiff.dask_executor.Unshared`: where it runs) by the owner of a cluster
    started for this run, who may stop it (:meth:`~posdir2ometiff.cluster.SlurmWatch.blind_worker`
    cancels its Slurm job); with it, ``cluster_check`` alone says when no worker that can see
    may come. Without it, such workers are given nothing and the run waits for others
    ``BLIND_WAIT`` seconds at most while only they are connected.

    Raises :class:`LayoutError`, :class:`ConversionError` or ``MetadataError`` for problems of
    the whole run (no such folder, no positions, bad option, unreadable metadata); problems of
    one position are reported in the result (status ``failed``) and in the manifest.
    """
    from posdir2ometiff.metadata.plugins import load_metadata

    started = time.monotonic()
    try:
        opts = ConversionOptions(**options)
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(ConversionOptions))
        raise ConversionError(f"{exc}; known options: {known}") from None
    _check_options(opts)
    src = Path(src).resolve()
    out = Path(out).resolve()
    if not src.is_dir():
        raise LayoutError(f"{src}: not a folder")
    if client is not None:
        preload_workers(client)  # their imports overlap the metadata parsing below

    meta = load_metadata(src, opts.metadata, _overrides(opts))
    if (meta is None or not meta.sources) and opts.metadata != "none":
        logger.warning(
            "%s: no metadata file recognised; converting with pixel data only "
            "(no exposures, stage positions or times in the OME-XML)",
            src,
        )
    check_output_folder(src, out, opts.positions, opts.pattern)
    report_unknowns(meta, src)
    layouts = discover(src, opts.positions, opts.pattern,
                       [c.name for c in meta.channels] if meta else (),
                       meta.log_timepoints if meta else (),
                       meta.z.count if meta and meta.z else None)
    absent = absent_positions(src, [p.name for p in meta.positions] if meta else (),
                              opts.positions)
    if absent:
        more = f" and {len(absent) - 10} more" if len(absent) > 10 else ""
        logger.warning("%s: %d position(s) of the metadata's points table have no folder "
                       "(listed in the manifest as absent_positions): %s%s",
                       src, len(absent), ", ".join(absent[:10]), more)
    # OUT inside SRC with a name like "pos_out" would otherwise be taken for a position.
    layouts = [lay for lay in layouts if lay.folder.resolve() != out]
    out.mkdir(parents=True, exist_ok=True)
    # One run per OUT (lock.py): a second converter or a push on it refuses, naming this one.
    with FolderLock(out, "posdir2ometiff convert"):
        for folder in (out, out / PREVIEW_DIR):  # what a killed run left; no live writer can
            remove_stale_temporaries(folder)      # own them while we hold the lock
        return _convert_locked(src, out, opts, meta, layouts, started, client, absent,
                               cluster_check, on_blind_worker)


def _convert_locked(
    src: Path, out: Path, opts: ConversionOptions, meta: ExperimentMetadata | None,
    layouts: list, started: float, client: Any, absent: list[str],
    cluster_check: Callable[[], str | None] | None = None,
    on_blind_worker: Callable[[Unshared], None] | None = None,
) -> ConversionResult:
    """The run proper, while this process holds OUT's lock."""
    from posdir2ometiff.metadata.tables import table_frames, tables_image, write_tables

    previous = None if opts.overwrite else load_manifest(out)
    fingerprint = metadata_fingerprint(meta)
    prev_positions: dict[str, dict] = {}
    if previous is not None:
        prev_opts = previous.get("options", {})
        same_opts = all(
            prev_opts.get(k) == opts.manifest_dict()[k]
            for k in ("pattern", "tile", "compression", "pyramid")
        )
        same_meta = previous.get("metadata", {}).get("fingerprint") == fingerprint
        if same_opts and same_meta:
            prev_positions = previous.get("positions", {})
        else:
            logger.info("options or metadata changed since the last run: converting everything")

    results: dict[str, PositionResult] = {}
    entries: dict[str, dict] = {}
    times = _times_by_position(meta)
    jobs: list[PositionJob] = []
    for layout in layouts:
        entry = prev_positions.get(layout.name)
        if not layout.error and is_up_to_date(entry, layout, out, src):
            assert entry is not None
            results[layout.name] = PositionResult(
                layout.name, "skipped", out / entry["output"],
                planes=layout.plane_count, missing_planes=len(entry.get("missing_planes", [])),
            )
            entries[layout.name] = entry
            logger.info("%s: up to date, skipped", layout.name)
            continue
        jobs.append(PositionJob(layout, _job_metadata(meta, layout.name, times), src, out,
                                opts.tile, opts.compression, str(opts.pyramid),
                                report=opts.report))

    tables_box: dict[str, Any] = {}
    built: list[Forked] = []  # the tables' HDF5 image, built in a child process (forked.py)

    def write_experiment_tables() -> None:
        """HDF5 tables, written beside the positions (executors.SideWork); a second attempt
        (the first failed) builds them here."""
        if meta is not None and (meta.tables or meta.plane_times):
            path = out / TABLES_NAME
            names = write_tables(meta, path, built.pop().result() if built else None)
            if names:
                tables_box["entry"] = {"path": TABLES_NAME, "sha1": sha1_file(path),
                                       "size": path.stat().st_size, "names": names}

    tables = SideWork(write_experiment_tables)
    total = sum(j.layout.plane_count for j in jobs if not j.layout.error)
    cores = usable_cores()
    workers = min(opts.workers or cores, max(len(jobs), 1))
    for job in jobs:
        # On a cluster, 0 lets each worker choose (its cores / its task slots).
        job.threads = opts.threads or (0 if client is not None else default_threads(workers))
        if client is None:
            job.io_helper = wants_io_helper(job.threads, cores, workers,
                                            asked=opts.threads is not None)
        elif opts.threads is not None:  # threads asked for, on any worker: a budget of cores
            job.io_helper = wants_io_helper(job.threads, 1, 1, asked=True)
    if client is None and workers <= 1 and jobs and jobs[0].io_helper and can_fork() and (
            meta is not None and (meta.tables or meta.plane_times)):
        # Positions converted in this process: the tables' pandas and PyTables would take turns
        # with their writing thread on the GIL; a child builds them meanwhile, forked now,
        # before any thread of the run starts (forked.py). Only where a core is spare beside
        # the position's threads, as for its output helper: `--threads 1` is one core.
        frames = table_frames(meta)  # what is left out is logged here, not by the child
        built.append(Forked(lambda: tables_image(meta, out / TABLES_NAME, frames),
                            "experiment.h5"))
    progress_mode = opts.progress
    blind: dict[str, Unshared] = {}  # Dask workers that cannot see SRC or OUT: given nothing
    if client is not None:
        blind = check_shared_filesystem(client, src, out,
                                        more_may_come=on_blind_worker is not None)
        shares = threads_per_worker(client)
        for job in jobs:
            job.worker_threads = shares
    stopped: list[ClusterError] = []
    with Progress(total, mode=progress_mode) as progress:
        runs = (
            _until_cluster_fails(run_jobs_dask(jobs, client, opts.fail_fast, progress, tables,
                                               cluster_check, blind, on_blind_worker),
                                 stopped)
            if client is not None
            else _run_jobs(jobs, workers, opts.fail_fast, progress, tables)
        )
        for job, (entry, detail) in runs:
            name = job.layout.name
            entries[name] = entry
            if entry["status"] == "ok":
                results[name] = PositionResult(
                    name, "ok", out / entry["output"], planes=job.layout.plane_count,
                    missing_planes=len(entry["missing_planes"]),
                )
                warn_not_captured(name, entry.get("not_captured_planes", []))
                missing = [m["label"] for m in entry["missing_planes"]]
                if missing:  # one line per position: a skipped channel can miss thousands
                    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                    logger.warning(
                        "%s: %d missing plane(s) written as zeros (listed in the manifest and "
                        "as 'missing plane' key-value pairs): %s%s",
                        name, len(missing), "; ".join(missing[:5]), more,
                    )
            else:
                stale = out / f"{name}{OUTPUT_SUFFIX}"
                if stale.exists():  # an old output no longer matches its sources
                    stale.unlink()
                results[name] = PositionResult(name, "failed", error=entry["error"], detail=detail)
                logger.error("%s", entry["error"])
                if detail:
                    logger.debug("%s", detail)

    remove_stale_partials(out, [job.layout.name for job in jobs])
    tables_entry = tables_box.get("entry")
    tables_path = out / TABLES_NAME if tables_entry else None

    # Keep entries of positions converted earlier into this OUT but not part of this run.
    positions = {k: v for k, v in (previous or {}).get("positions", {}).items()
                 if v.get("status") == "ok" and (out / str(v.get("output"))).exists()}
    positions.update(entries)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "tool": "posdir2ometiff",
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": str(src),
        "options": opts.manifest_dict(),
        "metadata": {
            "parsers": list(meta.sources) if meta else [],
            "description": describe_experiment(meta) if meta else None,
            "tags": list(meta.tags) if meta else [],
            "key_values": [[str(k), str(v)] for k, v in meta.key_values] if meta else [],
            "omero_project": meta.omero_project if meta else None,
            "omero_dataset": meta.omero_dataset if meta else None,
            "fingerprint": fingerprint,
        },
        "tables": tables_entry,
        "absent_positions": absent,
        "positions": dict(sorted(positions.items())),
    }
    manifest_path = write_manifest(out, manifest)
    report_path = _write_report(out, manifest) if opts.report else None
    if stopped:  # the positions done before the cluster failed are in the manifest
        raise stopped[0]
    ordered = [results[lay.name] for lay in layouts if lay.name in results]
    return ConversionResult(out=out, manifest=manifest_path, positions=ordered,
                            tables=tables_path, seconds=time.monotonic() - started,
                            report=report_path)


def _until_cluster_fails(runs: Iterator[Any], stopped: list[ClusterError]) -> Iterator[Any]:
    """``runs`` until the cluster can run no more positions; its error is kept in ``stopped``
    (raised once what was done is in the manifest)."""
    try:
        yield from runs
    except ClusterError as exc:
        # Without its traceback: that holds the runner's frame, whose futures (a finished
        # position's among them) would keep their results in the workers' memory for as long
        # as the caller keeps the error.
        stopped.append(exc.with_traceback(None))


def _write_report(out: Path, manifest: dict[str, Any]) -> Path | None:
    """OUT/report.html; a report that cannot be written costs a warning, not the conversion."""
    from posdir2ometiff.report import write_report

    try:
        return write_report(out, manifest)
    except OSError as exc:
        logger.warning("%s: report not written (%s)", out, exc.strerror or exc)
        return None

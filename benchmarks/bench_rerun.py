"""Re-run benchmark: an experiment of the lab's size that is already converted, run again.

Run: ``python benchmarks/bench_rerun.py [--positions 20] [--t 240] [--repeat 3] [--keep DIR]``.
Not a test: it prints figures (and ``--json``). About a minute (most of it converting once).

A lab converting while it acquires re-runs the converter on the same experiment again and again;
every position already up to date is skipped, so such a run is all fixed costs: listing the
files, the metadata, reading and checking the previous manifest, writing the new one and the
report. Those grow with the planes, not the pixels, so the planes here are 16×16 (20 positions
× 240 t × 3 channels × 5 z = 72,000 files, as the lab's experiment).

Printed, the median of ``--repeat``:

1. the whole re-run (``main()`` in this process, after one untimed re-run), and its parts;
2. each part this benchmark was written for, against the way it was done before, on the same
   data in the same run:
   - checking the manifest: jsonschema on the whole manifest, against jsonschema on the rest
     and ``manifest._item_check`` on the 72,000 ``sources`` entries;
   - the manifest's text: ``json.dumps(indent=2)`` (json's pure-Python encoder), against one
     entry per line with its C encoder (``manifest_json``);
   - the report's OME-XML summary: parsing each output's whole OME-XML, against parsing up to
     the first Plane (``report.summary_tree``);
   - listing the position folders: sorted ``Path`` objects and a ``stat`` of each plane file,
     against ``os.scandir`` sorted by name, the directory's file types and pathlib's child
     paths (``layout.scan_position``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import tifffile
from _timing import TimedCalls  # benchmarks/_timing.py, beside this script

from posdir2ometiff import convert as convert_mod
from posdir2ometiff import manifest, report
from posdir2ometiff.cli import main as cli_main
from posdir2ometiff.demo import make_demo
from posdir2ometiff.layout import listing
from posdir2ometiff.metadata import plugins, tables


def median_s(fn: Callable[[], Any], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def rerun(src: Path, out: Path) -> dict[str, float]:
    parts = TimedCalls()
    parts.wrap(convert_mod, "discover", "listing the positions (discover)")
    parts.wrap(plugins, "load_metadata", "metadata")
    parts.wrap(convert_mod, "load_manifest", "reading and checking the manifest")
    parts.wrap(convert_mod, "is_up_to_date", "up to date? (sources' size, mtime)")
    parts.wrap(convert_mod, "metadata_fingerprint", "the metadata's fingerprint")
    parts.wrap(tables, "write_tables", "the tables (experiment.h5)")
    parts.wrap(convert_mod, "write_manifest", "writing the manifest")
    parts.wrap(convert_mod, "_write_report", "the report")
    argv = sys.argv
    sys.argv = ["posdir2ometiff", str(src), "-o", str(out), "--quiet"]
    try:
        t0 = time.perf_counter()
        if cli_main() != 0:
            raise SystemExit("the re-run failed")
        parts.seconds["whole re-run"] = time.perf_counter() - t0
    finally:
        sys.argv = argv
        parts.undo()
    return parts.seconds


def old_listing(folder: Path) -> int:
    """The listing as it was: sorted Paths, a stat of each file (the plane files' check)."""
    n = 0
    for path in sorted(folder.iterdir()):
        if not path.name.startswith("."):
            path.stat()
            n += 1
    return n


def new_listing(folder: Path) -> int:
    """The listing as scan_position does it now (layout.listing), each entry typed and made a
    Path as there."""
    entries, child = listing(folder)
    n = 0
    for entry in entries:
        if not entry.name.startswith("."):
            entry.is_file()
            child(entry.name)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=20)
    ap.add_argument("--t", type=int, default=240)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_rerun_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src, out = work / "exp", work / "out"
        if not src.is_dir():
            make_demo(src, positions=args.positions, t=args.t, z=5, size=16)
        if not (out / manifest.MANIFEST_NAME).is_file():
            t0 = time.perf_counter()
            cli_main([str(src), "-o", str(out), "--quiet"])
            print(f"converted once: {time.perf_counter() - t0:.1f} s")
        rerun(src, out)  # untimed: first use (imports, entry points, caches)
        runs = [rerun(src, out) for _ in range(args.repeat)]
        f: dict[str, float] = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}

        data = json.loads((out / manifest.MANIFEST_NAME).read_text(encoding="utf-8"))
        n_sources = sum(len(p.get("sources", ())) for p in data["positions"].values())
        schema = json.loads(manifest.schema_path().read_text(encoding="utf-8"))
        f["check: jsonschema, whole"] = median_s(lambda: jsonschema.validate(data, schema),
                                                 args.repeat)
        f["check: now"] = median_s(lambda: manifest.validate_manifest(data), args.repeat)
        f["text: json indent=2"] = median_s(
            lambda: json.dumps(data, indent=2, ensure_ascii=False), args.repeat)
        f["text: now"] = median_s(lambda: manifest.manifest_json(data), args.repeat)
        xmls = []
        for tiff in sorted(out.glob("*.ome.tiff")):
            with tifffile.TiffFile(tiff) as tf:
                xmls.append(tf.pages[0].description)
        f["summary: whole OME-XML"] = median_s(lambda: [ET.fromstring(x) for x in xmls],
                                               args.repeat)
        f["summary: now"] = median_s(lambda: [report.summary_tree(x) for x in xmls], args.repeat)
        folders = sorted(p for p in src.iterdir() if p.is_dir())
        f["listing: Paths sorted, stat"] = median_s(
            lambda: [old_listing(p) for p in folders], args.repeat)
        f["listing: now"] = median_s(lambda: [new_listing(p) for p in folders], args.repeat)

        planes = args.positions * args.t * 15
        print(f"\nan up-to-date re-run of {args.positions} positions × {args.t} t × 3 channels × "
              f"5 z ({planes} plane files, {n_sources} manifest entries), median of "
              f"{args.repeat}:")
        print(f"1. whole re-run {f['whole re-run']:.2f} s, of which:")
        for k, v in f.items():
            if k != "whole re-run" and ":" not in k:
                print(f"   {k:40s} {v:6.2f} s")
        print("2. before -> now, on the same data:")
        for what, old, new in (("checking the manifest", "check: jsonschema, whole", "check: now"),
                               ("the manifest's text", "text: json indent=2", "text: now"),
                               (f"the summary of {len(xmls)} OME-XMLs", "summary: whole OME-XML",
                                "summary: now"),
                               ("listing the position folders", "listing: Paths sorted, stat",
                                "listing: now")):
            print(f"   {what:40s} {f[old]:6.3f} -> {f[new]:6.3f} s ({f[old] / f[new]:5.1f}×)")
        if args.json:
            args.json.write_text(json.dumps(f, indent=2))
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end conversion through the Python API: pixels, manifest, re-runs, bad input, parallelism."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from ome_types import from_xml

from posdir2ometiff import __version__
from posdir2ometiff import convert as convert_mod
from posdir2ometiff.convert import convert
from posdir2ometiff.demo import make_demo
from posdir2ometiff.manifest import sha1_file, validate_manifest
from posdir2ometiff.metadata.tables import read_tables

FAST = dict(workers=1, progress="off")


def read_source(path: Path) -> np.ndarray:
    return imagecodecs.imread(path) if path.suffix == ".png" else tifffile.imread(path)


def ome_planes(path: Path) -> tuple[np.ndarray, object]:
    """(T, C, Z, Y, X) pixels and the OME model of an output file."""
    with tifffile.TiffFile(path) as tf:
        ome = from_xml(tf.pages[0].description)
        px = ome.images[0].pixels
        data = np.stack([p.asarray() for p in tf.pages])
    return data.reshape(px.size_t, px.size_c, px.size_z, px.size_y, px.size_x), ome


def assert_matches_sources(out: Path, src: Path, name: str) -> dict:
    """Every plane equals its source file, at the (t, c, z) the manifest records."""
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["positions"][name]
    data, ome = ome_planes(out / entry["output"])
    grey = len(entry["channels"]) == len({s["c"] for s in entry["sources"]})
    if grey:  # one source file per output plane
        assert len(entry["sources"]) + len(entry["missing_planes"]) == np.prod(data.shape[:3])
    for s in entry["sources"]:
        pixels = read_source(src / s["path"])
        if pixels.ndim == 3:  # RGB: component k is output channel c + k
            for k in range(pixels.shape[2]):
                np.testing.assert_array_equal(data[s["t"], s["c"] + k, s["z"]], pixels[..., k])
        else:
            np.testing.assert_array_equal(data[s["t"], s["c"], s["z"]], pixels)
    return entry


@pytest.fixture
def demo(tmp_path: Path):
    return make_demo(tmp_path / "exp", positions=2, z=2, t=2, size=96, seed=1)


def test_demo_converts_bit_exact_with_valid_manifest_and_tables(demo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = convert(demo.folder, out, **FAST)
    assert result.ok and [p.status for p in result.positions] == ["ok", "ok"]
    manifest = json.loads((out / "manifest.json").read_text())
    validate_manifest(manifest)
    assert manifest["tool"] == "posdir2ometiff" and manifest["options"]["compression"] == "zstd"
    assert manifest["metadata"]["parsers"] and manifest["metadata"]["omero_project"] == "Demo project"
    for name in demo.positions:
        entry = assert_matches_sources(out, demo.folder, name)
        assert entry["status"] == "ok" and entry["dtype"] == "uint16"
        assert entry["dimensions"] == {"X": 96, "Y": 96, "Z": 2, "C": 3, "T": 2}
        assert entry["channels"] == ["Brightfield", "DIC", "GFP"]
        assert entry["sha1"] == sha1_file(out / entry["output"])
        assert entry["size"] == (out / entry["output"]).stat().st_size
        assert entry["pyramid_levels"] == 1 and entry["missing_planes"] == []
        assert len(entry["sources"]) == 2 * 3 * 2
        for src in entry["sources"]:
            assert src["sha1"] == sha1_file(demo.folder / src["path"])
            assert src["size"] == (demo.folder / src["path"]).stat().st_size
            assert not src["path"].startswith("/")
        assert entry["unmatched_files"] == []
    assert manifest["version"] == __version__
    tables = manifest["tables"]
    assert tables["path"] == "experiment.h5" and tables["sha1"] == sha1_file(out / "experiment.h5")
    assert set(tables["names"]) <= set(read_tables(out / "experiment.h5"))
    assert not list(out.glob("*.partial")) and not list(out.glob(".*.partial"))
    assert not list(out.glob(".previews/.*"))  # the report's previews: no temporary left


def test_rerun_skips_up_to_date_and_redoes_changed(demo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert(demo.folder, out, **FAST)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.ome.tiff")}
    again = convert(demo.folder, out, **FAST)
    assert [p.status for p in again.positions] == ["skipped", "skipped"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.ome.tiff")} == before

    # same size and mtime, different content would fool a size+mtime check: rewrite pixels
    src = next((demo.folder / "pos001").glob("*_GFP_001.png"))
    arr = imagecodecs.imread(src)
    arr[0, 0] ^= 1
    src.write_bytes(imagecodecs.png_encode(arr, level=3))
    changed = convert(demo.folder, out, **FAST)
    assert [p.status for p in changed.positions] == ["ok", "skipped"]
    assert_matches_sources(out, demo.folder, "pos001")

    # a touched-but-identical source is recognised by its checksum
    os.utime(src, ns=(1, 1))
    assert [p.status for p in convert(demo.folder, out, **FAST).positions] == ["skipped"] * 2
    # an output modified behind our back is redone; --overwrite redoes everything
    with open(out / "pos002.ome.tiff", "r+b") as fh:
        fh.seek(-1, 2)
        fh.write(b"\x07")
    assert [p.status for p in convert(demo.folder, out, **FAST).positions] == ["skipped", "ok"]
    forced = convert(demo.folder, out, overwrite=True, **FAST)
    assert [p.status for p in forced.positions] == ["ok", "ok"]
    # other options → reconvert
    assert [p.status for p in convert(demo.folder, out, compression="zlib", **FAST).positions] == ["ok", "ok"]


def test_missing_plane_is_zeros_warned_listed_and_annotated(
    demo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = demo.folder / "pos001" / "demo_000002_GFP_002.png"
    gone.unlink()
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        result = convert(demo.folder, out, **FAST)
    assert result.ok
    assert "1 missing plane(s) written as zeros" in caplog.text and "t=2 c=GFP z=2" in caplog.text
    entry = assert_matches_sources(out, demo.folder, "pos001")
    assert entry["missing_planes"] == [
        {"t": 1, "c": 2, "z": 1, "label": "t=2 c=GFP z=2", "path": None}
    ]
    data, ome = ome_planes(out / "pos001.ome.tiff")
    assert not data[1, 2, 1].any() and data[1, 2, 0].any()
    pairs = [(m.k, m.value) for m in ome.structured_annotations.map_annotations[0].value.ms]
    assert ("missing plane", "t=2 c=GFP z=2") in pairs


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:200])


def _resize(p: Path) -> None:
    p.write_bytes(imagecodecs.png_encode(np.zeros((50, 96), np.uint16)))


def _retype(p: Path) -> None:
    p.write_bytes(imagecodecs.png_encode(np.zeros((96, 96), np.uint8)))


def _duplicate(p: Path) -> None:
    tifffile.imwrite(p.with_name(p.stem.replace("_002", "_2") + ".tif"), read_source(p))


@pytest.mark.parametrize(
    ("damage", "message"),
    [(_truncate, "truncated or unreadable PNG"), (_resize, "expected uint16 96x96"),
     (_retype, "uint8"), (_duplicate, "two files for plane")],
)
def test_bad_plane_fails_its_position_only(demo, tmp_path: Path, damage, message: str) -> None:
    bad = demo.folder / "pos001" / "demo_000002_DIC_002.png"
    damage(bad)
    out = tmp_path / "out"
    result = convert(demo.folder, out, **FAST)
    assert not result.ok
    (failed,) = result.failed
    assert failed.name == "pos001" and message in failed.error
    assert bad.name in failed.error  # the error names the file
    assert "\n" not in failed.error
    assert not (out / "pos001.ome.tiff").exists()
    assert not list(out.glob("*.partial"))
    assert (out / "pos002.ome.tiff").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    validate_manifest(manifest)
    assert manifest["positions"]["pos001"]["status"] == "failed"
    assert manifest["positions"]["pos002"]["status"] == "ok"


def test_failure_after_success_removes_stale_output_and_fail_fast_stops(
    demo, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    convert(demo.folder, out, **FAST)
    _truncate(demo.folder / "pos001" / "demo_000001_GFP_001.png")
    _truncate(demo.folder / "pos002" / "demo_000001_GFP_001.png")
    result = convert(demo.folder, out, fail_fast=True, **FAST)
    assert [p.name for p in result.failed] == ["pos001"]
    assert "pos002" not in [p.name for p in result.positions]  # never started
    assert not (out / "pos001.ome.tiff").exists()  # no output that disagrees with its sources


def test_two_workers_give_the_same_pixels(
    demo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one = convert(demo.folder, tmp_path / "one", workers=1, progress="off")
    with caplog.at_level(logging.INFO, logger="posdir2ometiff.progress"):
        two = convert(demo.folder, tmp_path / "two", workers=2, progress="log")
    assert one.ok and two.ok
    # the workers' progress reaches the parent: all 2 × 3 × 2 × 2 planes counted
    assert "24/24 planes (100%)" in caplog.text
    for name in demo.positions:
        a, _ = ome_planes(tmp_path / "one" / f"{name}.ome.tiff")
        b, _ = ome_planes(tmp_path / "two" / f"{name}.ome.tiff")
        np.testing.assert_array_equal(a, b)


def test_progress_counts_every_plane_when_the_workers_counts_arrive_late(
    demo, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's counts travel by a queue whose feeder thread can lag behind the result (a
    loaded machine: CI once logged 13/24 at the end). Here each count reaches the queue 0.3 s
    late, from a thread the worker still joins before it exits, as it joins the real feeder."""
    import multiprocessing.util
    import threading
    import time

    from posdir2ometiff import executors

    real_init = executors._init_worker

    class Lagging:
        def __init__(self, q) -> None:
            self.q, self.threads = q, []
            # before the queue's own exit finalizers (close 10, join -5), as a feeder would be
            multiprocessing.util.Finalize(self, self.join, exitpriority=20)

        def put(self, n: int) -> None:
            def late() -> None:
                time.sleep(0.3)
                self.q.put(n)
            self.threads.append(threading.Thread(target=late))
            self.threads[-1].start()

        def join(self) -> None:
            for t in self.threads:
                t.join()

    def lagging_init(q, parent_pid=None) -> None:
        real_init(Lagging(q) if q is not None else None, parent_pid)

    monkeypatch.setattr(executors, "_init_worker", lagging_init)
    with caplog.at_level(logging.INFO, logger="posdir2ometiff.progress"):
        assert convert(demo.folder, tmp_path / "out", workers=2, progress="log").ok
    assert "24/24 planes (100%)" in caplog.text


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_other_dtypes_kept(tmp_path: Path, dtype: str) -> None:
    spec = make_demo(tmp_path / "exp", positions=1, channels=["GFP"], z=2, t=2, size=64,
                     dtype=dtype, metadata=False)
    convert(spec.folder, tmp_path / "out", **FAST)
    entry = assert_matches_sources(tmp_path / "out", spec.folder, "pos001")
    assert entry["dtype"] == dtype


def test_rgb_png_becomes_three_channels(tmp_path: Path) -> None:
    pos = tmp_path / "exp" / "pos001"
    pos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = {}
    for t in (1, 2):
        for z in (1, 2):
            rgb[t, z] = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
            (pos / f"x_{t}_photo_{z}.png").write_bytes(imagecodecs.png_encode(rgb[t, z]))
            grey = rng.integers(0, 255, (40, 56), dtype=np.uint8)
            (pos / f"x_{t}_GFP_{z}.png").write_bytes(imagecodecs.png_encode(grey))
    out = tmp_path / "out"
    assert convert(tmp_path / "exp", out, metadata="none", **FAST).ok
    data, ome = ome_planes(out / "pos001.ome.tiff")
    names = [c.name for c in ome.images[0].pixels.channels]
    assert names == ["GFP", "photo-R", "photo-G", "photo-B"]
    for (t, z), arr in rgb.items():
        for s in range(3):
            np.testing.assert_array_equal(data[t - 1, 1 + s, z - 1], arr[..., s])
    assert_matches_sources(out, tmp_path / "exp", "pos001")


def test_no_metadata_files_convert_with_warning_and_cli_overrides(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = make_demo(tmp_path / "exp", positions=1, z=2, t=2, size=32, metadata=False)
    with caplog.at_level(logging.WARNING):
        result = convert(spec.folder, tmp_path / "out", pixel_size_um=0.25, z_step_um=0.5,
                         time_interval_s=120, **FAST)
    assert result.ok and "no metadata file" in caplog.text
    _, ome = ome_planes(tmp_path / "out" / "pos001.ome.tiff")
    px = ome.images[0].pixels
    assert px.physical_size_x == 0.25 and px.physical_size_z == 0.5 and px.time_increment == 120
    assert [p.delta_t for p in px.planes if p.the_c == 0 and p.the_z == 0] == [0, 120]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tables"] is None and manifest["metadata"]["parsers"] == []


def test_fail_fast_in_the_pool_starts_no_further_position(tmp_path: Path) -> None:
    spec = make_demo(tmp_path / "exp", positions=4, channels=["GFP"], z=2, t=4, size=128)
    _truncate(spec.folder / "pos001" / "demo_000001_GFP_001.png")  # fails at once (probe)
    result = convert(spec.folder, tmp_path / "out", workers=2, fail_fast=True, progress="off")
    names = [p.name for p in result.positions]
    assert [p.name for p in result.failed] == ["pos001"]
    assert "pos004" not in names and len(names) <= 3
    assert not (tmp_path / "out" / "pos001.ome.tiff").exists()


def test_unknown_option_and_out_inside_src(demo, tmp_path: Path) -> None:
    from posdir2ometiff.convert import ConversionError

    with pytest.raises(ConversionError, match="known options"):
        convert(demo.folder, tmp_path / "out", tiles=256)
    out = demo.folder / "pos_converted"  # matches pos* but is our own output folder
    assert [p.name for p in convert(demo.folder, out, **FAST).positions] == ["pos001", "pos002"]
    again = convert(demo.folder, out, **FAST)
    assert [p.status for p in again.positions] == ["skipped", "skipped"]


def test_channel_absent_from_one_position_is_kept_as_missing_planes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = make_demo(tmp_path / "exp", positions=2, channels=["DIC", "GFP", "mCherry"], z=2, t=2,
                     size=32, seed=4)
    for f in (spec.folder / "pos002").glob("*_GFP_*.png"):
        f.unlink()
    out = tmp_path / "out"
    # First only pos002: on its own it has two channels.
    first = convert(spec.folder, out, positions="pos002", **FAST)
    assert first.ok
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["positions"]["pos002"]["channels"] == ["DIC", "mCherry"]
    with caplog.at_level(logging.WARNING):
        result = convert(spec.folder, out, **FAST)
    # pos002 is redone (same files, but now a hypercube with GFP), not skipped as up to date.
    assert [(p.name, p.status) for p in result.positions] == [("pos001", "ok"), ("pos002", "ok")]
    assert "pos002: no file for channel(s) GFP" in caplog.text
    assert "pos002: 4 missing plane(s) written as zeros" in caplog.text
    manifest = json.loads((out / "manifest.json").read_text())
    validate_manifest(manifest)
    entry = manifest["positions"]["pos002"]
    assert entry["channels"] == manifest["positions"]["pos001"]["channels"] == [
        "DIC", "GFP", "mCherry"]
    assert entry["dimensions"]["C"] == 3
    assert [(m["t"], m["c"], m["z"]) for m in entry["missing_planes"]] == [
        (0, 1, 0), (0, 1, 1), (1, 1, 0), (1, 1, 1)]
    assert_matches_sources(out, spec.folder, "pos002")  # DIC and mCherry where they belong
    data, ome = ome_planes(out / "pos002.ome.tiff")
    assert not data[:, 1].any() and data[:, 0].any() and data[:, 2].any()
    assert [c.name for c in ome.images[0].pixels.channels] == ["DIC", "GFP", "mCherry"]
    pairs = [(m.k, m.value) for m in ome.structured_annotations.map_annotations[0].value.ms]
    assert ("missing plane", "t=1 c=GFP z=1") in pairs
    again = convert(spec.folder, out, **FAST)
    assert [p.status for p in again.positions] == ["skipped", "skipped"]


def test_workers_default_to_the_number_of_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_demo(tmp_path / "exp", positions=4, channels=["GFP"], z=1, t=1, size=32,
                     metadata=False)
    seen: list[int] = []
    real = convert_mod._run_jobs

    def recording(jobs, workers, *args):
        seen.append(workers)
        return real(jobs, 1, *args)  # run inline: only the choice is under test

    monkeypatch.setattr(convert_mod, "_run_jobs", recording)
    monkeypatch.setattr(convert_mod, "usable_cores", lambda: 3)
    assert convert(spec.folder, tmp_path / "a", progress="off").ok
    assert convert(spec.folder, tmp_path / "b", workers=2, progress="off").ok
    monkeypatch.setattr(convert_mod, "usable_cores", lambda: 16)  # never more than positions
    assert convert(spec.folder, tmp_path / "c", progress="off").ok
    assert seen == [3, 2, 4]


def test_unmatched_files_are_listed_in_the_manifest(
    demo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    strays = [f"stray_{i:02d}.txt" for i in range(12)]
    for name in strays:
        (demo.folder / "pos001" / name).write_text("x")
    with caplog.at_level(logging.WARNING):
        assert convert(demo.folder, tmp_path / "out", **FAST).ok
    assert "12 file(s) do not match" in caplog.text and "stray_00.txt" in caplog.text
    assert "all listed in the manifest" in caplog.text
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    validate_manifest(manifest)
    assert manifest["positions"]["pos001"]["unmatched_files"] == [f"pos001/{n}" for n in strays]
    assert manifest["positions"]["pos002"]["unmatched_files"] == []


@pytest.mark.parametrize("root, path", [
    ("/data/exp", "/data/exp/pos001/a_1_GFP_1.png"),
    ("/data/exp/", "/data/exp/pos001/a.png"),
    ("/", "/data/exp/a.png"),
    ("/data/exp", "/data/exp2/pos001/a.png"),  # a sibling sharing the prefix: not inside
    ("/data/exp", "/data/exp"),
    ("/data/exp", "/other/a.png"),
    ("rel/exp", "rel/exp/pos001/a.png"),
])
def test_relative_source_paths_as_path_relative_to(root: str, path: str) -> None:
    from posdir2ometiff.position import relative

    try:
        expected = Path(path).relative_to(Path(root)).as_posix()
    except ValueError:
        expected = Path(path).as_posix()
    assert relative(Path(path), Path(root)) == expected


def test_the_metadata_fingerprint_is_the_models_json_without_its_slow_walk() -> None:
    """Manifests written before keep matching: the fingerprint hashes the same text as
    ``json.dumps(asdict(meta))``, also for plane times holding None, floats, text, a numpy
    number (which takes asdict's path), and a datetime; only faster (asdict deep-copied every
    value of every capture: 0.35 s of every run's start for 14,400 of them)."""
    import dataclasses
    import hashlib
    from datetime import datetime, timedelta

    from posdir2ometiff.metadata.model import Channel, ExperimentMetadata, PlaneTime
    from posdir2ometiff.rerun import metadata_fingerprint

    start = datetime(2024, 5, 1, 12, 0, 0)
    times = [PlaneTime(position=f"pos{p:03d}", t=t, channel=ch, time=start + timedelta(seconds=t),
                       z=z if z else None, drive_z_um=np.float64(1.5) if t == 1 else 2.25,
                       not_captured="skipped" if z == 2 else None)
             for p in range(2) for t in range(3) for ch in ("DIC", "GFP") for z in range(3)]
    meta = ExperimentMetadata(channels=[Channel(name="DIC"), Channel(name="GFP")],
                              plane_times=times, pixel_size_um=0.1)

    def reference(m: ExperimentMetadata) -> str:
        data = dataclasses.asdict(dataclasses.replace(m, tables={}))
        return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    assert metadata_fingerprint(meta) == reference(meta)
    moved = dataclasses.replace(meta, plane_times=[dataclasses.replace(times[0], z=7), *times[1:]])
    assert metadata_fingerprint(moved) == reference(moved) != metadata_fingerprint(meta)

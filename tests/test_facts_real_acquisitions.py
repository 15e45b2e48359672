"""Issue 10 acceptance: real acquisitions' patterns, generated in the lab's formats by the demo
generator, converted end to end: time and place as the microscope recorded them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from ome_types import from_xml

from posdir2ometiff.convert import convert
from posdir2ometiff.demo import FAILED_REASON, make_demo
from posdir2ometiff.metadata.plugins import load_metadata

SMALL = {"positions": 2, "channels": ["Brightfield", "GFP"], "z": 3, "t": 3, "size": 32}


def _ome(path: Path):
    with tifffile.TiffFile(path) as tif:
        return from_xml(tif.ome_metadata)


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _kv(ome) -> list[tuple[str, str]]:
    return [(m.k, m.value) for m in ome.structured_annotations.map_annotations[0].value.ms]


def test_position_that_missed_the_first_timepoint_keeps_its_times(tmp_path: Path) -> None:
    """Point 1: t numbered from the experiment; the missed timepoint is missing planes."""
    src, out = tmp_path / "src", tmp_path / "out"
    spec = make_demo(src, **SMALL, missed_first=["pos002"])
    assert convert(src, out, workers=1, progress="off").ok
    ome = _ome(out / "pos002.ome.tiff")
    px = ome.images[0].pixels
    assert (px.size_t, px.size_z) == (3, 3)  # the experiment's, not the folder's 2
    entry = _manifest(out)["positions"]["pos002"]
    assert sorted({m["t"] for m in entry["missing_planes"]}) == [0]
    assert len(entry["missing_planes"]) == 2 * 3 and entry["not_captured_planes"] == []
    with tifffile.TiffFile(out / "pos002.ome.tiff") as tif:
        data = tif.series[0].asarray()  # (T, C, Z, Y, X)
    assert not data[0].any()
    png = imagecodecs.imread(src / "pos002" / "demo_000002_GFP_002.png")
    np.testing.assert_array_equal(data[1, 1, 1], png)  # file timepoint 2 is TheT 1
    # DeltaT of TheT 1 is the log's time of timepoint 2 at pos002 (not of timepoint 1).
    planes = {(p.the_t, p.the_c, p.the_z): p for p in px.planes}
    assert planes[(1, 1, 0)].delta_t == pytest.approx(spec.interval_s + 3)


def test_failed_captures_listed_as_not_captured(tmp_path: Path) -> None:
    """Point 2: the log's NO IMAGE CAPTURED planes apart from other missing planes."""
    src, out = tmp_path / "src", tmp_path / "out"
    make_demo(src, **SMALL, failed=[("pos001", 1, "GFP")], missed_first=["pos002"])
    assert convert(src, out, workers=1, progress="off").ok
    entry = _manifest(out)["positions"]["pos001"]
    assert entry["missing_planes"] == []
    items = entry["not_captured_planes"]
    assert [(m["t"], m["c"], m["z"]) for m in items] == [(1, 1, 0), (1, 1, 1), (1, 1, 2)]
    assert {m["reason"] for m in items} == {FAILED_REASON}
    assert items[0]["label"] == "t=2 c=GFP z=1" and items[0]["path"] is None
    pairs = _kv(_ome(out / "pos001.ome.tiff"))
    assert ("not captured plane", f"t=2 c=GFP z=1: {FAILED_REASON}") in pairs
    assert not any(k == "missing plane" for k, _ in pairs)
    assert _manifest(out)["positions"]["pos002"]["not_captured_planes"] == []
    # A re-run finds both positions up to date (not-captured planes count as listed).
    again = convert(src, out, workers=1, progress="off")
    assert [p.status for p in again.positions] == ["skipped", "skipped"]


def test_absent_positions_warned_and_listed(tmp_path: Path, caplog) -> None:
    """Point 2: points-table positions with no folder."""
    src, out = tmp_path / "src", tmp_path / "out"
    make_demo(src, **SMALL, absent=2)
    with caplog.at_level(logging.WARNING):
        assert convert(src, out, workers=1, progress="off").ok
    assert _manifest(out)["absent_positions"] == ["pos003", "pos004"]
    assert "2 position(s) of the metadata's points table have no folder" in caplog.text
    # A run restricted to pos001 does not call the others absent... except those it selects.
    assert convert(src, tmp_path / "o2", workers=1, progress="off", positions="pos00[14]").ok
    assert _manifest(tmp_path / "o2")["absent_positions"] == ["pos004"]


def test_2020_header_reads_cleanly(tmp_path: Path, caplog) -> None:
    """Points 3 and 4 on a generated 2020 log: no warnings, provenance pairs, filter wavelengths."""
    make_demo(tmp_path, **{**SMALL, "channels": ["Brightfield", "GFP", "mCherry"]}, header="2020")
    with caplog.at_level(logging.WARNING, logger="posdir2ometiff.metadata"):
        meta = load_metadata(tmp_path)
    assert caplog.records == []
    kv = dict(meta.key_values)
    assert kv["Acquisition settings file"].startswith("C:\\Users\\Public\\Demo")
    assert kv["Acquisition software commit"].startswith("05903fb")
    assert "uncommitted" in kv["Acquisition software uncommitted changes"]
    assert meta.aim is None and meta.strains == [] and meta.comments is None
    gfp, mcherry = meta.channel("GFP"), meta.channel("mCherry")
    assert (gfp.excitation_wavelength_nm, gfp.emission_wavelength_nm) == (470, 525)
    assert (mcherry.excitation_wavelength_nm, mcherry.emission_wavelength_nm) == (None, 632)


def test_position_z_from_the_drive_logged_before_each_stack(tmp_path: Path) -> None:
    """Point 5: the demo's drive drifts 0.25 µm per timepoint; the stack is centred on it."""
    src, out = tmp_path / "src", tmp_path / "out"
    spec = make_demo(src, **SMALL)
    assert convert(src, out, workers=1, progress="off").ok
    planes = {(p.the_t, p.the_c, p.the_z): p
              for p in _ome(out / "pos001.ome.tiff").images[0].pixels.planes}
    drive = spec.drive_z(3430.0, 2)  # pos001's points-table Z is 3430
    assert [planes[(2, 0, z)].position_z for z in range(3)] == pytest.approx(
        [drive - 0.6, drive, drive + 0.6]
    )


def test_newer_single_file_log(tmp_path: Path) -> None:
    """Point 7 (and 6): the single .log reaches the same model; camera settings in the OME."""
    src, out = tmp_path / "src", tmp_path / "out"
    spec = make_demo(src, **SMALL, fmt="log", absent=1)
    assert sorted(p.name for p in src.iterdir() if p.is_file()) == ["demo.log"]
    meta = load_metadata(src)
    assert meta.sources == ["swainlab-log"]
    assert [c.name for c in meta.channels] == spec.channels
    assert [p.name for p in meta.positions] == ["pos001", "pos002", "pos003"]
    assert meta.positions[1].x_um == pytest.approx(10350.5)
    assert (meta.z.count, meta.z.spacing_um, meta.z.first_slice_steps) == (3, 0.6, -1.0)
    assert (meta.time.interval_s, meta.time.timepoints) == (300, 3)
    assert meta.channel("GFP").voltage == pytest.approx(1.4)
    assert meta.acquisition_start == spec.start
    assert convert(src, out, workers=1, progress="off").ok
    assert _manifest(out)["absent_positions"] == ["pos003"]
    ome = _ome(out / "pos001.ome.tiff")
    bf, gfp = ome.images[0].pixels.channels
    assert gfp.detector_settings.binning.value == "2x2" and gfp.detector_settings.gain == 270
    assert ome.instruments[0].detectors[0].id == gfp.detector_settings.id


def test_camera_settings_of_the_sample(swainlab_sample: Path, tmp_path: Path) -> None:
    """Point 6 on the shared sample: GFP in EM mode (3) with gain 270, Brightfield on CCD (2)."""
    assert convert(swainlab_sample, tmp_path, workers=1, progress="off").ok
    ome = _ome(tmp_path / "pos001.ome.tiff")
    chans = {c.name: c.detector_settings for c in ome.images[0].pixels.channels}
    det = {d.id: d for d in ome.instruments[0].detectors}
    assert det[chans["GFP"].id].type.value == "EMCCD" and chans["GFP"].gain == 270
    assert det[chans["Brightfield"].id].type.value == "CCD" and chans["Brightfield"].gain is None
    assert ("GFP EM gain", "270") in _kv(ome)


def test_unknown_pixel_size_and_interval_warned_once(tmp_path: Path, caplog) -> None:
    """Point 8: one warning each, naming how to give the value; none once given."""
    src = tmp_path / "src"
    make_demo(src, **SMALL, metadata=False)
    with caplog.at_level(logging.WARNING):
        assert convert(src, tmp_path / "a", workers=1, progress="off").ok
    pixel = [r for r in caplog.records if "no pixel size" in r.getMessage()]
    interval = [r for r in caplog.records if "no time interval" in r.getMessage()]
    assert len(pixel) == 1 and "--pixel-size" in pixel[0].getMessage()
    assert len(interval) == 1 and "--time-interval" in interval[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert convert(src, tmp_path / "b", workers=1, progress="off", pixel_size_um=0.1,
                       time_interval_s=60).ok
    assert not [r for r in caplog.records if "no pixel size" in r.getMessage()
                or "no time interval" in r.getMessage()]

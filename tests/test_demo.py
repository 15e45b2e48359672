"""The demo generator writes the lab's layout and file formats, and the lab's parser reads it."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from posdir2ometiff.demo import make_demo
from posdir2ometiff.layout import discover
from posdir2ometiff.metadata.plugins import load_metadata


def test_layout_and_pixels(tmp_path: Path) -> None:
    spec = make_demo(tmp_path, positions=3, channels=["DIC", "GFP"], z=2, t=3, size=64, seed=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "demo_Acq.txt", "demo_log.txt", "pos001", "pos002", "pos003"]
    names = sorted(p.name for p in (tmp_path / "pos002").iterdir())
    assert len(names) == 3 * 2 * 2
    assert names[0] == "demo_000001_DIC_001.png" and names[-1] == "demo_000003_GFP_002.png"
    a = imagecodecs.imread(tmp_path / "pos001" / "demo_000001_GFP_001.png")
    b = imagecodecs.imread(tmp_path / "pos001" / "demo_000002_GFP_001.png")
    assert a.dtype == np.uint16 and a.shape == (64, 64)
    assert a.std() > 10 and not np.array_equal(a, b)  # structure, and it changes over time
    layouts = discover(tmp_path, channel_order=spec.channels)
    assert [lay.plane_count for lay in layouts] == [12, 12, 12]


def test_same_seed_same_data(tmp_path: Path) -> None:
    make_demo(tmp_path / "a", positions=1, z=1, t=1, size=32, seed=9)
    make_demo(tmp_path / "b", positions=1, z=1, t=1, size=32, seed=9)
    for f in (tmp_path / "a" / "pos001").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / "pos001" / f.name).read_bytes()


def test_text_files_follow_the_lab_format(tmp_path: Path, swainlab_sample: Path) -> None:
    make_demo(tmp_path, positions=2, z=3, t=2, size=32)
    acq = (tmp_path / "demo_Acq.txt").read_bytes()
    log = (tmp_path / "demo_log.txt").read_bytes()
    assert b"\r\n" in acq and b"\r\n" in log  # CRLF, as the acquisition PC writes
    real_acq = (swainlab_sample / "microscope1_Acq.txt").read_text(errors="replace")
    for section in ("Channels:", "Z_sectioning:", "Time_settings:", "Points:", "Flow_control:"):
        assert section in acq.decode() and section in real_acq
    real_header = (swainlab_sample / "microscope1_Acq.txt").read_text().splitlines()[1]
    assert acq.decode().splitlines()[1] == real_header  # same channel-table columns
    text = log.decode()
    for marker in ("Experiment details:", "Omero project:", "Omero tags:", "Experiment started at:",
                   "------Time point_2------", "Position:2,pos002", "Channel:GFP set at:"):
        assert marker in text


def test_lab_parser_reads_the_demo(tmp_path: Path) -> None:
    spec = make_demo(tmp_path, positions=2, z=3, t=2, size=32, z_spacing_um=0.5, interval_s=120)
    meta = load_metadata(tmp_path)
    assert meta is not None and meta.sources
    assert [c.name for c in meta.channels] == spec.channels
    assert [p.name for p in meta.positions] == spec.positions
    assert meta.z.spacing_um == pytest.approx(0.5) and meta.z.count == 3
    assert meta.time.interval_s == 120
    assert meta.positions[1].x_um == pytest.approx(10350.5)
    assert meta.acquisition_start == spec.start
    assert meta.plane_times  # per-channel times from the log body


def test_float32_demo_is_tiff(tmp_path: Path) -> None:
    make_demo(tmp_path, positions=1, channels=["GFP"], z=1, t=1, size=32, dtype="float32",
              metadata=False)
    (f,) = (tmp_path / "pos001").iterdir()
    assert f.suffix == ".tif" and tifffile.imread(f).dtype == np.float32
    assert not list(tmp_path.glob("*.txt"))
    with pytest.raises(ValueError, match="dtype"):
        make_demo(tmp_path / "x", dtype="int64")


def test_cli_writes_the_real_acquisition_cases(tmp_path: Path, capsys) -> None:
    from posdir2ometiff.cli import main

    assert main(["demo", str(tmp_path / "a"), "--num-positions", "2", "-z", "1", "-t", "2",
                 "--size", "16", "--missed-first", "pos002", "--failed", "pos001:2:GFP",
                 "--absent", "1", "--header", "2020", "-q"]) == 0
    log = (tmp_path / "a" / "demo_log.txt").read_text()
    assert "NO IMAGE CAPTURED" in log and "Aim:   Strain:   Comments:" in log
    assert not (tmp_path / "a" / "pos002" / "demo_000001_GFP_001.png").exists()
    assert not (tmp_path / "a" / "pos001" / "demo_000002_GFP_001.png").exists()
    assert "pos003" in (tmp_path / "a" / "demo_Acq.txt").read_text()
    assert main(["demo", str(tmp_path / "b"), "--format", "log", "--size", "16", "-q"]) == 0
    assert (tmp_path / "b" / "demo.log").exists()
    with pytest.raises(SystemExit):
        main(["demo", str(tmp_path / "c"), "--failed", "pos001:0:GFP"])
    assert "POS:T:CHANNEL" in capsys.readouterr().err

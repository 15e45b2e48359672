"""Layout discovery: positions by glob, planes by pattern, index order, and the errors users hit."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from posdir2ometiff.layout import (
    DuplicatePlaneError,
    LayoutError,
    PlaneKey,
    discover,
    find_position_folders,
    scan_position,
)


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"x")


def test_positions_glob_is_case_insensitive_and_sorted(tmp_path: Path) -> None:
    for name in ("pos002", "Pos001", "POS010", "other", "posfile.txt"):
        if name.endswith(".txt"):
            (tmp_path / name).write_text("")
        else:
            (tmp_path / name).mkdir()
    assert [p.name for p in find_position_folders(tmp_path)] == ["POS010", "Pos001", "pos002"]
    assert [p.name for p in find_position_folders(tmp_path, "pos00[12]")] == ["Pos001", "pos002"]


def test_numeric_sort_zero_based_indices_and_xyzct_order(tmp_path: Path) -> None:
    pos = tmp_path / "pos001"
    # t 2 and 10 must sort numerically (10 after 2), not as text.
    touch(pos, "exp_10_GFP_1.png", "exp_2_GFP_1.png", "exp_2_GFP_3.PNG", "exp_10_GFP_3.tif",
          "exp_2_DIC_1.tiff", "exp_10_DIC_1.png", "exp_2_DIC_3.png", "exp_10_DIC_3.png")
    layout = scan_position(pos)
    assert layout.t_values == [2, 10]
    assert layout.z_values == [1, 3]
    assert layout.channels == ["DIC", "GFP"]  # no metadata: sorted
    assert layout.files[PlaneKey(1, 1, 1)].name == "exp_10_GFP_3.tif"
    assert layout.files[PlaneKey(0, 0, 0)].name == "exp_2_DIC_1.tiff"
    keys = list(layout.plane_keys())
    assert keys[:3] == [PlaneKey(0, 0, 0), PlaneKey(0, 0, 1), PlaneKey(0, 1, 0)]  # z fastest
    assert layout.missing() == []
    assert layout.describe(PlaneKey(1, 1, 0)) == "t=10 c=GFP z=1"


def test_channel_order_follows_metadata_table_extra_appended_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pos = tmp_path / "pos001"
    touch(pos, "a_1_GFP_1.png", "a_1_brightfield_1.png", "a_1_Cy5_1.png", "a_1_DIC_1.png")
    with caplog.at_level(logging.WARNING):
        layout = scan_position(pos, channel_order=["Brightfield", "DIC", "GFP", "mCherry"])
    assert layout.channels == ["brightfield", "DIC", "GFP", "Cy5"]
    assert "Cy5" in caplog.text and "not in the metadata" in caplog.text


def test_unmatched_files_are_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pos = tmp_path / "pos001"
    touch(pos, "a_1_GFP_1.png", "notes.txt", "a_1_GFP.png", "thumb.jpg")
    with caplog.at_level(logging.WARNING):
        layout = scan_position(pos)
    assert len(layout.files) == 1
    assert sorted(p.name for p in layout.unmatched) == ["a_1_GFP.png", "notes.txt", "thumb.jpg"]
    for name in ("notes.txt", "a_1_GFP.png", "thumb.jpg"):
        assert name in caplog.text


def test_missing_planes_are_listed(tmp_path: Path) -> None:
    pos = tmp_path / "pos001"
    touch(pos, "a_1_GFP_1.png", "a_1_GFP_2.png", "a_2_GFP_1.png")
    layout = scan_position(pos)
    assert layout.missing() == [PlaneKey(1, 0, 1)]
    assert layout.describe(PlaneKey(1, 0, 1)) == "t=2 c=GFP z=2"


def test_duplicate_plane_names_both_files(tmp_path: Path) -> None:
    pos = tmp_path / "pos001"
    touch(pos, "a_1_GFP_1.png", "a_01_GFP_001.tif")
    with pytest.raises(DuplicatePlaneError) as err:
        scan_position(pos)
    assert "a_1_GFP_1.png" in str(err.value) and "a_01_GFP_001.tif" in str(err.value)
    # discover() keeps going: the broken position carries its error, the others convert.
    touch(tmp_path / "pos002", "a_1_GFP_1.png")
    layouts = discover(tmp_path)
    assert [lay.name for lay in layouts] == ["pos001", "pos002"]
    assert layouts[0].error and "two files" in layouts[0].error
    assert layouts[1].error is None


def test_custom_pattern_and_its_errors(tmp_path: Path) -> None:
    pos = tmp_path / "site1"
    touch(pos, "img-t0003-z02-ch_GFP.tif", "img-t0001-z01-ch_GFP.tif")
    layouts = discover(tmp_path, positions="site*",
                       pattern=r"img-t(?P<t>\d+)-z(?P<z>\d+)-ch_(?P<c>\w+)\.tif")
    # Numbered from the experiment: timepoint 2 has no file, so it is a missing timepoint.
    assert layouts[0].t_values == [1, 2, 3] and layouts[0].z_values == [1, 2]
    with pytest.raises(LayoutError, match="lacks the named group"):
        discover(tmp_path, positions="site*", pattern=r"img-t(?P<t>\d+)")
    with pytest.raises(LayoutError, match="not a regular expression"):
        discover(tmp_path, pattern="(")
    with pytest.raises(LayoutError, match="no position folder matches"):
        discover(tmp_path, positions="pos*")


def test_shared_sample_layout(swainlab_sample: Path) -> None:
    (layout,) = discover(swainlab_sample, channel_order=["Brightfield", "DIC", "GFP"])
    assert layout.name == "pos001"
    assert (layout.size_t, layout.size_c, layout.size_z) == (3, 3, 5)
    assert layout.channels == ["Brightfield", "DIC", "GFP"]
    assert layout.missing() == []


def test_every_position_gets_the_same_channels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A channel with no file in one position is kept there (all planes missing), so channel
    indices mean the same in every position; a table channel found nowhere stays out."""
    touch(tmp_path / "pos001", "a_1_DIC_1.png", "a_1_GFP_1.png", "a_1_mCherry_1.png")
    touch(tmp_path / "pos002", "a_1_DIC_1.png", "a_1_mcherry_1.png")  # no GFP; other spelling
    touch(tmp_path / "pos003", "a_1_GFP_1.png", "a_1_DIC_1.png", "a_1_mCherry_1.png")
    with caplog.at_level(logging.WARNING):
        layouts = discover(tmp_path, channel_order=["DIC", "GFP", "mCherry", "Cy5"])
    assert [lay.channels for lay in layouts] == [["DIC", "GFP", "mCherry"]] * 3
    pos2 = layouts[1]
    assert pos2.files[PlaneKey(0, 2, 0)].name == "a_1_mcherry_1.png"
    assert pos2.files[PlaneKey(0, 0, 0)].name == "a_1_DIC_1.png"
    assert pos2.missing() == [PlaneKey(0, 1, 0)]
    assert pos2.describe(PlaneKey(0, 1, 0)) == "t=1 c=GFP z=1"
    assert "pos002: no file for channel(s) GFP" in caplog.text
    assert "pos001: no file" not in caplog.text and "Cy5" not in caplog.text
    # without metadata: the union, sorted
    (tmp_path / "pos003" / "a_1_GFP_1.png").unlink()
    touch(tmp_path / "pos003", "a_1_BF_1.png")
    layouts = discover(tmp_path)
    assert [lay.channels for lay in layouts] == [["BF", "DIC", "GFP", "mCherry"]] * 3
    assert layouts[0].missing() == [PlaneKey(0, 0, 0)]


def test_t_and_z_numbered_from_the_experiment(tmp_path: Path, caplog) -> None:
    """Issue 10, point 1: a position that missed timepoint 1 keeps its planes at their times;
    every position gets the experiment's SizeT (log blocks included) and SizeZ (Acq sections)."""
    touch(tmp_path / "pos001", "e_000001_GFP_001.png", "e_000002_GFP_001.png",
          "e_000002_GFP_002.png")
    touch(tmp_path / "pos002", "e_000002_GFP_001.png", "e_000005_GFP_001.png")
    with caplog.at_level(logging.WARNING):
        a, b = discover(tmp_path, log_timepoints=[1, 2, 3], z_count=3)
    assert a.t_values == b.t_values == [1, 2, 3, 4, 5]
    assert a.z_values == b.z_values == [1, 2, 3]
    assert b.files[PlaneKey(1, 0, 0)].name == "e_000002_GFP_001.png"  # not shifted to TheT 0
    assert b.files[PlaneKey(4, 0, 0)].name == "e_000005_GFP_001.png"
    assert PlaneKey(0, 0, 0) in b.missing() and len(b.missing()) == 5 * 3 - 2
    assert b.describe(PlaneKey(0, 0, 2)) == "t=1 c=GFP z=3"
    # Timepoint 5 has no "Time point_5" block in the log: said once, for pos002 only.
    assert "pos002: timepoint(s) 5 of the file names have no 'Time point' block" in caplog.text
    assert "pos001: timepoint" not in caplog.text


def test_not_captured_split_from_missing(tmp_path: Path) -> None:
    from datetime import datetime

    from posdir2ometiff.layout import split_missing
    from posdir2ometiff.metadata.model import PlaneTime

    touch(tmp_path / "pos001", "e_1_GFP_1.png", "e_1_DIC_1.png", "e_2_DIC_1.png")
    (lay,) = discover(tmp_path, channel_order=["DIC", "GFP"])
    when = datetime(2020, 1, 1)
    times = [PlaneTime("pos001", 1, "GFP", when, not_captured="stage time-out"),
             PlaneTime("pos002", 0, "GFP", when, not_captured="other position")]
    missing, not_captured = split_missing(lay, times)
    assert missing == [] and not_captured == [(PlaneKey(1, 1, 0), "stage time-out")]
    assert split_missing(lay, []) == ([PlaneKey(1, 1, 0)], [])

"""The log body: failed captures (issue 10, point 2) and the Z drive before each stack (point 5)."""

from __future__ import annotations

import logging
from pathlib import Path

from posdir2ometiff.metadata.swainlab import SwainLabParser, parse_log
from posdir2ometiff.metadata.swainlab.acq import first_slice_steps

BODY = """Experiment started at:29-Feb-2020 01:16:51

------Time point_1------
Position:1,pos001
Channel:Brightfield set at:29-Feb-2020 01:17:01
Exposure time:30ms
captureStack (Batman). Z drive position before stack capture is: 1870.575. 29-Feb-2020 01:17:10
captureStackMM2 (Batmanl). Z drive position before stack capture is: 1870.9. 29-Feb-2020 01:17:10
Channel:GFP set at:29-Feb-2020 01:17:12
WARNING - ERROR CAUGHT - NO IMAGE CAPTURED TO THIS CHANNEL AND TIMEPOINT. Error message:Java exception occurred:
java.lang.Exception: Wait for device "XYStage" timed out after 5000ms
\tat mmcorej.MMCoreJJNI.CMMCore_waitForSystem(Native Method)
Position:2,pos002
Channel:Brightfield set at:29-Feb-2020 01:17:27
WARNING - ERROR CAUGHT - NO IMAGE CAPTURED TO THIS CHANNEL AND TIMEPOINT. Error message:focus lost
Channel:GFP set at:29-Feb-2020 01:17:32
------Time point_3------
Position:1,pos001
Channel:GFP set at:29-Feb-2020 01:27:12
"""


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "exp_log.txt"
    path.write_bytes(BODY.replace("\n", "\r\n").encode())
    return path


def test_no_image_captured_belongs_to_the_channel_line_before_it(tmp_path: Path) -> None:
    res = parse_log(_write(tmp_path))
    reasons = {(p.position, p.t, p.channel): p.not_captured for p in res.plane_times}
    assert reasons == {
        ("pos001", 0, "Brightfield"): None,
        ("pos001", 0, "GFP"): 'Java exception occurred: java.lang.Exception: Wait for device '
        '"XYStage" timed out after 5000ms',
        ("pos002", 0, "Brightfield"): "focus lost",
        ("pos002", 0, "GFP"): None,
        ("pos001", 2, "GFP"): None,
    }
    assert res.timepoints == [1, 3]


def test_first_z_drive_position_after_the_channel_line_is_kept(tmp_path: Path) -> None:
    res = parse_log(_write(tmp_path))
    z = {(p.position, p.t, p.channel): p.drive_z_um for p in res.plane_times}
    assert z[("pos001", 0, "Brightfield")] == 1870.575
    assert z[("pos001", 0, "GFP")] is None


def test_warning_before_any_channel_is_reported(tmp_path: Path, caplog) -> None:
    path = tmp_path / "exp_log.txt"
    path.write_text(
        "Experiment started at:29-Feb-2020 01:16:51\n------Time point_1------\n"
        "Position:1,pos001\nWARNING - NO IMAGE CAPTURED TO THIS CHANNEL AND TIMEPOINT.\n"
    )
    with caplog.at_level(logging.WARNING):
        assert parse_log(path).plane_times == []
    assert "before any channel line" in caplog.text and "exp_log.txt:4" in caplog.text


def test_timepoints_reach_the_model(swainlab_sample: Path) -> None:
    assert SwainLabParser().parse(swainlab_sample).log_timepoints == [1, 2, 3]


def test_stack_geometry_follows_the_sectioning_method() -> None:
    # captureStackPIFOC.m: centred on the recorded Z; captureStackPFSOn.m: on slice floor(n/2).
    assert first_slice_steps("1", 5) == -2.0 and first_slice_steps("1", 4) == -1.5
    assert first_slice_steps("2", 4) == -2.0
    assert first_slice_steps("PIFOC", 3) == -1.0
    assert first_slice_steps("3", 5) == 0.0  # starts at the position
    assert first_slice_steps(None, 5) is None

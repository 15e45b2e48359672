"""The log header as the software writes it (issue 10, point 3): empty fields sharing a line, a
label whose value is on the next line, Windows paths as values, the software's own lines as
provenance key-value pairs, not warnings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from posdir2ometiff.metadata.swainlab import SwainLabParser, parse_log
from posdir2ometiff.metadata.swainlab.log_header import split_fields

# Laid out as pswain/Acquisition's initializeFiles.m and its 2020 successors write it.
HEADER_2020 = [
    "Swain Lab microscope experiment log file",
    "Swain lab microscope control software - MultiDGUI commit number:05903fb3769ccf612e7801b",
    "Warning! - there are uncommitted changes - software may be different from the above commit",
    "29-Feb-2020",
    "Microscope name is: Batman",
    "Acquisition settings are saved in:",
    "C:\\Users\\Public\\Data\\exp_00\\expAcq.txt",
    "Experiment details:",
    "Aim:   Strain:   Comments:   ",
    "Microscope setup for used channels:",
    "GFP:",
    "470nm LED",
    "->Emission filter wheel:[520/40 emission filter]",
    "Micromanager config file:C:\\path\\to\\config_file.cfg",
    "Omero project:",
    "SteadystateGlucose",
    "Omero tags:",
    "29-Feb-2020,Batman,",
    "Experiment started at:29-Feb-2020 01:16:51",
    "",
]


@pytest.fixture()
def log_2020(tmp_path: Path) -> Path:
    path = tmp_path / "exp_log.txt"
    path.write_bytes(("\r\n".join(HEADER_2020) + "\r\n").encode())
    return path


def test_empty_fields_on_one_line_are_three_empty_fields(log_2020: Path) -> None:
    res = parse_log(log_2020)
    assert res.aim is None and res.comments is None and res.strains == []
    assert split_fields("Aim:   Strain:   Comments:   ") == [
        ("Aim", ""), ("Strain", ""), ("Comments", "")
    ]
    # A sentence that merely mentions a label stays one field.
    assert split_fields("Aim: compare strain: growth") == [("Aim", "compare strain: growth")]
    assert split_fields("Aim: growth   Strain: BY4741") == [("Aim", "growth"), ("Strain", "BY4741")]


def test_value_on_the_next_line_and_windows_paths_are_values(log_2020: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        res = parse_log(log_2020)
    kv = dict(res.key_values)
    assert kv["Acquisition settings file"] == "C:\\Users\\Public\\Data\\exp_00\\expAcq.txt"
    assert kv["Micromanager config file"] == "C:\\path\\to\\config_file.cfg"
    assert "C" not in kv
    assert res.omero_project == "SteadystateGlucose" and res.tags == ["29-Feb-2020", "Batman"]
    assert caplog.records == []


def test_unknown_label_takes_its_value_from_the_next_line(tmp_path: Path) -> None:
    lines = HEADER_2020[:18] + ["Omero tag descriptions:", "Strain,Media,"] + HEADER_2020[18:]
    path = tmp_path / "x_log.txt"
    path.write_text("\n".join(lines) + "\n")
    assert ("Omero tag descriptions", "Strain,Media,") in parse_log(path).key_values


def test_software_lines_become_provenance_not_warnings(tmp_path: Path, log_2020: Path) -> None:
    (tmp_path / "x").mkdir()
    log_2020.rename(tmp_path / "x" / log_2020.name)
    meta = SwainLabParser().parse(tmp_path / "x")
    kv = dict(meta.key_values)
    assert kv["Acquisition software"] == "Swain lab microscope control software - MultiDGUI"
    assert kv["Acquisition software commit"] == "05903fb3769ccf612e7801b"
    assert kv["Acquisition software uncommitted changes"].startswith(
        "there are uncommitted changes"
    )
    assert meta.microscope == "Batman"


def test_older_version_line_and_git_commit_line(tmp_path: Path) -> None:
    path = tmp_path / "x_log.txt"
    path.write_text(
        "Swain Lab microscope experiment log file\n"
        "Swain lab microscope control software version 1.3\n"
        "GIT commit: e5d5e33 fix: changes to focus control\n"
        "Experiment started at:29-Feb-2020 01:16:51\n"
    )
    res = parse_log(path)
    assert res.provenance == [
        ("Acquisition software", "Swain lab microscope control software"),
        ("Acquisition software version", "1.3"),
        ("Acquisition software commit", "e5d5e33 fix: changes to focus control"),
    ]
    assert res.key_values == []


def test_experiment_details_text_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "x_log.txt"
    path.write_text(
        "Experiment details: Effect of a pH switch on growth\n"
        "Experiment started at:29-Feb-2020 01:16:51\n"
    )
    res = parse_log(path)
    assert res.details == "Effect of a pH switch on growth"


def test_value_on_the_label_line_of_a_list_field(tmp_path: Path) -> None:
    path = tmp_path / "x_log.txt"
    path.write_text(
        "Aim: growth   Strain: BY4741   Comments: \nBY4742\n"
        "Experiment started at:29-Feb-2020 01:16:51\n"
    )
    res = parse_log(path)
    assert (res.aim, res.strains, res.comments) == ("growth", ["BY4741"], "BY4742")


def test_other_spellings_of_known_labels(tmp_path: Path) -> None:
    path = tmp_path / "x_log.txt"
    path.write_text("OMERO-project: P1\nStrains\nBY4741\nExperiment started at:29-Feb-2020 01:16:51\n")
    res = parse_log(path)
    assert (res.omero_project, res.strains) == ("P1", ["BY4741"])

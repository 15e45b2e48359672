"""The Swain-lab Acq/log parser: generic over channels and columns, tolerant, streaming, encoding-proof."""

from __future__ import annotations

import logging
import re
import tracemalloc
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from posdir2ometiff.metadata.model import ExperimentMetadata
from posdir2ometiff.metadata.plugins import MetadataError
from posdir2ometiff.metadata.swainlab import (
    MAX_LINE_BYTES,
    SwainLabParser,
    parse_acq,
    parse_datetime,
    parse_log,
)
from tests.swainlab_text import acq_text, write_experiment, write_log


@pytest.fixture(scope="module")
def sample_meta(swainlab_sample: Path) -> ExperimentMetadata:
    return SwainLabParser().parse(swainlab_sample)


# ------------------------------------------------------------------ the shared sample


def test_sample_detected(swainlab_sample: Path, tmp_path: Path) -> None:
    assert SwainLabParser().detect(swainlab_sample)
    assert not SwainLabParser().detect(tmp_path)
    (tmp_path / "notes_log.txt").write_text("just some program's log\n")
    assert not SwainLabParser().detect(tmp_path), "a log.txt that is not the lab's is not claimed"


def test_sample_parses_without_warnings(swainlab_sample: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        SwainLabParser().parse(swainlab_sample)
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_sample_channels_all_kept_with_settings(sample_meta: ExperimentMetadata) -> None:
    # The tool we replace hard-coded channel names and dropped DIC.
    assert [c.name for c in sample_meta.channels] == ["Brightfield", "DIC", "GFP"]
    gfp = sample_meta.channel("GFP")
    assert (gfp.exposure_ms, gfp.camera_mode, gfp.gain, gfp.voltage) == (60.0, "3", 270.0, 4.0)
    assert gfp.extra == {"Skip": "1", "Z sect.": "1", "Start time": "1"}
    assert gfp.light_path.startswith("470nm LED\n->Combiner cube")
    assert (gfp.excitation_wavelength_nm, gfp.emission_wavelength_nm) == (470.0, 535.0)
    # White light: no excitation wavelength invented for the transmitted-light channels.
    assert sample_meta.channel("DIC").excitation_wavelength_nm is None
    assert "Analyser" in sample_meta.channel("DIC").light_path


def test_sample_settings(sample_meta: ExperimentMetadata) -> None:
    assert (sample_meta.z.count, sample_meta.z.spacing_um) == (5, 0.6)
    t = sample_meta.time
    assert (t.interval_s, t.timepoints, t.duration_s) == (300.0, 288, 86400.0)
    assert len(sample_meta.positions) == 25
    p1 = sample_meta.position("pos001")
    assert (p1.x_um, p1.y_um, p1.z_um, p1.group) == (10846.5, 10208.1, 3431.425, "1")
    assert p1.exposure_ms == {"Brightfield": 30.0, "DIC": 30.0, "GFP": 7.0}
    assert sample_meta.position("pos011").exposure_ms["GFP"] == 35.0
    assert p1.extra == {"PFS offset": "19.225"}


def test_sample_log_header(sample_meta: ExperimentMetadata) -> None:
    m = sample_meta
    assert m.aim == "Compare morphology markers across microscopes"
    assert m.strains == ["Mig1-GFP", "Dot6-GFP", "Maf1-GFP", "Sfp1-GFP", "Msn2-GFP"]
    assert m.authors == ["Julian Pietsch", "Ivan Clark"]
    assert m.comments == "Low OD O/N. Log growth from OD0.1 for four hours."
    assert m.microscope == "Microscope1"
    assert m.omero_project == "Morphology detection"
    assert m.tags == ["28-Sep-2018", "Batgirl"]  # trailing comma: no empty tag
    assert m.acquisition_start == datetime(2018, 9, 28, 17, 18, 14)
    for part in (m.aim, m.comments, "Julian Pietsch", "Msn2-GFP"):
        assert part in m.description
    assert m.name == "microscope1"


def test_sample_key_values_are_plain_strings(sample_meta: ExperimentMetadata) -> None:
    kv = sample_meta.key_values
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in kv)
    assert not [v for _, v in kv if v.startswith("[") and v.endswith("]")], "no str(list) values"
    pairs = set(kv)
    assert [v for k, v in kv if k == "Strain"] == sample_meta.strains  # one pair per strain
    assert [v for k, v in kv if k == "Author"] == ["Julian Pietsch", "Ivan Clark"]
    for expected in [
        ("Microscope", "Microscope1"),
        ("Project", "Morphology detection"),
        ("GFP EM gain", "270"),
        ("GFP Camera mode", "3"),
        ("Pump COM5 Contents", "2% glucose in SC"),
        ("Pump COM6 Contents", "No media"),
        (
            "Micromanager config file",
            "C:\\Users\\Public\\Microscope control\\Micromanager "
            "config files\\Batgirl5_9_18noemissionfilter.txt",
        ),
    ]:
        assert expected in pairs
    light = dict((k, v) for k, v in kv if k.startswith("Light path "))
    assert set(light) == {"Light path Brightfield", "Light path DIC", "Light path GFP"}


def test_sample_tables_are_typed(sample_meta: ExperimentMetadata) -> None:
    t = sample_meta.tables
    assert set(t) == {
        "channels",
        "z_sectioning",
        "time_settings",
        "positions",
        "pumps",
        "switching",
    }
    pos = t["positions"]
    assert len(pos) == 25
    assert pos["X position"].dtype == "float64"
    assert pos["Group"].dtype == "int64"
    assert pos["GFP"].dtype == "int64"
    assert pd.api.types.is_string_dtype(pos["Position name"])
    assert t["channels"]["Channel name"].tolist() == ["Brightfield", "DIC", "GFP"]
    assert t["channels"]["Voltage"].dtype == "float64"
    assert t["time_settings"].iloc[0].to_dict() == {
        "timelapse": 1,
        "interval_s": 300,
        "timepoints": 288,
        "duration_s": 86400,
    }
    assert t["pumps"]["Contents"].tolist() == ["2% glucose in SC", "No media"]
    assert t["pumps"]["Diameter"].dtype == "float64"
    sw = t["switching"]
    assert sw.loc[sw.parameter == "Flow post switch", "value"].tolist() == [0.4, 4.0]


def test_sample_plane_times(sample_meta: ExperimentMetadata) -> None:
    pts = sample_meta.plane_times
    assert len(pts) == 25 * 3 * 3  # positions × timepoints × channels, read from the log body
    by_key = {(p.position, p.t, p.channel): p for p in pts}
    assert by_key["pos001", 0, "GFP"].time == datetime(2018, 9, 28, 17, 18, 22)
    assert by_key["pos001", 0, "Brightfield"].time == datetime(2018, 9, 28, 17, 18, 15)
    assert all(p.z is None for p in pts)
    assert {p.t for p in pts} == {0, 1, 2}
    assert by_key["pos001", 1, "GFP"].time > by_key["pos001", 0, "GFP"].time


# ------------------------------------------------------------------ generic over names and columns


def test_channel_names_and_columns_come_from_the_files(tmp_path: Path) -> None:
    names = ("mCherry", "Cy5", "pHluorin 2", "Brightfield")
    folder = write_experiment(
        tmp_path / "e", names, n_positions=4, n_timepoints=2, extra_channel_column="LED power"
    )
    m = SwainLabParser().parse(folder)
    assert [c.name for c in m.channels] == list(names)
    assert m.channel("pHluorin 2").extra["LED power"] == "x2"
    assert ("Cy5 LED power", "x1") in m.key_values
    assert m.position("pos004").exposure_ms == {
        "mCherry": 8.0,
        "Cy5": 13.0,
        "pHluorin 2": 18.0,
        "Brightfield": 23.0,
    }
    assert {p.channel for p in m.plane_times} == set(names)
    assert len(m.plane_times) == 4 * 2 * 4
    assert set(m.tables["positions"].columns[-4:]) == set(names)
    assert m.tags == ["tagA", "tagB"]
    assert m.comments == "First line of comments.\nSecond line."
    assert (m.time.interval_s, m.time.timepoints, m.z.spacing_um) == (120.0, 50, 0.5)
    assert m.tables["switching"].query("parameter == 'Times'")["value"].tolist() == [0.0, 600.0]


def test_missing_sections_warn_and_continue(tmp_path: Path, caplog) -> None:
    acq = tmp_path / "x_Acq.txt"
    acq.write_text(acq_text(sections=("channels", "points")))
    with caplog.at_level(logging.WARNING):
        res = parse_acq(acq)
    assert [c.name for c in res.channels] == ["Brightfield", "DIC", "GFP"]
    assert res.z is None and res.time is None
    text = caplog.text
    assert "no Z_sectioning: section" in text and "no Time_settings: section" in text
    assert str(acq) in text


def test_extra_section_kept_as_table_with_warning(tmp_path: Path, caplog) -> None:
    acq = tmp_path / "x_Acq.txt"
    acq.write_text(acq_text() + "Lasers:\r\nLine, Power\r\n488, 20.5\r\n561, 10\r\n")
    with caplog.at_level(logging.WARNING):
        res = parse_acq(acq)
    assert res.tables["lasers"]["Power"].tolist() == [20.5, 10.0]
    assert res.tables["lasers"]["Line"].dtype == "int64"
    assert re.search(re.escape(str(acq)) + r":\d+: unknown section 'lasers'", caplog.text)
    assert "switching" in res.tables, "a section after Flow_control does not swallow it"


def test_malformed_rows_warn_with_file_and_line(tmp_path: Path, caplog) -> None:
    lines = acq_text().split("\r\n")
    i = next(n for n, line in enumerate(lines) if line.startswith("pos002"))
    lines[i] = "pos002, 10.5"  # truncated row
    lines.insert(i + 1, "pos009, abc, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10")  # too many cells, bad X
    acq = tmp_path / "x_Acq.txt"
    acq.write_text("\r\n".join(lines))
    with caplog.at_level(logging.WARNING):
        res = parse_acq(acq)
    assert f"{acq}:{i + 1}: points table: 2 values for 9 columns" in caplog.text
    assert f"{acq}:{i + 2}:" in caplog.text
    assert "stage X 'abc' of pos009 is not a number" in caplog.text
    names = [p.name for p in res.positions]
    assert names == ["pos001", "pos002", "pos009", "pos003"]
    assert res.positions[1].x_um == 10.5 and res.positions[1].y_um is None


def test_only_a_log_or_only_an_acq(tmp_path: Path, caplog) -> None:
    (tmp_path / "a").mkdir()
    write_log(tmp_path / "a" / "exp_log.txt", n_positions=1)
    with caplog.at_level(logging.WARNING):
        m = SwainLabParser().parse(tmp_path / "a")
    assert "no *Acq.txt file" in caplog.text
    assert [c.name for c in m.channels] == ["Brightfield", "DIC", "GFP"]  # from the light paths
    assert m.positions == [] and m.plane_times

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "exp_Acq.txt").write_text(acq_text())
    m = SwainLabParser().parse(tmp_path / "b")
    assert m.plane_times == [] and len(m.positions) == 3


def test_no_files_is_a_metadata_error(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match=r"no \*Acq.txt or \*log.txt"):
        SwainLabParser().parse(tmp_path)


# ------------------------------------------------------------------ bytes and line ends


def test_non_utf8_bytes_and_cr_line_ends(tmp_path: Path) -> None:
    folder = tmp_path / "e"
    folder.mkdir()
    acq = acq_text(("GFP", "mCherry")).replace("2% glucose", "2% glucose 30\u00b0C")
    (folder / "exp_Acq.txt").write_bytes(acq.replace("\r\n", "\r").encode("cp1252"))  # old Mac CR
    log = folder / "exp_log.txt"
    write_log(log, ("GFP", "mCherry"), encoding="cp1252")
    raw = log.read_bytes().replace(b"Ada Lovelace", b"Ad\xe9la \xff\xfe\x81 Lovelace")
    log.write_bytes(raw)
    m = SwainLabParser().parse(folder)
    assert [c.name for c in m.channels] == ["GFP", "mCherry"]
    assert ("Pump COM5 Contents", "2% glucose 30\u00b0C in SC") in m.key_values
    assert m.authors[0].startswith("Ad\u00e9la")
    assert len(m.plane_times) == 3 * 2 * 2


def test_datetime_is_locale_free_and_strict() -> None:
    assert parse_datetime("set at:28-Sep-2018 17:18:22") == datetime(2018, 9, 28, 17, 18, 22)
    assert parse_datetime("01-may-2020 01:02:03.5") == datetime(2020, 5, 1, 1, 2, 3, 500000)
    assert parse_datetime("31-Feb-2018 10:00:00") is None
    assert parse_datetime("28-Foo-2018 10:00:00") is None
    assert parse_datetime("28-Sep-2018 25:00:00") is None


def test_bad_times_in_log_body_warn(tmp_path: Path, caplog) -> None:
    log = write_log(tmp_path / "x_log.txt", ("GFP",), n_positions=2, n_timepoints=1)
    text = log.read_text().replace(
        "Channel:GFP set at:28-Sep-2018 17:18:16", "Channel:GFP set at:yesterday", 1
    )
    log.write_text(text)
    with caplog.at_level(logging.WARNING):
        res = parse_log(log, ["GFP"])
    assert "unreadable time 'yesterday'" in caplog.text
    assert re.search(re.escape(str(log)) + r":\d+: channel GFP", caplog.text)
    assert len(res.plane_times) == 1


# ------------------------------------------------------------------ streaming: bounded memory


def _peak_while_parsing(path: Path) -> int:
    tracemalloc.start()
    try:
        parse_log(path, ["Brightfield", "DIC", "GFP"])
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_log_is_streamed_memory_does_not_grow_with_log_size(tmp_path: Path) -> None:
    """Same planes, a log 10× longer (real logs are mostly chatter): peak memory stays put."""
    small = write_log(tmp_path / "small_log.txt", n_positions=10, n_timepoints=6, chatter=20)
    big = write_log(tmp_path / "big_log.txt", n_positions=10, n_timepoints=6, chatter=220)
    assert big.stat().st_size > 9 * small.stat().st_size
    assert big.stat().st_size > 2_000_000
    peak_small, peak_big = _peak_while_parsing(small), _peak_while_parsing(big)
    assert peak_big < 1.2 * peak_small + 64 * 1024, (peak_small, peak_big)
    assert peak_big < big.stat().st_size / 10, "the log is never held in memory"


def test_overlong_line_is_cut_not_loaded(tmp_path: Path, caplog) -> None:
    log = write_log(tmp_path / "x_log.txt", ("GFP",), n_positions=1, n_timepoints=1)
    junk = b"\x00\xff" * (2 * 1024 * 1024)  # 4 MB without a newline
    log.write_bytes(log.read_bytes() + junk + b"\r\nChannel:GFP set at:28-Sep-2018 18:00:00\r\n")
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING):
            res = parse_log(log, ["GFP"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MAX_LINE_BYTES + 512 * 1024
    assert f"line longer than {MAX_LINE_BYTES} bytes cut" in caplog.text
    assert res.plane_times[-1].time == datetime(2018, 9, 28, 18, 0)  # parsing went on after it


def test_binning_column_and_sectioning_method(tmp_path: Path) -> None:
    """Issue 10, points 5 and 6: a Binning column (some rigs add it) and the stack geometry."""
    acq = acq_text(extra_channel_column="Binning").replace(", x0", ", 2").replace(", x1", ", 4x4")
    (tmp_path / "exp_Acq.txt").write_text(acq.replace(", x2", ", "))
    meta = SwainLabParser().parse(tmp_path)
    assert [c.binning for c in meta.channels] == ["2x2", "4x4", None]
    # "Sections,...,Method" row "3, 0.50, 0, 1, 0, 2": PFS kept on, centred on slice 1.
    assert (meta.z.method, meta.z.first_slice_steps) == ("2", -1.0)
    assert ("Z sectioning method", "PIFOC with PFS on") in meta.key_values

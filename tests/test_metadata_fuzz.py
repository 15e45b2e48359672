"""Property test: whatever Acq/log text the parser is fed, it returns a model or its own error.

Random text and bytes, and the shared sample mutated line by line (lines dropped, duplicated,
swapped, replaced by junk, cut, bytes flipped): the only outcomes allowed are an
ExperimentMetadata whose tables HDF5 can store, or a MetadataError. Anything else (IndexError,
KeyError, OverflowError from a 40-digit number...) is a crash a user would meet on a damaged file.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posdir2ometiff.demo import make_demo
from posdir2ometiff.metadata.model import ExperimentMetadata
from posdir2ometiff.metadata.plugins import MetadataError
from posdir2ometiff.metadata.swainlab import SwainLabParser
from posdir2ometiff.metadata.swainlab.single_log import parse_single_log
from posdir2ometiff.metadata.tables import read_tables, write_tables
from tests.conftest import SHARED_SAMPLE
from tests.swainlab_text import acq_text, log_header

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _sample_lines(name: str) -> list[bytes]:
    path = SHARED_SAMPLE / name
    if path.is_file():
        data = path.read_bytes()
        if name.endswith("log.txt"):
            data = data[:12_000]  # header and the first positions: enough structure, fast
        return data.splitlines(keepends=True)
    # No shared sample: mutate generated text of the same layout instead.
    text = acq_text() if "Acq" in name else "\r\n".join(log_header()) + "\r\n"
    return text.encode().splitlines(keepends=True)


ACQ_LINES = _sample_lines("microscope1_Acq.txt")
LOG_LINES = _sample_lines("microscope1_log.txt")

# Text a damaged or foreign file plausibly holds: separators, numbers, section names, dates.
_pieces = st.sampled_from(
    [
        ",",
        ":",
        "\r",
        "\n",
        "\r\n",
        " ",
        "-",
        "->",
        '"',
        "[",
        "]",
        "0",
        "1.5",
        "-3e400",
        "9" * 40,
        "nan",
        "Channels:",
        "Points:",
        "Time_settings:",
        "Flow_control:",
        "Z_sectioning:",
        "Position:1,pos001",
        "Channel:GFP set at:",
        "28-Sep-2018 17:18:22",
        "31-Feb-2018 99:99:99",
        "------Time point_1------",
        "Experiment started at:",
        "Omero tags:",
        "Strain:",
        "Microscope setup for used channels:",
        "Pump states at beginning of experiment:",
        "Dynamic flow details:",
        "Times:",
        "\x00",
        "\xff",
        "µ",
    ]
)
junk_line = st.one_of(
    st.lists(_pieces, max_size=12).map("".join),
    st.text(max_size=80),
).map(lambda s: s.encode("utf-8", errors="surrogatepass") if s else b"")
junk_bytes = st.binary(max_size=200)


@st.composite
def mutated(draw, lines: list[bytes]) -> bytes:
    out = list(lines)
    for _ in range(draw(st.integers(0, 8))):
        if not out:
            out.append(draw(junk_line))
            continue
        i = draw(st.integers(0, len(out) - 1))
        op = draw(st.sampled_from(["drop", "dup", "swap", "junk", "insert", "cut", "flip"]))
        if op == "drop":
            del out[i]
        elif op == "dup":
            out.insert(i, out[i])
        elif op == "swap":
            j = draw(st.integers(0, len(out) - 1))
            out[i], out[j] = out[j], out[i]
        elif op == "junk":
            out[i] = draw(junk_line) + b"\r\n"
        elif op == "insert":
            out.insert(i, draw(st.one_of(junk_line, junk_bytes)) + b"\r\n")
        elif op == "cut":
            out[i] = out[i][: draw(st.integers(0, max(0, len(out[i]) - 1)))]
        else:
            line = bytearray(out[i])
            if line:
                k = draw(st.integers(0, len(line) - 1))
                line[k] = draw(st.integers(0, 255))
            out[i] = bytes(line)
    return b"".join(out)


any_file = st.one_of(
    st.none(),  # the file is missing
    junk_bytes,
    st.lists(junk_line, max_size=30).map(b"\r\n".join),
)


def _parse(acq: bytes | None, log: bytes | None) -> ExperimentMetadata | None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if acq is not None:
            (folder / "exp_Acq.txt").write_bytes(acq)
        if log is not None:
            (folder / "exp_log.txt").write_bytes(log)
        try:
            meta = SwainLabParser().parse(folder)
        except MetadataError as exc:
            assert str(exc) and "\n" not in str(exc)
            return None
        assert isinstance(meta, ExperimentMetadata)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.key_values)
        return meta


@pytest.fixture(autouse=True)
def _quiet(caplog):
    # Damaged input warns on purpose; keep the warnings out of the report.
    caplog.set_level(logging.CRITICAL, logger="posdir2ometiff")


@FUZZ
@given(acq=st.one_of(mutated(ACQ_LINES), any_file), log=st.one_of(mutated(LOG_LINES), any_file))
def test_mutated_or_random_files_give_a_model_or_a_metadata_error(acq, log) -> None:
    _parse(acq, log)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(acq=mutated(ACQ_LINES), log=mutated(LOG_LINES))
def test_whatever_parses_can_be_stored_as_hdf5(acq, log) -> None:
    meta = _parse(acq, log)
    if meta is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "t.h5"
            names = write_tables(meta, path)
            expected = [n for n, df in meta.tables.items() if not df.empty]
            expected += ["plane_times"] if meta.plane_times else []
            assert names == expected
            if names:
                back = read_tables(path)
                assert set(back) == set(names)
                for name in names:
                    n_rows = (
                        len(meta.tables[name]) if name in meta.tables else len(meta.plane_times)
                    )
                    assert len(back[name]) == n_rows


def _single_log_lines() -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        make_demo(Path(tmp), positions=2, z=2, t=1, size=16, fmt="log")
        return (Path(tmp) / "demo.log").read_bytes().splitlines(keepends=True)


SINGLE_LOG_LINES = _single_log_lines()


@FUZZ
@given(data=st.one_of(mutated(SINGLE_LOG_LINES), any_file.filter(lambda b: b is not None)))
def test_mutated_single_file_log_gives_a_model_or_a_metadata_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.log"
        path.write_bytes(data)
        try:
            meta = parse_single_log(path)
        except MetadataError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        assert isinstance(meta, ExperimentMetadata)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.key_values)
        with tempfile.TemporaryDirectory() as out:
            write_tables(meta, Path(out) / "t.h5")

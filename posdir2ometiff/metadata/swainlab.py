"""Parser for the Swain lab's acquisition software (MATLAB "multiDGUI"): ``*Acq.txt`` + ``*log.txt``.

``*Acq.txt`` holds the settings as sections (``Channels:``, ``Z_sectioning:``, ``Time_settings:``,
``Points:``, ``Flow_control:`` ...), most of them comma-separated tables with a header row. They are
read generically: every column named by its header row (never by a list of channel names in this
code, which is how the tool we replace lost the sample's DIC channel), typed from its values (int64,
float64 or str), and kept whole in ``meta.tables``; the model's typed fields are filled from the
columns whose header we recognise, the rest go to ``extra``.

``*log.txt`` starts with an "Experiment details" header (aim, strains, authors, comments, light path
per channel, OMERO project and tags) and then logs every acquisition step; it is streamed line by
line (real logs run to hundreds of MB), keeping only the time each channel was set per position and
timepoint (``Channel:GFP set at:28-Sep-2018 17:18:22``), from which the OME builder computes DeltaT.

Both files come from Windows machines of various vintages: bytes are decoded as UTF-8, falling back
to cp1252 per line, and any mix of CRLF / CR / LF line ends is accepted. A malformed line is logged
as a warning with ``file:line`` and skipped; only a folder with neither file is an error.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from posdir2ometiff.metadata.model import (
    Channel,
    ExperimentMetadata,
    PlaneTime,
    StagePosition,
    TimeSettings,
    ZSectioning,
)
from posdir2ometiff.metadata.plugins import MetadataError

log = logging.getLogger(__name__)

#: Longest log line kept; longer lines (binary junk, a runaway print) are cut so memory stays bounded.
MAX_LINE_BYTES = 64 * 1024
#: Warnings logged per file before they are only counted (a damaged 300 MB log must not flood).
MAX_WARNINGS_PER_FILE = 25

#: ``Time_settings`` is one headerless row written by the acquisition software:
#: time-lapse on (1/0), interval (s), number of timepoints, total duration (s); 300 s × 288 = 86400 s.
TIME_SETTINGS_COLUMNS = ["timelapse", "interval_s", "timepoints", "duration_s"]

#: Acq sections whose layout is special; any other section is read as a generic table.
KNOWN_ACQ_SECTIONS = {"channels", "z_sectioning", "time_settings", "points", "flow_control"}

_MONTHS = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_DATE_RE = re.compile(
    r"(\d{1,2})-([A-Za-z]{3})-(\d{4})(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?"
)
_INT_RE = re.compile(r"[+-]?\d{1,18}")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?")
_ACQ_SECTION_RE = re.compile(r"([A-Za-z][A-Za-z0-9_]*)\s*:")
_LABEL_ONLY_RE = re.compile(r"([^\s\"'\[\-<>][^:]*?)\s*:")
_LABEL_VALUE_RE = re.compile(r"([A-Za-z][^:,]*?)\s*:\s*(.+)")

_TIMEPOINT_RE = re.compile(r"-+\s*time\s*point[\s_]*(\d+)\s*-+", re.IGNORECASE)
_POSITION_RE = re.compile(r"Position\s*:\s*(\d+)\s*,\s*(\S.*)")
_CHANNEL_SET_RE = re.compile(r"Channel\s*:\s*(\S.*?)\s+set at\s*:\s*(.*)")
_DATE_ONLY_RE = re.compile(r"\d{1,2}-[A-Za-z]{3}-\d{4}")
_EXCITATION_RE = re.compile(r"(\d{3})\s*nm\b", re.IGNORECASE)
_EMISSION_RE = re.compile(r"(\d{3})\s*/\s*\d{1,3}\s*(?:nm\s*)?emission", re.IGNORECASE)

# Log header labels (normalised: lower case, letters only) and what they fill.
_LOG_LABELS = {
    "microscopenameis": "microscope",
    "microscopename": "microscope",
    "experimentdetails": "details",
    "aim": "aim",
    "aims": "aim",
    "strain": "strains",
    "strains": "strains",
    "author": "authors",
    "authors": "authors",
    "comment": "comments",
    "comments": "comments",
    "microscopesetupforusedchannels": "setup",
    "micromanagerconfigfile": "mmconfig",
    "omeroproject": "project",
    "omerotags": "tags",
    "experimentstartedat": "start",
}


def _norm(text: str) -> str:
    """Header text reduced to lower-case letters and digits, for matching column and label names."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


# --------------------------------------------------------------------------------------- helpers


class _Warner:
    """Logs ``file:line: message`` warnings, at most MAX_WARNINGS_PER_FILE, then counts the rest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def __call__(self, lineno: int | None, message: str) -> None:
        self.count += 1
        if self.count <= MAX_WARNINGS_PER_FILE:
            where = f"{self.path}:{lineno}" if lineno else str(self.path)
            log.warning("%s: %s", where, message)

    def finish(self) -> None:
        if self.count > MAX_WARNINGS_PER_FILE:
            log.warning(
                "%s: %d more warnings not shown", self.path, self.count - MAX_WARNINGS_PER_FILE
            )


def _decode(raw: bytes) -> str:
    """UTF-8 if the bytes are UTF-8, else cp1252 (what Windows MATLAB writes); never raises."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def parse_datetime(text: str) -> datetime | None:
    """Read ``28-Sep-2018 17:18:22`` (MATLAB's ``datestr`` default) without depending on the locale."""
    m = _DATE_RE.search(text)
    if not m:
        return None
    day, mon, year, hh, mm, ss, frac = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        return None
    try:
        return datetime(
            int(year),
            month,
            int(day),
            int(hh or 0),
            int(mm or 0),
            int(ss or 0),
            int((frac or "0").ljust(6, "0")),
        )
    except ValueError:
        return None


def _number(text: str) -> int | float | None:
    s = text.strip()
    if _INT_RE.fullmatch(s):
        return int(s)
    if _FLOAT_RE.fullmatch(s):
        return float(s)
    return None


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    v = _number(text)
    return None if v is None else float(v)


def _typed_column(values: list[str]) -> pd.Series:
    """One table column with a real dtype: int64 if every cell is an integer, float64 if every
    non-empty cell is a number (empty cells NaN), else str; so HDF5 and OMERO.tables keep types."""
    filled = [v for v in values if v != ""]
    numbers = [_number(v) for v in filled]
    if filled and all(n is not None for n in numbers):
        if len(filled) == len(values) and all(isinstance(n, int) for n in numbers):
            return pd.Series(numbers, dtype="int64")
        return pd.Series([float(v) if v != "" else float("nan") for v in values], dtype="float64")
    return pd.Series(values, dtype="str")


def _split_cells(line: str) -> list[str]:
    return [c.strip() for c in line.split(",")]


@dataclass
class _Table:
    """A table as read: header, rows of text cells with their line numbers, and the typed frame."""

    header: list[str]
    rows: list[tuple[int, list[str]]]
    frame: pd.DataFrame

    def col(self, *aliases: str) -> int | None:
        """Index of the first column whose normalised header is one of ``aliases``."""
        norms = [_norm(h) for h in self.header]
        for alias in aliases:
            if alias in norms:
                return norms.index(alias)
        return None


def _make_table(
    header: list[str], rows: list[tuple[int, list[str]]], warn: _Warner, what: str
) -> _Table:
    """Fit rows to the header (warning about ragged rows) and type every column."""
    names: list[str] = []
    for i, h in enumerate(header):
        name = h or f"column_{i + 1}"
        while name in names:
            name += "_"
        names.append(name)
    fitted: list[tuple[int, list[str]]] = []
    for lineno, cells in rows:
        if len(cells) > len(names):
            warn(
                lineno,
                f"{what}: {len(cells)} values for {len(names)} columns; "
                "extra values joined into the last column",
            )
            cells = cells[: len(names) - 1] + [", ".join(cells[len(names) - 1 :])]
        elif len(cells) < len(names):
            warn(
                lineno, f"{what}: {len(cells)} values for {len(names)} columns; missing left empty"
            )
            cells = cells + [""] * (len(names) - len(cells))
        fitted.append((lineno, cells))
    frame = pd.DataFrame(
        {name: _typed_column([c[i] for _, c in fitted]) for i, name in enumerate(names)}
    )
    return _Table(names, fitted, frame)


# --------------------------------------------------------------------------------------- Acq file


def _read_text_lines(path: Path) -> list[str]:
    """The Acq file's lines (a settings file of a few kB, read whole); CR, LF or CRLF ends."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MetadataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    text = _decode(raw).replace("\r\n", "\n")
    # A lone CR ends a line too (old Mac files); "\r\r\n" in the sample becomes one blank line.
    return text.replace("\r", "\n").split("\n")


def _acq_sections(lines: list[str], warn: _Warner) -> dict[str, list[tuple[int, str]]]:
    """Split the Acq file into its sections, by header lines such as ``Points:``."""
    sections: dict[str, list[tuple[int, str]]] = {}
    current: str | None = None
    for lineno, line in enumerate(lines, 1):
        s = line.strip()
        m = _ACQ_SECTION_RE.fullmatch(s)
        # Flow_control has one-word sub-headings ("Times:" followed by numbers); there, a heading
        # starts a new section only if it is a known or underscored name (the software's style),
        # or if what follows is not a value line (e.g. "Lasers:" then a table header).
        if m and (
            current != "flow_control"
            or m.group(1).lower() in KNOWN_ACQ_SECTIONS
            or "_" in m.group(1)
            or not _followed_by_values(lines, lineno)
        ):
            name = m.group(1).lower()
            if name in sections:
                warn(lineno, f"section {m.group(1)!r} repeated; the first one is kept")
                current = f"{name}#dup"
                sections.setdefault(current, [])
                continue
            current = name
            sections[name] = []
        elif current is not None:
            sections[current].append((lineno, line))
        elif s:
            warn(lineno, "text before the first section ignored")
    sections = {k: v for k, v in sections.items() if not k.endswith("#dup")}
    return sections


def _followed_by_values(lines: list[str], lineno: int) -> bool:
    """Is the next non-blank line after 1-based ``lineno`` numbers, or another sub-heading?"""
    for line in lines[lineno : lineno + 50]:
        s = line.strip()
        if s:
            cells = _split_cells(s)
            return all(_number(c) is not None for c in cells) or s.endswith(":")
    return True


def _generic_table(
    body: list[tuple[int, str]], warn: _Warner, what: str, columns: list[str] | None = None
) -> _Table | None:
    """A comma-separated section: header row + rows, or headerless rows named by ``columns``."""
    rows = [(n, _split_cells(line)) for n, line in body if line.strip()]
    if not rows:
        warn(body[0][0] if body else None, f"{what}: section is empty")
        return None
    first = rows[0][1]
    headerless = all(_number(c) is not None for c in first if c) and any(first)
    if headerless:
        width = max(len(c) for _, c in rows)
        names = list(columns or [])
        if columns and width != len(columns):
            warn(rows[0][0], f"{what}: expected {len(columns)} values, found {width}")
        names += [f"value_{i + 1}" for i in range(len(names), width)]
        return _make_table(names, rows, warn, what)
    return _make_table(first, rows[1:], warn, what)


@dataclass
class _AcqResult:
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    channels: list[Channel] = field(default_factory=list)
    z: ZSectioning | None = None
    time: TimeSettings | None = None
    positions: list[StagePosition] = field(default_factory=list)
    key_values: list[tuple[str, str]] = field(default_factory=list)


def parse_acq(path: Path) -> _AcqResult:
    """Read a ``*Acq.txt`` file into typed tables and model fields."""
    warn = _Warner(path)
    out = _AcqResult()
    sections = _acq_sections(_read_text_lines(path), warn)
    for expected in ("channels", "z_sectioning", "time_settings", "points"):
        if expected not in sections:
            warn(None, f"no {expected.capitalize()}: section")

    for name, body in sections.items():
        if name == "flow_control":
            _parse_flow_control(body, warn, out)
            continue
        columns = TIME_SETTINGS_COLUMNS if name == "time_settings" else None
        table = _generic_table(body, warn, f"{name} table", columns)
        if table is None:
            continue
        key = {"points": "positions"}.get(name, name)
        out.tables[key] = table.frame
        if name == "channels":
            out.channels = _channels_from(table, warn, out.key_values)
        elif name == "z_sectioning":
            out.z = _z_from(table, out.key_values)
        elif name == "time_settings":
            out.time = _time_from(table, warn, out.key_values)
        elif name == "points":
            out.positions = _positions_from(table, [c.name for c in out.channels], warn)
        elif name not in KNOWN_ACQ_SECTIONS:
            warn(body[0][0] if body else None, f"unknown section {name!r} kept as table {key!r}")
    warn.finish()
    return out


def _channels_from(table: _Table, warn: _Warner, kv: list[tuple[str, str]]) -> list[Channel]:
    name_i = table.col("channelname", "channel", "name")
    if name_i is None:
        name_i = 0
        warn(None, f"channels table has no 'Channel name' column; using {table.header[0]!r}")
    exp_i = table.col("exposuretime", "exposure", "exposurems")
    mode_i = table.col("cameramode")
    gain_i = table.col("emgain", "gain")
    volt_i = table.col("voltage")
    used = {name_i, exp_i, mode_i, gain_i, volt_i}
    channels: list[Channel] = []
    for lineno, cells in table.rows:
        name = cells[name_i]
        if not name:
            warn(lineno, "channel without a name skipped")
            continue
        if any(c.name.lower() == name.lower() for c in channels):
            warn(lineno, f"channel {name!r} listed twice; the first row is kept")
            continue
        ch = Channel(
            name=name,
            exposure_ms=_float(cells[exp_i]) if exp_i is not None else None,
            camera_mode=(cells[mode_i] or None) if mode_i is not None else None,
            gain=_float(cells[gain_i]) if gain_i is not None else None,
            voltage=_float(cells[volt_i]) if volt_i is not None else None,
            extra={h: cells[i] for i, h in enumerate(table.header) if i not in used},
        )
        channels.append(ch)
        kv += [
            (f"{name} {h}", cells[i])
            for i, h in enumerate(table.header)
            if i != name_i and cells[i]
        ]
    return channels


def _z_from(table: _Table, kv: list[tuple[str, str]]) -> ZSectioning | None:
    if not table.rows:
        return None
    cells = table.rows[0][1]
    n_i = table.col("sections", "nsections", "count")
    s_i = table.col("spacing", "zspacing", "spacingum")
    count = _number(cells[n_i]) if n_i is not None else None
    z = ZSectioning(
        count=count if isinstance(count, int) else None,
        spacing_um=_float(cells[s_i]) if s_i is not None else None,
        extra={h: cells[i] for i, h in enumerate(table.header) if i not in (n_i, s_i)},
    )
    if z.count is not None:
        kv.append(("Z sections", str(z.count)))
    if z.spacing_um is not None:
        kv.append(("Z spacing (µm)", f"{z.spacing_um:g}"))
    return z


def _time_from(table: _Table, warn: _Warner, kv: list[tuple[str, str]]) -> TimeSettings | None:
    if not table.rows:
        return None
    lineno, cells = table.rows[0]
    i_i = table.col("intervals", "interval", "timeinterval")
    n_i = table.col("timepoints", "ntimepoints")
    d_i = table.col("durations", "duration", "totaltime")
    n = _number(cells[n_i]) if n_i is not None else None
    ts = TimeSettings(
        interval_s=_float(cells[i_i]) if i_i is not None else None,
        timepoints=int(n) if isinstance(n, int) else None,
        duration_s=_float(cells[d_i]) if d_i is not None else None,
    )
    if ts.interval_s is not None and ts.interval_s <= 0:
        warn(lineno, f"time interval {ts.interval_s:g} s is not positive; ignored")
        ts.interval_s = None
    for key, value in (
        ("Time interval (s)", ts.interval_s),
        ("Timepoints (planned)", ts.timepoints),
        ("Duration (s)", ts.duration_s),
    ):
        if value is not None:
            kv.append((key, f"{value:g}"))
    return ts


def _positions_from(table: _Table, channel_names: list[str], warn: _Warner) -> list[StagePosition]:
    name_i = table.col("positionname", "position", "name")
    if name_i is None:
        name_i = 0
    x_i = table.col("xposition", "x", "xum")
    y_i = table.col("yposition", "y", "yum")
    z_i = table.col("zposition", "z", "zum")
    g_i = table.col("group")
    known = {c.lower(): c for c in channel_names}
    exposure_cols = {i: known[h.lower()] for i, h in enumerate(table.header) if h.lower() in known}
    used = {name_i, x_i, y_i, z_i, g_i, *exposure_cols}
    positions: list[StagePosition] = []
    for lineno, cells in table.rows:
        name = cells[name_i]
        if not name:
            warn(lineno, "position without a name skipped")
            continue
        exposures: dict[str, float] = {}
        for i, ch in exposure_cols.items():
            v = _float(cells[i])
            if v is not None:
                exposures[ch] = v
            elif cells[i]:
                warn(lineno, f"exposure {cells[i]!r} of {ch} at {name} is not a number")
        pos = StagePosition(
            name=name,
            x_um=_float(cells[x_i]) if x_i is not None else None,
            y_um=_float(cells[y_i]) if y_i is not None else None,
            z_um=_float(cells[z_i]) if z_i is not None else None,
            group=(cells[g_i] or None) if g_i is not None else None,
            exposure_ms=exposures,
            extra={h: cells[i] for i, h in enumerate(table.header) if i not in used},
        )
        for axis, idx in (("X", x_i), ("Y", y_i), ("Z", z_i)):
            if idx is not None and cells[idx] and _float(cells[idx]) is None:
                warn(lineno, f"stage {axis} {cells[idx]!r} of {name} is not a number")
        positions.append(pos)
    return positions


def _parse_flow_control(body: list[tuple[int, str]], warn: _Warner, out: _AcqResult) -> None:
    """Pumps table ("Pump states at beginning of experiment") and the dynamic-flow parameters.

    The parameters ("Times:", "Switched to:", "Flow post switch:" ...) are labels followed by one
    line of comma-separated values per pump, kept as a long table (parameter, line, item, value).
    """
    mode: str | None = None
    pump_header: list[str] = []
    pump_rows: list[tuple[int, list[str]]] = []
    param: str | None = None
    switching: list[tuple[str, int, int, str]] = []
    param_lines: dict[str, int] = {}
    for lineno, line in body:
        s = line.strip()
        if not s:
            if mode == "pump_rows":
                mode = None
            continue
        label = _LABEL_ONLY_RE.fullmatch(s)
        if label and mode != "pump_header":
            text = _norm(label.group(1))
            if text.startswith("pumpstates"):
                mode, param = "pump_header", None
            elif text.startswith("dynamicflow"):
                mode, param = "dynamic", None
            else:
                mode, param = "param", label.group(1)
                param_lines.setdefault(param, 0)
            continue
        if mode == "pump_header":
            pump_header, mode = _split_cells(s), "pump_rows"
        elif mode == "pump_rows":
            pump_rows.append((lineno, _split_cells(s)))
        elif mode == "param" and param is not None:
            row = param_lines[param]
            param_lines[param] += 1
            switching += [(param, row, i, v) for i, v in enumerate(_split_cells(s))]
        elif (kv := _LABEL_VALUE_RE.fullmatch(s)) is not None:
            out.key_values.append((kv.group(1), kv.group(2).rstrip(".").strip()))
        else:
            warn(lineno, f"flow control: unrecognised line {s[:60]!r}")
    if pump_header:
        table = _make_table(pump_header, pump_rows, warn, "pumps table")
        out.tables["pumps"] = table.frame
        for _, cells in table.rows:
            pump = cells[0]
            out.key_values += [
                (f"Pump {pump} {h}", cells[i])
                for i, h in enumerate(table.header[1:], 1)
                if cells[i]
            ]
    if switching:
        out.tables["switching"] = pd.DataFrame(
            {
                "parameter": pd.Series([r[0] for r in switching], dtype="str"),
                "line": pd.Series([r[1] for r in switching], dtype="int64"),
                "item": pd.Series([r[2] for r in switching], dtype="int64"),
                "value": _typed_column([r[3] for r in switching]),
            }
        )


# --------------------------------------------------------------------------------------- log file


@dataclass
class _LogResult:
    date: datetime | None = None
    microscope: str | None = None
    aim: str | None = None
    strains: list[str] = field(default_factory=list)
    authors: list[str] = field(default_factory=list)
    comments: str | None = None
    light_paths: dict[str, str] = field(default_factory=dict)
    omero_project: str | None = None
    tags: list[str] = field(default_factory=list)
    start: datetime | None = None
    key_values: list[tuple[str, str]] = field(default_factory=list)
    plane_times: list[PlaneTime] = field(default_factory=list)


def _iter_lines(fh: BinaryIO, warn: _Warner) -> Iterator[tuple[int, str]]:
    """Decoded, stripped lines; reads at most MAX_LINE_BYTES at a time so memory stays bounded."""
    lineno = 0
    while True:
        raw = fh.readline(MAX_LINE_BYTES)
        if not raw:
            return
        lineno += 1
        if len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (more := fh.readline(MAX_LINE_BYTES)) and not more.endswith(b"\n"):
                pass
            warn(lineno, f"line longer than {MAX_LINE_BYTES} bytes cut")
        # A lone CR inside a line (CR-CR-LF ends) is line-end noise, not content.
        yield lineno, _decode(raw).replace("\r", " ").strip()


def _clean_light_path(lines: list[str]) -> str:
    """MATLAB printed the light path as a cell array: drop its quotes and brackets, keep the steps."""
    out = [re.sub(r"[\"\[\]]", "", line).strip() for line in lines]
    return "\n".join(line for line in out if line)


def parse_log(path: Path, channel_names: list[str] | None = None) -> _LogResult:
    """Stream a ``*log.txt``: the header into fields, the body into per-plane acquisition times."""
    warn = _Warner(path)
    res = _LogResult()
    block: str | None = None  # header block being read: aim, strains, authors, comments, setup...
    block_lines: list[str] = []
    light_channel: str | None = None
    in_body = False
    t: int | None = None
    position: str | None = None
    names: dict[str, str] = {}  # one string object per name: 90,000 plane times share them
    planes: dict[tuple[str, int, str], PlaneTime] = {}

    def close_block() -> None:
        nonlocal block, block_lines, light_channel
        if block == "aim" and block_lines:
            res.aim = " ".join(block_lines)
        elif block == "comments" and block_lines:
            res.comments = "\n".join(block_lines)
        elif block == "setup" and light_channel is not None:
            res.light_paths[light_channel] = _clean_light_path(block_lines)
        block, block_lines, light_channel = None, [], None

    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; streamed, never read whole
    except OSError as exc:
        raise MetadataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with fh:
        for lineno, line in _iter_lines(fh, warn):
            if in_body:
                if not line:
                    continue
                if m := _CHANNEL_SET_RE.match(line):
                    when = parse_datetime(m.group(2))
                    channel = names.setdefault(m.group(1), sys.intern(m.group(1)))
                    if when is None:
                        warn(lineno, f"channel {channel} set at an unreadable time {m.group(2)!r}")
                    elif position is None or t is None:
                        warn(lineno, f"channel {channel} set before any position / timepoint")
                    else:
                        key = (position, t, channel)
                        planes[key] = PlaneTime(position=position, t=t, channel=channel, time=when)
                elif m := _POSITION_RE.match(line):
                    position = names.setdefault(m.group(2).strip(), sys.intern(m.group(2).strip()))
                elif m := _TIMEPOINT_RE.fullmatch(line):
                    t = int(m.group(1)) - 1
                continue

            # ---- header
            if not line:
                continue
            label, _, value = line.partition(":")
            kind = _LOG_LABELS.get(_norm(label)) if ":" in line else None
            if kind is None and _norm(line) in _LOG_LABELS and ":" not in line:
                kind, value = _LOG_LABELS[_norm(line)], ""  # e.g. "Strain" without the colon
            value = value.strip()
            if kind is not None:
                close_block()
                if kind == "start":
                    res.start = parse_datetime(value)
                    if res.start is None:
                        warn(lineno, f"experiment start {value!r} is not a date")
                    in_body = True
                elif kind == "microscope":
                    res.microscope = value or None
                elif kind == "mmconfig":
                    if value:
                        res.key_values.append(("Micromanager config file", value))
                elif kind in ("aim", "comments") and value:
                    block, block_lines = kind, [value]
                elif kind in ("project", "tags") and value:
                    _take_single(res, kind, value)
                elif kind != "details":
                    block = kind
                continue
            if block is None and _DATE_ONLY_RE.fullmatch(line):
                res.date = parse_datetime(line)
                continue
            if block in ("strains", "authors"):
                getattr(res, block).append(line)
            elif block in ("aim", "comments"):
                block_lines.append(line)
            elif block in ("project", "tags"):
                _take_single(res, block, line)
                block = None
            elif block == "setup":
                start = _LABEL_ONLY_RE.fullmatch(line)
                if start and not line.startswith("->"):
                    if light_channel is not None:
                        res.light_paths[light_channel] = _clean_light_path(block_lines)
                    light_channel = _known_name(start.group(1).strip(), channel_names)
                    block_lines = []
                elif light_channel is None:
                    warn(lineno, f"light path text before any channel name: {line[:60]!r}")
                else:
                    block_lines.append(line)
            elif ":" in line and (kv := _LABEL_VALUE_RE.fullmatch(line)):
                warn(lineno, f"unrecognised header entry {kv.group(1)!r} kept as a key-value pair")
                res.key_values.append((kv.group(1), kv.group(2).strip()))
            else:
                log.debug("%s:%d: header status line ignored: %r", path, lineno, line)
        close_block()
    if not in_body:
        warn(None, "no 'Experiment started at:' line; no per-plane times read")
    res.plane_times = list(planes.values())
    warn.finish()
    return res


def _known_name(name: str, channel_names: list[str] | None) -> str:
    """Spell a light-path channel label as the Acq channels table does, if it is one of them."""
    for known in channel_names or []:
        if known.lower() == name.lower():
            return known
    return name


def _take_single(res: _LogResult, kind: str, value: str) -> None:
    if kind == "project":
        res.omero_project = value
    else:  # "28-Sep-2018,Batgirl," : comma separated, the software leaves a trailing comma
        res.tags += [t.strip() for t in value.split(",") if t.strip() and t.strip() not in res.tags]


# --------------------------------------------------------------------------------------- parser


def _find(folder: Path, suffix: str) -> list[Path]:
    try:
        return sorted(
            p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffix)
        )
    except OSError:
        return []


def _peek(path: Path, *needles: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return any(n in head for n in needles)


def build_description(
    aim: str | None, comments: str | None, authors: list[str], strains: list[str]
) -> str | None:
    """The Image description: what a person browsing OMERO needs to know first."""
    parts = []
    if aim:
        parts.append(f"Aim: {aim}")
    if comments:
        parts.append(f"Comments: {comments}")
    if authors:
        parts.append("Authors: " + ", ".join(authors))
    if strains:
        parts.append("Strains: " + ", ".join(strains))
    return "\n".join(parts) or None


class SwainLabParser:
    """The Swain lab's ``*Acq.txt`` + ``*log.txt`` pair (either alone is accepted, with a warning)."""

    name = "swainlab"
    priority = 0
    supplement = False

    def detect(self, folder: Path) -> bool:
        folder = Path(folder)
        return any(_peek(p, "Channels:", "Points:") for p in _find(folder, "acq.txt")) or any(
            _peek(p, "Experiment details", "Microscope name is", "Experiment started at")
            for p in _find(folder, "log.txt")
        )

    def parse(self, folder: Path) -> ExperimentMetadata:
        folder = Path(folder)
        acqs, logs = _find(folder, "acq.txt"), _find(folder, "log.txt")
        if not acqs and not logs:
            raise MetadataError(f"{folder}: no *Acq.txt or *log.txt file found")
        acq_path = acqs[0] if acqs else None
        prefix = acq_path.name[: -len("acq.txt")].rstrip("_") if acq_path else None
        log_path = None
        if logs:
            same = [p for p in logs if prefix and p.name.lower().startswith(prefix.lower())]
            log_path = (same or logs)[0]
        if len(acqs) > 1 or len(logs) > 1:
            log.warning(
                "%s: several Acq/log files; using %s and %s",
                folder,
                acq_path and acq_path.name,
                log_path and log_path.name,
            )
        if acq_path is None:
            log.warning(
                "%s: no *Acq.txt file; channels, positions and z/time settings unknown", folder
            )
        if log_path is None:
            log.warning("%s: no *log.txt file; description, tags and plane times unknown", folder)

        acq = parse_acq(acq_path) if acq_path else _AcqResult()
        lg = parse_log(log_path, [c.name for c in acq.channels]) if log_path else _LogResult()

        channels = acq.channels
        for ch_name, text in lg.light_paths.items():
            ch = next((c for c in channels if c.name.lower() == ch_name.lower()), None)
            if ch is None:
                ch = Channel(name=ch_name)
                channels.append(ch)
            ch.light_path = text
            _wavelengths_from_light_path(ch)

        kv: list[tuple[str, str]] = []
        if lg.microscope:
            kv.append(("Microscope", lg.microscope))
        if lg.aim:
            kv.append(("Aim", lg.aim))
        kv += [("Strain", s) for s in lg.strains]
        kv += [("Author", a) for a in lg.authors]
        if lg.comments:
            kv.append(("Comments", lg.comments))
        if lg.omero_project:
            kv.append(("Project", lg.omero_project))
        if lg.date:
            kv.append(("Date", lg.date.date().isoformat()))
        kv += [(f"Light path {ch.name}", ch.light_path) for ch in channels if ch.light_path]
        kv += lg.key_values + acq.key_values

        name = prefix or (log_path.name[: -len("log.txt")].rstrip("_") if log_path else None)
        start = lg.start or (min(p.time for p in lg.plane_times) if lg.plane_times else lg.date)
        return ExperimentMetadata(
            sources=[self.name],
            name=name or folder.name,
            description=build_description(lg.aim, lg.comments, lg.authors, lg.strains),
            aim=lg.aim,
            authors=lg.authors,
            strains=lg.strains,
            comments=lg.comments,
            tags=lg.tags,
            key_values=kv,
            tables=acq.tables,
            channels=channels,
            z=acq.z,
            time=acq.time,
            positions=acq.positions,
            acquisition_start=start,
            microscope=lg.microscope,
            omero_project=lg.omero_project,
            plane_times=lg.plane_times,
        )


def _wavelengths_from_light_path(ch: Channel) -> None:
    """A fluorescence light path names its LED ("470nm LED") and emission filter ("535/50")."""
    if not ch.light_path:
        return
    first = ch.light_path.splitlines()[0]
    ex = _EXCITATION_RE.search(first)
    if ex and ch.excitation_wavelength_nm is None:
        ch.excitation_wavelength_nm = float(ex.group(1))
        em = _EMISSION_RE.search(ch.light_path)
        if em and ch.emission_wavelength_nm is None:
            ch.emission_wavelength_nm = float(em.group(1))


__all__ = ["SwainLabParser", "build_description", "parse_acq", "parse_datetime", "parse_log"]

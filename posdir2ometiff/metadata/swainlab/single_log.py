"""The newer Swain-lab software's single ``.log`` file: settings and events in one file.

Its header, as the aliby project's ``logfile_parser/swainlab_parser.py`` reads it (and its example
``examples/parsers/swainlab_logfile_header_example.log``), is Python ``logging`` output::

    2022-10-10 15:31:27,350 - INFO
    Swain Lab microscope experiment log file
    GIT commit: e5d5e33 fix: ...
    Microscope name: Batman
    Date: 2022-10-10 15:31:27
    Log file path: D:\\...\\exp.log
    Omero project: Default project
    Experiment details: free text
    -----Acquisition settings-----
    2022-10-10 15:31:27,350 - INFO Image Configs:
    Image config,Channel,Description,Exposure (ms), Number of Z sections,Z spacing (um),Sectioning method
    brightfield1,Brightfield,Default bright field config,30,5,0.6,PIFOC
    Device properties:
    Image config,device,property,value
    group: YST_247 field: position
    Name, X, Y, Z, Autofocus offset
    YST_247_001,-8968,-3319,2731.125,123.25
    group: YST_247 field: time
    start: 0
    interval: 300
    frames: 180
    -----Experiment started-----

It reaches the same model as the Acq/log pair: an image config is a channel (named as the config,
the hardware channel kept in ``extra``; the images are named after the config, as aliby's
``to_legacy`` takes it), each group's position table gives stage positions (their group is the
group's name), the time fields the interval and timepoints, the device properties voltages,
gains and binning. The events after ``-----Experiment started-----`` are not read (their layout is
not published); the start time is the time stamp of that line.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from pathlib import Path

import pandas as pd

from posdir2ometiff.metadata.model import (
    Channel,
    ExperimentMetadata,
    StagePosition,
    TimeSettings,
    ZSectioning,
)
from posdir2ometiff.metadata.plugins import MetadataError
from posdir2ometiff.metadata.swainlab.acq import SECTIONING_METHODS, first_slice_steps, ome_binning
from posdir2ometiff.metadata.swainlab.log_header import HeaderReader, LogHeader
from posdir2ometiff.metadata.swainlab.parser import _find, _peek, build_description
from posdir2ometiff.metadata.swainlab.text import (
    _float,
    _iter_lines,
    _make_table,
    _norm,
    _number,
    _split_cells,
    _Table,
    _Warner,
)

log = logging.getLogger(__name__)

ACQ_START = "-----Acquisition settings-----"
EXPERIMENT_START = "-----Experiment started-----"
#: Lines read at most before the experiment starts (aliby's MAX_NLINES; a damaged file stops here).
MAX_HEADER_LINES = 5000

_PREFIX_RE = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:,\d+)?\s+-\s+[A-Z]+\s?")
_GROUP_RE = re.compile(r"group\s*:\s*(\S+)\s+field\s*:\s*(\w+)", re.IGNORECASE)
_TABLE_LABEL_RE = re.compile(r"([A-Za-z][A-Za-z ]*?)\s*:")


class _Settings:
    """The acquisition-settings section: labelled tables and per-group position/time fields."""

    def __init__(self, warn: _Warner) -> None:
        self.warn = warn
        self.tables: dict[str, tuple[list[str], list[tuple[int, list[str]]]]] = {}
        self.groups: dict[str, dict[str, str]] = {}
        self.positions: list[tuple[str, list[str], tuple[int, list[str]]]] = []
        self.current: str | None = None  # table name, or "group:NAME:field"
        self.header: list[str] | None = None

    def feed(self, lineno: int, line: str) -> None:
        if not line:
            self.current, self.header = None, None
            return
        if m := _GROUP_RE.fullmatch(line):
            group, what = m.group(1), m.group(2).lower()
            self.current, self.header = f"group:{group}:{what}", None
            self.groups.setdefault(group, {})
            return
        if (m := _TABLE_LABEL_RE.fullmatch(line)) is not None:
            self.current, self.header = _norm(m.group(1)), None
            self.tables.setdefault(self.current, ([], []))
            return
        if self.current is None:
            self.warn(lineno, f"settings line outside any table: {line[:60]!r}")
        elif self.current.startswith("group:"):
            self._group_line(lineno, line)
        elif self.header is None:
            self.header = _split_cells(line)
            self.tables[self.current] = (self.header, [])
        else:
            self.tables[self.current][1].append((lineno, _split_cells(line)))

    def _group_line(self, lineno: int, line: str) -> None:
        assert self.current is not None
        _, group, what = self.current.split(":", 2)
        if what == "position":
            if self.header is None:
                self.header = _split_cells(line)
            else:
                self.positions.append((group, self.header, (lineno, _split_cells(line))))
        else:
            key, sep, value = line.partition(":")
            if sep:
                self.groups[group][f"{what}.{key.strip().lower()}"] = value.strip()
            else:
                self.warn(lineno, f"group {group} {what}: not a 'key: value' line")


def _table(settings: _Settings, name: str, warn: _Warner) -> _Table | None:
    header, rows = settings.tables.get(name, ([], []))
    return _make_table(header, rows, warn, f"{name} table") if header else None


def _channels(configs: _Table | None, devices: _Table | None, warn: _Warner) -> list[Channel]:
    if configs is None:
        warn(None, "no 'Image Configs:' table; channels unknown")
        return []
    name_i = configs.col("imageconfig") or 0
    exp_i = configs.col("exposurems", "exposure")
    used = {name_i, exp_i}
    channels = []
    for _, cells in configs.rows:
        if not cells[name_i]:
            continue
        channels.append(
            Channel(
                name=cells[name_i],
                exposure_ms=_float(cells[exp_i]) if exp_i is not None else None,
                extra={h: cells[i] for i, h in enumerate(configs.header) if i not in used},
            )
        )
    by_name = {c.name.lower(): c for c in channels}
    if devices is not None:
        c_i, d_i, p_i, v_i = (devices.col(x) for x in ("imageconfig", "device", "property", "value"))
        if None in (c_i, d_i, p_i, v_i):
            warn(None, "device properties table lacks Image config/device/property/value columns")
            return channels
        for lineno, cells in devices.rows:
            ch = by_name.get(cells[c_i].lower())
            if ch is None:
                warn(lineno, f"device property of unknown image config {cells[c_i]!r}")
                continue
            prop, value = _norm(cells[p_i]), cells[v_i]
            if prop in ("volts", "voltage"):
                ch.voltage = _float(value)
            elif prop in ("binning", "bin"):
                ch.binning = ome_binning(value)
            elif prop in ("emgain", "gain", "multipliergain"):
                ch.gain = _float(value)
            elif prop in ("mode", "cameramode", "port"):
                ch.camera_mode = value or None
            ch.extra[f"{cells[d_i]} {cells[p_i]}"] = value
    return channels


def _z(configs: _Table | None) -> ZSectioning | None:
    """The deepest stack of the image configs (every position gets the experiment's SizeZ)."""
    if configs is None:
        return None
    n_i = configs.col("numberofzsections", "zsections", "sections")
    s_i = configs.col("zspacingum", "zspacing", "spacing")
    m_i = configs.col("sectioningmethod", "method")
    best: tuple[int, list[str]] | None = None
    for _, cells in configs.rows:
        n = _number(cells[n_i]) if n_i is not None else None
        if isinstance(n, int) and (best is None or n > best[0]):
            best = (n, cells)
    if best is None:
        return None
    count, cells = best
    method = (cells[m_i] or None) if m_i is not None else None
    return ZSectioning(
        count=count,
        spacing_um=_float(cells[s_i]) if s_i is not None else None,
        method=method,
        first_slice_steps=first_slice_steps(method, count),
    )


def _positions(settings: _Settings, warn: _Warner) -> tuple[list[StagePosition], pd.DataFrame]:
    out: list[StagePosition] = []
    rows: list[dict[str, str]] = []
    for group, header, (lineno, cells) in settings.positions:
        table = _make_table(header, [(lineno, cells)], warn, f"group {group} positions")
        _, fitted = table.rows[0]
        cols = {_norm(h): i for i, h in enumerate(table.header)}
        name = fitted[cols.get("name", 0)]
        if not name:
            warn(lineno, "position without a name skipped")
            continue
        known = {cols.get(k) for k in ("name", "x", "y", "z")}
        out.append(
            StagePosition(
                name=name,
                x_um=_float(fitted[cols["x"]]) if "x" in cols else None,
                y_um=_float(fitted[cols["y"]]) if "y" in cols else None,
                z_um=_float(fitted[cols["z"]]) if "z" in cols else None,
                group=group,
                extra={h: fitted[i] for i, h in enumerate(table.header) if i not in known},
            )
        )
        rows.append({"group": group, **dict(zip(table.header, fitted, strict=True))})
    frame = pd.DataFrame(rows).astype("str") if rows else pd.DataFrame()
    return out, frame


def _time(settings: _Settings, warn: _Warner) -> TimeSettings | None:
    found = {
        (g.get("time.interval"), g.get("time.frames")) for g in settings.groups.values() if g
    }
    found.discard((None, None))
    if not found:
        return None
    if len(found) > 1:
        warn(None, f"groups have different time settings {sorted(found, key=str)}; first used")
    interval, frames = sorted(found, key=str)[0]
    n = _number(frames or "")
    ts = TimeSettings(
        interval_s=_float(interval), timepoints=n if isinstance(n, int) else None
    )
    if ts.interval_s is not None and ts.interval_s <= 0:
        ts.interval_s = None
    return ts


def parse_single_log(path: Path) -> ExperimentMetadata:
    """Read the header and settings of a single-file ``.log`` into the model."""
    warn = _Warner(path)
    head = LogHeader()
    reader = HeaderReader(head, warn, path, None)
    settings = _Settings(warn)
    extra_kv: list[tuple[str, str]] = []
    section = "general"
    stamp: datetime | None = None
    start: datetime | None = None
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; streamed
    except OSError as exc:
        raise MetadataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with fh:
        for lineno, raw in _iter_lines(fh, warn):
            if lineno > MAX_HEADER_LINES:
                warn(lineno, f"no '{EXPERIMENT_START}' in the first {MAX_HEADER_LINES} lines")
                break
            line = raw
            if m := _PREFIX_RE.match(raw):
                stamp = _iso(m.group(1)) or stamp
                line = raw[m.end() :].strip()
            if line == ACQ_START:
                reader.finish()
                section = "settings"
            elif line == EXPERIMENT_START:
                start = stamp
                break
            elif section == "general":
                _general_line(lineno, line, reader, head, extra_kv, warn)
            else:
                settings.feed(lineno, line)
    if section == "general":
        reader.finish()
        warn(None, f"no '{ACQ_START}' section: channels, positions and times unknown")
    meta = _to_model(path, head, settings, extra_kv, start, warn)
    warn.finish()
    return meta


def _iso(text: str) -> datetime | None:
    """``2022-10-10 15:31:27`` (the logging module's time stamps), or None if it is not one."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _general_line(
    lineno: int,
    line: str,
    reader: HeaderReader,
    head: LogHeader,
    extra_kv: list[tuple[str, str]],
    warn: _Warner,
) -> None:
    """The general part: the fields the Acq/log pair also has go through its header reader."""
    label, sep, value = line.partition(":")
    key = _norm(label) if sep else ""
    if key == "date":
        head.date = _iso(value.strip())
        if head.date is None:
            warn(lineno, f"date {value.strip()!r} is not an ISO date")
    elif key == "logfilepath":
        extra_kv.append(("Log file", value.strip()))
    elif key in ("omerotags", "omeroproject") and not value.strip():
        reader.close_block()  # an empty field, not a block waiting for the next line
    else:
        reader.feed(lineno, line)


def _to_model(
    path: Path,
    head: LogHeader,
    settings: _Settings,
    extra_kv: list[tuple[str, str]],
    start: datetime | None,
    warn: _Warner,
) -> ExperimentMetadata:
    configs = _table(settings, "imageconfigs", warn)
    devices = _table(settings, "deviceproperties", warn)
    channels = _channels(configs, devices, warn)
    positions, pos_frame = _positions(settings, warn)
    z = _z(configs)
    time = _time(settings, warn)
    tables = {}
    if configs is not None:
        tables["image_configs"] = configs.frame
    if devices is not None:
        tables["device_properties"] = devices.frame
    if not pos_frame.empty:
        tables["positions"] = pos_frame
    kv: list[tuple[str, str]] = []
    if head.microscope:
        kv.append(("Microscope", head.microscope))
    if head.details:
        kv.append(("Experiment details", head.details))
    if head.omero_project:
        kv.append(("Project", head.omero_project))
    if head.date:
        kv.append(("Date", head.date.date().isoformat()))
    for ch in channels:
        kv += [(f"{ch.name} {k}", v) for k, v in ch.extra.items() if v]
    if z is not None and z.method:
        kv.append(("Z sectioning method", SECTIONING_METHODS.get(z.method, z.method)))
    if time is not None and time.interval_s is not None:
        kv.append(("Time interval (s)", f"{time.interval_s:g}"))
    kv += head.key_values + extra_kv + head.provenance
    return ExperimentMetadata(
        sources=[SwainLabLogParser.name],
        name=path.stem,
        description=build_description(
            head.aim, head.comments, head.authors, head.strains, head.details
        ),
        aim=head.aim,
        authors=head.authors,
        strains=head.strains,
        comments=head.comments,
        tags=head.tags,
        key_values=kv,
        tables=tables,
        channels=channels,
        z=z,
        time=time,
        positions=positions,
        acquisition_start=start or head.date,
        microscope=head.microscope,
        omero_project=head.omero_project,
    )


class SwainLabLogParser:
    """The newer software's single ``*.log`` (``-----Acquisition settings-----`` sections)."""

    name = "swainlab-log"
    #: Tried before the Acq/log pair: a folder with such a ``.log`` is of the newer software.
    priority = 1
    supplement = False

    def detect(self, folder: Path) -> bool:
        return any(_peek(p, ACQ_START) for p in _find(Path(folder), ".log"))

    def parse(self, folder: Path) -> ExperimentMetadata:
        folder = Path(folder)
        logs = [p for p in _find(folder, ".log") if _peek(p, ACQ_START)]
        if not logs:
            raise MetadataError(f"{folder}: no *.log file with a '{ACQ_START}' section found")
        if len(logs) > 1:
            log.warning("%s: several single-file logs; using %s", folder, logs[0].name)
        return parse_single_log(logs[0])

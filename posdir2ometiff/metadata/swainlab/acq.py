"""The ``*Acq.txt`` settings file: sections, generic typed tables, and the model fields they fill.

``*Acq.txt`` holds the settings as sections (``Channels:``, ``Z_sectioning:``, ``Time_settings:``,
``Points:``, ``Flow_control:`` ...), most of them comma-separated tables with a header row. They are
read generically: every column named by its header row (never by a list of channel names in this
code, which is how the tool we replace lost the sample's DIC channel), typed from its values (int64,
float64 or str), and kept whole in ``meta.tables``; the model's typed fields are filled from the
columns whose header we recognise, the rest go to ``extra``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from posdir2ometiff.metadata.model import Channel, StagePosition, TimeSettings, ZSectioning
from posdir2ometiff.metadata.swainlab.text import (
    _LABEL_ONLY_RE,
    _LABEL_VALUE_RE,
    _float,
    _make_table,
    _norm,
    _number,
    _read_text_lines,
    _split_cells,
    _Table,
    _typed_column,
    _Warner,
)

#: ``Time_settings`` is one headerless row written by the acquisition software:
#: time-lapse on (1/0), interval (s), number of timepoints, total duration (s); 300 s × 288 = 86400 s.
TIME_SETTINGS_COLUMNS = ["timelapse", "interval_s", "timepoints", "duration_s"]

#: Acq sections whose layout is special; any other section is read as a generic table.
KNOWN_ACQ_SECTIONS = {"channels", "z_sectioning", "time_settings", "points", "flow_control"}

_ACQ_SECTION_RE = re.compile(r"([A-Za-z][A-Za-z0-9_]*)\s*:")


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
    bin_i = table.col("binning", "bin", "camerabinning")
    used = {name_i, exp_i, mode_i, gain_i, volt_i, bin_i}
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
            binning=ome_binning(cells[bin_i]) if bin_i is not None else None,
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
    m_i = table.col("method", "sectioningmethod")
    count = _number(cells[n_i]) if n_i is not None else None
    method = (cells[m_i] or None) if m_i is not None else None
    z = ZSectioning(
        count=count if isinstance(count, int) else None,
        spacing_um=_float(cells[s_i]) if s_i is not None else None,
        method=method,
        extra={h: cells[i] for i, h in enumerate(table.header) if i not in (n_i, s_i, m_i)},
    )
    if z.count is not None:
        z.first_slice_steps = first_slice_steps(method, z.count)
        kv.append(("Z sections", str(z.count)))
    if z.spacing_um is not None:
        kv.append(("Z spacing (µm)", f"{z.spacing_um:g}"))
    if method is not None:
        kv.append(("Z sectioning method", SECTIONING_METHODS.get(method, method)))
    return z


#: The Acq file's sectioning method codes, as the GUI names them (multiDGUI.m, zMethod_Callback).
SECTIONING_METHODS = {"1": "PIFOC", "2": "PIFOC with PFS on", "3": "PFS"}


def first_slice_steps(method: str | None, count: int) -> float | None:
    """Where slice 0 lies relative to the stage Z the software recorded, in z steps.

    Follows pswain/Acquisition: method 1 (``@Batman/captureStackPIFOC.m``, ``@Batgirl/
    captureStack.m``: slice k at ``centre - (n-1)/2·step + k·step``) centres the stack on the
    recorded position; method 2 (PFS kept on, ``@Batman/captureStackPFSOn.m``: slice k at
    ``(k - floor(n/2))·step``) centres it on its middle slice, which differs for an even count;
    the newer software's "PIFOC" (and "Z stage") is taken as method 1. Any other method (3,
    "PFS") starts the stack at the position, as the original ``captureStack.m`` does (slice k at
    ``start + k·step``). None when the method is not recorded.
    """
    if method is None:
        return None
    low = method.strip().lower()
    if low in ("1", "pifoc", "z stage", "zstage"):
        return -(count - 1) / 2
    if low in ("2", "pifoc with pfs on", "z stage with pfs on"):
        return -float(count // 2)
    return 0.0


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


def ome_binning(text: str) -> str | None:
    """``2`` or ``2x2`` → OME's "2x2"; anything else kept as written; empty → None."""
    s = text.strip().lower().replace(" ", "")
    if not s:
        return None
    if s.isdigit():
        return f"{s}x{s}"
    return s

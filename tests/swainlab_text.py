"""Synthetic Swain-lab ``*Acq.txt`` / ``*log.txt`` text for the metadata tests.

Generated (not copied from the shared sample) so tests can vary what the real files fix: channel
names and columns, number of positions and timepoints, log size, damaged lines. The layout follows
the shared sample (../shared/samples/swainlab-demo) line for line.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def stamp(t: datetime) -> str:
    """MATLAB's datestr default, in English whatever the locale: 28-Sep-2018 17:18:14."""
    return f"{t.day:02d}-{MONTHS[t.month - 1]}-{t.year} {t:%H:%M:%S}"


def acq_text(
    channels: Sequence[str] = ("Brightfield", "DIC", "GFP"),
    n_positions: int = 3,
    extra_channel_column: str | None = None,
    sections: Sequence[str] = ("channels", "z", "time", "points", "flow"),
) -> str:
    """An Acq file; ``extra_channel_column`` adds a column the parser has never heard of."""
    out: list[str] = []
    if "channels" in sections:
        head = (
            "Channel name, Exposure time, Skip, Z sect., Start time, Camera mode, EM gain, Voltage"
        )
        out += ["Channels:", head + (f", {extra_channel_column}" if extra_channel_column else "")]
        for i, ch in enumerate(channels):
            row = f"{ch:>12}, {10 * (i + 1):>5}, 1, 1, 1, 2, 270, 1.000"
            out.append(row + (f", x{i}" if extra_channel_column else ""))
    if "z" in sections:
        out += [
            "Z_sectioning:",
            "Sections,Spacing,PFSon?,AnyZ?,Drift,Method",
            "3, 0.50, 0, 1, 0, 2",
        ]
    if "time" in sections:
        out += ["Time_settings:", "1,120,50,6000"]
    if "points" in sections:
        out += [
            "Points:",
            "Position name, X position, Y position, Z position, PFS offset, Group, "
            + ", ".join(channels),
        ]
        for p in range(n_positions):
            exps = ", ".join(str(5 * (c + 1) + p) for c in range(len(channels)))
            out.append(
                f"pos{p + 1:03d}, {1000.5 + p}, {2000.25 - p}, 3000.0, 19.2, {p // 2 + 1}, {exps}"
            )
        out.append("")
    if "flow" in sections:
        out += [
            "Flow_control:",
            "Syringe pump details: 2 pumps.",
            "Pump states at beginning of experiment:",
            "Pump port, Diameter, Current rate, Direction, Running, Contents",
            "COM5, 14.43, 4.00, INF, 1, 2% glucose in SC",
            "COM6, 14.43, 0.00, INF, 0, 2% raffinose in SC",
            "",
            "Dynamic flow details:",
            "Number of pump changes:",
            "2",
            "Times:",
            "0,600",
            "Flow post switch:",
            "0.4",
            "4",
        ]
    return "\r\n".join(out) + "\r\n"


def log_header(
    channels: Sequence[str] = ("Brightfield", "DIC", "GFP"),
    start: datetime = datetime(2018, 9, 28, 17, 18, 14),
) -> list[str]:
    lines = [
        f"{stamp(start).split()[0]}",
        "Microscope name is: Batman",
        "Experiment details:",
        "Aim: Test the parser",
        "Strain:",
        "Mig1-GFP",
        "Msn2-mCherry",
        "Authors:",
        "Ada Lovelace",
        "Comments:",
        "First line of comments.",
        "Second line.",
        "Microscope setup for used channels:",
    ]
    for ch in channels:
        lines += [f"{ch}:", '"488nm LED', '->Filter block:["525/50 emission filter]']
    lines += [
        "Micromanager config file:C:\\config\\scope.txt",
        "Omero project:",
        "Parser tests",
        "Omero tags:",
        "tagA, ,tagB,",
        "PFS is locked",
        "",
        f"Experiment started at:{stamp(start)}",
        "",
    ]
    return lines


def write_log(
    path: Path,
    channels: Sequence[str] = ("Brightfield", "DIC", "GFP"),
    n_positions: int = 3,
    n_timepoints: int = 2,
    chatter: int = 2,
    start: datetime = datetime(2018, 9, 28, 17, 18, 14),
    encoding: str = "utf-8",
) -> Path:
    """Write a log streaming to disk; ``chatter`` lines of noise per channel (real logs: ~20)."""
    when = start
    with open(path, "w", encoding=encoding, newline="\r\n") as fh:
        fh.write("\n".join(log_header(channels, start)) + "\n")
        for t in range(n_timepoints):
            fh.write(f"\n------Time point_{t + 1}------\n\n")
            for p in range(n_positions):
                fh.write(f"Position:{p + 1},pos{p + 1:03d}\n\nPosition group:1\n\n")
                for ch in channels:
                    when += timedelta(seconds=1)
                    fh.write(f"Channel configuration set to: {ch}: {stamp(when)}\n\n")
                    fh.write(f"Channel:{ch} set at:{stamp(when)}\n\n")
                    for k in range(chatter):
                        fh.write(
                            f"captureStack (Batman). Z drive position before stack capture is: "
                            f"{3000 + k}.25. {stamp(when)}\n\n"
                        )
            fh.write(f"Timepoint:{t + 1} completed at:{stamp(when)}\n\n")
    return path


def write_experiment(
    folder: Path,
    channels: Sequence[str] = ("Brightfield", "DIC", "GFP"),
    n_positions: int = 3,
    n_timepoints: int = 2,
    **acq_kwargs,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exp_Acq.txt").write_bytes(acq_text(channels, n_positions, **acq_kwargs).encode())
    write_log(folder / "exp_log.txt", channels, n_positions, n_timepoints)
    return folder

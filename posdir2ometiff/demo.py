"""Synthetic experiment in the lab's exact layout, for the README demo, the tests and the benchmark.

Writes ``posNNN/{prefix}_{t:06d}_{channel}_{z:03d}.png`` planes (blob-like "cells" that drift and
go in and out of focus, plus noise, so the data compresses like real images rather than like a
constant) and the two text files the acquisition software writes, ``{prefix}_Acq.txt`` and
``{prefix}_log.txt``, with the same sections, column layout and CRLF line endings as the lab's
files (see ``../shared/samples/swainlab-demo``), but generated values. float32 planes are written
as TIFF because PNG cannot hold floating point.

It also writes what real acquisitions do (issue 10), each on request: a position that missed the
experiment's first timepoint (``missed_first``: no files, nothing logged), captures that failed
(``failed``: no files, the software's "NO IMAGE CAPTURED" warning after the channel line),
positions of the points table with no folder (``absent``), the 2020 header (``header="2020"``: the
software's name/commit/uncommitted-changes lines, ``Acquisition settings are saved in:`` with a
Windows path on the next line, the empty ``Aim:   Strain:   Comments:   `` line, light paths with
filters), and the newer software's single ``.log`` (``fmt="log"``). The log records a focus drive
that drifts 0.25 µm per timepoint below the points table's Z, as real drives do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

logger = logging.getLogger(__name__)

DEFAULT_CHANNELS = ("Brightfield", "DIC", "GFP")
_EXPOSURES = {"brightfield": 30, "dic": 30, "gfp": 60, "mcherry": 100, "cy5": 200}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass
class DemoSpec:
    """What :func:`make_demo` generates (kept so tests can compare against it)."""

    folder: Path
    positions: list[str]
    channels: list[str]
    z: int
    t: int
    size: int
    dtype: str
    prefix: str
    interval_s: float
    z_spacing_um: float
    start: datetime
    #: Positions with no planes (and no log entries) at the first timepoint.
    missed_first: tuple[str, ...] = ()
    #: (position, 0-based t, channel) stacks the log says were not captured (no files).
    failed: tuple[tuple[str, int, str], ...] = ()
    #: Positions in the points table with no folder.
    absent: tuple[str, ...] = ()
    header: str = "sample"
    fmt: str = "txt"

    def drive_z(self, stage_z: float, t: int) -> float:
        """The focus drive position the log records before a stack at 0-based timepoint ``t``."""
        return round(stage_z - 0.25 * t, 4)

    def captured(self, pos: str, t: int, channel: str) -> bool:
        """Was this channel's stack written (files exist) at this position and timepoint?"""
        return not (t == 0 and pos in self.missed_first) and (pos, t, channel) not in self.failed


def _stamp(when: datetime) -> str:
    """The lab software's date format: 28-Sep-2018 17:18:14."""
    return f"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year} {when:%H:%M:%S}"


def _blobs(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """A float image in [0, 1] with ``n`` gaussian blobs (cell-like objects)."""
    img = np.zeros((size, size), np.float32)
    radius = max(2, size // 40)
    k = np.arange(-3 * radius, 3 * radius + 1, dtype=np.float32)
    for _ in range(n):
        sigma = radius * rng.uniform(0.6, 1.4)
        kern = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * sigma**2)) * rng.uniform(0.4, 1)
        y, x = rng.integers(0, size, 2)
        y0, x0 = y - 3 * radius, x - 3 * radius
        ys, xs = slice(max(y0, 0), min(y0 + kern.shape[0], size)), slice(
            max(x0, 0), min(x0 + kern.shape[1], size)
        )
        img[ys, xs] += kern[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return np.clip(img, 0, 1)


def _plane(
    base: np.ndarray, rng: np.random.Generator, t: int, z: int, nz: int, dtype: np.dtype,
    brightfield: bool,
) -> np.ndarray:
    """One plane: the base blobs drifted by t, dimmer out of focus, with noise."""
    focus = 1.0 - abs(z - (nz - 1) / 2) / max(nz, 1)
    img = np.roll(base, (t % base.shape[0], (2 * t) % base.shape[1]), axis=(0, 1)) * focus
    if brightfield:
        img = 0.7 - 0.4 * img
    if dtype.kind == "f":
        return (img + rng.normal(0, 0.01, img.shape)).astype(dtype)
    top = 255 if dtype.itemsize == 1 else 4000
    noise = rng.integers(0, top // 40 + 1, img.shape, dtype=np.int32)
    return np.clip(img * top + top // 20 + noise, 0, np.iinfo(dtype).max).astype(dtype)


def _acq_text(spec: DemoSpec, stage: list[tuple[float, float, float]], exposures: list[list[int]]) -> str:
    ch_rows = "\n".join(
        f"{c:>12},{_EXPOSURES.get(c.lower(), 50):>14},{1:>6},{1:>8},{1:>11},"
        f"{2 if i < len(spec.channels) - 1 else 3:>12},{270:>8},{1.0:>8.3f}"
        for i, c in enumerate(spec.channels)
    )
    head = ", ".join(["Position name", "X position", "Y position", "Z position", "PFS offset",
                      "Group"] + [f"{c:>10}" for c in spec.channels])
    pos_rows = "\n".join(
        f"{p:>13},{x:>11.2f},{y:>11.2f},{z:>11.3f},{19.225:>11.3f},{i // 5 + 1:>6},"
        + ",".join(f"{e:>11}" for e in exposures[i])
        for i, (p, (x, y, z)) in enumerate(
            zip(spec.positions + list(spec.absent), stage, strict=True)
        )
    )
    duration = int(spec.interval_s * spec.t)
    return f"""Channels:
Channel name, Exposure time, Skip, Z sect., Start time, Camera mode, EM gain, Voltage
{ch_rows}
Z_sectioning:
Sections,Spacing,PFSon?,AnyZ?,Drift,Method
{spec.z:>8},{spec.z_spacing_um:>7.2f},{0:>6},{1:>5},{0:>5},{2:>6}
Time_settings:
1,{int(spec.interval_s)},{spec.t},{duration}
Points:
{head}
{pos_rows}

Flow_control:
Syringe pump details: 2 pumps.
Pump states at beginning of experiment:
Pump port, Diameter, Current rate, Direction, Running, Contents
     COM5,    14.43,         4.00,       INF,       1, 2% glucose in SC
     COM6,    14.43,         4.00,       INF,       0, No media

Dynamic flow details:
Number of pump changes:
0
Switching parameters:
Infuse/withdraw volumes:
50
Infuse/withdraw rates:
100
Times:
0
Switched to:
0
Switched from:
0
Flow post switch:
0.4
4
"""


def _log_text(spec: DemoSpec, stage: list[tuple[float, float, float]], exposures: list[list[int]]) -> str:
    start = spec.start
    day = f"{start.day:02d}-{_MONTHS[start.month - 1]}-{start.year}"
    if spec.header == "2020":
        lines = [
            "Swain Lab microscope experiment log file",
            "Swain lab microscope control software - MultiDGUI commit number:"
            "05903fb3769ccf612e7801b46e2248644ce7ca28",
            "Warning! - there are uncommitted changes - software may be different from the "
            "above commit",
            day,
            "Microscope name is: Demoscope",
            "Acquisition settings are saved in:",
            f"C:\\Users\\Public\\Demo\\{spec.prefix}_00\\{spec.prefix}_Acq.txt",
            "Experiment details:",
            "Aim:   Strain:   Comments:   ",
            "Microscope setup for used channels:",
        ]
    else:
        lines = [
            day,
            "Microscope name is: Demoscope",
            "Experiment details:",
            "Aim: Synthetic demo experiment generated by posdir2ometiff",
            "Strain:",
            "Demo1-GFP",
            "Demo2-GFP",
            "Authors:",
            "Demo Author",
            "Comments:",
            "Generated data; blobs drift and change focus.",
            "Microscope setup for used channels:",
        ]
    for c in spec.channels:
        lines += [f"{c}:", *_light_path(c, spec.header)]
    lines += [
        "Micromanager config file:C:\\Users\\Public\\demo_config.txt",
        "Omero project:",
        "Demo project",
        "Omero tags:",
        f"{start.day:02d}-{_MONTHS[start.month - 1]}-{start.year},Demoscope,",
        "PFS is locked",
        "",
        f"Experiment started at:{_stamp(start)}",
        "",
        "",
        "",
    ]
    for t in range(spec.t):
        now = start + timedelta(seconds=t * spec.interval_s)
        lines += [f"------Time point_{t + 1}------", "",
                  "Memory available for all arrays: 62851526656", ""]
        for i, pos in enumerate(spec.positions):
            if t == 0 and pos in spec.missed_first:
                continue  # the stage never got there: nothing logged, no files
            x, y, z = stage[i]
            lines += [f"Position:{i + 1},{pos}", "", f"Position group:{i // 5 + 1}", "",
                      f"Moved to X:{x:.1f}, Y:{y:.1f}", "",
                      f"readDrift script. Reference z position is:{z:.4f}", ""]
            for c, ch in enumerate(spec.channels):
                lines += [
                    f"Channel configuration set to: {ch}: {_stamp(now)}", "",
                    f"Channel:{ch} set at:{_stamp(now)}", "",
                    f"Exposure time:{exposures[i][c]}ms", "",
                ]
                if (pos, t, ch) in spec.failed:
                    lines += [_FAILED_CAPTURE, _FAILED_DETAIL,
                              "\tat mmcorej.MMCoreJJNI.CMMCore_waitForSystem(Native Method)", ""]
                else:
                    lines += [
                        "captureStack (Demo). Z drive position before stack capture is: "
                        f"{spec.drive_z(z, t):.4f}. {_stamp(now)}", "",
                    ]
                now += timedelta(seconds=1)
        done = start + timedelta(seconds=t * spec.interval_s + 2 * len(spec.positions))
        lines += [f"Timepoint:{t + 1} completed at:{_stamp(done)}", "",
                  f"Time since start of timelapse:{(done - start).total_seconds():.4f}", "",
                  "PFS is locked", "", ""]
    return "\r\n".join(lines) + "\r\n"


#: The software's warning after a channel it could not capture, and the exception line after it
#: (as in the logs aliby's examples/logfile_parser/example_multiDGUI_log.txt shows).
_FAILED_CAPTURE = ("WARNING - ERROR CAUGHT - NO IMAGE CAPTURED TO THIS CHANNEL AND TIMEPOINT. "
                   "Error message:Java exception occurred: ")
_FAILED_DETAIL = 'java.lang.Exception: Wait for device "XYStage" timed out after 5000ms'
#: Reason the parser reads from those two lines.
FAILED_REASON = f"Java exception occurred: {_FAILED_DETAIL}"


def _light_path(channel: str, header: str) -> list[str]:
    """The channel's light path lines; the 2020 header names filters the way later rigs do."""
    if header != "2020":
        return ['"White LED', '->(polarizer + prism + condenser)"]',
                "->Filter block:[\"59022 exciter, 59022 dichroic, 535/50 emission filter]",
                "->Emission filter wheel:[]"]
    low = channel.lower()
    if "gfp" in low:
        return ["White LED", "->Excitation filter wheel:[GFP 470/40]",
                "->Emission filter wheel:[525/50 emission filter]"]
    if "cherry" in low or "rfp" in low:
        return ["White LED", "->Combiner cube:[No exciter, No reflecting dichroic]",
                "->Emission filter wheel:[632/60 emission filter]"]
    return ["White LED", "->(Polariser + Prism + condenser)]",
            "->Emission filter wheel:[No filter in emission wheel]"]


def _single_log_text(
    spec: DemoSpec, stage: list[tuple[float, float, float]], exposures: list[list[int]]
) -> str:
    """The newer software's single ``.log`` (layout of aliby's
    examples/parsers/swainlab_logfile_header_example.log): general fields, image configs,
    device properties (LED volts, camera binning and gain), one position group, its times."""
    when = f"{spec.start:%Y-%m-%d %H:%M:%S}"
    info = f"{when},350 - INFO"
    lines = [
        f"{info} ", "Swain Lab microscope experiment log file",
        "GIT commit: e5d5e33 fix: demo software", "Microscope name: Demoscope",
        f"Date: {when}", f"Log file path: D:\\Demo\\{spec.prefix}00\\{spec.prefix}.log",
        "Micromanager config file: C:\\Users\\Public\\demo.cfg",
        "Omero project: Demo project", "Omero tags: ",
        "Experiment details: Synthetic demo experiment in the single-file log format",
        "-----Acquisition settings-----", "",
        f"{info} Image Configs:",
        "Image config,Channel,Description,Exposure (ms), Number of Z sections,Z spacing (um),"
        "Sectioning method",
    ]
    lines += [f"{c},{c},Demo {c} config,{_EXPOSURES.get(c.lower(), 50)},{spec.z},"
              f"{spec.z_spacing_um},PIFOC" for c in spec.channels]
    lines += ["", "Device properties:", "Image config,device,property,value"]
    for i, c in enumerate(spec.channels):
        lines += [f"{c},DTOL-DAC-{i + 1},Volts,{0.4 + i}", f"{c},Evolve,Binning,2x2",
                  f"{c},Evolve,EMGain,{270 if i else 0}"]
    lines += ["", f"{info} ", "group: demo field: position", "Name,X,Y,Z,Autofocus offset"]
    lines += [f"{p},{x},{y},{z},123.25"
              for p, (x, y, z) in zip(spec.positions + list(spec.absent), stage, strict=True)]
    lines += ["group: demo field: time", "start: 0", f"interval: {int(spec.interval_s)}",
              f"frames: {spec.t}", "", "group: demo field: config"]
    lines += [f"{c}: 0xfffffffffff" for c in spec.channels]
    lines += [f"{info} ", "-----Experiment started-----"]
    return "\n".join(lines) + "\n"


def make_demo(
    folder: Path | str,
    *,
    positions: int = 2,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    z: int = 5,
    t: int = 3,
    size: int = 512,
    dtype: str = "uint16",
    seed: int = 0,
    prefix: str = "demo",
    interval_s: float = 300.0,
    z_spacing_um: float = 0.6,
    metadata: bool = True,
    missed_first: Sequence[str] = (),
    failed: Sequence[tuple[str, int, str]] = (),
    absent: int = 0,
    header: str = "sample",
    fmt: str = "txt",
) -> DemoSpec:
    """Write a synthetic experiment into ``folder`` (created) and describe it.

    ``metadata=False`` leaves out the Acq/log files (to test conversion without metadata). The
    real-acquisition cases (``missed_first``, ``failed``, ``absent``, ``header``, ``fmt``) are
    described in the module's docstring.
    """
    if header not in ("sample", "2020") or fmt not in ("txt", "log"):
        raise ValueError(f"demo header must be sample or 2020 and fmt txt or log, not "
                         f"{header!r} / {fmt!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np_dtype = np.dtype(dtype)
    if np_dtype.name not in ("uint8", "uint16", "float32"):
        raise ValueError(f"demo dtype must be uint8, uint16 or float32, not {dtype}")
    spec = DemoSpec(
        folder=folder,
        positions=[f"pos{i + 1:03d}" for i in range(positions)],
        channels=list(channels),
        z=z, t=t, size=size, dtype=np_dtype.name, prefix=prefix,
        interval_s=interval_s, z_spacing_um=z_spacing_um,
        start=datetime(2024, 3, 14, 9, 30, 0),
        missed_first=tuple(missed_first), failed=tuple(tuple(f) for f in failed),
        absent=tuple(f"pos{i + 1:03d}" for i in range(positions, positions + absent)),
        header=header, fmt=fmt,
    )
    rng = np.random.default_rng(seed)
    n_points = positions + absent
    stage = [(10000 + 350.5 * i, 9800 - 210.25 * i, 3430 + 0.125 * i) for i in range(n_points)]
    exposures = [[_EXPOSURES.get(c.lower(), 50) // (1 + i % 2) for c in spec.channels]
                 for i in range(n_points)]
    ext = "tif" if np_dtype.kind == "f" else "png"
    for pos in spec.positions:
        pdir = folder / pos
        pdir.mkdir(exist_ok=True)
        bases = [_blobs(rng, size, max(4, size * size // 4000)) for _ in spec.channels]
        for ti in range(t):
            for ci, ch in enumerate(spec.channels):
                bright = ch.lower() in ("brightfield", "dic", "phase")
                for zi in range(z):
                    plane = _plane(bases[ci], rng, ti, zi, z, np_dtype, bright)
                    if not spec.captured(pos, ti, ch):
                        continue  # drawn all the same, so the other planes stay as they were
                    name = pdir / f"{prefix}_{ti + 1:06d}_{ch}_{zi + 1:03d}.{ext}"
                    if ext == "png":
                        name.write_bytes(imagecodecs.png_encode(plane, level=3))
                    else:
                        tifffile.imwrite(name, plane)
    if metadata and fmt == "log":
        (folder / f"{prefix}.log").write_bytes(
            _single_log_text(spec, stage, exposures).encode("ascii")
        )
    elif metadata:
        (folder / f"{prefix}_Acq.txt").write_bytes(
            _acq_text(spec, stage, exposures).replace("\n", "\r\n").encode("ascii")
        )
        (folder / f"{prefix}_log.txt").write_bytes(_log_text(spec, stage, exposures).encode("ascii"))
    logger.info("demo experiment written to %s", folder)
    return spec

"""Synthetic experiment in the lab's exact layout, for the README demo, the tests and the benchmark.

Writes ``posNNN/{prefix}_{t:06d}_{channel}_{z:03d}.png`` planes (blob-like "cells" that drift and
go in and out of focus, plus noise, so the data compresses like real images rather than like a
constant) and the two text files the acquisition software writes, ``{prefix}_Acq.txt`` and
``{prefix}_log.txt``, with the same sections, column layout and CRLF line endings as the lab's
files (see ``../shared/samples/swainlab-demo``), but generated values. float32 planes are written
as TIFF because PNG cannot hold floating point.
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
        for i, (p, (x, y, z)) in enumerate(zip(spec.positions, stage, strict=True))
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
    lines = [
        f"{start.day:02d}-{_MONTHS[start.month - 1]}-{start.year}",
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
        lines += [f"{c}:", '"White LED', '->(polarizer + prism + condenser)"]',
                  "->Filter block:[\"59022 exciter, 59022 dichroic, 535/50 emission filter]",
                  "->Emission filter wheel:[]"]
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
            x, y, z = stage[i]
            lines += [f"Position:{i + 1},{pos}", "", f"Position group:{i // 5 + 1}", "",
                      f"Moved to X:{x:.1f}, Y:{y:.1f}", "",
                      f"readDrift script. Reference z position is:{z:.4f}", ""]
            for c, ch in enumerate(spec.channels):
                lines += [
                    f"Channel configuration set to: {ch}: {_stamp(now)}", "",
                    f"Channel:{ch} set at:{_stamp(now)}", "",
                    f"Exposure time:{exposures[i][c]}ms", "",
                    f"captureStack (Demo). Z drive position before stack capture is: {z:.4f}. "
                    f"{_stamp(now)}", "",
                ]
                now += timedelta(seconds=1)
        done = start + timedelta(seconds=t * spec.interval_s + 2 * len(spec.positions))
        lines += [f"Timepoint:{t + 1} completed at:{_stamp(done)}", "",
                  f"Time since start of timelapse:{(done - start).total_seconds():.4f}", "",
                  "PFS is locked", "", ""]
    return "\r\n".join(lines) + "\r\n"


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
) -> DemoSpec:
    """Write a synthetic experiment into ``folder`` (created) and describe it.

    ``metadata=False`` leaves out the Acq/log files (to test conversion without metadata).
    """
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
    )
    rng = np.random.default_rng(seed)
    stage = [(10000 + 350.5 * i, 9800 - 210.25 * i, 3430 + 0.125 * i) for i in range(positions)]
    exposures = [[_EXPOSURES.get(c.lower(), 50) // (1 + i % 2) for c in spec.channels]
                 for i in range(positions)]
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
                    name = pdir / f"{prefix}_{ti + 1:06d}_{ch}_{zi + 1:03d}.{ext}"
                    if ext == "png":
                        name.write_bytes(imagecodecs.png_encode(plane, level=3))
                    else:
                        tifffile.imwrite(name, plane)
    if metadata:
        (folder / f"{prefix}_Acq.txt").write_bytes(
            _acq_text(spec, stage, exposures).replace("\n", "\r\n").encode("ascii")
        )
        (folder / f"{prefix}_log.txt").write_bytes(_log_text(spec, stage, exposures).encode("ascii"))
    logger.info("demo experiment written to %s", folder)
    return spec

"""The ``*log.txt`` body: time-point blocks, positions, and the time each channel was set.

Real logs run to hundreds of MB; only ``(position, t, channel) -> time`` is kept
(``Channel:GFP set at:28-Sep-2018 17:18:22``), from which the OME builder computes DeltaT.
"""

from __future__ import annotations

import re
import sys

from posdir2ometiff.metadata.model import PlaneTime
from posdir2ometiff.metadata.swainlab.text import _Warner, parse_datetime

_TIMEPOINT_RE = re.compile(r"-+\s*time\s*point[\s_]*(\d+)\s*-+", re.IGNORECASE)
_POSITION_RE = re.compile(r"Position\s*:\s*(\d+)\s*,\s*(\S.*)")
_CHANNEL_SET_RE = re.compile(r"Channel\s*:\s*(\S.*?)\s+set at\s*:\s*(.*)")


class CaptureReader:
    """Follows the body's time-point and position lines and records each channel's set time."""

    def __init__(self, warn: _Warner) -> None:
        self.warn = warn
        self.t: int | None = None
        self.position: str | None = None
        self.names: dict[str, str] = {}  # one string object per name: 90,000 plane times share them
        self.planes: dict[tuple[str, int, str], PlaneTime] = {}

    def feed(self, lineno: int, line: str) -> None:
        """Take one stripped body line."""
        if not line:
            return
        if m := _CHANNEL_SET_RE.match(line):
            when = parse_datetime(m.group(2))
            channel = self.names.setdefault(m.group(1), sys.intern(m.group(1)))
            if when is None:
                self.warn(lineno, f"channel {channel} set at an unreadable time {m.group(2)!r}")
            elif self.position is None or self.t is None:
                self.warn(lineno, f"channel {channel} set before any position / timepoint")
            else:
                key = (self.position, self.t, channel)
                self.planes[key] = PlaneTime(
                    position=self.position, t=self.t, channel=channel, time=when
                )
        elif m := _POSITION_RE.match(line):
            name = m.group(2).strip()
            self.position = self.names.setdefault(name, sys.intern(name))
        elif m := _TIMEPOINT_RE.fullmatch(line):
            self.t = int(m.group(1)) - 1

    def plane_times(self) -> list[PlaneTime]:
        """Every plane time read, in the order first seen."""
        return list(self.planes.values())

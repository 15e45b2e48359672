"""The ``*log.txt`` body: time-point blocks, positions, and what happened to each channel's capture.

Real logs run to hundreds of MB; only ``(position, t, channel) -> PlaneTime`` is kept. The lines it
reads, as the acquisition software writes them (pswain/Acquisition: ``acqTimelapse.m``,
``@Microscope/captureChannels.m``, ``@Batman/captureStackPIFOC.m``, ``@Batgirl/captureStack.m``)::

    ------Time point_3------
    Position:1,pos001
    Channel:GFP set at:28-Sep-2018 17:18:22                  -> the plane's time (DeltaT)
    captureStack (Batgirl). Z drive position before stack capture is: 3430.5001. 28-Sep-...
                                                             -> the stack's reference Z
    WARNING - ERROR CAUGHT - NO IMAGE CAPTURED TO THIS CHANNEL AND TIMEPOINT. Error message:...
                                                             -> this channel was not captured

A warning belongs to the channel line before it (the software prints it after trying to capture);
the line after an error message ending in ``:`` (the Java exception) completes the reason.
"""

from __future__ import annotations

import dataclasses
import re
import sys

from posdir2ometiff.metadata.model import PlaneTime
from posdir2ometiff.metadata.swainlab.text import _Warner, parse_datetime

_TIMEPOINT_RE = re.compile(r"-+\s*time\s*point[\s_]*(\d+)\s*-+", re.IGNORECASE)
_POSITION_RE = re.compile(r"Position\s*:\s*(\d+)\s*,\s*(\S.*)")
_CHANNEL_SET_RE = re.compile(r"Channel\s*:\s*(\S.*?)\s+set at\s*:\s*(.*)")
_DRIVE_Z_RE = re.compile(
    r".*Z drive position before stack capture is\s*:\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
)
_NOT_CAPTURED_RE = re.compile(r".*NO IMAGE CAPTURED.*?(?:Error message\s*:\s*(.*))?$", re.I)


class CaptureReader:
    """Follows the body's time-point and position lines and records each channel's capture."""

    def __init__(self, warn: _Warner) -> None:
        self.warn = warn
        self.t: int | None = None
        self.position: str | None = None
        self.names: dict[str, str] = {}  # one string object per name: 90,000 plane times share them
        self.planes: dict[tuple[str, int, str], PlaneTime] = {}
        #: Key of the channel whose capture the following lines report on.
        self.current: tuple[str, int, str] | None = None
        #: A not-captured reason ending in ":" waits for the next line to complete it.
        self.reason_open = False
        self.timepoints: list[int] = []

    def _name(self, text: str) -> str:
        return self.names.setdefault(text, sys.intern(text))

    def feed(self, lineno: int, line: str) -> None:
        """Take one stripped body line."""
        if not line:
            return
        if self.reason_open:
            self.reason_open = False
            if self.current in self.planes and not _starts_entry(line):
                pt = self.planes[self.current]
                self._update(pt, not_captured=f"{pt.not_captured} {line}".strip())
                return
        if m := _CHANNEL_SET_RE.match(line):
            self._channel(lineno, m.group(1), m.group(2))
        elif m := _DRIVE_Z_RE.match(line):
            pt = self.planes.get(self.current) if self.current else None
            if pt is not None and pt.drive_z_um is None:
                self._update(pt, drive_z_um=float(m.group(1)))
        elif m := _NOT_CAPTURED_RE.match(line):
            self._not_captured(lineno, (m.group(1) or "").strip() or line)
        elif m := _POSITION_RE.match(line):
            self.position = self._name(m.group(2).strip())
            self.current = None
        elif m := _TIMEPOINT_RE.fullmatch(line):
            self.t = int(m.group(1)) - 1
            self.current = None
            if int(m.group(1)) not in self.timepoints:
                self.timepoints.append(int(m.group(1)))

    def _channel(self, lineno: int, name: str, when_text: str) -> None:
        when = parse_datetime(when_text)
        channel = self._name(name)
        self.current = None
        if when is None:
            self.warn(lineno, f"channel {channel} set at an unreadable time {when_text!r}")
        elif self.position is None or self.t is None:
            self.warn(lineno, f"channel {channel} set before any position / timepoint")
        else:
            key = (self.position, self.t, channel)
            self.planes[key] = PlaneTime(
                position=self.position, t=self.t, channel=channel, time=when
            )
            self.current = key

    def _not_captured(self, lineno: int, reason: str) -> None:
        pt = self.planes.get(self.current) if self.current else None
        if pt is None:
            self.warn(lineno, "'no image captured' warning before any channel line; ignored")
            return
        self._update(pt, not_captured=reason)
        self.reason_open = reason.endswith(":")

    def _update(self, pt: PlaneTime, **changes: object) -> None:
        new = dataclasses.replace(pt, **changes)
        self.planes[(pt.position, pt.t, pt.channel)] = new

    def plane_times(self) -> list[PlaneTime]:
        """Every plane record read, in the order first seen."""
        return list(self.planes.values())


def _starts_entry(line: str) -> bool:
    """Is ``line`` one of the body's own entries (so no continuation of an error message)?"""
    return any(
        rx.match(line)
        for rx in (_CHANNEL_SET_RE, _DRIVE_Z_RE, _NOT_CAPTURED_RE, _POSITION_RE)
    ) or bool(_TIMEPOINT_RE.fullmatch(line))

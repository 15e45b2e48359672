"""The ``*log.txt`` header: "Experiment details" (aim, strains, authors, comments, light path per
channel, OMERO project and tags) up to the ``Experiment started at:`` line that opens the body.

Fed one decoded line at a time by :func:`~posdir2ometiff.metadata.swainlab.logfile.parse_log`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from posdir2ometiff.metadata.swainlab.text import (
    _LABEL_ONLY_RE,
    _LABEL_VALUE_RE,
    _norm,
    _Warner,
    parse_datetime,
)

log = logging.getLogger(__name__)

_DATE_ONLY_RE = re.compile(r"\d{1,2}-[A-Za-z]{3}-\d{4}")

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


@dataclass
class LogHeader:
    """What the header says about the experiment."""

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


class HeaderReader:
    """Reads header lines into a :class:`LogHeader`; :meth:`feed` says when the body begins.

    The header is a sequence of labelled blocks: a label line (``Aim:``, ``Strains:`` ...) possibly
    with its value, then continuation lines until the next label.
    """

    def __init__(
        self, res: LogHeader, warn: _Warner, path: Path, channel_names: list[str] | None
    ) -> None:
        self.res = res
        self.warn = warn
        self.path = path
        self.channel_names = channel_names
        self.block: str | None = None  # header block being read: aim, strains, authors, setup...
        self.block_lines: list[str] = []
        self.light_channel: str | None = None

    def close_block(self) -> None:
        """End the block being read, storing what it collected."""
        res = self.res
        if self.block == "aim" and self.block_lines:
            res.aim = " ".join(self.block_lines)
        elif self.block == "comments" and self.block_lines:
            res.comments = "\n".join(self.block_lines)
        elif self.block == "setup" and self.light_channel is not None:
            res.light_paths[self.light_channel] = _clean_light_path(self.block_lines)
        self.block, self.block_lines, self.light_channel = None, [], None

    def feed(self, lineno: int, line: str) -> bool:
        """Take one stripped header line; True once ``Experiment started at:`` opens the body."""
        res, warn = self.res, self.warn
        if not line:
            return False
        label, _, value = line.partition(":")
        kind = _LOG_LABELS.get(_norm(label)) if ":" in line else None
        if kind is None and _norm(line) in _LOG_LABELS and ":" not in line:
            kind, value = _LOG_LABELS[_norm(line)], ""  # e.g. "Strain" without the colon
        value = value.strip()
        if kind is not None:
            self.close_block()
            if kind == "start":
                res.start = parse_datetime(value)
                if res.start is None:
                    warn(lineno, f"experiment start {value!r} is not a date")
                return True
            if kind == "microscope":
                res.microscope = value or None
            elif kind == "mmconfig":
                if value:
                    res.key_values.append(("Micromanager config file", value))
            elif kind in ("aim", "comments") and value:
                self.block, self.block_lines = kind, [value]
            elif kind in ("project", "tags") and value:
                _take_single(res, kind, value)
            elif kind != "details":
                self.block = kind
            return False
        block = self.block
        if block is None and _DATE_ONLY_RE.fullmatch(line):
            res.date = parse_datetime(line)
            return False
        if block in ("strains", "authors"):
            getattr(res, block).append(line)
        elif block in ("aim", "comments"):
            self.block_lines.append(line)
        elif block in ("project", "tags"):
            _take_single(res, block, line)
            self.block = None
        elif block == "setup":
            self._setup_line(lineno, line)
        elif ":" in line and (kv := _LABEL_VALUE_RE.fullmatch(line)):
            warn(lineno, f"unrecognised header entry {kv.group(1)!r} kept as a key-value pair")
            res.key_values.append((kv.group(1), kv.group(2).strip()))
        else:
            log.debug("%s:%d: header status line ignored: %r", self.path, lineno, line)
        return False

    def _setup_line(self, lineno: int, line: str) -> None:
        """A line of "Microscope setup for used channels": a channel label or a light-path step."""
        start = _LABEL_ONLY_RE.fullmatch(line)
        if start and not line.startswith("->"):
            if self.light_channel is not None:
                self.res.light_paths[self.light_channel] = _clean_light_path(self.block_lines)
            self.light_channel = _known_name(start.group(1).strip(), self.channel_names)
            self.block_lines = []
        elif self.light_channel is None:
            self.warn(lineno, f"light path text before any channel name: {line[:60]!r}")
        else:
            self.block_lines.append(line)


def _clean_light_path(lines: list[str]) -> str:
    """MATLAB printed the light path as a cell array: drop its quotes and brackets, keep the steps."""
    out = [re.sub(r"[\"\[\]]", "", line).strip() for line in lines]
    return "\n".join(line for line in out if line)


def _known_name(name: str, channel_names: list[str] | None) -> str:
    """Spell a light-path channel label as the Acq channels table does, if it is one of them."""
    for known in channel_names or []:
        if known.lower() == name.lower():
            return known
    return name


def _take_single(res: LogHeader, kind: str, value: str) -> None:
    if kind == "project":
        res.omero_project = value
    else:  # "28-Sep-2018,Batgirl," : comma separated, the software leaves a trailing comma
        res.tags += [t.strip() for t in value.split(",") if t.strip() and t.strip() not in res.tags]

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
    "acquisitionsettingsaresavedin": "acqfile",
}

#: The header labels as the software spells them, longest first: a line such as
#: ``Aim:   Strain:   Comments:   `` holds several fields, split where one of these starts.
_LABEL_SPELLINGS = sorted(
    [
        "Microscope name is", "Microscope name", "Experiment details", "Aims", "Aim", "Strains",
        "Strain", "Authors", "Author", "Comments", "Comment",
        "Microscope setup for used channels", "Micromanager config file", "Omero project",
        "Omero tags", "Experiment started at", "Acquisition settings are saved in",
    ],
    key=len,
    reverse=True,
)
_FIELD_RE = re.compile(
    r"(?:^|(?<=\s))(" + "|".join(re.escape(x) for x in _LABEL_SPELLINGS) + r")\s*:",
    re.IGNORECASE,
)
#: A Windows path (``C:\...``, ``D:/...``) or a UNC path: a value, never a ``C`` key.
_PATH_RE = re.compile(r"(?:[A-Za-z]:[\\/]|\\\\)")

# The software's own lines (initializeFiles.m of pswain/Acquisition; later versions print the git
# commit and warn about uncommitted changes): provenance, not experiment details.
_TITLE_RE = re.compile(r"Swain Lab microscope experiment log file", re.IGNORECASE)
_PROGRAM_COMMIT_RE = re.compile(r"(.*?control software.*?)\s*commit number\s*:\s*(\S+)", re.I)
_PROGRAM_VERSION_RE = re.compile(r"(.*?control software)\s+version\s+(\S.*)", re.IGNORECASE)
_GIT_COMMIT_RE = re.compile(r"GIT commit\s*:\s*(\S.*)", re.IGNORECASE)
_UNCOMMITTED_RE = re.compile(r"(?:Warning!?\s*-?\s*)?(there are uncommitted changes.*)", re.I)


@dataclass
class LogHeader:
    """What the header says about the experiment."""

    date: datetime | None = None
    microscope: str | None = None
    aim: str | None = None
    strains: list[str] = field(default_factory=list)
    authors: list[str] = field(default_factory=list)
    comments: str | None = None
    #: Free text under "Experiment details:" that no Aim/Strain/Comments label claims (the newer
    #: software writes the user's whole description there, on the label's line).
    details: str | None = None
    light_paths: dict[str, str] = field(default_factory=dict)
    omero_project: str | None = None
    tags: list[str] = field(default_factory=list)
    start: datetime | None = None
    key_values: list[tuple[str, str]] = field(default_factory=list)
    #: The acquisition software's own lines (name, version, commit, uncommitted changes).
    provenance: list[tuple[str, str]] = field(default_factory=list)


def split_fields(line: str) -> list[tuple[str, str]] | None:
    """``[(label, value), ...]`` when ``line`` starts with a known header label, else None.

    The software prints several labels on one line when the user left them empty
    (``Aim:   Strain:   Comments:   ``): a later known label starts a new field where the text
    before it is empty or it is set off by two or more spaces, so an aim that merely mentions
    "strain:" in a sentence stays one field.
    """
    starts = [m for m in _FIELD_RE.finditer(line)]
    if not starts or starts[0].start() != 0:
        return None
    cuts = [starts[0]]
    for m in starts[1:]:
        before = line[cuts[-1].end() : m.start()]
        if not before.strip() or before.endswith("  "):
            cuts.append(m)
    fields = []
    for i, m in enumerate(cuts):
        end = cuts[i + 1].start() if i + 1 < len(cuts) else len(line)
        fields.append((m.group(1), line[m.end() : end].strip()))
    return fields


def software_line(line: str) -> list[tuple[str, str]] | None:
    """Provenance pairs for one of the software's own header lines, or None if it is not one."""
    if _TITLE_RE.fullmatch(line):
        return []
    if m := _PROGRAM_COMMIT_RE.fullmatch(line):
        return [
            ("Acquisition software", m.group(1).strip(" -")),
            ("Acquisition software commit", m.group(2)),
        ]
    if m := _PROGRAM_VERSION_RE.fullmatch(line):
        return [
            ("Acquisition software", m.group(1).strip(" -")),
            ("Acquisition software version", m.group(2).strip()),
        ]
    if m := _GIT_COMMIT_RE.fullmatch(line):
        return [("Acquisition software commit", m.group(1).strip())]
    if m := _UNCOMMITTED_RE.fullmatch(line):
        return [("Acquisition software uncommitted changes", m.group(1).strip())]
    return None


def is_path(text: str) -> bool:
    """A Windows or UNC path: always a value (``C:\\data`` is no ``C`` key)."""
    return _PATH_RE.match(text) is not None


class HeaderReader:
    """Reads header lines into a :class:`LogHeader`; :meth:`feed` says when the body begins.

    The header is a sequence of labelled blocks: a label line (``Aim:``, ``Strains:`` ...) possibly
    with its value, then continuation lines until the next label. A label the software prints
    alone on its line (``Acquisition settings are saved in:``) takes the next line as its value.
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
        #: An unknown label printed alone on its line: the next line is its value.
        self.pending_label: str | None = None

    def close_block(self) -> None:
        """End the block being read, storing what it collected."""
        res = self.res
        if self.block == "aim" and self.block_lines:
            res.aim = " ".join(self.block_lines)
        elif self.block == "comments" and self.block_lines:
            res.comments = "\n".join(self.block_lines)
        elif self.block == "details" and self.block_lines:
            res.details = "\n".join(self.block_lines)
        elif self.block == "setup" and self.light_channel is not None:
            res.light_paths[self.light_channel] = _clean_light_path(self.block_lines)
        self.block, self.block_lines, self.light_channel = None, [], None

    def feed(self, lineno: int, line: str) -> bool:
        """Take one stripped header line; True once ``Experiment started at:`` opens the body."""
        if not line:
            return False
        if self.pending_label is not None:
            label, self.pending_label = self.pending_label, None
            if not self._labelled(line):
                self.warn(lineno, f"unrecognised header entry {label!r} kept as a key-value pair")
                self.res.key_values.append((label, line))
                return False
        if self.block != "setup" and (pairs := software_line(line)) is not None:
            self.res.provenance += pairs
            return False
        fields = split_fields(line)
        label, colon, value = line.partition(":")
        if fields is None and colon and _norm(label) in _LOG_LABELS:
            fields = [(label, value.strip())]  # another spelling, e.g. "OMERO-project:"
        if fields is None and _norm(line) in _LOG_LABELS:
            fields = [(line, "")]  # e.g. "Strain" without the colon
        if fields is not None:
            return any([self._field(lineno, label, value) for label, value in fields])
        self._text(lineno, line)
        return False

    def _labelled(self, line: str) -> bool:
        """Does ``line`` start a new header entry (so it is no value for a pending label)?"""
        return split_fields(line) is not None or software_line(line) is not None

    def _field(self, lineno: int, label: str, value: str) -> bool:
        """One ``label: value`` field; True when it is the body's opening line."""
        res, warn = self.res, self.warn
        kind = _LOG_LABELS[_norm(label)]
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
        elif kind in ("aim", "comments", "details") and value:
            self.block, self.block_lines = kind, [value]
        elif kind in ("project", "tags", "acqfile") and value:
            _take_single(res, kind, value)
        else:
            self.block = kind
            if kind in ("strains", "authors") and value:  # "Strain: BY4741" on the label's line
                getattr(res, kind).append(value)
        return False

    def _text(self, lineno: int, line: str) -> None:
        """A line that starts no field: it continues the block being read, or stands alone."""
        res, warn = self.res, self.warn
        block = self.block
        if block is None and _DATE_ONLY_RE.fullmatch(line):
            res.date = parse_datetime(line)
            return
        if block in ("strains", "authors"):
            getattr(res, block).append(line)
        elif block in ("aim", "comments", "details"):
            self.block_lines.append(line)
        elif block in ("project", "tags", "acqfile"):
            _take_single(res, block, line)
            self.block = None
        elif block == "setup":
            self._setup_line(lineno, line)
        elif is_path(line):
            log.debug("%s:%d: header path without a label ignored: %r", self.path, lineno, line)
        elif (label := _LABEL_ONLY_RE.fullmatch(line)) is not None:
            self.pending_label = label.group(1).strip()
        elif (kv := _LABEL_VALUE_RE.fullmatch(line)) and not is_path(line):
            warn(lineno, f"unrecognised header entry {kv.group(1)!r} kept as a key-value pair")
            res.key_values.append((kv.group(1), kv.group(2).strip()))
        else:
            log.debug("%s:%d: header status line ignored: %r", self.path, lineno, line)

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

    def finish(self) -> None:
        """End of the header: close the open block; a label still waiting had no value."""
        self.close_block()
        if self.pending_label is not None:
            self.res.key_values.append((self.pending_label, ""))
            self.pending_label = None


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
    elif kind == "acqfile":
        res.key_values.append(("Acquisition settings file", value))
    else:  # "28-Sep-2018,Batgirl," : comma separated, the software leaves a trailing comma
        res.tags += [t.strip() for t in value.split(",") if t.strip() and t.strip() not in res.tags]

"""Reading the Swain lab's text files: decoding, bounded line reading, dates, numbers, typed tables.

Both files come from Windows machines of various vintages: bytes are decoded as UTF-8, falling back
to cp1252 per line, and any mix of CRLF / CR / LF line ends is accepted. A malformed line is logged
as a warning with ``file:line`` and skipped (at most MAX_WARNINGS_PER_FILE per file).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from posdir2ometiff.metadata.plugins import MetadataError

log = logging.getLogger(__name__)

#: Longest log line kept; longer lines (binary junk, a runaway print) are cut so memory stays bounded.
MAX_LINE_BYTES = 64 * 1024
#: Warnings logged per file before they are only counted (a damaged 300 MB log must not flood).
MAX_WARNINGS_PER_FILE = 25

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
_LABEL_ONLY_RE = re.compile(r"([^\s\"'\[\-<>][^:]*?)\s*:")
_LABEL_VALUE_RE = re.compile(r"([A-Za-z][^:,]*?)\s*:\s*(.+)")


def _norm(text: str) -> str:
    """Header text reduced to lower-case letters and digits, for matching column and label names."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


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


def _read_text_lines(path: Path) -> list[str]:
    """The Acq file's lines (a settings file of a few kB, read whole); CR, LF or CRLF ends."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MetadataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    text = _decode(raw).replace("\r\n", "\n")
    # A lone CR ends a line too (old Mac files); "\r\r\n" in the sample becomes one blank line.
    return text.replace("\r", "\n").split("\n")


def _iter_lines(fh: BinaryIO, warn: _Warner) -> Iterator[tuple[int, str]]:
    """Decoded, stripped lines; reads at most MAX_LINE_BYTES at a time so memory stays bounded.

    Lines end with LF (or CRLF, CR-CR-LF); a file with no LF at all in its first block but CRs
    (old Mac line ends) is split on CR instead, so it is read like any other, not as one line.
    """
    head = fh.read(MAX_LINE_BYTES)
    fh.seek(0)
    cr_only = b"\r" in head and b"\n" not in head
    read_line = _cr_reader(fh) if cr_only else fh.readline
    end = b"\r" if cr_only else b"\n"
    lineno = 0
    while True:
        raw = read_line(MAX_LINE_BYTES)
        if not raw:
            return
        lineno += 1
        if len(raw) == MAX_LINE_BYTES and not raw.endswith(end):
            while (more := read_line(MAX_LINE_BYTES)) and not more.endswith(end):
                pass
            warn(lineno, f"line longer than {MAX_LINE_BYTES} bytes cut")
        # A lone CR inside a line (CR-CR-LF ends) is line-end noise, not content.
        yield lineno, _decode(raw).replace("\r", " ").strip()


def _cr_reader(fh: BinaryIO, chunk: int = 1 << 20):
    """``readline(limit)`` for CR-terminated lines over a binary file, in bounded memory."""
    buf = bytearray()

    def read_line(limit: int) -> bytes:
        while True:
            cut = buf.find(b"\r", 0, limit)
            if cut >= 0:
                line = bytes(buf[: cut + 1])
                del buf[: cut + 1]
                return line
            if len(buf) >= limit:
                line = bytes(buf[:limit])
                del buf[:limit]
                return line
            more = fh.read(chunk)
            if not more:
                line = bytes(buf)
                buf.clear()
                return line
            buf.extend(more)

    return read_line

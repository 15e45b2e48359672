"""The ``*log.txt`` file: streamed line by line, the header then the capture blocks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from posdir2ometiff.metadata.model import PlaneTime
from posdir2ometiff.metadata.plugins import MetadataError
from posdir2ometiff.metadata.swainlab.log_captures import CaptureReader
from posdir2ometiff.metadata.swainlab.log_header import HeaderReader, LogHeader
from posdir2ometiff.metadata.swainlab.text import _iter_lines, _Warner


@dataclass
class _LogResult(LogHeader):
    """The header's fields plus the per-plane acquisition times of the body."""

    plane_times: list[PlaneTime] = field(default_factory=list)
    #: Time-point block numbers in the order the body has them (1-based, as the software counts).
    timepoints: list[int] = field(default_factory=list)


def parse_log(path: Path, channel_names: list[str] | None = None) -> _LogResult:
    """Stream a ``*log.txt``: the header into fields, the body into per-plane acquisition times."""
    warn = _Warner(path)
    res = _LogResult()
    header = HeaderReader(res, warn, path, channel_names)
    captures = CaptureReader(warn)
    in_body = False
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; streamed, never read whole
    except OSError as exc:
        raise MetadataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with fh:
        for lineno, line in _iter_lines(fh, warn):
            if in_body:
                captures.feed(lineno, line)
            else:
                in_body = header.feed(lineno, line)
        header.finish()
    if not in_body:
        warn(None, "no 'Experiment started at:' line; no per-plane times read")
    res.plane_times = captures.plane_times()
    res.timepoints = captures.timepoints
    warn.finish()
    return res

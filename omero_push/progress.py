"""Progress of a push: bytes sent and images done.

On a terminal: two tqdm bars (bytes with rate, images).  Otherwise (CI logs, cron, pipes): plain
log lines, one per image and one per ~10 % of the bytes, so a log file stays readable.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Protocol, TextIO

log = logging.getLogger(__name__)

#: One unit for sizes everywhere omero-push shows them (plan, progress, --chunk-size): binary
#: multiples with IEC names, because chunk sizes are powers of two.
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(n: float) -> str:
    """``1536`` → ``1.5 KiB``; ``3 * 2**20`` → ``3.0 MiB``."""
    size = float(n)
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class Progress(Protocol):
    """What the push reports to; implementations decide how to show it."""

    def start(self, total_bytes: int, total_images: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def rewind(self, nbytes: int) -> None: ...

    def image_done(self, name: str, image_id: int | None, status: str) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    """Reports nothing (API default, --quiet)."""

    def start(self, total_bytes: int, total_images: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def rewind(self, nbytes: int) -> None:
        pass

    def image_done(self, name: str, image_id: int | None, status: str) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """Plain lines through logging (INFO), for non-terminal output."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.images_total = 0
        self.images_done = 0
        self._next_pct = 10

    def start(self, total_bytes: int, total_images: int) -> None:
        self.total, self.images_total = total_bytes, total_images
        log.info("pushing %d image(s), %s", total_images, format_bytes(total_bytes))

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self.total and self.done * 100 >= self._next_pct * self.total:
            pct = min(100, self.done * 100 // self.total)
            log.info(
                "%d%% of bytes sent (%s of %s)", pct, format_bytes(self.done), format_bytes(self.total)
            )
            self._next_pct = (pct // 10 + 1) * 10

    def rewind(self, nbytes: int) -> None:
        self.done = max(0, self.done - nbytes)

    def image_done(self, name: str, image_id: int | None, status: str) -> None:
        self.images_done += 1
        log.info(
            "[%d/%d] %s: image %s (%s)", self.images_done, self.images_total, name, image_id, status
        )

    def close(self) -> None:
        pass


class TqdmProgress:
    """Two tqdm bars on a terminal: bytes (with MiB/s) and images."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._bytes: Any = None
        self._images: Any = None

    def start(self, total_bytes: int, total_images: int) -> None:
        from tqdm import tqdm

        self._bytes = tqdm(
            total=total_bytes,
            unit="iB",  # with divisor 1024, tqdm shows MiB and MiB/s: the unit of format_bytes
            unit_scale=True,
            unit_divisor=1024,
            desc="bytes ",
            file=self._stream,
        )
        self._images = tqdm(total=total_images, unit="img", desc="images", file=self._stream)

    def advance(self, nbytes: int) -> None:
        if self._bytes is not None:
            self._bytes.update(nbytes)

    def rewind(self, nbytes: int) -> None:
        if self._bytes is not None:
            self._bytes.update(-nbytes)

    def image_done(self, name: str, image_id: int | None, status: str) -> None:
        if self._images is not None:
            self._images.set_postfix_str(f"{name}: {status}", refresh=False)
            self._images.update(1)

    def close(self) -> None:
        for bar in (self._bytes, self._images):
            if bar is not None:
                bar.close()


def make_progress(quiet: bool = False, stream: TextIO | None = None) -> Progress:
    """tqdm on a terminal, log lines otherwise, nothing when quiet."""
    if quiet:
        return NullProgress()
    s = stream or sys.stderr
    if hasattr(s, "isatty") and s.isatty():
        return TqdmProgress(s)
    return LineProgress()

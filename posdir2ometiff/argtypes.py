"""Range-checked argparse types shared by both command lines.

A number given on the command line is checked where it is parsed, so ``--workers 0``,
``--tile 7``, ``--port 99999`` or ``--chunk-size inf`` is one line naming the option and an exit
status of 2 (argparse's usage error), not a hang, a traceback or a silent clamp deep in the run.
argparse names the option in the message (``argument --tile: 7 is not a multiple of 16``) when a
type raises ``ArgumentTypeError``, as the standard library's own ``type=int`` errors do
(CPython ``Lib/argparse.py``, ``_get_value``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_in(low: int, high: int | None = None, multiple: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]`` (no upper bound when ``high`` is None),
    optionally a multiple of ``multiple``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range (must be {bound})")
        if value % multiple:
            raise argparse.ArgumentTypeError(f"{value} is not a multiple of {multiple}")
        return value

    parse.__name__ = "integer"  # argparse's fallback message says "invalid integer value"
    return parse


def float_in(
    low: float, high: float | None = None, *, low_open: bool = True
) -> Callable[[str], float]:
    """An argparse type: a finite number above ``low`` (or at least ``low`` when not
    ``low_open``) and at most ``high``. ``nan`` and ``inf`` are refused: neither is a size."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            lower = f"greater than {low:g}" if low_open else f"at least {low:g}"
            bound = f"{lower} and at most {high:g}" if high is not None else lower
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {bound})")
        return value

    parse.__name__ = "number"
    return parse


def tile_wxh(max_side: int = 65536) -> Callable[[str], tuple[int, int]]:
    """An argparse type for ``WxH`` (or ``N`` for a square): both sides from 1 to ``max_side``."""

    def parse(text: str) -> tuple[int, int]:
        w, sep, h = text.lower().strip().partition("x")
        try:
            width, height = int(w), int(h if sep else w)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not WxH, e.g. 1024x1024"
            ) from None
        for side in (width, height):
            if not 1 <= side <= max_side:
                raise argparse.ArgumentTypeError(
                    f"{text} is out of range (each side from 1 to {max_side})"
                )
        return width, height

    parse.__name__ = "tile"
    return parse


#: TCP ports a server can listen on.
port = int_in(1, 65535)

__all__ = ["float_in", "int_in", "port", "tile_wxh"]

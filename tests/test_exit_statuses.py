"""Every exit status the tools use is in the README's table (issue #14, point 8)."""

from __future__ import annotations

import re
from pathlib import Path

from omero_push import errors
from posdir2ometiff.lock import EXIT_LOCKED

README = Path(__file__).resolve().parents[1] / "README.md"


def _table_statuses() -> set[int]:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("### Exit statuses"):]
    return {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}


def _subclasses(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _subclasses(sub)
    return out


def test_every_exit_status_is_documented() -> None:
    used = {0, 1, 2, 130, EXIT_LOCKED}  # the CLIs' own: success, failure, usage, interrupted
    used |= {c.exit_code for c in _subclasses(errors.PushError)}
    assert used <= _table_statuses(), sorted(used - _table_statuses())

"""The README's code is run, so the documentation cannot drift from what works."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from posdir2ometiff.metadata.plugins import load_metadata

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block_after(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_custom_parser_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("readme_example_parser")
    exec(compile(_python_block_after("### Your own format"), "README.md", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    (tmp_path / "settings.json").write_text(
        json.dumps(
            {
                "pixel_size_um": 0.11,
                "operator": "Ada",
                "channels": [{"name": "GFP", "exposure_ms": 7}, {"name": "mCherry"}],
            }
        )
    )
    meta = load_metadata(tmp_path, f"{module.__name__}:JsonSettingsParser")
    assert meta is not None
    assert meta.pixel_size_um == 0.11
    assert [(c.name, c.exposure_ms) for c in meta.channels] == [("GFP", 7), ("mCherry", None)]
    assert meta.key_values == [("Operator", "Ada")]


def test_readme_names_the_commands_ci_runs() -> None:
    text = README.read_text(encoding="utf-8")
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci

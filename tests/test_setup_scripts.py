"""The set-up's zeroc-ice step: a cached wheel is reused, so a second set-up takes seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cached_zeroc_ice_wheel_is_reused_without_building(tmp_path: Path) -> None:
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    cached = tmp_path / f"zeroc_ice-3.6.5-{tag}-{tag}-{plat}.whl"
    cached.write_bytes(b"not really a wheel: the script must not open it")
    env = {**os.environ, "POSDIR2OMETIFF_WHEEL_CACHE": str(tmp_path)}
    t0 = time.perf_counter()
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_zeroc_ice.sh"), sys.executable],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )
    assert out.stdout.strip() == str(cached)
    assert "building" not in out.stderr  # no download, no compile
    assert time.perf_counter() - t0 < 30  # generous: a build takes ~10 minutes


def test_build_script_applies_both_python311_source_fixes(tmp_path: Path) -> None:
    """The script runs the package's ice.py, whose two fixes patch the sdist's sources (and a
    source they no longer match is refused rather than built unpatched)."""
    import pytest

    from omero_push import ice

    assert "omero_push/ice.py" in (REPO / "scripts" / "build_zeroc_ice.sh").read_text()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "Slice.cpp").write_text('#include <Python.h>\n#include <eval.h>\nint x;\n')
    (tmp_path / "src" / "Util.cpp").write_text("f = PyThreadState_GET()->frame;\n")
    ice.apply_fixes(tmp_path)
    assert "eval.h" not in (tmp_path / "src" / "Slice.cpp").read_text()
    assert (tmp_path / "src" / "Util.cpp").read_text() == "f = PyEval_GetFrame();\n"
    with pytest.raises(ice.IceSetupError, match="not found"):
        ice.apply_fixes(tmp_path)  # already patched: the text to fix is gone

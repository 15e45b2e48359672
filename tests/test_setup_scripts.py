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


def test_build_script_applies_both_python311_source_fixes() -> None:
    script = (REPO / "scripts" / "build_zeroc_ice.sh").read_text()
    assert "#include <eval.h>" in script and "src/Slice.cpp" in script
    assert "PyThreadState_GET()->frame" in script and "PyEval_GetFrame()" in script

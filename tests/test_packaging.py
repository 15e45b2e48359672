"""The package as users get it (issue 12, points 5-6): the built wheel's contents and metadata, and
the wheel installed into a fresh virtualenv, where ``omero-push setup-ice`` installs the cached
zeroc-ice build (no compiling, no package index) and then ``import omero`` and ``omero push`` work.

Building zeroc-ice takes ~10 minutes of both cores, so the fresh-venv test reuses the wheel the
set-up cached (``~/.cache/posdir2ometiff/wheels``) and is skipped, with that reason, without one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from omero_push import ice

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(900)

#: Our own package must not reach the fresh venv from ours (the wheel must provide it).
_OURS = ("posdir2ometiff", "omero_push", "__editable__", "_posdir2ometiff", "__pycache__")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our wheel, built from the working tree as pip builds it for users."""
    out = tmp_path_factory.mktemp("wheel")
    got = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
        capture_output=True, text=True,
    )
    if got.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{got.stderr[-2000:]}")
    (whl,) = out.glob("posdir2ometiff-*.whl")
    return whl


def test_wheel_has_what_the_tools_need_and_metadata_as_users_expect(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
        entry_points = z.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    # The schemas the converter validates against, as real files (a symlink in the checkout).
    assert {"posdir2ometiff/schemas/manifest.schema.json",
            "posdir2ometiff/schemas/experiment.schema.json"} <= names
    # The `omero push` plug-in file, and never omero-py's own package files.
    assert "omero/plugins/push.py" in names
    assert "omero/__init__.py" not in names and "omero/plugins/__init__.py" not in names
    assert {"omero_push/api.py", "omero_push/ice.py", "omero_push/omero_cli.py"} <= names
    # The PNG unfilter, compiled (a C compiler is there wherever the set-up built zeroc-ice).
    assert any(n.startswith("posdir2ometiff/_pngfilter.") and n.endswith(".so") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["License-Expression"] == "MIT"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Source", "Issues"} <= set(urls)
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in classifiers)
    assert "omero-push = omero_push.cli:main" in entry_points
    assert "posdir2ometiff = posdir2ometiff.cli:main" in entry_points
    extras = meta.get_all("Requires-Dist")
    assert any(r.startswith("zeroc-ice") and 'extra == "omero"' in r for r in extras)


def _cached_ice_wheel() -> Path | None:
    abi = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return ice.cached_wheel(ice.cache_dir(), abi, plat)


def _deps_without_ice(dest: Path) -> Path:
    """A folder showing this venv's packages except Ice and ours (symlinks, so it is quick)."""
    from importlib.metadata import distribution

    site = Path(sysconfig.get_paths()["purelib"])
    ice_files = distribution("zeroc-ice").files or []  # what setup-ice must install itself
    hidden = {Path(str(f)).parts[0] for f in ice_files}
    dest.mkdir()
    for entry in site.iterdir():
        if entry.name in hidden or entry.name.startswith(_OURS) or entry.suffix == ".pth":
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


def _run(argv: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, **kw)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_setup_ice_installs_the_cached_build(
    wheel: Path, tmp_path: Path
) -> None:
    cached = _cached_ice_wheel()
    if cached is None:
        pytest.skip("no cached zeroc-ice wheel (bash scripts/setup.sh builds one)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py, bin_dir = venv / "bin" / "python", venv / "bin"
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   dict(os.environ)).stdout.strip()
    # The third-party dependencies come from our venv (no downloads in a test), Ice does not.
    deps = _deps_without_ice(tmp_path / "deps")
    Path(purelib, "zz_test_deps.pth").write_text(f"{deps}\n")
    cache = tmp_path / "wheel-cache"
    cache.mkdir()
    shutil.copy2(cached, cache / cached.name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(POSDIR2OMETIFF_WHEEL_CACHE=str(cache), OMERO_PASSWORD="pw", PIP_NO_INDEX="1")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    got = _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], env)
    assert got.returncode == 0, got.stderr
    assert _run([str(bin_dir / "omero-push"), "--help"], env).returncode == 0
    assert _run([str(py), "-c", "import Ice"], env).returncode != 0  # truly without Ice

    # Without Ice, omero-push names the command that fixes it (not the pip line that failed).
    tif = tmp_path / "a.ome.tiff"
    sys.path.insert(0, str(REPO))
    from tests.test_push_support import make_ome_tiff

    make_ome_tiff(tif)
    got = _run([str(bin_dir / "omero-push"), str(tif), "-s", "localhost", "-u", "u", "-d", "D"],
               env, cwd=tmp_path)
    assert got.returncode == 8 and "omero-push setup-ice" in got.stderr, got.stderr

    got = _run([str(bin_dir / "omero-push"), "setup-ice", "--no-index"], env, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert f"using the cached {cached.name}" in got.stderr and "building" not in got.stderr
    check = (
        "import Ice, omero.clients, pathlib, sys; from omero.cli import CLI; "
        "cli = CLI(); cli.loadplugins(); "
        "print(Ice.stringVersion(), pathlib.Path(Ice.__file__).is_relative_to(sys.prefix), "
        "'push' in cli.controls)"
    )
    got = _run([str(py), "-c", check], env, cwd=tmp_path)
    assert got.stdout.split() == ["3.6.5", "True", "True"], got.stderr
    # A second run finds Ice and does nothing.
    got = _run([str(bin_dir / "omero-push"), "setup-ice", "--no-index"], env, cwd=tmp_path)
    assert got.returncode == 0 and "already installed" in got.stderr

"""``omero-push setup-ice``: a working zeroc-ice 3.6.5 (what omero-py needs) for this Python.

PyPI has zeroc-ice 3.6.5 only as an sdist, which does not compile on Python >= 3.11 as shipped, so
``pip install 'posdir2ometiff[omero]'`` fails there with a compiler error.  This command:

1. does nothing when ``import Ice`` already gives 3.6.x (unless ``--force``);
2. installs a binary wheel from the package index when one exists for this Python and platform;
3. else installs a wheel built before and cached in ``~/.cache/posdir2ometiff/wheels``
   (``$POSDIR2OMETIFF_WHEEL_CACHE``; the set-up script shares it), without touching the network;
4. else downloads the 3.6.5 sdist, applies the two source fixes, builds the wheel (about 10 minutes
   on 2 cores), caches it and installs it;
5. then installs omero-py if it is missing (``--ice-only`` skips this).

It is stdlib-only and runs as a file too (``python omero_push/ice.py``), so ``scripts/setup.sh``
uses it in a virtualenv where nothing else is installed yet.  The two fixes are the ones in
``scripts/build_zeroc_ice.sh`` of earlier versions of this project:

- ``src/Slice.cpp`` includes ``<eval.h>``, removed from CPython's public headers in 3.11;
- ``src/Util.cpp`` reads ``PyThreadState_GET()->frame``, private since 3.11: ``PyEval_GetFrame()``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

ICE_VERSION = "3.6.5"
ICE_REQUIREMENT = "zeroc-ice>=3.6.5,<3.7"
OMERO_PY_REQUIREMENT = "omero-py>=5.19"
CACHE_ENV = "POSDIR2OMETIFF_WHEEL_CACHE"
COMMAND = "omero-push setup-ice"

#: (file in the sdist, text to find, replacement): the two fixes for Python >= 3.11.
FIXES: tuple[tuple[str, str, str], ...] = (
    ("src/Slice.cpp", "#include <eval.h>\n", ""),
    ("src/Util.cpp", "PyThreadState_GET()->frame", "PyEval_GetFrame()"),
)


class IceSetupError(RuntimeError):
    """A step failed; the message says which and what to do."""


def cache_dir() -> Path:
    """Where built wheels are kept (shared with scripts/setup.sh)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "posdir2ometiff" / "wheels"


def python_tag(python: str) -> tuple[str, str]:
    """(``cp311``, ``linux_x86_64``) of the interpreter ``python`` (which may not be ours)."""
    code = (
        "import sys, sysconfig; "
        "print(f'cp{sys.version_info[0]}{sys.version_info[1]}'); "
        "print(sysconfig.get_platform().replace('-', '_').replace('.', '_'))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    abi, platform = out.stdout.split()
    return abi, platform


def cached_wheel(cache: Path, abi: str, platform: str) -> Path | None:
    """A cached zeroc-ice 3.6.5 wheel for this interpreter's ABI and platform, if any."""
    for whl in sorted(cache.glob(f"zeroc_ice-{ICE_VERSION}-{abi}-*.whl")):
        if whl.name.endswith(f"-{platform}.whl") or platform in whl.name:
            return whl
    return None


def ice_version(python: str) -> str | None:
    """``Ice.stringVersion()`` in ``python``, or None when Ice does not import there."""
    out = subprocess.run(
        [python, "-c", "import Ice; print(Ice.stringVersion())"], capture_output=True, text=True
    )
    return out.stdout.strip() if out.returncode == 0 else None


def imports(python: str, module: str) -> bool:
    out = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    return out.returncode == 0


def _pip(python: str, *args: str, quiet: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [python, "-m", "pip", *args, "--disable-pip-version-check"]
    if quiet:
        cmd.append("--quiet")
    return subprocess.run(cmd, capture_output=True, text=True)


def apply_fixes(src: Path) -> None:
    """Patch the unpacked sdist in place; refuse to go on if a fix no longer applies."""
    for rel, old, new in FIXES:
        path = src / rel
        text = path.read_text(encoding="utf-8")
        if old not in text:
            raise IceSetupError(f"{path}: {old.strip()!r} not found; is this zeroc-ice {ICE_VERSION}?")
        path.write_text(text.replace(old, new), encoding="utf-8")


def build_wheel(python: str, cache: Path, log: TextLog) -> Path:
    """Download the sdist, fix, build and cache the wheel; returns its cached path."""
    abi, platform = python_tag(python)
    log(f"building zeroc-ice {ICE_VERSION} for {abi}-{platform} (about 10 minutes on 2 cores)...")
    with tempfile.TemporaryDirectory(prefix="zeroc-ice-") as tmp:
        work = Path(tmp)
        got = _pip(
            python, "download", "--no-deps", "--no-binary", ":all:",
            f"zeroc-ice=={ICE_VERSION}", "-d", str(work),
        )
        sdists = list(work.glob("zeroc-ice-*.tar.gz")) or list(work.glob("zeroc_ice-*.tar.gz"))
        if got.returncode != 0 or not sdists:
            raise IceSetupError(f"could not download the zeroc-ice {ICE_VERSION} sdist: "
                                f"{_last_line(got.stderr)}")
        with tarfile.open(sdists[0]) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: no paths outside ``work``
                tar.extractall(work, filter="data")
            else:  # pragma: no cover
                tar.extractall(work)
        src = next(p for p in work.iterdir() if p.is_dir() and p.name.startswith("zeroc"))
        apply_fixes(src)
        built = _pip(python, "wheel", "--no-deps", "-w", str(work / "dist"), str(src))
        wheels = list((work / "dist").glob("zeroc_ice-*.whl"))
        if built.returncode != 0 or not wheels:
            raise IceSetupError(
                "building zeroc-ice failed (a C++ compiler, the Python headers and the OpenSSL "
                f"and bzip2 headers are needed): {_last_line(built.stderr)}"
            )
        cache.mkdir(parents=True, exist_ok=True)
        final = cache / wheels[0].name
        partial = cache / f".{wheels[0].name}.partial"  # never a half-copied wheel under its name
        shutil.copyfile(wheels[0], partial)
        partial.replace(final)
    log(f"cached {final}")
    return final


def _last_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


class TextLog:
    """Progress lines on stderr (stdout is for the wheel path with ``--build-only``)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def __call__(self, text: str) -> None:
        if not self.quiet:
            print(f"setup-ice: {text}", file=sys.stderr)


def ensure_wheel(python: str, cache: Path, log: TextLog) -> Path:
    """The cached wheel for ``python``, built first when there is none."""
    abi, platform = python_tag(python)
    found = cached_wheel(cache, abi, platform)
    if found is not None:
        log(f"using the cached {found.name}")
        return found
    return build_wheel(python, cache, log)


def setup_ice(
    python: str = sys.executable,
    *,
    cache: Path | None = None,
    force: bool = False,
    use_index: bool = True,
    with_omero_py: bool = True,
    log: TextLog | None = None,
) -> str:
    """Make ``import Ice`` (3.6.x) and ``import omero`` work in ``python``; returns how Ice came."""
    log = log or TextLog()
    cache = cache or cache_dir()
    have = ice_version(python)
    how = "present"
    if have and have.startswith("3.6") and not force:
        log(f"zeroc-ice {have} is already installed")
    else:
        how = _install_ice(python, cache, use_index, force, log)
        have = ice_version(python)
        if not have or not have.startswith("3.6"):
            raise IceSetupError(f"zeroc-ice was installed but 'import Ice' gives {have!r}")
        log(f"zeroc-ice {have} installed ({how})")
    if with_omero_py and not imports(python, "omero.clients"):
        log(f"installing {OMERO_PY_REQUIREMENT}")
        got = _pip(python, "install", OMERO_PY_REQUIREMENT)
        if got.returncode != 0:
            raise IceSetupError(f"pip install {OMERO_PY_REQUIREMENT} failed: {_last_line(got.stderr)}")
    return how


def _install_ice(python: str, cache: Path, use_index: bool, force: bool, log: TextLog) -> str:
    extra = ["--force-reinstall"] if force else []
    if use_index:
        got = _pip(python, "install", "--only-binary", ":all:", *extra, ICE_REQUIREMENT)
        if got.returncode == 0:
            return "a wheel from the package index"
        log("no zeroc-ice wheel on the package index for this Python: using a local build")
    wheel = ensure_wheel(python, cache, log)
    got = _pip(python, "install", "--no-index", "--no-deps", *extra, str(wheel))
    if got.returncode != 0:
        raise IceSetupError(f"pip install {wheel} failed: {_last_line(got.stderr)}")
    return f"from {wheel}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=COMMAND,
        description="Install zeroc-ice 3.6.5 (built from the sdist with the fixes Python >= 3.11 "
        "needs, cached in ~/.cache/posdir2ometiff/wheels) and omero-py into this Python.",
    )
    p.add_argument("--python", default=sys.executable, help="the interpreter to install into")
    p.add_argument("--cache", type=Path, help=f"wheel cache (default: ${CACHE_ENV} or ~/.cache/…)")
    p.add_argument("--force", action="store_true", help="reinstall even if Ice already imports")
    p.add_argument("--no-index", action="store_true", help="never ask the package index for Ice")
    p.add_argument("--ice-only", action="store_true", help="do not install omero-py")
    p.add_argument(
        "--build-only",
        action="store_true",
        help="only make sure the wheel is cached, and print its path (what scripts/setup.sh uses)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="errors only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = TextLog(args.quiet)
    try:
        if args.build_only:
            print(ensure_wheel(args.python, args.cache or cache_dir(), log))
            return 0
        setup_ice(
            args.python,
            cache=args.cache,
            force=args.force,
            use_index=not args.no_index,
            with_omero_py=not args.ice_only,
            log=log,
        )
    except (IceSetupError, OSError, subprocess.CalledProcessError) as exc:
        print(f"{COMMAND}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

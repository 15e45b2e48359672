"""scripts/build_image.sh without building anything: a fake engine records what the script asks
for (the proxy's CA as a build secret, the host's pip index settings, the cached zeroc-ice wheel
in the build context, the stages it builds and tags, and the untagged images of ours it removes
afterwards)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAKE = """#!/bin/sh
# a container engine that records its arguments; "build" also keeps what it was given
echo "$*" >> "$LOG"
case "$1" in
  build)
    for a in "$@"; do
      case "$a" in id=pipcert,src=*) cp "${a#id=pipcert,src=}" "$LOG.secret" ;; esac
    done
    ls docker/wheels >> "$LOG.wheels"
    case "$*" in *"--target ${FAIL_TARGET:-none} "*) exit 1 ;; esac ;;
  image)
    [ "$2" = prune ] && printf 'Deleted 1\nDeleted 2\n' ;;
esac
exit 0
"""


def _run(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    engine = tmp_path / "fake-engine"
    engine.write_text(FAKE)
    engine.chmod(0o755)
    log = tmp_path / "log"
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("PIP_") and k != "POSDIR2OMETIFF_WHEEL_CACHE"}
    # pip's config files are hidden too, so only what the test sets counts
    base.update(ENGINE=str(engine), LOG=str(log), PIP_CONFIG_FILE=os.devnull, **env)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_image.sh"), "--jupyter"],
                          capture_output=True, text=True, env=base, check=False, timeout=120)
    return proc, log.read_text() if log.exists() else ""


def test_proxy_ca_index_settings_and_cached_wheel_reach_the_build(tmp_path: Path) -> None:
    ca = tmp_path / "proxy-ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nproxy\n-----END CERTIFICATE-----\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "zeroc_ice-3.6.5-cp311-cp311-linux_x86_64.whl").write_bytes(b"wheel")
    context_wheels = REPO / "docker" / "wheels"
    before = sorted(context_wheels.glob("*.whl"))  # a wheel put there by hand stays
    proc, log = _run(tmp_path, PIP_CERT=str(ca), PIP_INDEX_URL="https://pypi.example/simple",
                     POSDIR2OMETIFF_WHEEL_CACHE=str(wheels))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "posdir2ometiff:latest"
    builds = [line for line in log.splitlines() if line.startswith("build ")]
    # the dependencies' stages are tagged: the cache a rebuild after a code change reuses
    assert [b.split("--target ", 1)[1] for b in builds] == [
        "deps -t posdir2ometiff:deps .", "runtime -t posdir2ometiff:latest .",
        "jupyter-deps -t posdir2ometiff:jupyter-deps .", "jupyter -t posdir2ometiff:jupyter ."]
    for b in builds:
        assert "-f docker/Dockerfile" in b and "--network host" in b
        assert "--build-arg PIP_INDEX_URL=https://pypi.example/simple" in b
    # the CA went in as a build secret (not a build argument, not into the context)
    assert (tmp_path / "log.secret").read_text() == ca.read_text()
    assert str(ca) not in log
    # the cached Ice wheel was in the context while building, and removed afterwards
    assert "zeroc_ice-3.6.5-cp311-cp311-linux_x86_64.whl" in (tmp_path / "log.wheels").read_text()
    assert sorted(context_wheels.glob("*.whl")) == before


def test_without_a_proxy_ca_the_secret_is_empty(tmp_path: Path) -> None:
    proc, log = _run(tmp_path, POSDIR2OMETIFF_WHEEL_CACHE=str(tmp_path / "none"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "log.secret").read_text() == ""
    assert "PIP_INDEX_URL" not in log


def test_after_the_build_only_our_untagged_images_are_removed(tmp_path: Path) -> None:
    """Each rebuild after a code change leaves the previous image untagged; the script removes
    those by the label docker/Dockerfile gives every stage, last, so nobody else's image goes."""
    proc, log = _run(tmp_path, POSDIR2OMETIFF_WHEEL_CACHE=str(tmp_path / "none"))
    assert proc.returncode == 0, proc.stderr
    lines = log.splitlines()
    assert lines[-1] == "image prune -f --filter label=org.opencontainers.image.title=posdir2ometiff"
    assert all(not line.startswith("image prune") for line in lines[:-1])
    assert "removed 2 untagged image(s)" in proc.stderr
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    # in the first stage, so every stage (and every leftover of a stage) carries it
    label = dockerfile.index('LABEL org.opencontainers.image.title="posdir2ometiff"')
    assert dockerfile.index("AS python-base") < label < dockerfile.index("AS deps")


def test_a_failed_build_removes_nothing(tmp_path: Path) -> None:
    """What a failed build left is what one looks at to see why: it is not pruned."""
    proc, log = _run(tmp_path, POSDIR2OMETIFF_WHEEL_CACHE=str(tmp_path / "none"),
                     FAIL_TARGET="runtime")
    assert proc.returncode != 0
    assert "prune" not in log
    assert "--target jupyter" not in log

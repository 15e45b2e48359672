"""The container image (docker/Dockerfile): built with Docker or podman by scripts/build_image.sh,
then `posdir2ometiff demo`, a conversion and an `omero-push` to the stand-in on the host run inside
it (--network host; the password passed by name from the environment, never on a command line).

Skipped, with the reason, where no container engine can run; a failing build fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.image, pytest.mark.slow]


def _engine() -> str | None:
    """docker with a running daemon, else podman as root (Debian's podman with runc)."""
    forced = os.environ.get("ENGINE")
    candidates = [forced] if forced else ["docker", "podman"]
    for name in candidates:
        if not shutil.which(name):
            continue
        if name == "podman" and os.geteuid() != 0:
            continue
        probe = subprocess.run([name, "info"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return name
    return None


@pytest.fixture(scope="module")
def image() -> tuple[str, str]:
    engine = _engine()
    if engine is None:
        pytest.skip("no container engine: neither a Docker daemon nor podman as root "
                    "(scripts/setup.d/podman.sh installs podman on Debian)")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_image.sh"), "--jupyter"],
                          capture_output=True, text=True, check=False, timeout=1800,
                          env=dict(os.environ, ENGINE=engine))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return engine, proc.stdout.strip().splitlines()[-1]


def _run(engine: str, img: str, data: Path, *argv: str, env: dict[str, str] | None = None,
         extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [engine, "run", "--rm", "-v", f"{data}:/data", *extra, img, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600,
                          env=env or dict(os.environ))


def test_demo_convert_and_push_from_inside_the_container(image, omero_server_factory: Any,
                                                         tmp_path: Path) -> None:
    engine, img = image
    server = omero_server_factory(password="image-secret-42")
    data = tmp_path / "data"
    data.mkdir()
    demo = _run(engine, img, data, "posdir2ometiff", "demo", "exp", "--num-positions", "2",
                "-z", "2", "-t", "2", "--size", "64", "-q")
    assert demo.returncode == 0, demo.stderr
    conv = _run(engine, img, data, "posdir2ometiff", "exp", "-o", "out", "--workers", "1", "-q")
    assert conv.returncode == 0, conv.stderr
    assert sorted(p.name for p in (data / "out").glob("*.ome.tiff")) == [
        "pos001.ome.tiff", "pos002.ome.tiff"]
    assert (data / "out" / "report.html").is_file()

    env = dict(os.environ, OMERO_PASSWORD=server.password)
    push = _run(engine, img, data, "omero-push", "out", "--server", server.url, "--port",
                str(server.port), "--user", server.user, "--dataset", "image-smoke",
                env=env, extra=("--network", "host", "-e", "OMERO_PASSWORD"))
    assert push.returncode == 0, push.stderr
    assert "2 image(s) — 2 new" in push.stdout
    assert server.password not in push.stdout + push.stderr

    client = server.client()
    try:
        q = client.getSession().getQueryService()
        (dataset,) = q.findAllByString("Dataset", "name", "image-smoke", True, None)
        images = client.getSession().getContainerService().getImages(
            "Dataset", [dataset.getId().getValue()], None)
        assert sorted(i.getName().getValue() for i in images) == ["pos001", "pos002"]
    finally:
        client.closeSession()


def test_jupyter_flavour_serves_the_notebooks(image) -> None:
    engine, img = image
    jupyter = img.rsplit(":", 1)[0] + ":jupyter"
    proc = subprocess.run([engine, "run", "--rm", jupyter, "sh", "-c",
                           "jupyter lab --version && ls /notebooks"],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "01_convert_and_look.ipynb" in proc.stdout and "03_query_and_fetch.ipynb" in proc.stdout


LABEL = "org.opencontainers.image.title=posdir2ometiff"


def _layers(engine: str, img: str) -> list[tuple[int, str]]:
    """(size in bytes, instruction) per layer, newest first: podman prints a JSON list, Docker
    one JSON object per line with the size as a string of bytes (--human=false)."""
    if engine == "podman":
        out = subprocess.run([engine, "history", "--format", "json", img], capture_output=True,
                             text=True, check=True).stdout
        return [(int(h["size"]), h.get("CreatedBy", "")) for h in json.loads(out)]
    out = subprocess.run([engine, "history", "--human=false", "--no-trunc", "--format",
                          "{{json .}}", img], capture_output=True, text=True, check=True).stdout
    return [(int(h["Size"]), h["CreatedBy"]) for h in map(json.loads, out.splitlines())]


def test_a_code_change_adds_a_small_layer_not_a_new_copy_of_the_virtualenv(image) -> None:
    """The final images install the project's wheel on top of the dependencies' virtualenv, so
    a rebuild after a code change adds a layer of the wheel's size. Copying the whole virtualenv
    after the project was installed into it added 0.8-1 GB per build and per flavour, and filled
    the disk of the machine that builds it on every commit."""
    engine, img = image
    for name in (img, img.rsplit(":", 1)[0] + ":jupyter"):
        layers = _layers(engine, name)
        venv = next(i for i, (size, how) in enumerate(layers) if "in /opt/venv" in how)
        assert layers[venv][0] > 200 * 2**20, (name, layers[venv])
        # everything above the virtualenv: the wheel, its install, the notebooks
        above = layers[:venv]
        assert any("pip install" in how and ".whl" in how for _, how in above), (name, above)
        assert sum(size for size, _ in above) < 10 * 2**20, (name, above)


def test_the_build_leaves_no_untagged_images_of_ours_behind(image) -> None:
    """scripts/build_image.sh removes what its rebuild left untagged (the previous image, the
    stages' leftovers), selected by the label every stage carries, and keeps the dependencies'
    stages tagged: they are the cache that makes the next rebuild take seconds."""
    engine, img = image
    name = img.rsplit(":", 1)[0]
    labels = subprocess.run([engine, "image", "inspect", "--format",
                             '{{index .Config.Labels "org.opencontainers.image.title"}}'
                             if engine == "docker" else
                             '{{index .Labels "org.opencontainers.image.title"}}', img],
                            capture_output=True, text=True, check=True).stdout
    assert labels.strip() == "posdir2ometiff"
    left = subprocess.run([engine, "images", "-q", "--filter", "dangling=true", "--filter",
                           f"label={LABEL}"], capture_output=True, text=True, check=True).stdout
    assert left.split() == []
    for cache in ("deps", "jupyter-deps"):
        probe = subprocess.run([engine, "image", "inspect", f"{name}:{cache}"],
                               capture_output=True, text=True, check=False)
        assert probe.returncode == 0, f"{name}:{cache} is not kept as the build cache"

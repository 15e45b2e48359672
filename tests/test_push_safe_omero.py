"""Pushes that were interrupted stay where they began; pixels mode checks the file first; a push
refuses a folder another run holds (issue #14, points 2 and 7). Against the OMERO stand-in."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

pytest.importorskip("omero")

from omero_push import cli  # noqa: E402
from omero_push.errors import InputError  # noqa: E402
from omero_push.provenance import PENDING_PREFIX  # noqa: E402
from omero_push.push import push  # noqa: E402
from posdir2ometiff.lock import EXIT_LOCKED  # noqa: E402
from tests.test_lock_atomic import _holder  # noqa: E402
from tests.test_push_omero import (  # noqa: E402
    _v,
    counts,
    dataset_by_name,
    images_of,
    push_kw,
    reader,
)
from tests.test_push_support import (  # noqa: E402
    isolate_root_logging,
    make_converter_output,
    make_ome_tiff,
)

_clean_logging = pytest.fixture(autouse=True)(isolate_root_logging)


class _Stop(Exception):
    """Stands for a crash in the middle of a push."""


def _interrupted_push(monkeypatch, module: str, name: str, f: Path, kw: dict[str, Any]) -> None:
    mod = importlib.import_module(module)
    real = getattr(mod, name)

    def stop(*args: Any, **kwargs: Any) -> Any:
        raise _Stop("crash")

    monkeypatch.setattr(mod, name, stop)
    with pytest.raises(Exception):  # noqa: B017 - the push reports the crash its own way
        push([f], **kw)
    monkeypatch.setattr(mod, name, real)


@pytest.mark.parametrize(
    "mode, module, name",
    [("import", "omero_push.receipts", "complete_image"),
     ("pixels", "omero_push.pixels", "push_pixels")],
)
def test_half_made_image_of_a_push_to_a_is_never_linked_into_b(
    omero_server: Any, tmp_path: Path, monkeypatch, mode: str, module: str, name: str
) -> None:
    f = tmp_path / "one.ome.tiff"
    make_ome_tiff(f, name="one")
    _interrupted_push(monkeypatch, module, name, f, push_kw(omero_server, dataset="A", mode=mode))
    with reader(omero_server) as sf:
        a_id = _v(dataset_by_name(sf, "A").getId())
        (half,) = images_of(sf, a_id)
        assert _v(half.getDescription()).startswith(PENDING_PREFIX)
    to_b = push([f], **push_kw(omero_server, dataset="B", mode=mode))
    assert [r.status for r in to_b.images] == ["created"]
    with reader(omero_server) as sf:
        b_id = _v(dataset_by_name(sf, "B").getId())
        (in_b,) = images_of(sf, b_id)
        assert _v(in_b.getId()) != _v(half.getId())
        (still_a,) = images_of(sf, a_id)  # A's half-made image is left to A
        assert _v(still_a.getId()) == _v(half.getId())
    to_a = push([f], **push_kw(omero_server, dataset="A", mode=mode))
    assert [r.status for r in to_a.images] == ["resumed"]
    with reader(omero_server) as sf:
        (done,) = images_of(sf, a_id)
        assert not _v(done.getDescription()).startswith(PENDING_PREFIX)
        assert len(images_of(sf, b_id)) == 1


def test_pixels_mode_file_lacking_planes_fails_before_creating_anything(
    omero_server: Any, tmp_path: Path
) -> None:
    full = tmp_path / "full.ome.tiff"
    make_ome_tiff(full, shape_tczyx=(2, 2, 3, 40, 50))
    short = tmp_path / "short.ome.tiff"
    with tifffile.TiffFile(full) as tif:
        xml = tif.pages[0].description
        planes = [p.asarray() for p in tif.pages[:7]]  # the OME-XML promises 12
    with tifffile.TiffWriter(short) as tw:
        for i, plane in enumerate(planes):
            tw.write(plane, photometric="minisblack", description=xml if i == 0 else None,
                     metadata=None)
    with reader(omero_server) as sf:
        before = counts(sf)
    with pytest.raises(InputError, match="promises plane"):
        push([short], **push_kw(omero_server, dataset="short", mode="pixels"))
    with reader(omero_server) as sf:
        assert counts(sf) == before


def test_float_planes_with_infinities_get_a_finite_display_range(
    omero_server: Any, tmp_path: Path
) -> None:
    f = tmp_path / "inf.ome.tiff"
    data = make_ome_tiff(f, shape_tczyx=(1, 1, 1, 16, 16), dtype="float32")
    data[0, 0, 0, 0, 0], data[0, 0, 0, 0, 1] = np.inf, -np.inf
    with tifffile.TiffFile(f) as tif:
        xml = tif.pages[0].description
    tifffile.imwrite(f, data[0, 0, 0], photometric="minisblack", description=xml, metadata=None)
    result = push([f], **push_kw(omero_server, dataset="inf", mode="pixels"))
    with reader(omero_server) as sf:
        (img,) = sf.getContainerService().getImages("Image", [result.image_ids[0]], None)
        pix = sf.getQueryService().findByQuery(
            "select p from Pixels p join fetch p.channels c join fetch c.statsInfo "
            f"where p.id = {_v(img.getPrimaryPixels().getId())}", None)
        stats = pix.getChannel(0).getStatsInfo()
        lo, hi = _v(stats.getGlobalMin()), _v(stats.getGlobalMax())
    finite = data[np.isfinite(data)]
    assert (lo, hi) == (pytest.approx(float(finite.min())), pytest.approx(float(finite.max())))


def test_push_refuses_a_folder_another_run_holds(
    omero_server: Any, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    monkeypatch.setenv("OMERO_PASSWORD", omero_server.password)
    proc = _holder(out)
    try:
        rc = cli.main([str(out), "--server", f"tcp://{omero_server.host}", "--port",
                       str(omero_server.port), "--user", omero_server.user, "--dataset", "busy"])
    finally:
        proc.communicate("")
    assert rc == EXIT_LOCKED
    err = capsys.readouterr().err.strip()
    assert f"in use by test holder (pid {proc.pid}" in err and len(err.splitlines()) == 1
    with reader(omero_server) as sf:
        assert not sf.getQueryService().findAllByString("Dataset", "name", "busy", True, None)


def test_changed_file_is_pushed_as_a_new_image_and_the_push_says_so(
    omero_server: Any, tmp_path: Path, caplog
) -> None:
    import logging

    f = tmp_path / "pos001.ome.tiff"
    make_ome_tiff(f, name="pos001", seed=1)
    first = push([f], **push_kw(omero_server, dataset="changes", mode="pixels"))
    (old_id,) = first.image_ids
    again = push([f], **push_kw(omero_server, dataset="changes", mode="pixels"))
    assert [r.status for r in again.images] == ["present"]  # same bytes: nothing new
    make_ome_tiff(f, name="pos001", seed=2)  # legitimately changed output, same name
    with caplog.at_level(logging.WARNING, logger="omero_push"):
        changed = push([f], **push_kw(omero_server, dataset="changes", mode="pixels"))
    assert [r.status for r in changed.images] == ["created"]
    assert f"pos001.ome.tiff: changed since it was pushed as Image:{old_id}" in caplog.text
    assert "pushing it as a new image" in caplog.text


def test_convert_and_push_twice_adds_no_image(omero_server: Any, tmp_path: Path) -> None:
    """Each --convert run converts into a fresh temporary folder; the files are byte-identical,
    so the second push finds every image present."""
    from posdir2ometiff.demo import make_demo

    spec = make_demo(tmp_path / "exp", positions=2, channels=["DIC", "GFP"], z=1, t=2, size=32)
    kw = push_kw(omero_server, dataset="twice", mode="import", convert=True,
                 convert_options={"workers": 1, "compression": "zlib"})
    first = push([spec.folder], **kw)
    assert sorted(r.status for r in first.images) == ["created", "created"]
    with reader(omero_server) as sf:
        before = counts(sf)
    second = push([spec.folder], **kw)
    assert sorted(r.status for r in second.images) == ["present", "present"]
    with reader(omero_server) as sf:
        assert counts(sf) == before

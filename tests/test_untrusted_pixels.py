"""Pixels mode checks the file against its OME-XML before creating anything, and gives a finite
display range to planes holding ±inf or NaN (issue #14, point 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from omero_push.errors import InputError
from omero_push.ometiff import images_from_ome, read_ome
from omero_push.pixels import _finite_range, check_planes
from tests.test_push_support import make_ome_tiff


def _drop_planes(src: Path, dst: Path, keep: int) -> None:
    """``dst``: the first ``keep`` IFDs of ``src`` under ``src``'s unchanged OME-XML."""
    with tifffile.TiffFile(src) as tif:
        xml = tif.pages[0].description
        planes = [p.asarray() for p in tif.pages[:keep]]
    with tifffile.TiffWriter(dst) as tw:
        for i, plane in enumerate(planes):
            tw.write(plane, photometric="minisblack", description=xml if i == 0 else None,
                     metadata=None)


def test_complete_file_passes(tmp_path: Path) -> None:
    path = tmp_path / "ok.ome.tiff"
    make_ome_tiff(path)
    (im,) = images_from_ome(read_ome(path))
    assert check_planes(path, im) == np.dtype("uint16")


def test_file_lacking_promised_planes_is_refused(tmp_path: Path) -> None:
    full = tmp_path / "full.ome.tiff"
    make_ome_tiff(full, shape_tczyx=(2, 2, 3, 40, 50))
    short = tmp_path / "short.ome.tiff"
    _drop_planes(full, short, keep=7)  # the XML promises 12
    (im,) = images_from_ome(read_ome(short))
    with pytest.raises(InputError, match=r"short\.ome\.tiff: the OME-XML promises plane"):
        check_planes(short, im)


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1.0, np.inf, 3.0], (1.0, 3.0)),
        ([-np.inf, 2.0, np.nan], (2.0, 2.0)),
        ([np.inf, -np.inf], (np.inf, -np.inf)),  # nothing finite: the caller falls back to 0
    ],
)
def test_display_range_ignores_non_finite(values, expected) -> None:
    plane = np.array([values], dtype=np.float32)
    assert _finite_range(plane) == expected

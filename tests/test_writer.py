"""The streaming OME-TIFF writer: bit-exact planes, dtypes, compressions, pyramids, atomic output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from posdir2ometiff import writer
from posdir2ometiff.ome import ImageSpec, build_ome, channel_specs, ome_xml
from posdir2ometiff.writer import (
    WriterError,
    downsample2,
    pyramid_levels,
    write_ometiff,
)

UUID = "urn:uuid:12345678-1234-1234-1234-123456789abc"


def xml_for(n_z: int, shape: tuple[int, int], dtype: str, name: str = "p.ome.tiff") -> str:
    spec = ImageSpec("p", shape[1], shape[0], n_z, 1, channel_specs(["GFP"], [1]), np.dtype(dtype))
    return ome_xml(build_ome(spec, None, file_name=name, uuid=UUID))


def random_planes(n: int, shape: tuple[int, int], dtype: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return [rng.normal(0, 100, shape).astype(dtype) for _ in range(n)]
    top = np.iinfo(dtype).max
    return [rng.integers(0, top, shape, dtype=dtype, endpoint=True) for _ in range(n)]


def test_pyramid_levels_rule() -> None:
    assert pyramid_levels(2048, 2048, 512) == 3  # 2048, 1024, 512
    assert pyramid_levels(512, 512, 512) == 1  # fits in one tile: no sub-resolutions
    assert pyramid_levels(513, 100, 512) == 2
    assert pyramid_levels(2048, 2048, 512, "none") == 1
    assert pyramid_levels(2048, 2048, 512, "2") == 2
    assert pyramid_levels(4, 4, 512, 10) == 3  # capped: 4, 2, 1
    with pytest.raises(WriterError):
        pyramid_levels(64, 64, 512, "lots")


def test_downsample_is_a_2x2_mean_keeping_dtype() -> None:
    a = np.array([[0, 2, 10, 10], [2, 4, 10, 11]], np.uint16)
    assert downsample2(a).tolist() == [[2, 10]]  # (0+2+2+4)/4 = 2, (10+10+10+11)/4 = 10.25
    assert downsample2(a).dtype == np.uint16
    big = np.full((3, 5), 65535, np.uint16)  # odd sizes: edges replicated, no overflow
    assert downsample2(big).shape == (2, 3) and downsample2(big).max() == 65535
    f = np.array([[1.0, 2.0], [3.0, 4.5]], np.float32)
    assert downsample2(f).dtype == np.float32 and downsample2(f)[0, 0] == pytest.approx(2.625)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("compression", ["zstd", "zlib", "lzw", "none"])
def test_planes_are_bit_exact_for_each_dtype_and_compression(
    tmp_path: Path, dtype: str, compression: str
) -> None:
    shape = (96, 80)
    planes = random_planes(3, shape, dtype)
    out = tmp_path / "p.ome.tiff"
    write_ometiff(out, iter(planes), count=3, shape=shape, dtype=np.dtype(dtype),
                  ome_xml=xml_for(3, shape, dtype), tile=64, compression=compression)
    with tifffile.TiffFile(out) as tf:
        assert tf.is_ome
        assert len(tf.pages) == 3
        for page, plane in zip(tf.pages, planes, strict=True):
            assert page.dtype == np.dtype(dtype)
            assert page.is_tiled
            np.testing.assert_array_equal(page.asarray(), plane)
        expected = {"zstd": 50000, "zlib": 8, "lzw": 5, "none": 1}[compression]
        assert tf.pages[0].compression == expected


def test_pyramid_in_subifds_with_newsubfiletype_1(tmp_path: Path) -> None:
    shape = (2048, 2048)
    planes = random_planes(2, shape, "uint16")
    out = tmp_path / "p.ome.tiff"
    levels = write_ometiff(out, iter(planes), count=2, shape=shape, dtype=np.dtype("uint16"),
                           ome_xml=xml_for(2, shape, "uint16"), tile=512)
    assert levels == 3
    with tifffile.TiffFile(out) as tf:
        series = tf.series[0]
        assert [lvl.shape[-2:] for lvl in series.levels] == [(2048, 2048), (1024, 1024), (512, 512)]
        page = tf.pages[0]
        assert len(page.subifds) == 2 and page.tile == (512, 512)
        for i, plane in enumerate(planes):
            np.testing.assert_array_equal(series.levels[0].asarray()[i], plane)
            np.testing.assert_array_equal(series.levels[1].asarray()[i], downsample2(plane))
        for level in series.levels[1:]:
            assert level.keyframe.subfiletype == 1  # FILETYPE_REDUCEDIMAGE
        assert page.subfiletype == 0


def test_small_plane_has_no_pyramid_and_a_clipped_tile(tmp_path: Path) -> None:
    shape = (100, 40)
    out = tmp_path / "p.ome.tiff"
    levels = write_ometiff(out, iter(random_planes(1, shape, "uint16")), count=1, shape=shape,
                           dtype=np.dtype("uint16"), ome_xml=xml_for(1, shape, "uint16"))
    assert levels == 1
    with tifffile.TiffFile(out) as tf:
        assert not tf.pages[0].subifds
        assert tf.pages[0].tile == (112, 48)  # plane rounded up to 16, not a 512² tile


def test_error_mid_stream_leaves_no_output(tmp_path: Path) -> None:
    shape = (32, 32)
    out = tmp_path / "p.ome.tiff"

    def planes():
        yield np.zeros(shape, np.uint16)
        raise ValueError("bad plane")

    with pytest.raises(ValueError, match="bad plane"):
        write_ometiff(out, planes(), count=2, shape=shape, dtype=np.dtype("uint16"),
                      ome_xml=xml_for(2, shape, "uint16"))
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(WriterError, match="expected uint16"):
        write_ometiff(out, iter([np.zeros(shape, np.uint8)]), count=1, shape=shape,
                      dtype=np.dtype("uint16"), ome_xml=xml_for(1, shape, "uint16"))
    with pytest.raises(WriterError, match="got 1 planes, expected 2"):
        write_ometiff(out, iter([np.zeros(shape, np.uint16)]), count=2, shape=shape,
                      dtype=np.dtype("uint16"), ome_xml=xml_for(2, shape, "uint16"))
    assert list(tmp_path.iterdir()) == []


def test_bigtiff_only_above_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (64, 64)
    args = dict(count=2, shape=shape, dtype=np.dtype("uint16"), ome_xml=xml_for(2, shape, "uint16"))
    write_ometiff(tmp_path / "a.ome.tiff", iter(random_planes(2, shape, "uint16")), **args)
    monkeypatch.setattr(writer, "BIGTIFF_THRESHOLD", 1000)
    write_ometiff(tmp_path / "b.ome.tiff", iter(random_planes(2, shape, "uint16")), **args)
    with tifffile.TiffFile(tmp_path / "a.ome.tiff") as a, tifffile.TiffFile(tmp_path / "b.ome.tiff") as b:
        assert not a.is_bigtiff and b.is_bigtiff
        np.testing.assert_array_equal(a.asarray(), b.asarray())


def test_bad_options(tmp_path: Path) -> None:
    shape = (16, 16)
    with pytest.raises(WriterError, match="multiple of 16"):
        write_ometiff(tmp_path / "x.ome.tiff", iter([]), count=0, shape=shape,
                      dtype=np.dtype("uint16"), ome_xml="", tile=100)
    with pytest.raises(WriterError, match="--compression"):
        write_ometiff(tmp_path / "x.ome.tiff", iter([]), count=0, shape=shape,
                      dtype=np.dtype("uint16"), ome_xml="", compression="jpeg")


def test_512_plane_with_tile_512_has_no_subifds(tmp_path: Path) -> None:
    shape = (512, 512)
    out = tmp_path / "p.ome.tiff"
    levels = write_ometiff(out, iter(random_planes(1, shape, "uint16")), count=1, shape=shape,
                           dtype=np.dtype("uint16"), ome_xml=xml_for(1, shape, "uint16"))
    assert levels == 1
    with tifffile.TiffFile(out) as tf:
        assert len(tf.pages) == 1 and not tf.pages[0].subifds
        assert tf.pages[0].tile == (512, 512)
        assert len(tf.series[0].levels) == 1


def test_planes_are_streamed_one_at_a_time(tmp_path: Path) -> None:
    """Each plane is written before the next is asked for: never a whole position in memory."""
    shape = (64, 64)
    written: list[int] = []
    asked_after: list[int] = []

    def planes():
        for i in range(5):
            asked_after.append(len(written))
            yield np.full(shape, i, np.uint16)

    write_ometiff(tmp_path / "p.ome.tiff", planes(), count=5, shape=shape,
                  dtype=np.dtype("uint16"), ome_xml=xml_for(5, shape, "uint16"),
                  on_plane=written.append)
    assert asked_after == [0, 1, 2, 3, 4]
    assert written == [1, 2, 3, 4, 5]

"""Our PNG decoding (posdir2ometiff/png.py): the same arrays as libpng for every filter, colour
type and bit depth it takes; libpng (and its errors) for everything else and for damaged files."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posdir2ometiff import png
from posdir2ometiff.png import _decode_plain, decode_png

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "samples" / "swainlab-demo"
pytestmark = pytest.mark.skipif(not png.fast_path_available(),
                                reason="the C unfilter was not built (no C compiler at install)")

_COLOUR = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel → PNG colour type


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The spec's Paeth predictor (PNG 3rd ed. 9.4), as written there, on int arrays."""
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filtered(rows: np.ndarray, filters: list[int], bpp: int) -> bytes:
    """The filtered image data: each row of bytes with its filter type first (spec 9.2)."""
    out = []
    prior = np.zeros(rows.shape[1], np.int32)
    for row, kind in zip(rows.astype(np.int32), filters, strict=True):
        left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prior[:-bpp]])
        pred = [np.zeros_like(row), left, prior, (left + prior) // 2,
                _paeth(left, prior, upleft)][kind]
        out.append(bytes([kind]) + ((row - pred) % 256).astype(np.uint8).tobytes())
        prior = row
    return b"".join(out)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode(image: np.ndarray, filters: list[int], *, idat_size: int = 8192,
           extra: tuple[tuple[bytes, bytes], ...] = (), interlace: int = 0,
           colour: int | None = None, data: bytes | None = None) -> bytes:
    """A PNG of ``image`` whose row ``r`` uses filter ``filters[r]`` (libpng chooses its own,
    so every filter on every row needs an encoder of our own). ``extra`` chunks go before the
    image data; ``data`` replaces the filtered rows (to damage them)."""
    samples = 1 if image.ndim == 2 else image.shape[2]
    height, width = image.shape[:2]
    big = image.astype(image.dtype.newbyteorder(">"))
    rows = np.frombuffer(big.tobytes(), np.uint8).reshape(height, -1)
    raw = _filtered(rows, filters, samples * image.itemsize) if data is None else data
    stream = zlib.compress(raw, 6)
    ihdr = struct.pack(">IIBBBBB", width, height, image.itemsize * 8,
                       _COLOUR[samples] if colour is None else colour, 0, 0, interlace)
    parts = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", ihdr)]
    parts += [_chunk(kind, body) for kind, body in extra]
    parts += [_chunk(b"IDAT", stream[i:i + idat_size]) for i in range(0, len(stream), idat_size)]
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def _same(data: bytes) -> np.ndarray:
    """Our fast path decodes ``data`` (not libpng) to exactly libpng's array."""
    ours = _decode_plain(data)
    assert ours is not None, "the fast path gave this file to libpng"
    ref = imagecodecs.png_decode(data)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)
    return ours


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(1, 24), width=st.integers(1, 24), samples=st.sampled_from([1, 2, 3, 4]),
    dtype=st.sampled_from([np.uint8, np.uint16]), seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_every_filter_colour_type_and_depth_as_libpng(height, width, samples, dtype, seed,
                                                       data) -> None:
    filters = data.draw(st.lists(st.integers(0, 4), min_size=height, max_size=height))
    rng = np.random.default_rng(seed)
    shape = (height, width) if samples == 1 else (height, width, samples)
    image = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    if data.draw(st.booleans()):  # smooth images: small differences, as a camera's
        image = np.cumsum(image % 7, axis=1, dtype=dtype)
    out = _same(encode(image, filters, idat_size=data.draw(st.sampled_from([7, 8192]))))
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("kind", range(5))
@pytest.mark.parametrize("samples, dtype", [(1, np.uint16), (1, np.uint8), (3, np.uint8),
                                            (4, np.uint16), (2, np.uint16)])
def test_a_whole_image_of_one_filter(kind, samples, dtype) -> None:
    rng = np.random.default_rng(kind)
    shape = (64, 100) if samples == 1 else (64, 100, samples)
    image = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    np.testing.assert_array_equal(_same(encode(image, [kind] * 64)), image)


def test_the_lab_sample_and_libpngs_own_files() -> None:
    if not SAMPLE.is_dir():
        pytest.skip(f"{SAMPLE} is not there")
    files = sorted(SAMPLE.glob("pos*/*.png"))
    assert files
    for f in files:  # MATLAB's libpng, its adaptive filters (Paeth on half the rows)
        _same(f.read_bytes())
    rng = np.random.default_rng(1)
    for image in (rng.integers(0, 4096, (300, 200), np.uint16),
                  rng.integers(0, 255, (30, 20, 3), np.uint8)):
        for level in (1, 6, 9):
            _same(imagecodecs.png_encode(image, level=level))


def test_ancillary_chunks_are_skipped() -> None:
    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    data = encode(image, [0, 1, 4], extra=((b"tIME", b"\x07\xea\x0c\x01\x0c\x00\x00"),
                                           (b"tEXt", b"Software\x00MATLAB")))
    np.testing.assert_array_equal(_same(data), image)


@pytest.mark.parametrize("case", ["palette", "grey 4-bit", "tRNS", "interlaced",
                                  "unknown critical chunk", "chunk between IDATs"])
def test_what_libpng_must_decide_goes_to_libpng(case) -> None:
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    if case == "palette":
        data = encode(image, [0] * 8, colour=3,
                      extra=((b"PLTE", bytes(range(256)) * 3),))
    elif case == "grey 4-bit":
        packed = np.zeros((8, 4), np.uint8)
        data = encode(image, [0] * 8, data=b"".join(b"\x00" + r.tobytes() for r in packed))
        data = data.replace(struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0),
                            struct.pack(">IIBBBBB", 8, 8, 4, 0, 0, 0, 0))
        data = _recrc_ihdr(data)
    elif case == "tRNS":
        data = encode(image, [0] * 8, extra=((b"tRNS", b"\x00\x05"),))
    elif case == "interlaced":
        data = encode(image, [0] * 8, interlace=1)
    elif case == "unknown critical chunk":
        data = encode(image, [0] * 8, extra=((b"ABCD", b"x"),))
    else:
        whole = encode(image, [0] * 8, idat_size=20)
        first_idat = whole.index(b"IDAT") - 4
        second = whole.index(b"IDAT", first_idat + 8) - 4
        data = whole[:second] + _chunk(b"tEXt", b"a\x00b") + whole[second:]
    assert _decode_plain(data) is None
    try:
        ref = imagecodecs.png_decode(data)
    except Exception as exc:  # libpng refuses some of them: so does decode_png, the same way
        with pytest.raises(type(exc)):
            decode_png(data)
    else:
        np.testing.assert_array_equal(decode_png(data), ref)


def _recrc_ihdr(data: bytes) -> bytes:
    body = data[16:29]
    return data[:29] + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + data[33:]


def _damaged(kind: str) -> bytes:
    image = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30)
    good = encode(image, [4] * 40, idat_size=500)
    if kind == "IDAT CRC":
        i = good.index(b"IDAT") + 20
        return good[:i] + bytes([good[i] ^ 1]) + good[i + 1:]
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "no IEND":
        return good[:-12]
    if kind == "bad filter type":
        rows = [bytes([4]) + b"\x00" * 60] * 40
        rows[17] = bytes([5]) + b"\x00" * 60
        return encode(image, [4] * 40, data=b"".join(rows))
    if kind == "too little data":
        return encode(image, [4] * 40, data=(bytes([0]) + b"\x00" * 60) * 39)
    if kind == "too much data":
        return encode(image, [4] * 40, data=(bytes([0]) + b"\x00" * 60) * 41)
    if kind == "adler32":
        stream = zlib.compress((bytes([0]) + b"\x00" * 60) * 40)
        stream = stream[:-1] + bytes([stream[-1] ^ 1])
        i = good.index(b"IDAT") - 4
        return good[:i] + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
    if kind == "huge header":  # claims 2**31-1 × 2**31-1 pixels from a few bytes
        data = good.replace(struct.pack(">II", 30, 40), struct.pack(">II", 2**31 - 1, 2**31 - 1))
        return _recrc_ihdr(data)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["IDAT CRC", "truncated", "no IEND", "bad filter type",
                                  "too little data", "too much data", "adler32", "huge header"])
def test_damaged_files_go_to_libpng_and_its_error(kind) -> None:
    data = _damaged(kind)
    assert _decode_plain(data) is None
    try:
        ref = imagecodecs.png_decode(data)
    except Exception as exc:
        with pytest.raises(type(exc)) as got:
            decode_png(data)
        assert str(got.value) == str(exc)
    else:  # libpng accepts a few (it warns): then the same pixels as libpng
        np.testing.assert_array_equal(decode_png(data), ref)


def test_without_the_c_extension_libpng_decodes(monkeypatch) -> None:
    image = np.arange(100, dtype=np.uint16).reshape(10, 10)
    data = encode(image, [1] * 10)
    seen = []
    real = imagecodecs.png_decode
    monkeypatch.setattr(png, "unfilter", None)
    monkeypatch.setattr(png.imagecodecs, "png_decode", lambda d: seen.append(1) or real(d))
    np.testing.assert_array_equal(decode_png(data), image)
    assert seen == [1]


@pytest.mark.parametrize("args", [
    (b"\x00" * 9, bytearray(7), 1, 8, 1),       # out too small
    (b"\x00" * 10, bytearray(8), 1, 8, 1),      # in too large
    (b"\x00" * 9, bytearray(8), 1, 8, 5),       # no such pixel size
    (b"\x00" * 9, bytearray(8), 0, 8, 1),       # no rows
    (b"\x00" * 9, bytearray(8), 1, 8, 3),       # a row that is not a whole number of pixels
    (b"\x00" * 3, bytearray(2), 1, 2, 4),       # a row shorter than one pixel
    (b"\x00" * 9, bytes(8), 1, 8, 1),           # out not writable
    (b"\x00" * 9, np.zeros((4, 4), np.uint8)[:, :2], 1, 8, 1),  # out not contiguous
])
def test_the_c_function_checks_its_sizes(args) -> None:
    assert png.unfilter(b"\x00" * 9, bytearray(8), 1, 8, 1) is None  # one row of 8: 9 in, 8 out
    with pytest.raises((ValueError, TypeError)):
        png.unfilter(*args)


def test_the_c_function_names_the_first_bad_row() -> None:
    rows = bytearray(b"\x01" + b"\x00" * 4) * 3
    rows[5] = 9
    assert png.unfilter(bytes(rows), bytearray(12), 3, 4, 2) == 1
    assert png.unfilter(b"\x07" + b"\x00" * 4, bytearray(4), 1, 4, 2) == 0


@pytest.mark.parametrize("simd", [True, False], ids=["pclmul", "tables"])
def test_the_chunk_crc_is_zlibs_at_every_length_and_alignment(simd) -> None:
    """Every byte of a PNG goes through the chunk CRC: its carry-less multiply path (64-byte
    folds, 16-byte folds, the Barrett reduction, the table tail) and the tables alone (CPUs
    without PCLMULQDQ) give zlib's CRC-32 for every length around the block sizes, at every
    alignment, and for whole chunks; one flipped bit anywhere changes it."""
    from posdir2ometiff._pngfilter import crc32

    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, 70_000 + 16, np.uint8).tobytes()
    lengths = [*range(0, 300), 1023, 1024, 1025, 8192, 65_536, 70_000]
    for n in lengths:
        for offset in range(16) if n < 300 else (0, 3):
            piece = data[offset:offset + n]
            assert crc32(piece, simd) == zlib.crc32(piece), (n, offset)
    assert crc32(b"\xff" * 4096, simd) == zlib.crc32(b"\xff" * 4096)  # all-ones lanes
    for bit in (0, 8 * 63 + 7, 8 * 4000 + 3, 8 * 4095 + 7):
        flipped = bytearray(4096)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert crc32(bytes(flipped), simd) == zlib.crc32(flipped) != zlib.crc32(bytes(4096))


def _big_work(which: str):
    """A call of the C extension on a large input (about 0.1 s), and its arguments."""
    if which == "unfilter":
        height, stride = 4096, 8192
        raw = (b"\x04" + b"\x01" * stride) * height  # Paeth everywhere, the slowest filter
        return png.unfilter, (raw, bytearray(height * stride), height, stride, 2)
    body = bytes(64 << 20)  # one 64 MiB IDAT chunk: its CRC and its copy
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8192, 4096, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", body) + _chunk(b"IEND", b""))
    return png.idat, (data,)


@pytest.mark.parametrize("which", ["unfilter", "idat"])
def test_the_c_extension_runs_without_the_gil(which) -> None:
    """The converter decodes planes in several threads: while one thread is in the extension,
    others run. This thread keeps time while another makes one large call; holding the GIL for
    the call would stop the clock for the whole call."""
    fn, args = _big_work(which)
    took = []

    def work() -> None:
        t0 = time.perf_counter()
        fn(*args)
        took.append(time.perf_counter() - t0)

    worker = threading.Thread(target=work)
    stamps = [time.perf_counter()]
    worker.start()
    while worker.is_alive():
        stamps.append(time.perf_counter())
    worker.join()
    longest_pause = max(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    assert longest_pause < took[0] / 2, (longest_pause, took[0])


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_any_damage_gives_libpngs_pixels_or_libpngs_error(seed, data) -> None:
    """Untrusted files: flipped bytes, cut files, lying lengths. Our chunk walk (C) never reads
    or writes out of bounds and never disagrees with libpng: the same pixels, or the same
    error (libpng gets every file our walk does not take)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 4096, (16, 12), dtype=np.uint16)
    good = bytearray(encode(image, [int(k) for k in rng.integers(0, 5, 16)], idat_size=97))
    how = data.draw(st.sampled_from(["flip", "cut", "length"]))
    if how == "flip":
        for at in data.draw(st.lists(st.integers(0, len(good) - 1), min_size=1, max_size=4)):
            good[at] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "cut":
        del good[data.draw(st.integers(0, len(good) - 1)):]
    else:  # a chunk's length field (each chunk: length, type, data, CRC)
        starts, pos = [], 8
        while pos + 8 <= len(good):
            starts.append(pos)
            pos += 12 + int.from_bytes(good[pos:pos + 4], "big")
        at = data.draw(st.sampled_from(starts))
        good[at:at + 4] = data.draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    damaged = bytes(good)
    try:
        ref = imagecodecs.png_decode(damaged)
    except Exception as exc:  # whatever libpng raises, we raise
        with pytest.raises(type(exc)):
            decode_png(damaged)
    else:
        got = decode_png(damaged)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)

"""PNG decoding, 1.8-2.7 times as fast as libpng for the planes microscopes write.

PNG decoding is most of the converter's work: about 5.5 ms of a 512² 16-bit plane's 7.5 ms of
CPU. A profile shows why: imagecodecs' libpng inflates with the system zlib (the wheel links
``libz.so.1``; Debian's is zlib 1.2.13 without SIMD), and inflating took 46 % of the converter's
CPU, undoing the PNG filters and the byte swap another 14 %. libdeflate (bundled with
imagecodecs) inflates the same data two to three times faster, so for the images a microscope
writes (grey, RGB or RGBA, with or without alpha, 8 or 16 bits, not interlaced) this module
walks the chunks and checks their CRCs as libpng does, inflates all IDAT data with libdeflate in
one call, and undoes the row filters; the walk and the filters are a few lines of C
(``_pngfilter.c``), each one call that releases the GIL.

Everything else goes to :func:`imagecodecs.png_decode` unchanged: palettes, bit depths below 8,
``tRNS`` transparency (libpng turns it into an alpha channel), interlacing, and every file that
is damaged (a bad CRC or length, truncated data, a bad filter byte) — so the error a user sees
for a bad file is libpng's, as before, and pixels are never guessed from a damaged file. The
result is the same array as ``imagecodecs.png_decode`` (tests/test_png.py compares them over
every filter type, colour type and bit depth). Without a C compiler at install time the
extension is not built and every file goes to libpng.
"""

from __future__ import annotations

import sys

import imagecodecs
import numpy as np

try:
    from posdir2ometiff._pngfilter import idat, unfilter
except ImportError:  # built without a C compiler: libpng decodes everything
    idat = unfilter = None

__all__ = ["decode_png", "fast_path_available"]

#: Colour type → samples per pixel (PNG spec, table 11.1), for the types decoded here.
_SAMPLES = {0: 1, 2: 3, 4: 2, 6: 4}
#: Largest output (bytes) the fast path allocates from an untrusted header: 2 GiB. Larger
#: images go to libpng, whose own limits then apply.
_MAX_BYTES = 1 << 31
#: DEFLATE expands at most 1032:1; a header claiming more than that is damaged (libpng says so).
_MAX_RATIO = 1032


def fast_path_available() -> bool:
    """True when the C extension was built (``pip install`` with a C compiler)."""
    return unfilter is not None


def decode_png(data: bytes) -> np.ndarray:
    """Decode a PNG file's bytes: (height, width) or (height, width, samples), uint8/uint16.

    The same array as :func:`imagecodecs.png_decode`, which also raises the errors."""
    if unfilter is not None:
        arr = _decode_plain(data)
        if arr is not None:
            return arr
    return imagecodecs.png_decode(data)


def _decode_plain(data: bytes) -> np.ndarray | None:
    """The image of a plain, intact PNG; None for libpng to decode (or to reject)."""
    walked = idat(data)  # the chunks and their CRCs, in C (one GIL release, not one per chunk)
    if walked is None:
        return None
    width, height, depth, colour, interlace, stream = walked
    samples = _SAMPLES.get(colour)
    if (samples is None or depth not in (8, 16) or interlace
            or not 0 < width < 2**31 or not 0 < height < 2**31):
        return None
    itemsize = depth // 8
    stride = width * samples * itemsize
    raw_size = height * (stride + 1)
    if raw_size > _MAX_BYTES or raw_size > _MAX_RATIO * len(stream) + 64:
        return None
    try:
        raw = imagecodecs.deflate_decode(stream, out=raw_size)  # checks the Adler-32 too
    except imagecodecs.DeflateError:
        return None
    if len(raw) != raw_size:
        return None  # too little data
    shape = (height, width) if samples == 1 else (height, width, samples)
    out = np.empty(shape, np.uint8 if itemsize == 1 else np.uint16)
    swap = itemsize == 2 and sys.byteorder == "little"  # PNG samples are big-endian
    bad_row = unfilter(raw, out.reshape(-1).view(np.uint8), height, stride, samples * itemsize,
                       swap)
    if bad_row is not None:
        return None  # a bad filter type: damaged
    return out


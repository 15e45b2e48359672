/* The two parts of PNG decoding that need a loop per byte: walking the chunks (with their
 * CRCs) and undoing the row filters.
 *
 * posdir2ometiff/png.py inflates the image data with libdeflate (two to three times faster than
 * the system zlib that imagecodecs' libpng inflates with). What is left is here, each in one call
 * that releases the GIL: the converter decodes planes in several threads while another runs
 * Python, and a decoder that gave the GIL away once per chunk (45 times per plane) waited up to
 * the 5 ms switch interval each time to get it back. Nothing else of PNG is here: a file this
 * does not fit is decoded by libpng.
 *
 * idat(data) -> (width, height, bit depth, colour type, interlace, image data) or None
 *   The PNG's header fields and its IDAT chunks' data joined, the CRC of IHDR and of every IDAT
 *   checked (as libpng does); None for anything libpng must decide: no signature, a bad CRC or
 *   length, truncated data, chunks out of order, a palette (PLTE), transparency (tRNS), an
 *   unknown critical chunk, a compression or filter method other than 0. Ancillary chunks
 *   (tIME, tEXt, pHYs, ...) are skipped unchecked, as libpng does by default.
 *
 * unfilter(src, dst, height, stride, bpp, swap16=False) -> None
 *   src: height rows of (filter type byte + stride bytes), the inflated IDAT stream;
 *   dst: a writable buffer of exactly height * stride bytes, the unfiltered rows;
 *   bpp: bytes per pixel, 1, 2, 3, 4, 6 or 8 (the filters' left neighbour distance);
 *   swap16: then swap the bytes of each 16-bit sample (big-endian PNG to little-endian).
 * Raises ValueError (sizes that do not match) or returns the index of the first row with a
 * filter type above 4 (the data is damaged) as an int, None when every row is good. The
 * filters: PNG specification, 3rd edition, section 9.2-9.4,
 * https://www.w3.org/TR/png-3/#9Filter-types (numpy cannot undo them: Sub, Average and Paeth
 * depend on the byte just decoded).
 *
 * crc32(data, simd=True) -> int
 *   The chunks' CRC-32 (zlib.crc32's), for the tests: simd=False takes the tables alone, the
 *   path of CPUs without PCLMULQDQ, so both are checked on any machine.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ chunks and their CRC-32 */

/* CRC-32 of PNG (ISO 3309, reflected polynomial 0xEDB88320: spec section 5.5). Every byte of
 * the file goes through it (libpng checks the same CRCs), so it is fast where the CPU allows:
 *
 * - x86-64 with PCLMULQDQ (every x86-64 CPU since 2010): 64 bytes per step, folded with
 *   carry-less multiplications and reduced with Barrett's method, after V. Gopal, E. Ozturk et
 *   al., "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ Instruction", Intel, 2009
 *   (the bit-reflected constants of its appendix, as Chromium's zlib uses them in crc32_simd.c).
 *   Measured on 350 kB: 1.6 GB/s with the tables below, 8 GB/s with this (the chunk walk of a
 *   512² 16-bit plane 0.26 -> 0.07 ms); the tables had cost 3 % of the converter's CPU.
 * - otherwise, and for the last 15 bytes: eight bytes at a time with eight tables
 *   ("slicing-by-8"), filled when the module is imported. */
static uint32_t crc_tables[8][256];

static void crc_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tables[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int t = 1; t < 8; t++)
            crc_tables[t][n] = (crc_tables[t - 1][n] >> 8) ^ crc_tables[0][crc_tables[t - 1][n] & 0xff];
}

/* The register (not inverted in or out) after n bytes, eight at a time. */
static uint32_t crc_tables_update(uint32_t crc, const unsigned char *p, size_t n)
{
    for (; n >= 8; n -= 8, p += 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                             (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        crc = crc_tables[7][lo & 0xff] ^ crc_tables[6][(lo >> 8) & 0xff] ^
              crc_tables[5][(lo >> 16) & 0xff] ^ crc_tables[4][lo >> 24] ^
              crc_tables[3][hi & 0xff] ^ crc_tables[2][(hi >> 8) & 0xff] ^
              crc_tables[1][(hi >> 16) & 0xff] ^ crc_tables[0][hi >> 24];
    }
    while (n--)
        crc = crc_tables[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CRC_CLMUL 1
static int have_clmul; /* set when the module is imported: PCLMULQDQ and SSE4.1 */

/* The register after n bytes, n >= 64 and a multiple of 16. */
__attribute__((target("pclmul,sse4.1")))
static uint32_t crc_clmul_update(uint32_t crc, const unsigned char *p, size_t n)
{
    /* x^(4*128+32), x^(4*128-32) mod P (four 128-bit lanes, 64 bytes apart); x^(128+32),
     * x^(128-32) (one lane); x^64; then P' and the Barrett constant mu. */
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
    const __m128i k5 = _mm_set_epi64x(0, 0x0163cd6124);
    const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
    const __m128i low32 = _mm_setr_epi32(-1, 0, -1, 0);
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 0));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x4 = _mm_loadu_si128((const __m128i *)(p + 48));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    p += 64;
    n -= 64;
    /* Four lanes folded 64 bytes forward at a time: lane * x^(512) = hi * k2 + lo * k1. */
    for (; n >= 64; n -= 64, p += 64) {
        __m128i l1 = _mm_clmulepi64_si128(x1, k1k2, 0x00), h1 = _mm_clmulepi64_si128(x1, k1k2, 0x11);
        __m128i l2 = _mm_clmulepi64_si128(x2, k1k2, 0x00), h2 = _mm_clmulepi64_si128(x2, k1k2, 0x11);
        __m128i l3 = _mm_clmulepi64_si128(x3, k1k2, 0x00), h3 = _mm_clmulepi64_si128(x3, k1k2, 0x11);
        __m128i l4 = _mm_clmulepi64_si128(x4, k1k2, 0x00), h4 = _mm_clmulepi64_si128(x4, k1k2, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(l1, h1), _mm_loadu_si128((const __m128i *)(p + 0)));
        x2 = _mm_xor_si128(_mm_xor_si128(l2, h2), _mm_loadu_si128((const __m128i *)(p + 16)));
        x3 = _mm_xor_si128(_mm_xor_si128(l3, h3), _mm_loadu_si128((const __m128i *)(p + 32)));
        x4 = _mm_xor_si128(_mm_xor_si128(l4, h4), _mm_loadu_si128((const __m128i *)(p + 48)));
    }
    /* The four lanes into one, then the remaining 16-byte blocks into it. */
#define FOLD16(acc, next)                                                                   \
    acc = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(acc, k3k4, 0x00),                \
                                      _mm_clmulepi64_si128(acc, k3k4, 0x11)), next)
    FOLD16(x1, x2);
    FOLD16(x1, x3);
    FOLD16(x1, x4);
    for (; n >= 16; n -= 16, p += 16)
        FOLD16(x1, _mm_loadu_si128((const __m128i *)p));
#undef FOLD16
    /* 128 bits to 64, then to 32 with Barrett's reduction. */
    __m128i t = _mm_clmulepi64_si128(x1, k3k4, 0x10);
    x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), t);
    t = _mm_srli_si128(x1, 4);
    x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), k5, 0x00), t);
    t = _mm_clmulepi64_si128(_mm_and_si128(x1, low32), poly, 0x10);
    t = _mm_clmulepi64_si128(_mm_and_si128(t, low32), poly, 0x00);
    x1 = _mm_xor_si128(x1, t);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

/* CRC-32 of n bytes continuing crc (0 to start), as zlib.crc32(); simd 0: the tables only. */
static uint32_t crc_update_with(uint32_t crc, const unsigned char *p, size_t n, int simd)
{
    crc = ~crc;
#ifdef CRC_CLMUL
    if (simd && have_clmul && n >= 64) {
        size_t blocks = n & ~(size_t)15;
        crc = crc_clmul_update(crc, p, blocks);
        p += blocks;
        n -= blocks;
    }
#else
    (void)simd;
#endif
    return ~crc_tables_update(crc, p, n);
}

static uint32_t crc_update(uint32_t crc, const unsigned char *p, size_t n)
{
    return crc_update_with(crc, p, n, 1);
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

typedef struct {
    uint32_t width, height;
    int depth, colour, interlace;
    Py_ssize_t idat_bytes; /* the IDAT chunks' data, all of them */
} png_header;

/* Walks the chunks of data[0:size], checking what idat() promises, and copies the IDAT data to
 * out (which holds size bytes: the data are part of the file); 0 when the file is plain and
 * intact, -1 when libpng must decide. */
static const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static int walk_chunks(const unsigned char *data, Py_ssize_t size, png_header *h,
                       unsigned char *out)
{
    Py_ssize_t pos = 8;
    int have_header = 0, in_idat = 0, idat_ended = 0;
    if (size < 8 || memcmp(data, signature, 8) != 0)
        return -1;
    h->idat_bytes = 0;
    for (;;) {
        if (size - pos < 12)
            return -1; /* truncated: no IEND */
        uint32_t length = be32(data + pos);
        const unsigned char *type = data + pos + 4, *body = data + pos + 8;
        if (length > 0x7fffffffu || (Py_ssize_t)length > size - pos - 12)
            return -1; /* spec 5.3: at most 2^31 - 1; or past the end */
        uint32_t crc = be32(body + length);
        if (memcmp(type, "IDAT", 4) == 0) {
            if (!have_header || idat_ended)
                return -1; /* out of order */
            if (crc_update(0, type, 4 + (size_t)length) != crc)
                return -1;
            memcpy(out + h->idat_bytes, body, length);
            h->idat_bytes += length;
            in_idat = 1;
        } else {
            if (in_idat)
                idat_ended = 1;
            if (memcmp(type, "IHDR", 4) == 0) {
                if (have_header || length != 13 || pos != 8)
                    return -1;
                if (crc_update(0, type, 17) != crc)
                    return -1;
                h->width = be32(body);
                h->height = be32(body + 4);
                h->depth = body[8];
                h->colour = body[9];
                h->interlace = body[12];
                if (body[10] != 0 || body[11] != 0)
                    return -1; /* compression and filter method: only 0 is defined */
                have_header = 1;
            } else if (memcmp(type, "IEND", 4) == 0) {
                break;
            } else if (memcmp(type, "PLTE", 4) == 0 || memcmp(type, "tRNS", 4) == 0 ||
                       !(type[0] & 0x20)) {
                return -1; /* a palette, transparency or an unknown critical chunk: libpng's */
            }
            /* other ancillary chunks (tIME, tEXt, pHYs, gAMA, ...) do not change the pixels */
        }
        pos += 12 + (Py_ssize_t)length;
    }
    return have_header && in_idat ? 0 : -1;
}

static PyObject *idat(PyObject *self, PyObject *arg)
{
    Py_buffer buf;
    png_header h;
    int ok;
    PyObject *stream;
    (void)self;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    if (buf.len < 8 || memcmp(buf.buf, signature, 8) != 0) { /* not a PNG: nothing allocated */
        PyBuffer_Release(&buf);
        Py_RETURN_NONE;
    }
    /* The IDAT data are at most the file: one walk checks and copies, the GIL released once. */
    stream = PyBytes_FromStringAndSize(NULL, buf.len);
    if (stream == NULL) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    ok = walk_chunks(buf.buf, buf.len, &h, (unsigned char *)PyBytes_AS_STRING(stream));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (ok < 0) {
        Py_DECREF(stream);
        Py_RETURN_NONE;
    }
    if (_PyBytes_Resize(&stream, h.idat_bytes) < 0)
        return NULL;
    return Py_BuildValue("(kkiiiN)", (unsigned long)h.width, (unsigned long)h.height, h.depth,
                         h.colour, h.interlace, stream);
}

/* ------------------------------------------------------------------ row filters */

/* Paeth predictor (spec 9.4) in stb_image's formulation: exact for bytes, it compares with the
 * threshold 3c - (a + b) instead of the three distances, and compiles to conditional moves (no
 * branch for noisy data to mispredict). */
static inline int paeth(int a, int b, int c)
{
    int thresh = c * 3 - (a + b);
    int lo = a < b ? a : b;
    int hi = a < b ? b : a;
    int t0 = hi <= thresh ? lo : c;
    return thresh <= lo ? hi : t0;
}

/* One row. BPP is a constant in each copy (see unfilter_rows) and a row is a whole number of
 * pixels, so the left (a) and upper-left (c) neighbours of each byte lane live in registers: read
 * back from the output, every byte waited for the store of the one before (twice as slow).
 * Paeth's lane loop is unrolled: left as a loop, gcc 12 kept a[] and c[] on the stack, and each
 * byte's chain waited for a store and a load (16-bit rows 1.5 -> 0.8 ms per 512² plane). The
 * build also turns off gcc's SLP vectoriser (pyproject.toml): it packed a 16-bit pixel's two
 * lanes into one vector register, and Average rows paid the moves in and out of it on every
 * pixel (1.07 -> 0.38 ms per 512² plane; the lab's DIC and GFP planes are half Average rows). */
#define UNFILTER_ROW(BPP)                                                                      \
    static int unfilter_row_##BPP(const unsigned char *restrict in, unsigned char *restrict out,\
                                  const unsigned char *restrict up, Py_ssize_t stride,          \
                                  unsigned char type)                                          \
    {                                                                                          \
        unsigned char a[BPP], c[BPP];                                                          \
        Py_ssize_t i;                                                                          \
        int k;                                                                                 \
        switch (type) {                                                                        \
        case 0: /* None */                                                                     \
            memcpy(out, in, (size_t)stride);                                                   \
            return 0;                                                                          \
        case 1: /* Sub */                                                                      \
            for (k = 0; k < BPP; k++)                                                          \
                a[k] = out[k] = in[k];                                                         \
            for (i = BPP; i < stride; i += BPP)                                                \
                for (k = 0; k < BPP; k++)                                                      \
                    out[i + k] = a[k] = (unsigned char)(in[i + k] + a[k]);                     \
            return 0;                                                                          \
        case 2: /* Up */                                                                       \
            for (i = 0; i < stride; i++)                                                       \
                out[i] = (unsigned char)(in[i] + up[i]);                                       \
            return 0;                                                                          \
        case 3: /* Average */                                                                  \
            for (k = 0; k < BPP; k++)                                                          \
                a[k] = out[k] = (unsigned char)(in[k] + (up[k] >> 1));                         \
            for (i = BPP; i < stride; i += BPP)                                                \
                for (k = 0; k < BPP; k++)                                                      \
                    out[i + k] = a[k] = (unsigned char)(in[i + k] + ((a[k] + up[i + k]) >> 1)); \
            return 0;                                                                          \
        case 4: /* Paeth; in the first pixel a = c = 0, so it predicts b */                    \
            _Pragma("GCC unroll 8") for (k = 0; k < BPP; k++) {                                \
                a[k] = out[k] = (unsigned char)(in[k] + up[k]);                                \
                c[k] = up[k];                                                                  \
            }                                                                                  \
            for (i = BPP; i < stride; i += BPP)                                                \
                _Pragma("GCC unroll 8") for (k = 0; k < BPP; k++) {                            \
                    unsigned char b = up[i + k];                                               \
                    out[i + k] = a[k] = (unsigned char)(in[i + k] + paeth(a[k], b, c[k]));     \
                    c[k] = b;                                                                  \
                }                                                                              \
            return 0;                                                                          \
        default:                                                                               \
            return -1;                                                                         \
        }                                                                                      \
    }

UNFILTER_ROW(1)
UNFILTER_ROW(2)
UNFILTER_ROW(3)
UNFILTER_ROW(4)
UNFILTER_ROW(6)
UNFILTER_ROW(8)

/* Returns -1 when every row is good, else the first bad row. bpp is 1, 2, 3, 4, 6 or 8 (the
 * pixel sizes of 8- and 16-bit grey, grey+alpha, RGB and RGBA). */
static Py_ssize_t unfilter_rows(const unsigned char *src, unsigned char *dst,
                                const unsigned char *zero, Py_ssize_t height,
                                Py_ssize_t stride, Py_ssize_t bpp)
{
    int (*row_fn)(const unsigned char *restrict, unsigned char *restrict,
                  const unsigned char *restrict, Py_ssize_t, unsigned char);
    switch (bpp) {
    case 1: row_fn = unfilter_row_1; break;
    case 2: row_fn = unfilter_row_2; break;
    case 3: row_fn = unfilter_row_3; break;
    case 4: row_fn = unfilter_row_4; break;
    case 6: row_fn = unfilter_row_6; break;
    default: row_fn = unfilter_row_8; break;
    }
    for (Py_ssize_t row = 0; row < height; row++) {
        const unsigned char *in = src + row * (stride + 1);
        unsigned char *out = dst + row * stride;
        const unsigned char *up = row ? out - stride : zero; /* the row above, unfiltered */
        if (row_fn(in + 1, out, up, stride, in[0]) < 0)
            return row;
    }
    return -1;
}

/* 16-bit PNG samples are big-endian: swap them in place (the compiler vectorises this loop). */
static void swap16(unsigned char *restrict buf, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i + 1 < n; i += 2) {
        unsigned char t = buf[i];
        buf[i] = buf[i + 1];
        buf[i + 1] = t;
    }
}

static PyObject *unfilter(PyObject *self, PyObject *args)
{
    Py_buffer src, dst;
    Py_ssize_t height, stride, bpp, bad = -1;
    int swap = 0;
    unsigned char *zero;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*nnn|p", &src, &dst, &height, &stride, &bpp, &swap))
        return NULL;
    /* A row that is not a whole number of pixels is refused: the row loops step a pixel at a
     * time and would write past its end. */
    if (height < 1 || stride < 1 || (bpp != 1 && bpp != 2 && bpp != 3 && bpp != 4 && bpp != 6 &&
        bpp != 8) || stride % bpp || height > PY_SSIZE_T_MAX / (stride + 1)) {
        PyErr_SetString(PyExc_ValueError, "unfilter: height, stride and bpp out of range");
        goto fail;
    }
    if (src.len != height * (stride + 1) || dst.len != height * stride) {
        PyErr_Format(PyExc_ValueError,
                     "unfilter: %zd rows of %zd bytes need %zd filtered bytes and %zd out, got %zd"
                     " and %zd", height, stride, height * (stride + 1), height * stride, src.len,
                     dst.len);
        goto fail;
    }
    if (!PyBuffer_IsContiguous(&dst, 'C')) {
        PyErr_SetString(PyExc_ValueError, "unfilter: the output buffer is not contiguous");
        goto fail;
    }
    zero = PyMem_Calloc((size_t)stride, 1);
    if (zero == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    bad = unfilter_rows(src.buf, dst.buf, zero, height, stride, bpp);
    if (bad < 0 && swap)
        swap16(dst.buf, dst.len);
    Py_END_ALLOW_THREADS
    PyMem_Free(zero);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (bad >= 0)
        return PyLong_FromSsize_t(bad);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return NULL;
}

/* crc32(data, simd=True) -> int: for the tests, which compare it with zlib.crc32 (both paths). */
static PyObject *crc32(PyObject *self, PyObject *args)
{
    Py_buffer data;
    int simd = 1;
    uint32_t crc;
    if (!PyArg_ParseTuple(args, "y*|p", &data, &simd))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    crc = crc_update_with(0, data.buf, (size_t)data.len, simd);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

static PyMethodDef methods[] = {
    {"crc32", crc32, METH_VARARGS,
     "crc32(data, simd=True): the CRC-32 of PNG chunks (zlib.crc32's); simd=False: the tables "
     "only, as on CPUs without PCLMULQDQ."},
    {"idat", idat, METH_O,
     "idat(data): (width, height, bit depth, colour type, interlace, the IDAT data joined) of a "
     "plain, intact PNG, its CRCs checked; None for libpng to decide."},
    {"unfilter", unfilter, METH_VARARGS,
     "unfilter(src, dst, height, stride, bpp, swap16=False): undo PNG row filters from src into "
     "dst (and swap 16-bit samples); the first row with an unknown filter type, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pngfilter",
    "PNG chunks and row unfiltering in C (see posdir2ometiff/png.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__pngfilter(void)
{
    crc_init();
#ifdef CRC_CLMUL
    __builtin_cpu_init();
    have_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
    return PyModule_Create(&module);
}

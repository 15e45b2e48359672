/* PNG row unfiltering: the one part of PNG decoding that needs a loop per byte.
 *
 * posdir2ometiff/png.py parses the chunks and inflates the image data with libdeflate (about
 * three times faster than the system zlib that imagecodecs' libpng inflates with); what is left
 * is undoing the five PNG filters row by row (PNG specification, 3rd edition, section 9.2-9.4:
 * https://www.w3.org/TR/png-3/#9Filter-types), which numpy cannot do (Sub, Average and Paeth
 * depend on the byte just decoded). Nothing else of PNG is here: a file this does not fit is
 * decoded by libpng.
 *
 * unfilter(src, dst, height, stride, bpp, swap16=False) -> None
 *   src: height rows of (filter type byte + stride bytes), the inflated IDAT stream;
 *   dst: a writable buffer of exactly height * stride bytes, the unfiltered rows;
 *   bpp: bytes per pixel, 1, 2, 3, 4, 6 or 8 (the filters' left neighbour distance);
 *   swap16: then swap the bytes of each 16-bit sample (big-endian PNG to little-endian).
 * Raises ValueError (sizes that do not match) or returns the index of the first row with a
 * filter type above 4 (the data is damaged) as an int, None when every row is good. The GIL is
 * released while rows are unfiltered: the converter decodes planes in several threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

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
 * back from the output, every byte waited for the store of the one before (twice as slow). */
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
            for (k = 0; k < BPP; k++) {                                                        \
                a[k] = out[k] = (unsigned char)(in[k] + up[k]);                                \
                c[k] = up[k];                                                                  \
            }                                                                                  \
            for (i = BPP; i < stride; i += BPP)                                                \
                for (k = 0; k < BPP; k++) {                                                    \
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

static PyMethodDef methods[] = {
    {"unfilter", unfilter, METH_VARARGS,
     "unfilter(src, dst, height, stride, bpp, swap16=False): undo PNG row filters from src into "
     "dst (and swap 16-bit samples); the first row with an unknown filter type, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pngfilter",
    "PNG row unfiltering in C (see posdir2ometiff/png.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__pngfilter(void)
{
    return PyModule_Create(&module);
}

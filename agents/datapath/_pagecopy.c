/*
 * _pagecopy.c - the data path's page copies, compiled, without the GIL.
 *
 * Packing a batch (agents/datapath/wire_format.py pack_pages) gathers its pages
 * out of the guest image, finds the zero pages and keeps only the others; in
 * numpy that is three passes over the bytes (gather, zero scan, close the
 * gaps) holding the GIL, so the consumers of one process took turns.  Here it
 * is one pass: a page is scanned for a non-zero word (which a page with
 * contents has at once) and copied if it has one.  Restoring (restore_pages)
 * scatters the normal pages and clears the zero ones.  Both release the GIL
 * while they copy, so PMigrate's consumers (and its receivers) run in
 * parallel, as the paper's threads do.
 *
 * The batch checksum (wire_format.batch_checksum) is XXH3, 64 bits, seed 0
 * (Yann Collet's xxHash 0.8.1, vendored as xxhash.h): gather computes it
 * over the pages it keeps as it copies them, while they are in the core's
 * cache, so the sender reads the payload once; digest() hashes any buffer
 * (the receiver's check, the batch's small fields).  Both without the GIL:
 * the mmh3 digest the checksum used to be held it for 0.5 us per page on
 * each side; XXH64 (13 GB/s here, bound by its 64-bit multiplies) still cost
 * 0.3 us per page, XXH3 (SSE2) a third of that.
 *
 * gather(image, index, out, zero_out) -> (k, digest)
 *     image: pages of page_size bytes; index: int64 page numbers (n);
 *     out: writable, at least n pages; zero_out: writable uint8 (n), set to
 *     1 for a zero page, 0 otherwise.  The non-zero pages land in out back
 *     to back, in batch order; returns how many (k) and the XXH3 of those
 *     k pages as they lie in out (equal to digest(out[:k * page_size])).
 * digest(buffer) -> int
 *     XXH3 64-bit digest of the bytes, seed 0, as an unsigned int.
 * scatter(image, index, payload) -> None
 *     page index[i] of the writable image gets page i of payload.
 * clear(image, index) -> None
 *     page index[i] of the writable image becomes all zero.
 * Page numbers are checked against the image before any byte moves
 * (ValueError).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PS 4096

/* xxHash 0.8.1 (Yann Collet, BSD 2-Clause), vendored from Debian's libxxhash-dev:
 * XXH3 64-bit, seed 0, compiled into this module (SSE2 on x86-64). */
#define XXH_INLINE_ALL
#include "xxhash.h"

static int is_zero(const uint8_t *p)
{
    const uint64_t *w = (const uint64_t *)p;
    for (Py_ssize_t i = 0; i < PS / 8; i += 8) {
        if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7])
            return 0;
    }
    return 1;
}

/* The index as int64 page numbers, all inside an image of `pages` pages. */
static int check_index(Py_buffer *ix, Py_ssize_t pages)
{
    if (ix->len % (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "index must be int64 page numbers");
        return -1;
    }
    const int64_t *p = ix->buf;
    for (Py_ssize_t k = 0; k < ix->len / (Py_ssize_t)sizeof(int64_t); k++) {
        if (p[k] < 0 || p[k] >= pages) {
            PyErr_Format(PyExc_ValueError, "page %lld is outside the image of %zd pages", (long long)p[k], pages);
            return -1;
        }
    }
    return 0;
}

static PyObject *py_gather(PyObject *self, PyObject *args)
{
    Py_buffer image, ix, out, zero;
    if (!PyArg_ParseTuple(args, "y*y*w*w*:gather", &image, &ix, &out, &zero)) return NULL;
    PyObject *res = NULL;
    Py_ssize_t n = ix.len / (Py_ssize_t)sizeof(int64_t);
    if (check_index(&ix, image.len / PS) < 0) goto done;
    if (out.len < n * PS || zero.len < n) {
        PyErr_SetString(PyExc_ValueError, "out or zero_out is shorter than the batch");
        goto done;
    }
    {
        const uint8_t *img = image.buf;
        const int64_t *p = ix.buf;
        uint8_t *o = out.buf, *z = zero.buf;
        Py_ssize_t k = 0;
        uint64_t h;
        XXH3_state_t st;
        XXH3_64bits_reset(&st);
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            const uint8_t *page = img + p[i] * PS;
            z[i] = (uint8_t)is_zero(page);
            if (!z[i]) {
                uint8_t *dst = o + (k++) * PS;
                memcpy(dst, page, PS);
                XXH3_64bits_update(&st, dst, PS);  /* from the cache the copy just filled */
            }
        }
        h = XXH3_64bits_digest(&st);
        Py_END_ALLOW_THREADS
        res = Py_BuildValue("nK", k, (unsigned long long)h);
    }
done:
    PyBuffer_Release(&image);
    PyBuffer_Release(&ix);
    PyBuffer_Release(&out);
    PyBuffer_Release(&zero);
    return res;
}

static PyObject *py_scatter(PyObject *self, PyObject *args)
{
    Py_buffer image, ix, payload;
    if (!PyArg_ParseTuple(args, "w*y*y*:scatter", &image, &ix, &payload)) return NULL;
    PyObject *res = NULL;
    Py_ssize_t n = ix.len / (Py_ssize_t)sizeof(int64_t);
    if (check_index(&ix, image.len / PS) < 0) goto done;
    if (payload.len < n * PS) {
        PyErr_SetString(PyExc_ValueError, "payload is shorter than the batch");
        goto done;
    }
    {
        uint8_t *img = image.buf;
        const int64_t *p = ix.buf;
        const uint8_t *src = payload.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) memcpy(img + p[i] * PS, src + i * PS, PS);
        Py_END_ALLOW_THREADS
        res = Py_NewRef(Py_None);
    }
done:
    PyBuffer_Release(&image);
    PyBuffer_Release(&ix);
    PyBuffer_Release(&payload);
    return res;
}

static PyObject *py_clear(PyObject *self, PyObject *args)
{
    Py_buffer image, ix;
    if (!PyArg_ParseTuple(args, "w*y*:clear", &image, &ix)) return NULL;
    PyObject *res = NULL;
    Py_ssize_t n = ix.len / (Py_ssize_t)sizeof(int64_t);
    if (check_index(&ix, image.len / PS) < 0) goto done;
    {
        uint8_t *img = image.buf;
        const int64_t *p = ix.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) memset(img + p[i] * PS, 0, PS);
        Py_END_ALLOW_THREADS
        res = Py_NewRef(Py_None);
    }
done:
    PyBuffer_Release(&image);
    PyBuffer_Release(&ix);
    return res;
}

static PyObject *py_digest(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*:digest", &buf)) return NULL;
    uint64_t h;
    if (buf.len >= 4096) {
        Py_BEGIN_ALLOW_THREADS
        h = XXH3_64bits(buf.buf, (size_t)buf.len);
        Py_END_ALLOW_THREADS
    } else {
        h = XXH3_64bits(buf.buf, (size_t)buf.len);
    }
    PyBuffer_Release(&buf);
    return PyLong_FromUnsignedLongLong(h);
}

static PyMethodDef methods[] = {
    {"gather", py_gather, METH_VARARGS, "gather(image, index, out, zero_out) -> (k, digest)"},
    {"digest", py_digest, METH_VARARGS, "digest(buffer) -> int: XXH3 64-bit, seed 0"},
    {"scatter", py_scatter, METH_VARARGS, "scatter(image, index, payload) -> None"},
    {"clear", py_clear, METH_VARARGS, "clear(image, index) -> None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "agents.datapath._pagecopy",
    "Compiled page copies of the data path; use agents.datapath.wire_format instead.", -1, methods,
};

PyMODINIT_FUNC PyInit__pagecopy(void)
{
    return PyModule_Create(&module);
}

/*
 * _xbzrle.c - compiled kernels of XBZRLE (XOR Binary Zero Run-Length Encoding).
 *
 * The wire format is QEMU's: a delta is a sequence of pairs
 *     ULEB128(unchanged run length) ULEB128(changed run length) <changed bytes>
 * where the changed bytes are the NEW bytes.  Only the first unchanged run may
 * be 0; a changed run is never 0; the trailing unchanged run is not encoded;
 * equal pages encode to nothing.  Runs are maximal, so the encoding of a pair
 * of pages is unique (the pure-Python fallback in xbzrle.py yields the same
 * bytes).
 *
 * Written for livemig from the format description; the Python module
 * agents/encodings/xbzrle.py is the documented interface.  Batch entry points handle a
 * whole batch of pages in one call and release the GIL while they work.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define FIRST_BYTE(x) ((Py_ssize_t)(__builtin_clzll(x) >> 3))
#else
#define FIRST_BYTE(x) ((Py_ssize_t)(__builtin_ctzll(x) >> 3))
#endif

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Index of the first byte at or after i where a and b differ (n if none). */
static inline Py_ssize_t skip_equal(const uint8_t *a, const uint8_t *b,
                                    Py_ssize_t i, Py_ssize_t n)
{
    while (i + 32 <= n) {
        uint64_t x0 = load64(a + i) ^ load64(b + i);
        uint64_t x1 = load64(a + i + 8) ^ load64(b + i + 8);
        uint64_t x2 = load64(a + i + 16) ^ load64(b + i + 16);
        uint64_t x3 = load64(a + i + 24) ^ load64(b + i + 24);
        if (x0 | x1 | x2 | x3) {
            if (x0) return i + FIRST_BYTE(x0);
            if (x1) return i + 8 + FIRST_BYTE(x1);
            if (x2) return i + 16 + FIRST_BYTE(x2);
            return i + 24 + FIRST_BYTE(x3);
        }
        i += 32;
    }
    while (i + 8 <= n) {
        uint64_t x = load64(a + i) ^ load64(b + i);
        if (x) return i + FIRST_BYTE(x);
        i += 8;
    }
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* Index of the first byte at or after i where a and b are equal (n if none). */
static inline Py_ssize_t skip_changed(const uint8_t *a, const uint8_t *b,
                                      Py_ssize_t i, Py_ssize_t n)
{
    while (i + 8 <= n) {
        uint64_t x = load64(a + i) ^ load64(b + i);
        /* flags the zero bytes of x; the lowest flag is always exact */
        uint64_t z = (x - ONES) & ~x & HIGHS;
        if (z) return i + FIRST_BYTE(z);
        i += 8;
    }
    while (i < n && a[i] != b[i]) i++;
    return i;
}

static inline Py_ssize_t leb_len(Py_ssize_t v)
{
    Py_ssize_t n = 1;
    while (v >= 0x80) { v >>= 7; n++; }
    return n;
}

static inline Py_ssize_t leb_put(uint8_t *dst, Py_ssize_t v)
{
    Py_ssize_t n = 0;
    while (v >= 0x80) { dst[n++] = (uint8_t)(v | 0x80); v >>= 7; }
    dst[n++] = (uint8_t)v;
    return n;
}

/* Most LEB128 bytes a run length of a page of plen bytes can need. */
static int leb_max_for(Py_ssize_t plen)
{
    return (int)leb_len(plen);
}

/*
 * Encode the delta old -> new (n bytes each) into dst, which has room for
 * budget bytes.  Returns the encoded length, or -1 when the encoding would be
 * longer than budget (stops at the first pair that does not fit).
 */
static Py_ssize_t xb_encode(const uint8_t *old, const uint8_t *new, Py_ssize_t n,
                            uint8_t *dst, Py_ssize_t budget)
{
    Py_ssize_t i = 0, d = 0;
    for (;;) {
        Py_ssize_t zstart = i;
        i = skip_equal(old, new, i, n);
        if (i == n) return d;                 /* trailing unchanged run: not encoded */
        Py_ssize_t zlen = i - zstart;
        Py_ssize_t nstart = i;
        i = skip_changed(old, new, i, n);
        Py_ssize_t nlen = i - nstart;
        if (leb_len(zlen) + leb_len(nlen) + nlen > budget - d) return -1;
        d += leb_put(dst + d, zlen);
        d += leb_put(dst + d, nlen);
        memcpy(dst + d, new + nstart, (size_t)nlen);
        d += nlen;
    }
}

/* Read one ULEB128 from src[*i..slen).  Returns the value or -1 with *err set. */
static inline Py_ssize_t leb_get(const uint8_t *src, Py_ssize_t slen, Py_ssize_t *i,
                                 int maxbytes, const char **err)
{
    Py_ssize_t v = 0;
    int shift = 0;
    for (int k = 0; k < maxbytes; k++) {
        if (*i >= slen) { *err = "truncated LEB128 run length"; return -1; }
        uint8_t c = src[(*i)++];
        v |= (Py_ssize_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) return v;
        shift += 7;
    }
    *err = "LEB128 run length too long";
    return -1;
}

/*
 * Walk a delta against a page of plen bytes; apply it when page != NULL.
 * Returns 0, or -1 with *err set.  Callers validate (page == NULL) before
 * applying, so a malformed delta leaves the page untouched.
 */
static int xb_walk(const uint8_t *src, Py_ssize_t slen, uint8_t *page, Py_ssize_t plen,
                   const char **err)
{
    Py_ssize_t i = 0, d = 0;
    int maxbytes = leb_max_for(plen);
    while (i < slen) {
        Py_ssize_t z = leb_get(src, slen, &i, maxbytes, err);
        if (z < 0) return -1;
        if (z == 0 && d != 0) {              /* d > 0 once a pair is done */
            *err = "zero-length unchanged run after the start";
            return -1;
        }
        if (z > plen - d) { *err = "unchanged run goes past the page end"; return -1; }
        d += z;
        Py_ssize_t c = leb_get(src, slen, &i, maxbytes, err);
        if (c < 0) return -1;
        if (c == 0) { *err = "zero-length changed run"; return -1; }
        if (c > plen - d) { *err = "changed run goes past the page end"; return -1; }
        if (c > slen - i) { *err = "truncated changed bytes"; return -1; }
        if (page) memcpy(page + d, src + i, (size_t)c);
        d += c;
        i += c;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */

static PyObject *py_encode(PyObject *self, PyObject *args)
{
    Py_buffer old, new;
    Py_ssize_t budget = 4096;
    if (!PyArg_ParseTuple(args, "y*y*|n:encode", &old, &new, &budget)) return NULL;
    PyObject *res = NULL;
    if (old.len != new.len) {
        PyErr_SetString(PyExc_ValueError, "old and new pages differ in length");
        goto done;
    }
    if (budget < 0) {
        PyErr_SetString(PyExc_ValueError, "budget must be >= 0");
        goto done;
    }
    /* the longest possible encoding: 1.5 bytes per byte plus headers */
    Py_ssize_t cap = 2 * old.len + 16;
    if (cap > budget) cap = budget;
    res = PyBytes_FromStringAndSize(NULL, cap);
    if (!res) goto done;
    Py_ssize_t len;
    Py_BEGIN_ALLOW_THREADS
    len = xb_encode(old.buf, new.buf, old.len, (uint8_t *)PyBytes_AS_STRING(res), cap);
    Py_END_ALLOW_THREADS
    if (len < 0) {
        Py_DECREF(res);
        res = Py_NewRef(Py_None);
    } else if (len != cap) {
        _PyBytes_Resize(&res, len);
    }
done:
    PyBuffer_Release(&old);
    PyBuffer_Release(&new);
    return res;
}

static PyObject *py_decode(PyObject *self, PyObject *args)
{
    Py_buffer delta, page;
    if (!PyArg_ParseTuple(args, "y*w*:decode", &delta, &page)) return NULL;
    const char *err = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = xb_walk(delta.buf, delta.len, NULL, page.len, &err);
    if (rc == 0) xb_walk(delta.buf, delta.len, page.buf, page.len, &err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&delta);
    PyBuffer_Release(&page);
    if (rc < 0) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Check an optional int64 index buffer of n entries, all in [0, limit). */
static int check_index(Py_buffer *ix, Py_ssize_t n, Py_ssize_t limit, const char *what)
{
    if (!ix->buf) return 0;
    if (ix->len != n * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_Format(PyExc_ValueError, "%s must hold %zd int64 entries", what, n);
        return -1;
    }
    const int64_t *p = ix->buf;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (p[k] < 0 || p[k] >= limit) {
            PyErr_Format(PyExc_IndexError, "%s[%zd] = %lld out of range [0, %zd)",
                         what, k, (long long)p[k], limit);
            return -1;
        }
    }
    return 0;
}

/*
 * encode_batch(old, new, page_size, budget, lengths_out, old_index, new_index,
 *              update_old) -> bytes
 *
 * Page k of the batch is old page old_index[k] (or k) against new page
 * new_index[k] (or k); n = len(lengths_out) / 4.  lengths_out (int32) gets the
 * encoded length of each page, -1 on overflow.  The result concatenates the
 * encodings of the pages that fit.  With update_old, each old page is
 * overwritten with its new content after it is encoded (the XBZRLE cache
 * update), so old must then be writable.
 */
static PyObject *py_encode_batch(PyObject *self, PyObject *args)
{
    Py_buffer old, new, lens, oix = {0}, nix = {0};
    Py_ssize_t ps, budget;
    PyObject *oix_obj, *nix_obj;
    int update_old;
    if (!PyArg_ParseTuple(args, "y*y*nnw*OOp:encode_batch", &old, &new, &ps, &budget,
                          &lens, &oix_obj, &nix_obj, &update_old))
        return NULL;
    PyObject *res = NULL;
    Py_buffer oldw = {0};
    Py_ssize_t n = lens.len / (Py_ssize_t)sizeof(int32_t);
    if (ps <= 0 || budget < 0 || old.len % ps || new.len % ps ||
        lens.len % (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "bad page size, budget or buffer lengths");
        goto done;
    }
    if (oix_obj != Py_None && PyObject_GetBuffer(oix_obj, &oix, PyBUF_SIMPLE) < 0) goto done;
    if (nix_obj != Py_None && PyObject_GetBuffer(nix_obj, &nix, PyBUF_SIMPLE) < 0) goto done;
    if (check_index(&oix, n, old.len / ps, "old_index") < 0) goto done;
    if (check_index(&nix, n, new.len / ps, "new_index") < 0) goto done;
    if (!oix.buf && old.len < n * ps) {
        PyErr_SetString(PyExc_ValueError, "old buffer is shorter than the batch");
        goto done;
    }
    if (!nix.buf && new.len < n * ps) {
        PyErr_SetString(PyExc_ValueError, "new buffer is shorter than the batch");
        goto done;
    }
    if (update_old) {
        /* ask again for a writable view of old */
        if (PyObject_GetBuffer(old.obj, &oldw, PyBUF_WRITABLE) < 0) goto done;
    }
    Py_ssize_t cap1 = 2 * ps + 16;
    if (cap1 > budget) cap1 = budget;
    if (n && cap1 > PY_SSIZE_T_MAX / n) {
        PyErr_NoMemory();
        goto done;
    }
    res = PyBytes_FromStringAndSize(NULL, n * cap1);
    if (!res) goto done;
    {
        uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(res);
        int32_t *lp = lens.buf;
        const int64_t *op = oix.buf, *np_ = nix.buf;
        uint8_t *ob = update_old ? (uint8_t *)oldw.buf : (uint8_t *)old.buf;
        const uint8_t *nb = new.buf;
        Py_ssize_t d = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < n; k++) {
            uint8_t *o = ob + (op ? op[k] : k) * ps;
            const uint8_t *w = nb + (np_ ? np_[k] : k) * ps;
            Py_ssize_t len = xb_encode(o, w, ps, dst + d, cap1);
            lp[k] = (int32_t)len;
            if (len > 0) d += len;
            if (update_old && o != w) memcpy(o, w, (size_t)ps);
        }
        Py_END_ALLOW_THREADS
        if (d != n * cap1) _PyBytes_Resize(&res, d);
    }
done:
    PyBuffer_Release(&old);
    PyBuffer_Release(&new);
    PyBuffer_Release(&lens);
    if (oix.buf) PyBuffer_Release(&oix);
    if (nix.buf) PyBuffer_Release(&nix);
    if (oldw.buf) PyBuffer_Release(&oldw);
    return res;
}

/*
 * decode_batch(payload, lengths, pages, page_size, page_index) -> None
 *
 * Applies delta k (lengths[k] bytes of payload, in order) to page
 * page_index[k] (or k) of the writable buffer pages; entries with a negative
 * length are skipped (pages sent whole).  The whole batch is validated before
 * any page is touched.
 */
static PyObject *py_decode_batch(PyObject *self, PyObject *args)
{
    Py_buffer payload, lens, pages, pix = {0};
    Py_ssize_t ps;
    PyObject *pix_obj;
    if (!PyArg_ParseTuple(args, "y*y*w*nO:decode_batch", &payload, &lens, &pages, &ps,
                          &pix_obj))
        return NULL;
    PyObject *res = NULL;
    Py_ssize_t n = lens.len / (Py_ssize_t)sizeof(int32_t);
    if (ps <= 0 || pages.len % ps || lens.len % (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "bad page size or buffer lengths");
        goto done;
    }
    if (pix_obj != Py_None && PyObject_GetBuffer(pix_obj, &pix, PyBUF_SIMPLE) < 0) goto done;
    if (check_index(&pix, n, pages.len / ps, "page_index") < 0) goto done;
    if (!pix.buf && pages.len < n * ps) {
        PyErr_SetString(PyExc_ValueError, "pages buffer is shorter than the batch");
        goto done;
    }
    {
        const int32_t *lp = lens.buf;
        const int64_t *ip = pix.buf;
        const uint8_t *src = payload.buf;
        uint8_t *pb = pages.buf;
        const char *err = NULL;
        Py_ssize_t bad = -1, s = 0;
        int short_payload = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < n; k++) {
            if (lp[k] < 0) continue;
            if (lp[k] > payload.len - s) { short_payload = 1; bad = k; break; }
            if (xb_walk(src + s, lp[k], NULL, ps, &err) < 0) { bad = k; break; }
            s += lp[k];
        }
        if (bad < 0 && s == payload.len) {
            s = 0;
            for (Py_ssize_t k = 0; k < n; k++) {
                if (lp[k] < 0) continue;
                xb_walk(src + s, lp[k], pb + (ip ? ip[k] : k) * ps, ps, &err);
                s += lp[k];
            }
        }
        Py_END_ALLOW_THREADS
        if (short_payload) {
            PyErr_Format(PyExc_ValueError, "page %zd: payload shorter than the lengths say", bad);
            goto done;
        }
        if (bad >= 0) {
            PyErr_Format(PyExc_ValueError, "page %zd: %s", bad, err);
            goto done;
        }
        if (s != payload.len) {
            PyErr_SetString(PyExc_ValueError, "payload longer than the lengths say");
            goto done;
        }
    }
    res = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&payload);
    PyBuffer_Release(&lens);
    PyBuffer_Release(&pages);
    if (pix.buf) PyBuffer_Release(&pix);
    return res;
}

static PyMethodDef methods[] = {
    {"encode", py_encode, METH_VARARGS,
     "encode(old, new, budget=4096) -> bytes | None"},
    {"decode", py_decode, METH_VARARGS,
     "decode(delta, page) -> None; applies delta in place, ValueError if malformed"},
    {"encode_batch", py_encode_batch, METH_VARARGS,
     "encode_batch(old, new, page_size, budget, lengths_out, old_index, new_index, "
     "update_old) -> bytes"},
    {"decode_batch", py_decode_batch, METH_VARARGS,
     "decode_batch(payload, lengths, pages, page_size, page_index) -> None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "agents.encodings._xbzrle",
    "Compiled XBZRLE kernels; use agents.encodings.xbzrle instead.", -1, methods,
};

PyMODINIT_FUNC PyInit__xbzrle(void)
{
    return PyModule_Create(&module);
}

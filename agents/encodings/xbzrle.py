"""XBZRLE: XOR Binary Zero Run-Length Encoding of a page against its old copy.

This module is the codec only (QEMU keeps it apart in ``xbzrle.c``); the page
cache lives in :mod:`agents.encodings.page_cache` and the pipeline stage that ties the
two together in :mod:`agents.encodings.xbzrle_stage`.

Wire format (QEMU's): the delta between an old and a new page is a sequence of
pairs ::

    ULEB128(unchanged run length)  ULEB128(changed run length)  <changed bytes>

where the changed bytes are the NEW bytes.  Runs are maximal.  Only the first
unchanged run may be 0; a changed run is never 0; the trailing unchanged run is
not encoded, so equal pages encode to ``b""``.  Because runs are maximal the
encoding of a pair of pages is unique: the compiled kernels
(``agents.encodings._xbzrle``) and the numpy/pure-Python fallback here give identical
bytes.

Encoding gives up (returns ``None`` / length -1) as soon as the encoding would
exceed its byte budget; the caller then sends the page whole ("overflow").

Batch API: ``encode_batch`` and ``decode_batch`` handle a whole batch of pages
in one compiled call (no Python loop per page), optionally gathering old pages
from (or scattering new pages into) a larger array through an index, so that a
cache or a guest image is used in place.
"""

from __future__ import annotations

import numpy as np

try:  # the package build compiles it; the fallback keeps a source tree usable
    from agents.encodings import _xbzrle as _c
except ImportError:  # pragma: no cover - exercised only without a build
    _c = None

HAVE_C = _c is not None

PAGE_SIZE = 4096
OVERFLOW = -1  # length recorded for a page whose encoding exceeded the budget

__all__ = [
    "HAVE_C",
    "OVERFLOW",
    "encode",
    "decode",
    "encode_batch",
    "decode_batch",
]


# ---------------------------------------------------------------------------
# Single pages


def encode(old, new, budget: int = PAGE_SIZE) -> bytes | None:
    """Encode the delta ``old -> new`` (two equal-length bytes-like buffers).

    Returns the encoded bytes (``b""`` when the pages are equal), or ``None``
    when the encoding would be longer than ``budget`` bytes.
    """
    if _c is not None:
        return _c.encode(_contig(old), _contig(new), int(budget))
    return _py_encode(old, new, budget)


def decode(delta, page) -> None:
    """Apply ``delta`` in place to ``page`` (a writable buffer holding the old page).

    Raises ``ValueError`` on a malformed delta; the page is then left untouched.
    """
    if _c is not None:
        _c.decode(_contig(delta), page)
        return
    _py_decode(delta, page)


# ---------------------------------------------------------------------------
# Batches


def encode_batch(
    old_pages: np.ndarray,
    new_pages: np.ndarray,
    budget: int | None = None,
    *,
    old_index: np.ndarray | None = None,
    new_index: np.ndarray | None = None,
    update_old: bool = False,
) -> tuple[bytes, np.ndarray]:
    """Encode a batch of pages in one call.

    ``old_pages`` and ``new_pages`` are C-contiguous ``uint8`` arrays of shape
    ``(m, page_size)``.  Page ``k`` of the batch is ``old_pages[old_index[k]]``
    against ``new_pages[new_index[k]]`` (each index defaults to ``k``); the
    batch has ``len(old_index)`` / ``len(new_index)`` / ``len(new_pages)``
    pages, in that order of precedence.  ``budget`` defaults to the page size.

    Returns ``(payload, lengths)``: ``lengths`` is ``int32`` with the encoded
    length of each page (0 for an unchanged page) or ``-1`` (``OVERFLOW``) when
    its encoding would exceed ``budget``; ``payload`` concatenates, in batch
    order, the encodings of the pages that fit.

    With ``update_old=True`` every old page of the batch is overwritten with its
    new content once encoded (the XBZRLE cache update, done while the page is
    hot in the CPU cache); ``old_pages`` must then be writable.
    """
    if update_old and not (
        isinstance(old_pages, np.ndarray) and old_pages.flags.c_contiguous and old_pages.flags.writeable
    ):
        raise ValueError("update_old needs old_pages to be a C-contiguous writable array")
    old_pages, new_pages, ps = _pages_pair(old_pages, new_pages)
    if budget is None:
        budget = ps
    budget = int(budget)
    if budget < 0:
        raise ValueError("budget must be >= 0")
    oix = _index(old_index)
    nix = _index(new_index)
    if oix is not None:
        n = len(oix)
    elif nix is not None:
        n = len(nix)
    else:
        n = new_pages.shape[0]
    if oix is not None and nix is not None and len(oix) != len(nix):
        raise ValueError("old_index and new_index differ in length")
    lengths = np.empty(n, dtype=np.int32)
    if _c is not None:
        payload = _c.encode_batch(old_pages, new_pages, ps, budget, lengths, oix, nix, update_old)
        return payload, lengths
    return _py_encode_batch(old_pages, new_pages, budget, lengths, oix, nix, update_old)


def decode_batch(
    payload,
    lengths: np.ndarray,
    pages_out: np.ndarray,
    page_index: np.ndarray | None = None,
) -> None:
    """Apply a batch of deltas in place.

    Delta ``k`` is the next ``lengths[k]`` bytes of ``payload`` and applies to
    ``pages_out[page_index[k]]`` (or ``pages_out[k]``), which holds the old
    page.  Entries with a negative length (pages sent whole) are skipped.  The
    whole batch is validated before any page is written; a malformed batch
    raises ``ValueError`` and leaves ``pages_out`` untouched.
    """
    if not isinstance(pages_out, np.ndarray) or pages_out.ndim != 2 or pages_out.dtype != np.uint8:
        raise ValueError("pages_out must be a 2-D uint8 array of pages")
    if not pages_out.flags.c_contiguous or not pages_out.flags.writeable:
        raise ValueError("pages_out must be C-contiguous and writable")
    lens = np.ascontiguousarray(lengths, dtype=np.int32)
    pix = _index(page_index)
    if pix is not None and len(pix) != len(lens):
        raise ValueError("page_index and lengths differ in length")
    ps = pages_out.shape[1]
    if _c is not None:
        _c.decode_batch(_contig(payload), lens, pages_out, ps, pix)
        return
    _py_decode_batch(payload, lens, pages_out, pix)


# ---------------------------------------------------------------------------
# Helpers


def _contig(buf):
    """Buffers the C kernels accept: C-contiguous; copy strided arrays only."""
    if isinstance(buf, np.ndarray) and not buf.flags.c_contiguous:
        return np.ascontiguousarray(buf)
    return buf


def _pages_pair(old_pages, new_pages):
    old_pages = np.asarray(old_pages)
    new_pages = np.asarray(new_pages)
    for name, a in (("old_pages", old_pages), ("new_pages", new_pages)):
        if a.ndim != 2 or a.dtype != np.uint8:
            raise ValueError(f"{name} must be a 2-D uint8 array of pages, got {a.dtype} {a.shape}")
    if old_pages.shape[1] != new_pages.shape[1]:
        raise ValueError("old_pages and new_pages have different page sizes")
    if not old_pages.flags.c_contiguous:
        old_pages = np.ascontiguousarray(old_pages)
    if not new_pages.flags.c_contiguous:
        new_pages = np.ascontiguousarray(new_pages)
    return old_pages, new_pages, old_pages.shape[1]


def _index(ix):
    if ix is None:
        return None
    return np.ascontiguousarray(ix, dtype=np.int64)


def _as_u8(buf) -> np.ndarray:
    if isinstance(buf, np.ndarray):
        return np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    return np.frombuffer(buf, dtype=np.uint8)


def _leb128(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _leb_len(v: np.ndarray) -> np.ndarray:
    n = np.ones(v.shape, dtype=np.int64)
    limit = 0x80
    while True:
        more = v >= limit
        if not more.any():
            return n
        n += more
        limit <<= 7


def _max_leb_bytes(page_len: int) -> int:
    return len(_leb128(page_len))


# ---------------------------------------------------------------------------
# Pure-Python / numpy fallback (same bytes as the C kernels)


def _py_encode(old, new, budget: int = PAGE_SIZE) -> bytes | None:
    a = _as_u8(old)
    b = _as_u8(new)
    if a.size != b.size:
        raise ValueError("old and new pages differ in length")
    if budget < 0:
        raise ValueError("budget must be >= 0")
    changed = a != b
    if not changed.any():
        return b""
    edges = np.diff(changed.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    nz = ends - starts
    z = starts - np.concatenate(([0], ends[:-1]))
    if int((_leb_len(z) + _leb_len(nz) + nz).sum()) > budget:
        return None
    out = bytearray()
    for zl, s, e in zip(z.tolist(), starts.tolist(), ends.tolist()):
        out += _leb128(zl)
        out += _leb128(e - s)
        out += b[s:e].tobytes()
    return bytes(out)


def _py_walk(src: memoryview, plen: int, page: memoryview | None) -> None:
    slen = len(src)
    maxb = _max_leb_bytes(plen)
    i = d = 0

    def leb() -> int:
        nonlocal i
        v = shift = 0
        for _ in range(maxb):
            if i >= slen:
                raise ValueError("truncated LEB128 run length")
            c = src[i]
            i += 1
            v |= (c & 0x7F) << shift
            if not c & 0x80:
                return v
            shift += 7
        raise ValueError("LEB128 run length too long")

    while i < slen:
        z = leb()
        if z == 0 and d != 0:
            raise ValueError("zero-length unchanged run after the start")
        if z > plen - d:
            raise ValueError("unchanged run goes past the page end")
        d += z
        c = leb()
        if c == 0:
            raise ValueError("zero-length changed run")
        if c > plen - d:
            raise ValueError("changed run goes past the page end")
        if c > slen - i:
            raise ValueError("truncated changed bytes")
        if page is not None:
            page[d : d + c] = src[i : i + c]
        d += c
        i += c


def _py_decode(delta, page) -> None:
    src = memoryview(delta).cast("B")
    dst = memoryview(page).cast("B")
    if dst.readonly:
        raise TypeError("page must be a writable buffer")
    _py_walk(src, len(dst), None)
    _py_walk(src, len(dst), dst)


def _py_encode_batch(old_pages, new_pages, budget, lengths, oix, nix, update_old):
    n = len(lengths)
    if oix is not None and ((oix < 0) | (oix >= len(old_pages))).any():
        raise IndexError("old_index out of range")
    if nix is not None and ((nix < 0) | (nix >= len(new_pages))).any():
        raise IndexError("new_index out of range")
    parts = []
    for k in range(n):
        o = old_pages[oix[k] if oix is not None else k]
        w = new_pages[nix[k] if nix is not None else k]
        enc = _py_encode(o, w, budget)
        if enc is None:
            lengths[k] = OVERFLOW
        else:
            lengths[k] = len(enc)
            parts.append(enc)
        if update_old:
            o[:] = w
    return b"".join(parts), lengths


def _py_decode_batch(payload, lens, pages_out, pix) -> None:
    src = memoryview(payload).cast("B")
    ps = pages_out.shape[1]
    if pix is not None and ((pix < 0) | (pix >= len(pages_out))).any():
        raise IndexError("page_index out of range")
    s = 0
    spans = []
    for k, ln in enumerate(lens.tolist()):
        if ln < 0:
            continue
        if ln > len(src) - s:
            raise ValueError(f"page {k}: payload shorter than the lengths say")
        try:
            _py_walk(src[s : s + ln], ps, None)
        except ValueError as e:
            raise ValueError(f"page {k}: {e}") from None
        spans.append((k, s, ln))
        s += ln
    if s != len(src):
        raise ValueError("payload longer than the lengths say")
    for k, s, ln in spans:
        row = pages_out[pix[k] if pix is not None else k]
        _py_walk(src[s : s + ln], ps, memoryview(row))

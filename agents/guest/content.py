"""Page contents: what guest pages hold, so that compression means something.

Four classes, as in real guests: zero pages, text-like pages (words, about
3-4x compressible with zstd), structured pages (records of small integers,
highly compressible) and incompressible pages (random bytes, like encrypted
or already-compressed data). Each class has a pool of template pages; a guest
write copies a template and stamps a counter into it, so every write really
changes the page.

A scenario's content mix says what the image holds at start (its fractions
spread at random, optionally one class placed over the workload's working
set) and what a write leaves in a page (`PageClasses`): by default a written
page keeps its class, and a zero page takes one of the image's non-zero
classes, since a guest that writes to free memory fills it with data.

Partial-page writes (a benchmark's stores, a database record, a moving part
of a video frame) change some bytes of a page and keep the rest: what delta
encoding exploits. They are vectorised over all the writes of a guest tick.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAGE = 4096
CLASSES = ("zero", "text", "structured", "random")
ZERO, TEXT, STRUCTURED, RANDOM = range(4)
POOL_PAGES = 64

_WORDS = (
    "the of and to in is was for that on as with by at from his an were are which this be or "
    "has had one their its new after who they have her she two been other when there all into "
    "more year first time would out also people some them than only about page memory host "
    "migration server request cache value key session user order item price account total"
).split()


def template_pools(seed: int) -> np.ndarray:
    """(4, POOL_PAGES, PAGE) uint8 templates, one pool per class."""
    rng = np.random.default_rng(seed)
    pools = np.zeros((4, POOL_PAGES, PAGE), dtype=np.uint8)
    vocab = [w.encode() + b" " for w in _WORDS]
    for p in range(POOL_PAGES):
        words = rng.choice(len(vocab), size=PAGE // 3)
        text = b"".join(vocab[w] for w in words)[:PAGE]
        pools[TEXT, p, : len(text)] = np.frombuffer(text, dtype=np.uint8)
    # Records of (id, small counter, flags): a typical heap of structs.
    recs = pools[STRUCTURED].view(np.uint32).reshape(POOL_PAGES, -1, 4)
    recs[:, :, 0] = np.arange(recs.shape[1], dtype=np.uint32)[None, :] + rng.integers(0, 1 << 20, (POOL_PAGES, 1), dtype=np.uint32)
    recs[:, :, 1] = rng.integers(0, 16, recs.shape[:2], dtype=np.uint32)
    recs[:, :, 2] = 0x1
    pools[RANDOM] = rng.integers(0, 256, (POOL_PAGES, PAGE), dtype=np.uint8)
    return pools


@dataclass(frozen=True)
class PageClasses:
    """Per page (both (npages,) uint8 class numbers): what it holds at start,
    and what a guest's whole-page write leaves in it."""

    initial: np.ndarray
    written: np.ndarray


def assign_classes(npages: int, content: dict, seed: int) -> PageClasses:
    """Classes of every page from a scenario's `content` table.

    `content`: fractions by class name (spread at random); optionally
    `working_set` (a class name) filling the first `working_set_fraction` of
    the pages, where every workload writes; `writes`: "image" (the default)
    or the class name every written page takes.
    """
    rng = np.random.default_rng(seed + 1)
    p = np.array([content[c] for c in CLASSES], dtype=float)
    initial = rng.choice(4, size=npages, p=p / p.sum()).astype(np.uint8)
    if content.get("working_set"):
        if content.get("working_set_fraction") is None:
            raise ValueError("content.working_set needs working_set_fraction (the scenario fills it in)")
        initial[: round(content["working_set_fraction"] * npages)] = CLASSES.index(content["working_set"])
    return PageClasses(initial, _written_classes(initial, content.get("writes", "image"), seed))


def _written_classes(initial: np.ndarray, writes: str, seed: int) -> np.ndarray:
    """The class a write leaves in each page (see `assign_classes`)."""
    if writes != "image":
        return np.full_like(initial, CLASSES.index(writes))
    # A zero page, once written, holds data like the rest of the image
    # (structured records when the image has no data at all).
    shares = np.bincount(initial, minlength=4)[1:].astype(float)
    written = initial.copy()
    zero = np.flatnonzero(initial == ZERO)
    if shares.sum() == 0:
        written[zero] = STRUCTURED
    else:
        rng = np.random.default_rng(seed + 3)
        written[zero] = 1 + rng.choice(3, size=len(zero), p=shares / shares.sum())
    return written


def fill_image(pages: np.ndarray, classes: PageClasses | np.ndarray, pools: np.ndarray, seed: int,
               chunk: int = 4096) -> None:
    """Initial contents of a guest image (zero-class pages stay zero); `classes`:
    `assign_classes`'s answer or each page's class."""
    rng = np.random.default_rng(seed + 2)
    classes = classes.initial if isinstance(classes, PageClasses) else classes
    for start in range(0, len(pages), chunk):
        cls = classes[start: start + chunk]
        variant = rng.integers(0, POOL_PAGES, len(cls))
        pages[start: start + len(cls)] = pools[cls, variant]
        stamp_pages(pages, np.arange(start, start + len(cls)), cls, rng, start)


def stamp_pages(pages: np.ndarray, idx: np.ndarray, cls: np.ndarray, rng: np.random.Generator, counter: int) -> None:
    """Write a distinct 8-byte counter into each non-zero page of `idx`; give
    each random page its own bytes (a template XORed with a key of its own),
    so that a batch of random pages does not compress by repeating a template."""
    rnd = idx[cls == RANDOM]
    if len(rnd):
        keys = rng.integers(0, 1 << 63, len(rnd), dtype=np.uint64, endpoint=True)
        pages.view(np.uint64)[rnd] ^= keys[:, None]
    keep = cls != ZERO
    if not keep.any():
        return
    words = pages.view(np.uint64)
    rows = idx[keep]
    cols = rng.integers(0, PAGE // 8, len(rows))
    words[rows, cols] = np.arange(counter, counter + len(rows), dtype=np.uint64) | np.uint64(1 << 63)


def write_pages(pages: np.ndarray, idx: np.ndarray, written: np.ndarray, pools: np.ndarray,
                rng: np.random.Generator, counter: int) -> None:
    """A guest write to pages `idx`: fresh contents of the class `written[p]`
    a write leaves in page p (`PageClasses.written`)."""
    cls = written[idx]
    variant = rng.integers(0, POOL_PAGES, len(idx))
    pages[idx] = pools[cls, variant]
    stamp_pages(pages, idx, cls, rng, counter)


def write_runs(pages: np.ndarray, idx: np.ndarray, offsets: np.ndarray, nbytes: int, rng: np.random.Generator) -> None:
    """Partial writes: `nbytes` new bytes at byte `offsets[k]` of page `idx[k]`.

    `offsets[k] + nbytes` must not pass the page end. Pages may repeat (the
    later write wins, as in memory).
    """
    if not len(idx) or nbytes <= 0:
        return
    flat = pages.reshape(-1)
    start = np.asarray(idx, dtype=np.int64) * PAGE + np.asarray(offsets, dtype=np.int64)
    pos = (start[:, None] + np.arange(nbytes, dtype=np.int64)).reshape(-1)
    flat[pos] = rng.integers(0, 256, len(pos), dtype=np.uint8)


def bump_bands(pages: np.ndarray, first: int, stop: int, band_offsets: np.ndarray, band_bytes: int, inc: int) -> None:
    """Change a band of `band_bytes` in every page of `first:stop` by adding `inc`
    (mod 256, never 0) to each of its bytes. Page p's band starts at
    `band_offsets[(p - first) % len(band_offsets)]`: one strided slice per
    offset group, so the cost does not depend on a Python loop over pages."""
    inc = inc % 256 or 1
    groups = len(band_offsets)
    for g, off in enumerate(band_offsets.tolist()):
        band = pages[first + g: stop: groups, off: off + band_bytes]
        band += np.uint8(inc)

"""Codec micro-benchmark: real MB/s on one core for each page-encoding kernel.

``run_codec_bench()`` returns a JSON-serialisable dict (printed by
``livemig bench codec``).  Throughput is raw page bytes processed per second
(MB = 10**6 bytes), over batches of 256 pages (1 MiB), the pipeline's batch
size.  Cases:

* zero detection on all-zero pages (the worst case: every word is read), in
  cache and streaming over a 64 MiB image;
* zstd level 1 and 3, compress and decompress, on text-like and random pages;
* XBZRLE encode and decode on pages with 1 %, 10 % and 50 % of the bytes
  changed, scattered in runs of 1-8 bytes.

The page generators (:func:`text_pages`, :func:`random_pages`,
:func:`changed_pages`) are reused by the tests.
"""

from __future__ import annotations

import platform
import time

import numpy as np

from agents.encodings import xbzrle
from agents.encodings.zero_pages import zero_mask
from agents.encodings.zstd_codec import ZstdBatchCodec

__all__ = ["run_codec_bench", "text_pages", "random_pages", "changed_pages"]

PAGE = 4096
BATCH = 256

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more can who out up "
    "page memory migration guest host kernel buffer socket request response error value index table row "
    "select insert update commit transaction log entry time status ok cache hit miss 200 404 GET POST"
).split()


def random_pages(n: int, rng: np.random.Generator, page_size: int = PAGE) -> np.ndarray:
    return rng.integers(0, 256, size=(n, page_size), dtype=np.uint8)


def text_pages(n: int, rng: np.random.Generator, page_size: int = PAGE) -> np.ndarray:
    """Pages of English-like text and log lines (zstd level 1 ratio ~3-4)."""
    need = n * page_size
    chunks = []
    size = 0
    while size < need:
        words = rng.choice(_WORDS, size=4096)
        seps = rng.choice([" ", " ", " ", " ", " ", ", ", ". ", "\n"], size=4096)
        s = "".join(w + sep for w, sep in zip(words.tolist(), seps.tolist())).encode()
        chunks.append(s)
        size += len(s)
    raw = np.frombuffer(b"".join(chunks)[:need], dtype=np.uint8)
    return raw.reshape(n, page_size).copy()


def changed_pages(
    old: np.ndarray, density: float, rng: np.random.Generator, max_run: int = 8
) -> np.ndarray:
    """A copy of ``old`` with about ``density`` of its bytes changed, in runs of 1..max_run bytes."""
    new = old.copy()
    if density <= 0:
        return new
    flat = new.reshape(-1)
    total = flat.size
    if density >= 1:
        mask = np.ones(total, dtype=bool)
    else:
        avg = (1 + max_run) / 2
        # Poisson-placed runs cover 1 - exp(-rate * avg) of the bytes
        count = int(round(-np.log1p(-density) * total / avg))
        starts = rng.integers(0, total, size=count)
        ends = np.minimum(starts + rng.integers(1, max_run + 1, size=count), total)
        edges = np.zeros(total + 1, dtype=np.int32)
        np.add.at(edges, starts, 1)
        np.add.at(edges, ends, -1)
        mask = np.cumsum(edges[:-1]) > 0
    flat[mask] ^= rng.integers(1, 256, size=int(mask.sum()), dtype=np.uint8)
    return new


def _rate(fn, nbytes: int, seconds: float) -> tuple[float, int]:
    """MB/s of ``fn`` processing ``nbytes`` per call, timed over ~``seconds``."""
    fn()  # warm up
    calls = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        fn()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            break
    return calls * nbytes / (now - t0) / 1e6, calls


def run_codec_bench(seconds_per_case: float = 0.5, batch_pages: int = BATCH, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    nbytes = batch_pages * PAGE
    cases: dict[str, dict] = {}

    def case(name: str, fn, **extra) -> None:
        mbps, calls = _rate(fn, nbytes, seconds_per_case)
        cases[name] = {"mb_s": round(mbps, 1), "calls": calls, **extra}

    # zero detection
    zeros = np.zeros((batch_pages, PAGE), dtype=np.uint8)
    case("zero_detect.zero_pages", lambda: zero_mask(zeros))
    rnd = random_pages(batch_pages, rng)
    case("zero_detect.random_pages", lambda: zero_mask(rnd))
    # the same over a 64 MiB image that does not fit in the CPU caches
    image = np.empty((16384, PAGE), dtype=np.uint8)
    image.fill(0)  # really written: np.zeros would map the kernel's shared zero page

    def scan_image() -> None:
        for i in range(0, len(image), batch_pages):
            zero_mask(image[i : i + batch_pages])

    mbps, calls = _rate(scan_image, image.nbytes, seconds_per_case)
    cases["zero_detect.zero_image_64MiB"] = {"mb_s": round(mbps, 1), "calls": calls}

    # zstd
    data = {"text": text_pages(batch_pages, rng), "random": rnd}
    for level in (1, 3):
        codec = ZstdBatchCodec(level=level)
        for kind, pages in data.items():
            payload, compressed = codec.compress(pages)
            ratio = round(nbytes / len(payload), 3)
            case(f"zstd{level}.compress.{kind}", lambda p=pages: codec.compress(p),
                 ratio=ratio, compressed=compressed)
            case(f"zstd{level}.decompress.{kind}", lambda p=payload: codec.decompress(p, nbytes),
                 ratio=ratio, compressed=compressed)  # not compressed: a plain copy

    # XBZRLE
    old = random_pages(batch_pages, rng)
    for density in (0.01, 0.10, 0.50):
        new = changed_pages(old, density, rng)
        payload, lengths = xbzrle.encode_batch(old, new)
        real = float((old != new).mean())
        extra = {
            "changed_bytes": round(real, 4),
            "ratio": round(nbytes / max(1, len(payload)), 2),
            "overflow_pages": int((lengths < 0).sum()),
        }
        pct = int(round(density * 100))
        case(f"xbzrle.encode.{pct}pct", lambda n=new: xbzrle.encode_batch(old, n), **extra)
        target = old.copy()
        case(f"xbzrle.decode.{pct}pct",
             lambda p=payload, ln=lengths, t=target: xbzrle.decode_batch(p, ln, t), **extra)

    return {
        "unit": "MB/s of raw page bytes, one core, 1e6 bytes per MB",
        "batch_pages": batch_pages,
        "page_size": PAGE,
        "seconds_per_case": seconds_per_case,
        "xbzrle_compiled": xbzrle.HAVE_C,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cases": cases,
    }


def guest_pages(cls: str, n: int, seed: int = 0) -> np.ndarray:
    """`n` pages of one of the guest's content classes, as a guest image holds them."""
    from agents.guest.content import CLASSES, fill_image, template_pools

    pages = np.empty((n, PAGE), dtype=np.uint8)
    fill_image(pages, np.full(n, CLASSES.index(cls), dtype=np.uint8), template_pools(seed), seed)
    return pages


def _best_rate(fn, nbytes: int, seconds: float, repeats: int = 5) -> float:
    """The best MB/s of `repeats` short timings: on a shared machine, the least disturbed one."""
    return max(_rate(fn, nbytes, seconds / repeats)[0] for _ in range(repeats))


def _per_call_us(codec, page: np.ndarray, per_page_us: float, seconds: float) -> float:
    """The fixed cost of one call of the page codec: a one-page call less that page's cost."""
    return max(0.0, PAGE / _best_rate(lambda: codec.compress_pages(page), PAGE, seconds) - per_page_us)


def calibrate(seconds_per_case: float = 0.5, pages: int = BATCH, seed: int = 0) -> dict:
    """The cost model's figures (agents/encodings/cost_model.py), measured here and now:
    zstd page frames by guest content class and level, XBZRLE by the delta's share
    of a page, and a codec call's fixed cost. Each zstd figure is the best of five
    timings (the machine may be shared); XBZRLE's are `run_codec_bench`'s."""
    import datetime
    import os

    from agents.encodings.cost_model import CLASSES
    from agents.encodings.zstd_codec import ZstdPageCodec

    nbytes = pages * PAGE
    zstd: dict = {}
    for level in (1, 3):
        codec = ZstdPageCodec(level)
        row: dict = {"ratio": {}, "compress_mb_s": {}, "decompress_mb_s": {}}
        for cls in CLASSES:
            data = guest_pages(cls, pages, seed)
            frames, lengths = codec.compress_pages(data)
            payload = np.frombuffer(b"".join(bytes(f) for f in frames), dtype=np.uint8)
            row["ratio"][cls] = round(nbytes / float(lengths.sum()), 4)
            row["compress_mb_s"][cls] = round(_best_rate(lambda d=data: codec.compress_pages(d), nbytes,
                                                         seconds_per_case), 1)
            row["decompress_mb_s"][cls] = round(_best_rate(lambda p=payload, ln=lengths: codec.decompress_pages(p, ln, PAGE),
                                                           nbytes, seconds_per_case), 1)
        zstd[str(level)] = row
    text_us = PAGE / zstd["1"]["compress_mb_s"]["text"]
    call_us = _per_call_us(ZstdPageCodec(1), guest_pages("text", 1, seed), text_us, seconds_per_case)
    cases = run_codec_bench(seconds_per_case, pages, seed)["cases"]
    xb = {op: [{"payload_share": round(1 / c["ratio"], 4), "changed_bytes": c["changed_bytes"], "mb_s": c["mb_s"]}
               for name, c in cases.items() if name.startswith(f"xbzrle.{op}.")] for op in ("encode", "decode")}
    return {"measured": {"date": datetime.date.today().isoformat(), "machine": _cpu_name(),
                         "cores": os.cpu_count(), "python": platform.python_version(),
                         "command": "livemig bench codec --calibrate"},
            "unit": "MB/s of raw page bytes on one core (1e6 bytes/s); call_us in microseconds",
            "zstd": zstd, "xbzrle": xb, "call_us": round(call_us, 3)}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":  # python -m agents.encodings.codec_bench
    import json

    print(json.dumps(run_codec_bench(), indent=2))

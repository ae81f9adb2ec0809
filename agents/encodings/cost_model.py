"""The codec cost model: CPU of compression and decompression, in emulated units.

Division of labour: `livemig bench codec --calibrate` measures this machine's
codecs on the guest's own page classes (agents/encodings/codec_bench.py) and
stores the figures, with the date and the machine, in `codec_costs.json`;
this module turns them into microseconds of CPU for a batch; the pipeline
and the receiver charge those instead of the real time a call took (which
carries per-call overhead that memory_scale would magnify, and this
machine's load); `cluster.predict` uses the same figures.

What a page costs depends on what it holds: zstd compresses text-like pages
at a few hundred MB/s and gives up on random ones at over 1 GB/s. A page's
class is read from its own zstd frame (its ratio, banded between the
calibrated classes' ratios), so no page is classified twice. XBZRLE costs
depend on how much of the page changed, read from the delta's length.

Every cost is linear in the pages of a batch: per byte of each class, plus
a per-call cost spread over the CALL_PAGES pages of an emulated call. So a
real batch of n pages costs, divided by memory_scale, exactly what the n /
memory_scale emulated pages it stands for cost, whatever the batch size.
Costs are returned in microseconds "at scale 1" (as if the real pages were
emulated ones); the caller scales them (HostAgent._real_s).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

PAGE = 4096
CALL_PAGES = 128  # pages per emulated codec call: QEMU's multifd packet (512 KiB)
CLASSES = ("structured", "text", "random")  # the guest's non-zero classes (agents/guest/content.py)
CALIBRATION = Path(__file__).with_name("codec_costs.json")


@dataclass(frozen=True)
class ZstdCosts:
    """One zstd level on page frames: per class, its ratio and MB/s (1e6 bytes/s of raw pages)."""

    level: int
    ratio: dict
    compress_mb_s: dict
    decompress_mb_s: dict

    def classes_of(self, frame_lengths: np.ndarray) -> np.ndarray:
        """Class number (index in CLASSES) of each page from its frame's length."""
        ratios = np.array([self.ratio[c] for c in CLASSES])
        # Band edges at geometric means between neighbouring classes' ratios.
        order = np.argsort(-ratios)
        edges = np.sqrt(ratios[order][:-1] * ratios[order][1:])
        r = PAGE / np.maximum(1, np.asarray(frame_lengths, dtype=float))
        return order[np.searchsorted(-edges, -r, side="right")]

    def compress_us(self, frame_lengths: np.ndarray, call_us: float) -> float:
        """CPU to try every page whose frame lengths are given (kept or not)."""
        return self._us(self.compress_mb_s, frame_lengths, call_us)

    def decompress_us(self, frame_lengths: np.ndarray, call_us: float) -> float:
        return self._us(self.decompress_mb_s, frame_lengths, call_us)

    def _us(self, rates: dict, frame_lengths: np.ndarray, call_us: float) -> float:
        n = len(frame_lengths)
        if n == 0:
            return 0.0
        per_page = np.array([PAGE / rates[c] for c in CLASSES])  # us: bytes / (1e6 bytes/s) * 1e6
        return float(per_page[self.classes_of(frame_lengths)].sum()) + n * call_us / CALL_PAGES

    def page_us(self, cls: str, rates: str = "compress") -> float:
        """CPU of one page of class `cls` (for the predictor)."""
        table = self.compress_mb_s if rates == "compress" else self.decompress_mb_s
        return PAGE / table[cls]


@dataclass(frozen=True)
class CodecCosts:
    zstd: dict  # level -> ZstdCosts
    xbzrle_encode: tuple  # ((payload share of a page, MB/s), ...) by share
    xbzrle_decode: tuple
    call_us: float  # one codec call's fixed cost, spread over CALL_PAGES emulated pages
    measured: dict  # when, where and how the figures were measured
    xbzrle_changes: tuple = ()  # ((changed share of a page, payload share of its delta), ...)

    def zstd_level(self, level: int) -> ZstdCosts:
        """The calibrated level nearest `level` (see `provenance` for which one)."""
        return self.zstd[min(self.zstd, key=lambda lv: (abs(lv - level), lv))]

    def zstd_decoder(self) -> ZstdCosts:
        # zstd decodes at about the same speed whatever the level: the lowest level's figures.
        return self.zstd[min(self.zstd)]

    def xbzrle_encode_us(self, delta_lengths: np.ndarray) -> float:
        """CPU to XOR and run-length encode cache hits; `delta_lengths` (-1: over budget, 0: unchanged)."""
        return self._xbzrle_us(self.xbzrle_encode, delta_lengths)

    def xbzrle_decode_us(self, delta_lengths: np.ndarray) -> float:
        return self._xbzrle_us(self.xbzrle_decode, delta_lengths)

    def _xbzrle_us(self, table: tuple, delta_lengths: np.ndarray) -> float:
        n = len(delta_lengths)
        if n == 0:
            return 0.0
        share = np.where(np.asarray(delta_lengths) < 0, 1.0, np.asarray(delta_lengths) / PAGE)
        xs, mbs = zip(*table)
        rate = np.interp(share, xs, mbs)  # clamped to the calibrated ends
        return float((PAGE / rate).sum()) + n * self.call_us / CALL_PAGES

    def xbzrle_page_us(self, share: float, decode: bool = False) -> float:
        xs, mbs = zip(*(self.xbzrle_decode if decode else self.xbzrle_encode))
        return PAGE / float(np.interp(share, xs, mbs)) + self.call_us / CALL_PAGES

    def provenance(self, level: int | None = None) -> dict:
        """Where the charged figures come from (for result.json)."""
        m = self.measured
        out = {"source": f"{m.get('command', 'livemig bench codec --calibrate')} on {m.get('machine', '?')}, "
                         f"{m.get('date', '?')}", **m,
               "file": str(CALIBRATION.relative_to(CALIBRATION.parents[2])), "call_pages": CALL_PAGES}
        if level is not None:
            out["zstd_level_charged"] = self.zstd_level(level).level
        return out


def from_calibration(data: dict) -> CodecCosts:
    zstd = {int(lv): ZstdCosts(int(lv), v["ratio"], v["compress_mb_s"], v["decompress_mb_s"])
            for lv, v in data["zstd"].items()}
    table = lambda rows: tuple(sorted((float(r["payload_share"]), float(r["mb_s"])) for r in rows))  # noqa: E731
    changes = tuple(sorted((float(r["changed_bytes"]), float(r["payload_share"])) for r in data["xbzrle"]["encode"]))
    return CodecCosts(zstd, table(data["xbzrle"]["encode"]), table(data["xbzrle"]["decode"]),
                      float(data["call_us"]), dict(data["measured"]), changes)


@lru_cache(maxsize=1)
def load() -> CodecCosts:
    """The stored calibration (written by `livemig bench codec --calibrate`)."""
    return from_calibration(json.loads(CALIBRATION.read_text()))


def mix_ratio(costs: ZstdCosts, content: dict) -> float:
    """Raw bytes per frame byte of a mix of non-zero classes (fractions by class name)."""
    total = sum(content.get(c, 0.0) for c in CLASSES)
    if total <= 0:
        return 1.0
    frame = sum(content.get(c, 0.0) / total / costs.ratio[c] for c in CLASSES)
    return 1.0 / frame if frame > 0 and math.isfinite(frame) else 1.0

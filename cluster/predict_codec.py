"""The predictor's page encodings: what a pass's average page costs on the wire and in CPU.

cluster/predict.py runs the pre-copy series; this module tells it, for one
pass, the wire bytes of an average page and the codec CPU it costs at each
end, from the scenario's content mix and compression settings, with the
emulator's own cost model (agents/encodings/cost_model.py):

* zero pages cost a header and a marker;
* zstd: every non-zero page is tried; a class whose page frame pays (its
  calibrated ratio) travels compressed with a 4-byte length;
* XBZRLE: nothing is cached before the walk's first round over the image is
  complete (QEMU's xbzrle_started), so the first pass and the first pass over
  dirty pages meet an empty cache (all misses; that pass fills it); later
  passes hit with probability min(1, cache / working set); a hit's delta is the share of
  the page the workload changed since it was sent (partial writers), or the
  whole page (whole-page writers, whose rewrites overflow the budget).

`limits(scenario, mp)` lists, one line each, what the model does not cover.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from agents.datapath.wire_format import (
    DELTA_HEADER_BYTES,
    PAGE_HEADER_BYTES,
    ZERO_MARKER_BYTES,
    ZSTD_HEADER_BYTES,
)
from agents.encodings import cost_model
from cluster.scenario import MIB

PAGE = 4096
PARTIAL_WRITERS = ("memwrite", "erp", "video")


@dataclass(frozen=True)
class PassEncoding:
    """One pass's average page: wire bytes, codec CPU (us) at source and destination, and its shares by encoding."""

    bytes_per_page: float
    source_us: float = 0.0
    destination_us: float = 0.0
    shares: dict = field(default_factory=lambda: {"normal": 1.0, "zero": 0.0, "compressed": 0.0, "delta": 0.0})


def class_mix(vm, zero: float, dirty: bool) -> dict:
    """Fractions of the pass's pages by class: the image's (first pass) or what writes leave (later)."""
    c = vm.content
    if dirty and c.writes != "image":
        return {c.writes: 1.0}
    mix = {k: getattr(c, k) for k in cost_model.CLASSES}
    total = sum(mix.values())
    if total <= 0:  # an all-zero image: what writes leave is structured records (agents/guest/content.py)
        return {"structured": 1.0 - zero, "zero": zero} if not dirty else {"structured": 1.0}
    return {k: v / total * (1 - zero) for k, v in mix.items()} | {"zero": zero}


def encoding(vm, options, zero: float, dirty: bool, dirty_interval_s: float = 1.0, cached: bool = True) -> PassEncoding:
    """The average page of a pass whose pages are `zero` zero pages (first pass: `dirty` False;
    `cached` False: a pass over dirty pages that meets an empty XBZRLE cache)."""
    costs = cost_model.load()
    mix = class_mix(vm, zero, dirty)
    z = mix.get("zero", 0.0)
    shares = {"normal": 0.0, "zero": z, "compressed": 0.0, "delta": 0.0}
    wire = z * (PAGE_HEADER_BYTES + ZERO_MARKER_BYTES)
    src_us = dst_us = 0.0
    hit = _hit_rate(vm, options) if dirty and cached and options.compression.startswith("xbzrle") else 0.0
    if hit > 0:
        share = _delta_share(vm, dirty_interval_s)
        data = 1 - z
        if share < 1.0:  # a delta fits the budget
            shares["delta"] = hit * data
            wire += hit * data * (PAGE_HEADER_BYTES + DELTA_HEADER_BYTES + share * PAGE)
            dst_us += hit * data * costs.xbzrle_page_us(share, decode=True)
            mix = {k: v * (1 - hit) for k, v in mix.items() if k != "zero"}
        src_us += hit * data * costs.xbzrle_page_us(share)  # every hit is XORed and encoded
        mix = {k: v for k, v in mix.items() if k != "zero"}
    else:
        mix = {k: v for k, v in mix.items() if k != "zero"}
    w, s, d, normal, compressed = _whole_pages(mix, options, costs)
    shares["normal"] += normal
    shares["compressed"] += compressed
    return PassEncoding(wire + w, src_us + s, dst_us + d, shares)


def _whole_pages(mix: dict, options, costs) -> tuple[float, float, float, float, float]:
    """Pages sent whole (fractions by class): wire bytes, source and destination codec us,
    normal and compressed shares."""
    if not options.compression.endswith("zstd"):
        return sum(mix.values()) * (PAGE_HEADER_BYTES + PAGE), 0.0, 0.0, sum(mix.values()), 0.0
    z = costs.zstd_level(options.zstd_level)
    dec = costs.zstd_decoder()
    call = costs.call_us / cost_model.CALL_PAGES
    wire = src = dst = normal = compressed = 0.0
    for cls, f in mix.items():
        frame = PAGE / z.ratio[cls]
        src += f * (z.page_us(cls) + call)
        if frame + ZSTD_HEADER_BYTES < PAGE * 0.97:  # the encoder keeps a frame only when it pays
            wire += f * (PAGE_HEADER_BYTES + frame + ZSTD_HEADER_BYTES)
            dst += f * (dec.page_us(cls, "decompress") + call)
            compressed += f
        else:
            wire += f * (PAGE_HEADER_BYTES + PAGE)
            normal += f
    return wire, src, dst, normal, compressed


def _hit_rate(vm, options) -> float:
    """Share of a later pass's pages found in the XBZRLE cache: the cache against the working set."""
    from cluster.predict import _write_probabilities
    _, _, ws = _write_probabilities(vm)
    return min(1.0, options.xbzrle_cache_mib * MIB / PAGE / max(1, ws))


def _delta_share(vm, interval_s: float) -> float:
    """Payload share of a page's delta after `interval_s` of writing (1.0: the page was rewritten whole)."""
    wl = vm.workload
    if wl.kind not in PARTIAL_WRITERS:
        return 1.0
    if wl.kind == "video":
        changed = wl.changed_fraction
    else:
        from cluster.predict import _write_probabilities
        rate, _, ws = _write_probabilities(vm)
        nbytes = wl.bytes_per_write if wl.kind == "memwrite" else wl.record_bytes
        lam = rate * interval_s / ws  # writes per page in the interval
        k = lam / -math.expm1(-lam) if lam > 0 else 1.0  # writes on a page, given it was written
        changed = 1 - (1 - min(1.0, nbytes / PAGE)) ** k
    # The calibration relates changed bytes to the delta's payload share (run headers included).
    pts = [(0.0, 0.0), *cost_model.load().xbzrle_changes, (1.0, 1.0)]
    return float(np.interp(changed, [x for x, _ in pts], [y for _, y in pts]))


def limits(scenario, mp) -> list[str]:
    """One line for each setting of this migration the model does not cover."""
    out = []
    if len(scenario.migration_plans()) > 1:
        out.append("concurrent migrations: each is predicted as if alone on its hosts and links")
    if getattr(scenario, "events", None):
        out.append("scheduled events ([[events]]): not modelled; the prediction assumes the scenario's start state")
    if scenario.cpu.shared_cores:
        out.append("CPU rate control (cpu.shared_cores): the co-located VMs' share of the cores is not modelled")
    o = mp.options
    if o.compression.startswith("xbzrle") and vm_is_partial_unknown(mp.vm):
        out.append(f"XBZRLE with a {mp.vm.workload.kind} workload: its rewrites are assumed to overflow the budget")
    if o.compression.endswith("zstd"):
        z = cost_model.load().zstd_level(o.zstd_level)
        if z.level != o.zstd_level:
            out.append(f"zstd level {o.zstd_level}: not calibrated; level {z.level}'s ratio and CPU are used")
    if mp.vm.content.working_set is not None:
        out.append("content.working_set: the working set's class is not modelled; the image's mix is used")
    if mp.vm.io_bound and o.strategy != "time-sliced":
        out.append("I/O-bound guest: only the time-sliced strategy's I/O-thread share is modelled")
    from agents.techniques.policy import settings_from_options
    if settings_from_options(o) is not None:
        out.append(f"management policy ({getattr(o, 'policy', 'none')}): its timeouts, downtime steps and hard "
                   "maximum; the prediction is the technique's own, as if no policy decided")
    return out


def vm_is_partial_unknown(vm) -> bool:
    return vm.workload.kind not in PARTIAL_WRITERS and vm.workload.kind != "idle"


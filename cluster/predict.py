"""The analytic pre-copy model: what the emulator should find, instantly.

The geometric series of Clark et al. as refined by Akoush et al.: iteration
i sends what was dirtied during iteration i-1, at the effective bandwidth.
Dirtying is counted in distinct pages (a page written twice is sent once):
for writes at rate r spread over a working set with page probabilities p_j,
the pages dirty after t seconds are sum_j 1 - exp(-r p_j t), which for a
uniform working set of W pages is W (1 - exp(-r t / W)). The stop rule is
the emulator's own (`agents.techniques.precopy.stop_reason`), so the two can be
compared figure by figure; with stop_rule "qemu" a pass is cut once its rest
fits in bandwidth x limit (windows of 100 ms), and the rest joins the pages
dirtied meanwhile. A bandwidth cap paces the iterations; the stop-and-copy
runs at the links' speed unless switchover_bandwidth is "capped". One prediction per migration of the scenario
(`Scenario.migration_plans()`), each on its own hosts and links with its own
options; concurrent migrations are predicted as if alone. No Ray, no threads.
"""
from __future__ import annotations

import math

import numpy as np

from agents.cpu import resolve
from agents.encodings import cost_model
from agents.datapath.wire_format import PAGE_HEADER_BYTES, ZERO_MARKER_BYTES
from agents.techniques.precopy import WINDOW_S, StopPolicy, stop_reason
from cluster import predict_codec
from cluster.results import MIB, network_bytes, with_throughput
from cluster.predict_convergence import convergence_summary, throttled_iterations
from cluster.scenario import GIB, MigrationPlan, Scenario, Vm

PAGE = 4096


EXACT_RANKS = 1 << 24  # Zipf ranks given one by one (128 MB of floats); beyond, in bins


def _zipf_pages(ws: int, s: float) -> tuple[np.ndarray, np.ndarray]:
    """(probability of each page of a group, pages in the group) for a Zipf(s)
    over `ws` pages: one group per rank up to EXACT_RANKS, then ranks in
    geometric bins of 0.1% (a working set of terabytes would not fit in memory
    page by page), each at the probability of its middle rank."""
    exact = np.arange(1, min(ws, EXACT_RANKS) + 1, dtype=float)
    edges = np.unique(np.geomspace(EXACT_RANKS + 1, ws + 1, num=max(2, int(np.log(ws / EXACT_RANKS) / 1e-3)))
                      .astype(np.int64)) if ws > EXACT_RANKS else np.empty(0, dtype=np.int64)
    mids = np.sqrt(edges[:-1] * edges[1:].astype(float))
    ranks = np.concatenate([exact, mids])
    counts = np.concatenate([np.ones(len(exact)), np.diff(edges).astype(float)])
    p = ranks ** -s
    return p / np.sum(p * counts), counts


def _write_probabilities(vm: Vm) -> tuple[float, tuple[np.ndarray, np.ndarray] | None, int]:
    """(page writes per second, (page probabilities, pages at each) or None for uniform,
    working-set pages)."""
    wl = vm.workload
    mem_pages = int(vm.memory_gib * GIB / PAGE)
    ws_gib = getattr(wl, "working_set_gib", None)
    ws = mem_pages if ws_gib is None else max(1, int(ws_gib * GIB / PAGE))
    if wl.kind == "idle":
        return 0.0, None, ws
    if wl.kind == "uniform":
        return wl.dirty_pages_per_s, None, ws
    if wl.kind == "hotset":
        return wl.ops_per_s * wl.write_fraction, _zipf_pages(ws, wl.zipf_s), ws
    if wl.kind == "readmostly":  # its reads dirty nothing
        return wl.dirty_pages_per_s, None, max(1, int(wl.working_set_gib * GIB / PAGE))
    if wl.kind == "sweeper":
        return wl.write_mbytes_s * 1e6 / PAGE, None, max(1, int(wl.sweep_gib * GIB / PAGE))
    if wl.kind == "memwrite":
        return wl.writes_per_s, None, ws
    if wl.kind == "video":  # every page of the frame buffers, every frame
        frames = max(1, int(wl.frame_mib * MIB / PAGE))
        return wl.fps * frames, None, frames
    if wl.kind == "erp":  # the record updates (the log and the session area are small next to them)
        return wl.ops_per_s * wl.writes_per_op, None, ws
    raise ValueError(wl.kind)


def dirty_pages_after(vm: Vm, t: float) -> float:
    wl = vm.workload
    hot = getattr(wl, "hot_set_gib", 0.0) * GIB / PAGE
    if hot > 0 and t > 0:
        # Two uniform writers: the hot set at its own rate, and the rest of the
        # working set at the base rate (the base rate's share that lands there).
        rate, _, ws = _write_probabilities(vm)
        hot = min(hot, ws)
        cold = ws - hot
        d_hot = hot * -math.expm1(-(wl.hot_pages_per_s + rate * hot / ws) * t / hot)
        d_cold = cold * -math.expm1(-rate * cold / ws * t / cold) if cold > 0 else 0.0
        return d_hot + d_cold
    rate, probs, ws = _write_probabilities(vm)
    if rate == 0 or t <= 0:
        return 0.0
    if vm.workload.kind == "sweeper":
        return min(rate * t, ws)  # sequential: every write is a new page until the sweep ends
    if probs is None:
        return ws * -math.expm1(-rate * t / ws)
    p, counts = probs
    return float(np.sum(counts * -np.expm1(-rate * p * t)))


def _links(scenario: Scenario, mp: MigrationPlan) -> list:
    return scenario.links_between(mp.source, mp.destination)


def link_rate(scenario: Scenario, mp: MigrationPlan | None = None) -> float:
    """Emulated bytes/s a migration's links carry together (after background traffic);
    by default the scenario's first migration.

    The links are the emulator's own (cluster/topology.py) at scale 1, so the
    bandwidth cap and the pairing are worked out in one place.
    """
    from agents.datapath.link import migration_share
    from cluster.fair_share import max_min_rates
    from cluster.scaling import Scale
    from cluster.topology import plan
    mp = mp or scenario.migration_plans()[0]
    net = scenario.network
    topo = plan(scenario, Scale(1.0, 1.0))
    # Links that share a NIC (a split migration's, from the source's one port) share its speed.
    return sum(max_min_rates({lp.index: (migration_share(lp.rate_bytes_s, lp.background_bytes_s, net.rate_control,
                                                         net.reserved_mbytes_s * MIB), lp.nics)
                              for lp in topo.links_of_migration(mp.index)}, topo.shared_nics).values())


def migration_rates(scenario: Scenario, mp: MigrationPlan | None = None) -> tuple[float, float]:
    """(emulated bytes/s while iterating, at stop-and-copy): the links' rate, capped
    by bandwidth_cap_gbps while iterating, and at stop-and-copy only when
    switchover_bandwidth is "capped"."""
    mp = mp or scenario.migration_plans()[0]
    o = mp.options
    link = link_rate(scenario, mp)
    capped = min(link, o.bandwidth_cap_gbps * 1e9 / 8) if o.bandwidth_cap_gbps else link
    return capped, capped if o.switchover_bandwidth == "capped" else link


def cpu_pages_per_s(scenario: Scenario, zero_fraction: float = 0.0, mp: MigrationPlan | None = None,
                    codec_us: tuple[float, float] = (0.0, 0.0)) -> float:
    """Pages/s a migration's source and destination CPUs allow: cores over cost,
    and the address-space lock's serial part (Amdahl) on the source. Zero pages
    are checked but not transferred. By default the scenario's first migration."""
    mp = mp or scenario.migration_plans()[0]
    mig, cpu = mp.options, scenario.cpu
    costs = resolve(cpu.profile, mig.address_space_lock, cpu.overrides())
    n = mig.consumers
    cores = [min(h.cores, cpu.migration_cores or h.cores) for h in (mp.source, mp.destination)]
    shootdown = costs.shootdown_us * (n - 1)
    serial = {"global": costs.mmap_us + costs.map_us + costs.munmap_us + shootdown,
              "rwlock": costs.mmap_us + costs.munmap_us + shootdown,
              "range": 0.0}[mig.address_space_lock]
    # `codec_us`: compression at the source and decompression at the destination, per average page.
    source_us = costs.source_us(n) - zero_fraction * costs.send_us + codec_us[0]
    dest_us = costs.restore_us + (1 - zero_fraction) * costs.receive_us + codec_us[1]
    # A side that costs nothing per page (all zero pages, free steps) sets no limit.
    rates = [min(n, c) * 1e6 / us for c, us in ((cores[0], source_us), (cores[1], dest_us)) if us > 0]
    if serial > 0:
        rates.append(1e6 / serial)
    return min(rates, default=math.inf)


def predict_migration(scenario: Scenario, mp: MigrationPlan, precopy_only: bool = False) -> dict:
    """The figures of one migration, keyed as in result.json. Post-copy has its
    own model (cluster/predict_postcopy.py), which asks for this one's stop-and-copy
    (`precopy_only`) when pre-copy converges before the switch."""
    if mp.technique == "postcopy" and not precopy_only:
        from cluster.predict_postcopy import predict_postcopy
        return predict_postcopy(scenario, mp)
    if mp.technique in ("split", "swap") and not precopy_only:  # cluster/predict_split.py
        from cluster import predict_split
        base = predict_migration(scenario, mp, precopy_only=True)
        return getattr(predict_split, f"predict_{mp.technique}")(scenario, mp, base)
    vm, mig = mp.vm, mp.options
    costs = resolve(scenario.cpu.profile, mig.address_space_lock, scenario.cpu.overrides())
    z = vm.content.zero
    wire_rate, switch_rate = migration_rates(scenario, mp)
    # The first pass meets the image's zero pages; every page sent after it
    # was written by the guest, so it holds data (agents/guest/content.py).
    first = _pass_rates(scenario, mp, z, wire_rate)
    interval = (vm.memory_gib * GIB / PAGE) / first[1]
    dirty = _pass_rates(scenario, mp, 0.0, wire_rate, dirty=True, interval_s=interval)
    # The first pass over dirty pages fills the XBZRLE cache (cluster/predict_codec.py).
    cold = _pass_rates(scenario, mp, 0.0, wire_rate, dirty=True, interval_s=interval, cached=False)
    bytes_per_page, pages_per_s = first
    mem_pages = vm.memory_gib * GIB / PAGE
    sync_s = costs.dirty_sync_ns * 1e-9 * mem_pages  # each fetch of the dirty log
    policy = StopPolicy(mig.downtime_limit_ms / 1000, mig.max_iterations, mig.stall_iterations,
                        mig.max_sent_ratio * vm.memory_gib * GIB)
    one_way = _links(scenario, mp)[0].rtt_ms / 2000
    todo, sent, elapsed, count, reason, log = _iterate(mp, policy, mem_pages, first, (cold, dirty), sync_s)
    if mig.strategy != "time-sliced":
        bytes_per_page, pages_per_s = dirty if count > 1 else cold
    # The stop-and-copy at its own rate (the link's, unless the cap still applies).
    switch_pps = min(switch_rate / bytes_per_page, cpu_pages_per_s(scenario, 0.0, mp))
    elapsed += mig.setup_ms / 1000
    state = mig.device_state_kib * 1024
    downtime_bytes = todo * bytes_per_page + state
    downtime = sync_s + todo / switch_pps + state / switch_rate + one_way + mig.resume_ms / 1000
    sent += todo * bytes_per_page
    total = elapsed + downtime
    by_pass = _pages_by_pass(scenario, mp, mem_pages, sent, wire_rate, log)
    pages = _pages_by_encoding(by_pass)
    zero_pages, sent_pages = pages["zero"], sum(pages.values())
    source_us = costs.source_us(mig.consumers)
    codec_src = sum(n * enc.source_us for n, enc in by_pass)
    codec_dst = sum(n * enc.destination_us for n, enc in by_pass)
    cpu_s = (sent_pages * source_us - zero_pages * costs.send_us + codec_src) * 1e-6 + sync_s * (count + 1)  # the source's, as PMigrate counts
    return with_throughput({
        "vm": vm.name,
        "migration": mp.index,
        "status": "predicted",
        "stop_reason": reason,
        "verified": None,
        "memory_bytes": vm.memory_gib * GIB,
        "total_time_s": total,
        "downtime_ms": downtime * 1000,
        "setup_time_s": mig.setup_ms / 1000,
        "iterations": count,
        "memory_bytes_sent": sent,
        "disk_bytes_sent": 0,
        "downtime_bytes_sent": downtime_bytes,
        "pages": {k: int(round(v)) for k, v in pages.items()},
        "cpu_seconds": cpu_s,
        "cpu_usage_percent": 100 * cpu_s / total,
        "cpu_seconds_destination": (sent_pages * costs.destination_us() - zero_pages * costs.receive_us
                                    + codec_dst) * 1e-6,
        "app": None,
        "iteration_log": log,
        "convergence": convergence_summary(mig, log),
    } | _compression_prediction(mig, by_pass, total) | {"not_modelled": predict_codec.limits(scenario, mp)}
        | _disk_prediction(scenario, mp, total))


def _disk_prediction(scenario: Scenario, mp: MigrationPlan, memory_s: float) -> dict:
    """The storage technique's disk copy before the memory phase (cluster/predict_storage.py)."""
    if mp.technique not in ("storage", "block-dirty"):
        return {}
    from cluster.predict_storage import predict_disk
    disk = predict_disk(scenario, mp, memory_s)
    if disk is None:
        return {}
    return {"disk": disk, "disk_bytes_sent": disk["bytes_sent"], "total_time_s": memory_s + disk["copy_time_s"]}


def _iterate(mp: MigrationPlan, policy: StopPolicy, mem_pages: float, first, later, sync_s: float):
    """The pre-copy iterations of the migration's strategy: (left for stop-and-copy,
    sent, elapsed, iterations, reason, log). `later`: the rates of the first pass over
    dirty pages and of the passes after it."""
    cold, dirty = later
    vm, mig = mp.vm, mp.options
    if mig.strategy == "time-sliced":
        # An I/O-bound guest gets only part of the I/O thread: it runs (and
        # dirties) that much slower; writes are a Poisson process, so slower
        # writing for t is the same as writing for a shorter time.
        slow = 1.0 - mig.io_thread_taken if vm.io_bound else 1.0
        return _time_sliced(vm, mig, policy, mem_pages, first[1], first[0], sync_s, slow)
    throttled = throttled_iterations(mig)  # convergence control: cluster/predict_convergence.py
    if throttled:
        return throttled(vm, policy, mem_pages, first, dirty, sync_s)
    return _image_oriented(vm, policy, mem_pages, first, dirty, sync_s, mig.stop_rule, cold)


def _pass_rates(scenario: Scenario, mp: MigrationPlan, zero: float, wire_rate: float, dirty: bool = False,
                interval_s: float = 1.0, cached: bool = True) -> tuple[float, float]:
    """(wire bytes per page, pages per second) of a pass over pages of which `zero` are zero pages,
    encoded as the migration's compression says (cluster/predict_codec.py)."""
    enc = predict_codec.encoding(mp.vm, mp.options, zero, dirty, interval_s, cached)
    cpu = cpu_pages_per_s(scenario, zero, mp, (enc.source_us, enc.destination_us))
    return enc.bytes_per_page, min(wire_rate / enc.bytes_per_page, cpu)


def _pages_by_pass(scenario, mp, mem_pages: float, sent: float, wire_rate: float, log: list = ()) -> list:
    """[(pages, PassEncoding)]: the first pass over the image, the first over dirty pages (which
    fills the XBZRLE cache: `log`'s second iteration), then the other dirty pages
    (time-sliced: the model keeps the image's encoding throughout)."""
    z = mp.vm.content.zero
    first = predict_codec.encoding(mp.vm, mp.options, z, False)
    if mp.options.strategy == "time-sliced":
        return [(sent / first.bytes_per_page, first)]
    _, first_rate = _pass_rates(scenario, mp, z, wire_rate)
    dirty = predict_codec.encoding(mp.vm, mp.options, 0.0, True, mem_pages / first_rate)
    cold = predict_codec.encoding(mp.vm, mp.options, 0.0, True, mem_pages / first_rate, cached=False)
    rest = max(0.0, sent - mem_pages * first.bytes_per_page)
    cold_pages = min(rest / cold.bytes_per_page, log[1]["pages"] if len(log) > 1 else rest / cold.bytes_per_page)
    rest -= cold_pages * cold.bytes_per_page
    return [(mem_pages, first), (cold_pages, cold), (rest / dirty.bytes_per_page, dirty)]


def _pages_by_encoding(by_pass: list) -> dict:
    return {k: sum(n * enc.shares[k] for n, enc in by_pass) for k in ("normal", "zero", "compressed", "delta")}


def _compression_prediction(mig, by_pass: list, total_s: float) -> dict:
    """result.json's `compression` figures, as the model sees them (none without compression)."""
    if mig.compression == "none":
        return {}
    pages = sum(n * (1 - enc.shares["zero"]) for n, enc in by_pass)
    wire = sum(n * (enc.bytes_per_page - enc.shares["zero"] * (PAGE_HEADER_BYTES + ZERO_MARKER_BYTES)
                    - (1 - enc.shares["zero"]) * PAGE_HEADER_BYTES) for n, enc in by_pass)
    return {"compression": {
        "method": mig.compression,
        "memory_compress_rate": wire / (pages * PAGE) if pages else 1.0,
        "compress_cpu_seconds": sum(n * enc.source_us for n, enc in by_pass) * 1e-6,
        "decompress_cpu_seconds": sum(n * enc.destination_us for n, enc in by_pass) * 1e-6,
        "cpu_model": cost_model.load().provenance(mig.zstd_level if mig.compression.endswith("zstd") else None)}}


def _image_oriented(vm, policy, mem_pages, first, dirty, sync_s, rule="pass", cold=None):
    """Passes over the dirty image, the first at rates `first`, the second at `cold`
    (default `dirty`: it meets an empty XBZRLE cache), the others at `dirty`
    ((bytes per page, pages/s) each): (left for stop-and-copy, sent, elapsed,
    iterations, reason, log). `rule` "qemu" cuts a pass short."""
    todo, sent, elapsed = mem_pages, 0.0, 0.0
    history: list[float] = []
    log: list[dict] = []
    reason = ""
    bytes_per_page, pages_per_s = first
    bandwidth = 0.0
    ws = _write_probabilities(vm)[2]
    while True:
        remaining = todo * PAGE  # dirty bytes, as the emulator's stop rule counts them
        if log:
            reason = stop_reason(policy, len(log), remaining, bandwidth, history, sent) or ""
            if reason:
                return todo, sent, elapsed, len(log), reason, log
        history.append(remaining)
        bandwidth = pages_per_s * bytes_per_page  # what this pass will measure
        pages = _qemu_pass(todo, pages_per_s, bandwidth * policy.downtime_limit_s / PAGE) if rule == "qemu" else todo
        dt = pages / pages_per_s
        sent += pages * bytes_per_page
        elapsed += dt + sync_s
        log.append({"iteration": len(log) + 1, "pages": int(round(pages)), "bytes": pages * bytes_per_page,
                    "duration_s": dt, "throughput_mbytes_s": bandwidth / MIB})
        rest = todo - pages
        # The pages dirtied meanwhile, less those among the rest of the pass (a uniform share).
        todo = min(mem_pages, rest + dirty_pages_after(vm, dt + sync_s) * (1 - rest / ws if ws else 1))
        bytes_per_page, pages_per_s = (cold or dirty) if len(log) == 1 else dirty


def _qemu_pass(todo: float, pages_per_s: float, threshold_pages: float) -> float:
    """Pages QEMU's rule sends of a pass of `todo`: whole windows until the rest
    is below the threshold, at least one window."""
    window = max(1.0, pages_per_s * WINDOW_S)
    windows = max(1, math.ceil((todo - threshold_pages) / window))
    return min(todo, windows * window)


def _time_sliced(vm, mig, policy, mem_pages, pages_per_s, bytes_per_page, sync_s, slow=1.0):
    """Vanilla KVM: each iteration fetches the dirty log, then puts one slice
    of `slice_mib` on the wire.

    Pages dirtied during a slice join the pending set; the distinct-page
    formula is applied to each slice's time over the pages not yet pending.
    """
    slice_pages = mig.slice_mib * MIB / bytes_per_page
    pending, sent, elapsed, count = mem_pages, 0.0, 0.0, 0
    no_stall = StopPolicy(policy.downtime_limit_s, policy.max_iterations, 1 << 30, policy.max_sent_bytes)
    while True:
        chosen = min(slice_pages, pending)
        dt = sync_s + chosen / pages_per_s
        pending -= chosen
        sent += chosen * bytes_per_page
        elapsed += dt
        count += 1
        # Newly dirtied pages among those not pending (approximation: a uniform share).
        fresh = dirty_pages_after(vm, dt * slow) * (1 - pending / mem_pages)
        pending = min(mem_pages, pending + fresh)
        bandwidth = chosen * bytes_per_page / dt
        reason = stop_reason(no_stall, count, pending * PAGE, bandwidth, [], sent)
        if reason:
            return pending, sent, elapsed, count, reason, []


def predict(scenario: Scenario, path: str = "") -> dict:
    per_vm = [predict_migration(scenario, mp) for mp in scenario.migration_plans()]
    out: dict = {"scenario": scenario.name, "scenario_file": path, "status": "predicted", "model": "analytic pre-copy (Clark et al. / Akoush et al.)"}
    if len(per_vm) == 1:
        out |= {k: v for k, v in per_vm[0].items() if k != "status"}
    else:
        for k in ("total_time_s", "memory_bytes_sent", "downtime_bytes_sent", "cpu_seconds", "iterations", "setup_time_s"):
            out[k] = sum(v[k] for v in per_vm)
        out["downtime_ms"] = max(v["downtime_ms"] for v in per_vm)
        out["network_bytes_sent"] = sum(network_bytes(v) for v in per_vm)
        out |= with_throughput(out)
    out["not_modelled"] = sorted({line for v in per_vm for line in v.get("not_modelled", [])})
    out["vms"] = per_vm
    return out

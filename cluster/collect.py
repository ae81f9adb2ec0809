"""Collecting results: the figures of a run, computed from its timeline.

Times, downtime and its checkpoints, iterations and bytes come from the
timeline's records (cluster/timeline.py): a migration's figures are its
events and the sum of its interval samples, so result.json, the timeline
and the metrics cannot disagree. CPU comes from the hosts' emulated cores,
counted per migration; the application's figures from its guest's samples.
The keys follow DESIGN.md and mirror the columns of the papers' tables
(PMigrate Tables 3-8) and QEMU's query-migrate. All figures are emulated
(physical) units: seconds, bytes, MiB/s ("MByte/s" in the papers is 2^20
bytes per second: their 16.2 GByte in 422.8 s is 39.3 MByte/s only so).

No figure beats physics: every run checks its physical floors (downtime,
each iteration and the total at least bytes / bandwidth plus latency, within
the shaper's tolerance) and records any violation under
`emulation.fidelity.physical_floors` instead of passing the figure off as
possible.
"""
from __future__ import annotations

import bisect

import numpy as np

from agents.datapath.wire_format import PAGE_HEADER_BYTES, ZERO_MARKER_BYTES
from cluster import split_run
from cluster.convergence_figures import convergence_figures
from cluster.postcopy_figures import postcopy_figures
from cluster.results import with_throughput
from cluster.scaling import Scale
from cluster.scenario import GIB, MIB, Scenario
from cluster.timeline import Timeline

PAGE = 4096
ENCODINGS = ("normal", "zero", "compressed", "delta")
# The shaper's stated precision (DESIGN.md, measured): rates within 0.05%, latency
# p99 under 0.13 ms. A figure below its floor by more than this is a violation.
FLOOR_REL = 0.005
FLOOR_ABS_REAL_S = 0.0002
# The application's "before" is its throughput over the last 80% of the warm-up (the guest's
# first ticks are still starting up).
BEFORE_SHARE = 0.8
CHECKPOINTS = ("vm-stopped", "last-page-sent", "device-state-sent", "destination-loaded", "vm-started")


def counters_of(polled: dict, memory_scale: float) -> dict:
    """A migration's cumulative counters (HostAgent.poll, real units) in emulated units:
    bytes of memory on the wire by encoding, and pages by encoding, counted as the sender
    posts them; `delivered_bytes`: memory bytes the receiver has acknowledged (what the link
    carried: the timeline's transfer rate, which the sender's ring, larger in emulated bytes
    than a socket buffer, would otherwise run ahead of)."""
    ms = memory_scale
    memory = (polled.get("wire_bytes", 0) - polled.get("state_bytes", 0)) / ms
    delivered = (polled.get("delivered_bytes", 0) - polled.get("delivered_state_bytes", 0)) / ms
    normal = polled.get("pages_normal", 0) * (PAGE + PAGE_HEADER_BYTES) / ms
    zero = polled.get("pages_zero", 0) * (PAGE_HEADER_BYTES + ZERO_MARKER_BYTES) / ms
    out = {"transferred_bytes": memory, "delivered_bytes": delivered, "normal_bytes": normal, "zero_bytes": zero,
           "encoded_bytes": memory - normal - zero}
    out |= {f"pages_{e}": polled.get(f"pages_{e}", 0) / ms for e in ENCODINGS}
    return out


# --- the application -----------------------------------------------------------
def _ops_at(samples: list, t: float) -> float | None:
    """Cumulative operations at real time t: the latest tick at or before t
    (a guest blocked in a fault ticks not at all, so none is missed)."""
    i = bisect.bisect_right(samples, t, key=lambda s: s[0])
    return samples[i - 1][1] if i else None


def _rate(samples: list, t1: float, t2: float, dilation: float) -> float | None:
    """Operations per emulated second between real times t1 and t2 (None: no tick before t1, or t2 <= t1)."""
    a, b = _ops_at(samples, t1), _ops_at(samples, t2)
    if a is None or b is None or t2 <= t1:
        return None
    return (b - a) / ((t2 - t1) / dilation)


def _non_response_s(samples: list, t1: float, t2: float, dilation: float, frozen: tuple[float, float]) -> float:
    """Emulated seconds, between t1 and t2, in which the guest made no progress.

    `frozen` is the real interval spent verifying at switchover: emulated
    time stands still then, so it does not count.
    """
    stalled = 0.0
    prev = None
    f0, f1 = frozen
    for t, ops in samples:
        if prev is not None and t1 <= t <= t2 and ops <= prev[1]:
            overlap = max(0.0, min(t, f1) - max(prev[0], f0))
            stalled += (t - prev[0]) - overlap
        prev = (t, ops)
    return stalled / dilation


def app_figures(samples: list, t_mig: float, paused: float | None, resumed: float | None, dilation: float,
                warmup_s: float, guest_resumed_at: float | None, released: float | None = None) -> dict:
    """Guest throughput before, during and after; real times in, emulated rates out.
    `guest_resumed_at` is when it really ran again (after verification).
    `released`: post-copy's end (the source released); "during" then also
    spans post-copy, where the guest runs on the destination and waits for
    its faults, but not the switch-over's pause."""
    end = resumed or guest_resumed_at or t_mig
    paused = paused or end
    frozen = (end, guest_resumed_at) if resumed and guest_resumed_at else (0.0, 0.0)
    before = _rate(samples, t_mig - warmup_s * dilation * BEFORE_SHARE, t_mig, dilation)
    during = _rate(samples, t_mig, paused, dilation)
    if released is not None and resumed is not None and released > resumed:
        ops = (_ops_at(samples, paused) or 0) - (_ops_at(samples, t_mig) or 0) + \
              (_ops_at(samples, released) or 0) - (_ops_at(samples, resumed) or 0)
        during = ops / ((paused - t_mig + released - resumed) / dilation)
    after = _rate(samples, max(guest_resumed_at, released or 0), samples[-1][0], dilation) \
        if samples and guest_resumed_at else None
    deg = max(0.0, 1 - during / before) if before and during is not None else None
    return {
        "ops_per_s_before": before,
        "ops_per_s_during": during,
        "ops_per_s_after": after,
        "degradation": deg,
        "non_response_s": _non_response_s(samples, t_mig, samples[-1][0] if samples else t_mig, dilation, frozen),
    }


def colocated_figures(samples: list, t_first: float, t_last: float, dilation: float, warmup_s: float) -> dict:
    """A co-located VM's throughput before and during the others' migrations."""
    before = _rate(samples, t_first - warmup_s * dilation * BEFORE_SHARE, t_first, dilation)
    during = _rate(samples, t_first, t_last, dilation)
    return {"ops_per_s_before": before, "ops_per_s_during": during,
            "during_over_before": during / before if before and during is not None else None}


# --- one migration ---------------------------------------------------------------
def _links(sl, m, total_s: float) -> list[dict]:
    """Per link: bandwidth, this migration's bytes on it, background traffic during it (emulated units)."""
    scale, out = sl.scale, []
    mine = {c.index for c in sl.topo.connections_of_migration(m.index)}
    for lp in sl.topo.links_of_migration(m.index):
        b, a = m.links_before.get(lp.index, {}), m.links_after.get(lp.index, {})
        if "by_connection" in a:
            moved = sum(v - b.get("by_connection", {}).get(c, 0) for c, v in a["by_connection"].items() if c in mine)
        else:
            moved = a.get("bytes", 0) - b.get("bytes", 0)
        entry = {"name": lp.name, "bandwidth_mbytes_s": lp.emulated_bandwidth_bytes_s / MIB,
                 "bytes_shaped": moved / scale.memory_scale, "connections": len(mine & {c.index for c in
                                                                                         sl.topo.connections_of(lp.index)})}
        entry["migration_mbytes_s"] = entry["bytes_shaped"] / total_s / MIB if total_s > 0 else 0.0
        if lp.background_bytes_s > 0 and a:
            seen_s = a["background_seen"][0] - b["background_seen"][0]
            moved_bg = a["background_seen"][1] - b["background_seen"][1]
            per_s = scale.memory_scale / scale.dilation  # real bytes/s -> emulated
            entry["background_mbytes_s_before"] = min(lp.background_bytes_s, lp.rate_bytes_s) / per_s / MIB
            entry["background_mbytes_s_during"] = (moved_bg / seen_s) / per_s / MIB if seen_s else None
        out.append(entry)
    return out


def compression_figures(options, scale: Scale, polled: dict, receiver: dict, pages: dict, total_s: float) -> dict:
    """Compression of memory (emulated units): PMigrate Table 10's compress
    rate and compress time, and QEMU's xbzrle-cache statistics.

    The CPU figures are what was charged: the codec cost model's, calibrated
    on a machine named in `cpu_model`. The real CPU time the codecs took
    here, which only tells whether the run kept up, is reported beside them."""
    ms = scale.memory_scale
    raw = polled.get("raw_bytes", 0)
    decode_s = receiver.get("decode_s", 0.0)
    out = {
        "method": options.compression,
        # Wire bytes of the pages with contents, after encoding, over their raw size.
        "memory_compress_rate": polled.get("payload_bytes", 0) / raw if raw else 1.0,
        "raw_bytes": raw / ms,
        "compressed_bytes": polled.get("payload_bytes", 0) / ms,
        # Charged CPU of compression (source) and decompression (destination), by the
        # cost model; a real page stands for 1/memory_scale emulated pages.
        "compress_cpu_seconds": polled.get("encode_model_us", 0.0) * 1e-6 / ms,
        "decompress_cpu_seconds": receiver.get("decode_model_us", 0.0) * 1e-6 / ms,
        # The same work as this machine's codecs really took (scaled alike): not charged.
        "compress_cpu_seconds_measured_here": polled.get("encode_s", 0.0) / ms,
        "decompress_cpu_seconds_measured_here": decode_s / ms,
        "unchanged_pages": polled.get("pages_unchanged", 0) / ms,
        # Guest memory moved per second, whatever its encoding on the wire.
        "effective_throughput_mbytes_s": sum(pages.values()) * PAGE / total_s / MIB if total_s > 0 else 0.0,
    }
    if options.compression.endswith("zstd"):
        out["zstd_level"] = options.zstd_level
    if options.compression != "none":
        from agents.encodings import cost_model
        out["cpu_model"] = cost_model.load().provenance(options.zstd_level if options.compression.endswith("zstd") else None)
    x = polled.get("xbzrle")
    if x:
        out["xbzrle"] = {
            "cache_size": x["cache_size"] / ms,
            "bytes": x["bytes"] / ms,
            "pages": int(round(x["pages"] / ms)),
            "cache_miss": int(round(x["cache_miss"] / ms)),
            "cache_miss_rate": x["cache_miss_rate"],
            "encoding_rate": x["encoding_rate"],
            "overflow": int(round(x["overflow"] / ms)),
            # The whole migration's ratios (QEMU's two rates above are the last period's).
            "cache_miss_ratio_overall": x.get("cache_miss_ratio_overall", 0.0),
            "encoding_ratio_overall": x.get("encoding_ratio_overall", 0.0),
        }
    return out


def _times(events: list[dict], m) -> dict:
    """Start, end, set-up, downtime and its checkpoints (emulated seconds), from the migration's events."""
    at = {}
    for ev in events:
        at.setdefault(ev["event"], ev["t"])
    start = at.get("migration-start")  # None: it never started (cancelled before, or its VM was elsewhere)
    # A migration ends when its source can be released: at the switch-over for
    # pre-copy, once the last page has landed for post-copy.
    done = at.get("source-released", at.get("vm-started"))
    end = done if m.status == "completed" else at.get(m.status, at.get("stays-on-source", start))
    first_pass = next((ev["t"] for ev in events if ev["event"] == "phase" and ev.get("phase") == "precopy"), None)
    out = {"started_at_s": start, "finished_at_s": end if start is not None else None,
           "total_time_s": max(0.0, end - start) if start is not None and end is not None else 0.0,
           "setup_time_s": (first_pass - at["setup"]) if first_pass is not None and "setup" in at else 0.0,
           "downtime_s": 0.0, "downtime_breakdown_ms": {}}
    if m.status == "completed" and "vm-stopped" in at:
        steps = [c for c in CHECKPOINTS if c in at]
        # A checkpoint is recorded once its step returns; the destination's ack of the
        # state may come first. Each step ends no earlier than the one before it.
        ends = {}
        for c in steps:
            ends[c] = max([at[c], *ends.values()])
        spans = {f"{a} -> {b}": (ends[b] - ends[a]) for a, b in zip(steps, steps[1:])}
        # Ray calls made while the VM was stopped: each out of the step it ended in.
        hops = [ev for ev in events if ev["event"] == "control-plane-hop" and at["vm-stopped"] <= ev["t"] <= at["vm-started"]]
        for ev in hops:
            key = next((f"{a} -> {b}" for a, b in zip(steps, steps[1:]) if ev["t"] <= ends[b]), None)
            if key is not None:
                spans[key] = max(0.0, spans[key] - ev["excluded_s"])
        excluded = sum(ev["excluded_s"] for ev in hops)
        out["downtime_s"] = max(0.0, at["vm-started"] - at["vm-stopped"] - excluded)
        out["downtime_breakdown_ms"] = {k: v * 1000 for k, v in spans.items()}
        if hops:
            out["downtime_breakdown_ms"]["control-plane hops (excluded)"] = excluded * 1000
    return out


def _cpu(sl, m, total_s: float) -> dict:
    """CPU-seconds of this migration on each side, and its saturation (see combine)."""
    src, dst = m.plan.source.name, m.plan.destinations[0].name
    ua, da = m.usage_after.get(src, {}), m.usage_after.get(dst, {})

    def of(usage: dict, key: str, stages: tuple) -> float:
        return sum(usage.get(key, {}).get((m.index, s), 0.0) for s in stages)

    send, recv = ("send", "sync"), ("receive",)
    waited = m.final.get("lock", {}).get("wait_seconds", 0.0)
    lag_src = max(0.0, of(ua, "held_by", send) - of(ua, "charged_by", send) - waited)
    lag_dst = max(0.0, of(da, "held_by", recv) - of(da, "charged_by", recv))
    n_conns = len(sl.topo.connections_of_migration(m.index))
    widths = (min(m.plan.options.consumers, m.plan.source.cores), min(n_conns, m.plan.destinations[0].cores))
    real_total = total_s * sl.scale.dilation
    saturation = max((lag / (real_total * w) if real_total > 0 else 0.0) for lag, w in zip((lag_src, lag_dst), widths))
    # Passes that ended later than their batches' emulated stamps say (agents/datapath/pipeline.py drift_s);
    # the stop-and-copy's hand-over (handover_late_s) is made up by its stamps and stretches nothing.
    drift = m.final.get("drift_s", 0.0)
    saturation = max(saturation, drift / real_total if real_total > 0 else 0.0)
    # The disk copy's threads, against their devices' and path's schedule (agents/datapath/mirror.py).
    saturation = max(saturation, (m.report.get("disk") or {}).get("saturation", 0.0))
    return {"cpu_seconds": of(ua, "charged_by", send) / sl.scale.dilation,
            "cpu_seconds_destination": of(da, "charged_by", recv) / sl.scale.dilation,
            "saturation": saturation}


def lateness(final: dict) -> dict:
    """This machine's lateness against the emulated schedule, in real seconds (result.json `vms[].pipeline`):
    `drift_real_s`, what passes (pre-copy's, post-copy's push) ended after their batches' stamps, which
    stretched the migration and counts in its saturation; `handover_late_real_s`, the most the
    stop-and-copy (its last pages, the drains before the device state and the resume) came back after
    its stamps, made up by them (the state and the resume are posted at the stamps): not saturation."""
    return {"drift_real_s": final.get("drift_s", 0.0), "handover_late_real_s": final.get("handover_late_s", 0.0)}


def link_floor_rates(sl, tl: Timeline, m) -> tuple[float, float, float, float]:
    """(bytes/s while iterating, bytes/s at stop-and-copy, one-way s, bytes its rings
    hold): the fastest the migration's links ever allowed it (emulated), for its
    physical floors. An iteration that ends without draining (the qemu stop rule)
    may leave up to its rings' bytes in flight."""
    o, dil = m.plan.options, sl.scale.dilation
    capacity, one_way = 0.0, float("inf")
    for lp in sl.topo.links_of_migration(m.index):
        seen = [r["capacity_bytes_s"] for r in tl.records if r["kind"] == "link" and r.get("link") == lp.name]
        capacity += max([lp.emulated_bandwidth_bytes_s, *seen])
        one_way = min(one_way, lp.one_way_s / dil)
    for ev in sl.scenario.events:  # a scheduled change may have shortened the latency
        if getattr(ev, "rtt_ms", None) is not None:
            one_way = min(one_way, ev.rtt_ms / 2000)
    capped = min(capacity, o.bandwidth_cap_gbps * 1e9 / 8) if o.bandwidth_cap_gbps else capacity
    rings = sum(c.slots * c.batch_pages * PAGE for c in sl.topo.connections_of_migration(m.index))
    in_flight = rings / sl.scale.memory_scale if o.stop_rule == "qemu" else 0.0
    return capped, capped if o.switchover_bandwidth == "capped" else capacity, one_way, in_flight


def physical_floors(res: dict, rates: tuple, resume_s: float, dilation: float) -> dict:
    """The floors of one migration's figures (result.json `vms[]` entry `res`) and
    the figures that fall below them by more than the shaper's tolerance.
    `rates`: (iterating, switch-over bytes/s, one-way s[, bytes an iteration may leave in flight])."""
    iterate, switch, one_way, in_flight = (*rates, 0.0)[:4]
    slack = lambda floor: floor * FLOOR_REL + FLOOR_ABS_REAL_S / dilation
    out = {"iteration_bytes_s": iterate, "switchover_bytes_s": switch, "one_way_s": one_way,
           "iteration_in_flight_bytes": in_flight, "violations": []}

    def check(figure: str, value: float, floor: float, scale: float = 1.0) -> None:
        if value < (floor - slack(floor)):
            out["violations"].append({"figure": figure, "value": value * scale, "floor": floor * scale})

    for it in res["iteration_log"]:
        check(f"iteration {it['iteration']} duration_s", it["duration_s"], max(0.0, it["bytes"] - in_flight) / iterate)
    downtime = 0.0
    if res["status"] == "completed":
        downtime = res["downtime_bytes_sent"] / switch + one_way + resume_s
        out["downtime_ms"] = downtime * 1000
        check("downtime_ms", res["downtime_ms"] / 1000, downtime, 1000)
    iterating = max(0.0, res["memory_bytes_sent"] - res["downtime_bytes_sent"])
    total = res["setup_time_s"] + iterating / iterate + downtime
    out["total_time_s"] = total
    check("total_time_s", res["total_time_s"], total)
    return out


def _app(m, times: dict, at: dict, samples: list, real, dilation: float, warmup_s: float) -> dict:
    """The application's figures around one migration (none if it never started)."""
    if times["started_at_s"] is None:
        return {}
    app = app_figures(samples, real(times["started_at_s"]), real(at.get("vm-stopped")), real(at.get("vm-started")),
                      dilation, warmup_s, m.guest_resumed_at, real(at.get("source-released")))
    limit = getattr(m.plan.vm.workload, "max_downtime_ms", None)
    if limit is not None:
        # An application that breaks on a long pause (the ERP of Svärd et al.):
        # it does not respond after a downtime beyond its limit.
        app |= {"max_downtime_ms": limit,
                "survived": m.status == "completed" and times["downtime_s"] * 1000 <= limit}
    return app


def policy_decisions(events: list[dict]) -> list[dict]:
    """The management policy's decisions (agents/techniques/policy.py), in timeline order."""
    return [{"t_s": ev["t"], "decision": ev["decision"], "reason": ev.get("reason", ""),
             "elapsed_s": ev.get("elapsed_s"), "downtime_limit_ms": ev.get("downtime_limit_ms")}
            for ev in events if ev["event"] == "policy"]


def fault_figures(m, events: list[dict], memory_scale: float) -> dict:
    """What faults did to this migration's data path (cluster/faults.py): damaged batches
    caught by their checksum and sent again, batches lost with a broken connection,
    post-copy pauses and recoveries, and whether the VM was lost."""
    f = m.final
    out = {"batches_corrupted": f.get("batches_corrupted", 0), "batches_resent": f.get("batches_resent", 0),
           "batches_dropped": f.get("batches_dropped", 0),
           "checksum_failures_at_receiver": m.receiver.get("batches_corrupted", 0),
           "postcopy_paused": sum(1 for e in events if e["event"] == "postcopy-paused"),
           "postcopy_recovered": sum(1 for e in events if e["event"] == "postcopy-recovered"),
           "vm_lost": m.vm_lost}
    if m.vm_lost:
        out["lost"] = m.lost or m.report.get("postcopy", {}).get("lost", {})
    return out


def disk_app_samples(samples: list, done, memory_scale: float) -> list:
    """A closed-loop disk workload's application samples: at each of the guest's sample
    times, the disk requests it completed so far (emulated: each real one is 1/memory_scale)."""
    times = [t for t, _ in samples]
    counts = np.searchsorted(np.sort(np.asarray(done, dtype=float)), times, side="right") / memory_scale
    return [(t, float(c)) for t, c in zip(times, counts)]


def _disk_io(done, at: dict, real, memory_scale: float) -> dict:
    """The guest's disk requests (emulated) that completed between vm-stopped and vm-started, and after."""
    t1, t2 = real(at.get("vm-stopped")), real(at.get("vm-started"))
    if t1 is None or t2 is None:
        return {}
    done = np.asarray(done, dtype=float)
    return {"disk_ios_in_downtime": float(np.count_nonzero((done > t1) & (done < t2))) / memory_scale,
            "disk_ios_after_downtime": float(np.count_nonzero(done >= t2)) / memory_scale}


def _phases(samples: list, times: dict, at: dict, real, dilation: float, warmup_s: float,
            resumed: float | None) -> dict:
    """The application's throughput in each phase of a unified migration (the seed's Figures 4
    and 5): before, disk copy, memory copy, switch-over (from vm-stopped to one emulated second
    after the guest really resumed) and after (the rest of the run)."""
    t0, copied = real(times["started_at_s"]), real(at.get("disk-copy-done"))
    stop = real(at.get("vm-stopped"))
    end = samples[-1][0] if samples else t0
    back = (resumed + dilation) if resumed else None
    spans = {"before": (t0 - warmup_s * dilation * BEFORE_SHARE, t0), "disk_copy": (t0, copied or t0),
             "memory_copy": (copied or t0, stop or end), "switch_over": (stop, back), "after": (back, end)}
    return {k: (_rate(samples, a, b, dilation) if a is not None and b is not None else None)
            for k, (a, b) in spans.items()}


def migration_result(sl, tl: Timeline, m, samples: list, warmup_s: float, until: float | None = None,
                     disk_done=None) -> dict:
    """One migration's figures (result.json's `vms[]` entry). `until`: real time at
    which the VM's next migration started; its application figures stop there.
    `disk_done`: real completion times of the VM's disk requests (None: no disk workload);
    a closed-loop disk workload (clients > 0) is the application: its figures are disk I/Os."""
    scale, o = sl.scale, m.plan.options
    events = [r for r in tl.records if r["kind"] == "event" and r.get("migration") == m.index]
    intervals = [r for r in tl.records if r["kind"] == "migration" and r.get("migration") == m.index]
    times = _times(events, m)
    total = times["total_time_s"]
    sent = sum(r["transferred_bytes"] for r in intervals)
    pages = {e: sum(r[f"pages_{e}"] for r in intervals) for e in ENCODINGS}
    iterations = [r for r in events if r["event"] == "iteration"]
    downtime_bytes = sum(r.get("bytes", 0.0) for r in events if r["event"] in ("last-page-sent", "device-state-sent"))
    real = lambda t: None if t is None else tl.t0 + t * scale.dilation  # noqa: E731
    at = {ev["event"]: ev["t"] for ev in events}
    closed_loop = disk_done is not None and m.plan.vm.disk_workload.figures()["clients"] > 0
    vcpus = samples
    if closed_loop:
        samples = disk_app_samples(samples, disk_done, scale.memory_scale)
    app = _app(m, times, at, [s for s in samples if until is None or s[0] <= until], real, scale.dilation, warmup_s)
    if closed_loop and app:  # a stall is the vCPUs' (a disk request's completions are too sparse to tell one)
        app["non_response_s"] = _app(m, times, at, vcpus, real, scale.dilation, warmup_s)["non_response_s"]
    if disk_done is not None:
        app |= _disk_io(disk_done, at, real, scale.memory_scale)
    if closed_loop and app:
        app |= {"unit": "disk I/Os", "ops_per_s_by_phase": _phases(samples, times, at, real, scale.dilation,
                                                                    warmup_s, m.guest_resumed_at)}
    cpu = _cpu(sl, m, total)
    out = {
        "vm": m.vm, "migration": m.index, "technique": m.plan.technique,
        "source": m.plan.source.name, "destination": m.plan.destinations[0].name,
        "status": m.status, "stop_reason": m.reason, "verified": m.verified, "mismatched_pages": m.mismatched[:20],
        "memory_bytes": m.plan.vm.memory_gib * GIB,
        "started_at_s": times["started_at_s"], "finished_at_s": times["finished_at_s"],
        "total_time_s": total, "downtime_ms": times["downtime_s"] * 1000,
        "downtime_breakdown_ms": times["downtime_breakdown_ms"], "setup_time_s": times["setup_time_s"],
        "iterations": len(iterations), "dirty_sync_count": m.report.get("dirty_sync_count", 0),
        "memory_bytes_sent": sent, "disk_bytes_sent": m.report.get("disk", {}).get("bytes_sent", 0.0), "downtime_bytes_sent": downtime_bytes,
        "pages": {k: int(round(v)) for k, v in pages.items()},
        "cpu_seconds": cpu["cpu_seconds"],
        "cpu_usage_percent": 100 * cpu["cpu_seconds"] / total if total > 0 else 0.0,
        "cpu_seconds_destination": cpu["cpu_seconds_destination"],
        "app": app | {"dirty_tracking_faults": m.guest_faults},
        "compression": compression_figures(o, scale, m.final, m.receiver, pages, total),
        "convergence": convergence_figures(o, events, tl.of("guest", vm=m.vm),
                                           lambda t1, t2: _rate(samples, real(t1), real(t2), scale.dilation),
                                           times["started_at_s"], warmup_s),
        "iteration_log": [{"iteration": r["iteration"], "pages": r["pages"], "bytes": r["bytes"],
                           "duration_s": r["duration_s"],
                           "throughput_mbytes_s": r["bytes"] / r["duration_s"] / MIB if r["duration_s"] else 0.0}
                          for r in iterations if m.plan.options.strategy != "time-sliced"],
        "links": _links(sl, m, total),
        **({"postcopy": pc} if (pc := postcopy_figures(m.report, m.remote_faults, scale.memory_scale)) else {}),
        **({"split": split_run.figures(m, samples, scale.dilation)} if "split" in m.report else {}),
        **({"swap": split_run.figures(m, samples, scale.dilation)} if m.plan.technique == "swap" else {}),
        **({"policy": pol} if (pol := policy_decisions(events)) else {}),
        "data_path_faults": fault_figures(m, events, scale.memory_scale),
        **({"disk": m.report["disk"]} if m.report.get("disk") else {}),
        "pipeline": {"consumers": o.consumers, "address_space_lock": o.address_space_lock,
                     "cpu_profile": sl.scenario.cpu.profile, "strategy": o.strategy,
                     "memory_pool_high_water_bytes": m.final.get("pool_high_water_bytes", 0) / scale.memory_scale,
                     "lock": m.final.get("lock", {}), **lateness(m.final)},
        # Share of the migration's emulated cores (source or destination, the
        # worse) spent on this machine's overhead, which no modelled cost
        # accounts for and which stretches emulated time. Raise the dilation
        # when it is high.
        "saturation": cpu["saturation"],
    }
    out = with_throughput(out)  # memory and a disk that crossed the network
    out["physical_floors"] = physical_floors(out, link_floor_rates(sl, tl, m), o.resume_ms / 1000, scale.dilation)
    return out


# --- the run ------------------------------------------------------------------------
_SUMMED = ("total_time_s", "memory_bytes_sent", "disk_bytes_sent", "network_bytes_sent", "downtime_bytes_sent",
           "cpu_seconds", "iterations")


def evacuations(per_vm: list[dict], final_hosts: dict[str, str]) -> dict:
    """Hosts that several VMs left and none ran on at the end (`final_hosts`:
    VM -> where it ran when the run ended): how long until the last ran
    elsewhere, what it cost, and the sum of the migrations' own times."""
    out = {}
    for host in sorted({v["source"] for v in per_vm}):
        left = [v for v in per_vm if v["source"] == host and v["status"] == "completed"]
        if len(left) < 2 or host in final_hosts.values():
            continue
        out[host] = {"vms": [v["vm"] for v in left],
                     "evacuation_time_s": max(v["finished_at_s"] for v in left) - min(v["started_at_s"] for v in left),
                     "memory_bytes_sent": sum(v["memory_bytes_sent"] for v in left),
                     "sum_of_migration_times_s": sum(v["total_time_s"] for v in left)}
    return out


def _status(per_vm: list[dict]) -> str:
    if not per_vm:
        return "aborted"
    if all(v["status"] == "completed" for v in per_vm):
        return "completed"
    if any(v["status"] == "failed" for v in per_vm):
        return "failed"
    return "cancelled" if any(v["status"] == "cancelled" for v in per_vm) else "aborted"


def combine(scenario: Scenario, path: str, per_vm: list[dict], scale: Scale, wall: dict,
            final_hosts: dict[str, str] | None = None) -> dict:
    """The run's result: top-level keys describe the whole run (for one migration, that migration)."""
    out: dict = {"scenario": scenario.name, "scenario_file": path, "status": _status(per_vm),
                 "verified": bool(per_vm) and all(v["verified"] for v in per_vm)}
    if len(per_vm) == 1:
        out |= {k: v for k, v in per_vm[0].items() if k not in ("status", "verified")}
    elif per_vm:
        for k in _SUMMED:
            out[k] = sum(v[k] for v in per_vm)
        ran = [v for v in per_vm if v["started_at_s"] is not None] or per_vm
        out["total_time_s"] = (max(v["finished_at_s"] or 0.0 for v in ran)
                               - min(v["started_at_s"] or 0.0 for v in ran))
        out["downtime_ms"] = max(v["downtime_ms"] for v in per_vm)
        out["setup_time_s"] = max(v["setup_time_s"] for v in per_vm)
        out["pages"] = {k: sum(v["pages"][k] for v in per_vm) for k in per_vm[0]["pages"]}
        out |= with_throughput(out)
        out["cpu_usage_percent"] = 100 * out["cpu_seconds"] / out["total_time_s"] if out["total_time_s"] else 0.0
        names = [v["vm"] for v in per_vm]
        out["app"] = {(v["vm"] if names.count(v["vm"]) == 1 else f"{v['vm']} -> {v['destination']}"): v["app"]
                      for v in per_vm}
    out["vms"] = per_vm
    # Where each VM runs when the run ends: a host's name, or "(lost)" for a VM that runs nowhere
    # (a post-copy cut off, a split VM whose memory server or paging link is gone).
    out["final_hosts"] = dict(final_hosts or {})
    out["evacuations"] = evacuations(per_vm, final_hosts or {})
    out["reference"] = scenario.reference.model_dump()
    saturation = max((v["saturation"] for v in per_vm), default=0.0)
    violations = [{"vm": v["vm"], "migration": v["migration"], **x} for v in per_vm
                  for x in v.get("physical_floors", {}).get("violations", [])]
    out["emulation"] = {
        "memory_scale": scale.memory_scale,
        "dilation": scale.dilation,
        # The run's clock (timeline, started_at_s, a fault's run_at_s) starts with the guests; the
        # scenario's (start_s, an event's at_s) warmup_s later.
        "warmup_s": scenario.emulation.warmup_s,
        "after_s": scenario.emulation.after_s,
        "fidelity": {
            "saturation": saturation,
            "faithful": saturation < 0.05 and not violations,
            "physical_floors": {
                "held": not violations, "violations": violations,
                "tolerance": {"relative": FLOOR_REL, "absolute_real_s": FLOOR_ABS_REAL_S},
                "note": "downtime >= its bytes / the switch-over rate + one-way latency + resume; each iteration >= "
                        "its bytes / the iteration rate; total >= set-up + the bytes sent while iterating / the "
                        "iteration rate + the downtime floor (rates: the links' fastest capacity, capped where "
                        "the cap applies)",
            },
            "note": "saturation: share of the emulated cores' busy time not accounted for by the CPU model (this machine's overhead); above 0.05, raise dilation",
        },
        "wall_clock_s": wall,
    }
    return out

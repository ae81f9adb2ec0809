"""The analytic pre-copy model: what the emulator should find, instantly.

The geometric series of Clark et al. as refined by Akoush et al.: iteration
i sends what was dirtied during iteration i-1, at the effective bandwidth.
Dirtying is counted in distinct pages (a page written twice is sent once):
for writes at rate r spread over a working set with page probabilities p_j,
the pages dirty after t seconds are sum_j 1 - exp(-r p_j t), which for a
uniform working set of W pages is W (1 - exp(-r t / W)). The stop rule is
the emulator's own (`agents.precopy.stop_reason`), so the two can be
compared figure by figure. No Ray, no threads.
"""
from __future__ import annotations

import math

import numpy as np

from agents.precopy import StopPolicy, stop_reason
from agents.wire_format import PAGE_HEADER_BYTES, ZERO_MARKER_BYTES
from cluster.results import MIB
from cluster.scaling import gbps_to_bytes_s
from cluster.scenario import GIB, Scenario, Vm

PAGE = 4096


def _write_probabilities(vm: Vm) -> tuple[float, np.ndarray | None, int]:
    """(page writes per second, page probabilities or None for uniform, working-set pages)."""
    wl = vm.workload
    mem_pages = int(vm.memory_gib * GIB / PAGE)
    ws_gib = getattr(wl, "working_set_gib", None)
    ws = mem_pages if ws_gib is None else max(1, int(ws_gib * GIB / PAGE))
    if wl.kind == "idle":
        return 0.0, None, ws
    if wl.kind == "uniform":
        return wl.dirty_pages_per_s, None, ws
    if wl.kind == "hotset":
        ranks = np.arange(1, ws + 1, dtype=float)
        p = ranks ** -wl.zipf_s
        return wl.ops_per_s * wl.write_fraction, p / p.sum(), ws
    if wl.kind == "sweeper":
        return wl.write_mbytes_s * 1e6 / PAGE, None, max(1, int(wl.sweep_gib * GIB / PAGE))
    raise ValueError(wl.kind)


def dirty_pages_after(vm: Vm, t: float) -> float:
    rate, probs, ws = _write_probabilities(vm)
    if rate == 0 or t <= 0:
        return 0.0
    if vm.workload.kind == "sweeper":
        return min(rate * t, ws)  # sequential: every write is a new page until the sweep ends
    if probs is None:
        return ws * -math.expm1(-rate * t / ws)
    return float(np.sum(-np.expm1(-rate * probs * t)))


def effective_bandwidth(scenario: Scenario) -> tuple[float, float]:
    """(bytes/s on the wire, pages/s the CPUs allow) for the migration."""
    link = scenario.migration_links()[0]
    gbps = scenario.link_bandwidth_gbps(link)
    if scenario.migration.bandwidth_cap_gbps is not None:
        gbps = min(gbps, scenario.migration.bandwidth_cap_gbps)
    rate = gbps_to_bytes_s(gbps)
    rate -= min(link.background.mbytes_s * MIB, rate * 0.95)
    cpu = scenario.cpu
    per_page_ns = max(cpu.send_ns_per_page, cpu.receive_ns_per_page)
    cpu_pages_s = 1e9 / per_page_ns if per_page_ns > 0 else float("inf")
    return rate, cpu_pages_s


def predict_vm(scenario: Scenario, vm: Vm) -> dict:
    mig = scenario.migration
    z = vm.content.zero
    bytes_per_page = (1 - z) * (PAGE + PAGE_HEADER_BYTES) + z * (PAGE_HEADER_BYTES + ZERO_MARKER_BYTES)
    wire_rate, cpu_pages_s = effective_bandwidth(scenario)
    pages_per_s = min(wire_rate / bytes_per_page, cpu_pages_s)
    bandwidth = pages_per_s * bytes_per_page  # bytes/s actually achieved on the wire
    mem_pages = vm.memory_gib * GIB / PAGE
    policy = StopPolicy(mig.downtime_limit_ms / 1000, mig.max_iterations, mig.stall_iterations,
                        mig.max_sent_ratio * vm.memory_gib * GIB)
    one_way = scenario.migration_links()[0].rtt_ms / 2000

    todo = mem_pages
    history: list[float] = []
    sent = 0.0
    elapsed = mig.setup_ms / 1000
    log = []
    reason = ""
    while True:
        remaining = todo * bytes_per_page
        if log:
            reason = stop_reason(policy, len(log), remaining, bandwidth, history, sent) or ""
            if reason:
                break
        history.append(remaining)
        dt = todo / pages_per_s
        sent += remaining
        elapsed += dt
        log.append({"iteration": len(log) + 1, "pages": int(round(todo)), "bytes": remaining, "duration_s": dt,
                    "throughput_mbytes_s": bandwidth / MIB})
        todo = dirty_pages_after(vm, dt)
    state = mig.device_state_kib * 1024
    downtime_bytes = todo * bytes_per_page + state
    downtime = todo / pages_per_s + state / wire_rate + one_way
    sent += todo * bytes_per_page
    total = elapsed + downtime
    cpu = scenario.cpu
    sent_pages = sent / bytes_per_page
    cpu_s = sent_pages * (cpu.send_ns_per_page + cpu.receive_ns_per_page) * 1e-9
    return {
        "vm": vm.name,
        "status": "predicted",
        "stop_reason": reason,
        "verified": None,
        "memory_bytes": vm.memory_gib * GIB,
        "total_time_s": total,
        "downtime_ms": downtime * 1000,
        "setup_time_s": mig.setup_ms / 1000,
        "iterations": len(log),
        "memory_bytes_sent": sent,
        "disk_bytes_sent": 0,
        "downtime_bytes_sent": downtime_bytes,
        "pages": {"normal": int(round(sent_pages * (1 - z))), "zero": int(round(sent_pages * z)), "compressed": 0, "delta": 0},
        "avg_throughput_mbytes_s": sent / total / MIB,
        "cpu_seconds": cpu_s,
        "cpu_usage_percent": 100 * cpu_s / total,
        "app": None,
        "iteration_log": log,
    }


def predict(scenario: Scenario, path: str = "") -> dict:
    per_vm = [predict_vm(scenario, vm) for vm in scenario.vms]
    out: dict = {"scenario": scenario.name, "scenario_file": path, "status": "predicted", "model": "analytic pre-copy (Clark et al. / Akoush et al.)"}
    if len(per_vm) == 1:
        out |= {k: v for k, v in per_vm[0].items() if k != "status"}
    else:
        for k in ("total_time_s", "memory_bytes_sent", "downtime_bytes_sent", "cpu_seconds", "iterations", "setup_time_s"):
            out[k] = sum(v[k] for v in per_vm)
        out["downtime_ms"] = max(v["downtime_ms"] for v in per_vm)
        out["avg_throughput_mbytes_s"] = out["memory_bytes_sent"] / out["total_time_s"] / MIB
    out["vms"] = per_vm
    return out

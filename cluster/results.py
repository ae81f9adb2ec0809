"""Results: the figures of a run, as result.json and as a table for people.

The keys follow DESIGN.md and mirror the columns of the papers' tables
(PMigrate Tables 3-8) and QEMU's query-migrate. All figures are emulated
(physical) units: seconds, bytes, MiB/s ("MByte/s" in the papers is 2^20
bytes per second: their 16.2 GByte in 422.8 s is 39.3 MByte/s only so).
"""
from __future__ import annotations

import json
from pathlib import Path

from cluster.scaling import Scale
from cluster.scenario import GIB, MIB, Scenario, Vm

PAGE = 4096


def _rate(samples: list, t1: float, t2: float, dilation: float) -> float | None:
    """Operations per emulated second between real times t1 and t2."""
    pts = [(t, o) for t, o in samples if t1 <= t <= t2]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return None
    return (pts[-1][1] - pts[0][1]) / ((pts[-1][0] - pts[0][0]) / dilation)


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


def app_figures(samples: list, t_mig: float, mig: dict, dilation: float, warmup_s: float,
                guest_resumed_at: float | None) -> dict:
    """Guest throughput before, during and after; `guest_resumed_at` is when it really ran again."""
    end = mig.get("resumed_at") or guest_resumed_at or t_mig
    paused = mig.get("paused_at") or end
    frozen = (end, guest_resumed_at) if mig.get("resumed_at") else (0.0, 0.0)
    before = _rate(samples, t_mig - warmup_s * dilation * 0.8, t_mig, dilation)
    during = _rate(samples, t_mig, paused, dilation)
    after = _rate(samples, guest_resumed_at, samples[-1][0], dilation) if samples and guest_resumed_at else None
    deg = None
    if before and during is not None:
        deg = max(0.0, 1 - during / before)
    return {
        "ops_per_s_before": before,
        "ops_per_s_during": during,
        "ops_per_s_after": after,
        "degradation": deg,
        "non_response_s": _non_response_s(samples, t_mig, samples[-1][0] if samples else t_mig, dilation, frozen),
    }


def _links(topo, before: list[dict], after: list[dict], scale: Scale, total_s: float) -> list[dict]:
    """Per link: bandwidth, bytes shaped and background traffic during the migration (emulated units)."""
    out = []
    for lp, b, a in zip(topo.links, before, after):
        seen_s = a["background_seen"][0] - b["background_seen"][0]
        moved = a["background_seen"][1] - b["background_seen"][1]
        entry = {"name": lp.name, "bandwidth_mbytes_s": lp.emulated_bandwidth_bytes_s / MIB,
                 "bytes_shaped": (a["bytes"] - b["bytes"]) / scale.memory_scale,
                 "connections": len(topo.connections_of(lp.index))}
        entry["migration_mbytes_s"] = entry["bytes_shaped"] / total_s / MIB if total_s > 0 else 0.0
        if lp.background_bytes_s > 0:
            per_s = scale.memory_scale / scale.dilation  # real bytes/s -> emulated
            entry["background_mbytes_s_before"] = min(lp.background_bytes_s, lp.rate_bytes_s) / per_s / MIB
            entry["background_mbytes_s_during"] = (moved / seen_s) / per_s / MIB if seen_s else None
        out.append(entry)
    return out


def compression_figures(scenario: Scenario, scale: Scale, sender: dict, before: dict, decode_s: float,
                        pages: dict, total_s: float) -> dict:
    """Compression of memory (emulated units): PMigrate Table 10's compress
    rate and compress time, and QEMU's xbzrle-cache statistics."""
    ms = scale.memory_scale
    mig = scenario.migration

    def delta(key: str) -> float:
        return sender.get(key, 0) - before.get(key, 0)

    raw = delta("raw_bytes")
    out = {
        "method": mig.compression,
        # Wire bytes of the pages with contents, after encoding, over their raw size.
        "memory_compress_rate": delta("payload_bytes") / raw if raw else 1.0,
        "raw_bytes": raw / ms,
        "compressed_bytes": delta("payload_bytes") / ms,
        # Measured CPU time of compression (source) and decompression
        # (destination); a real page stands for 1/memory_scale emulated pages.
        "compress_cpu_seconds": delta("encode_s") / ms,
        "decompress_cpu_seconds": decode_s / ms,
        "unchanged_pages": delta("pages_unchanged") / ms,
        # Guest memory moved per second, whatever its encoding on the wire.
        "effective_throughput_mbytes_s": sum(pages.values()) * PAGE / total_s / MIB if total_s > 0 else 0.0,
    }
    if mig.compression.endswith("zstd"):
        out["zstd_level"] = mig.zstd_level
    x = sender.get("xbzrle")
    if x:
        out["xbzrle"] = {
            "cache_size": x["cache_size"] / ms,
            "bytes": x["bytes"] / ms,
            "pages": int(round(x["pages"] / ms)),
            "cache_miss": int(round(x["cache_miss"] / ms)),
            "cache_miss_rate": x["cache_miss_rate"],
            "encoding_rate": x["encoding_rate"],
            "overflow": int(round(x["overflow"] / ms)),
        }
    return out


def colocated_figures(samples: list, t_first: float, t_last: float, dilation: float, warmup_s: float) -> dict:
    """A co-located VM's throughput before and during the others' migration."""
    before = _rate(samples, t_first - warmup_s * dilation * 0.8, t_first, dilation)
    during = _rate(samples, t_first, t_last, dilation)
    return {"ops_per_s_before": before, "ops_per_s_during": during,
            "during_over_before": during / before if before and during is not None else None}


def vm_result(scenario: Scenario, vm: Vm, scale: Scale, topo, mig: dict, verified: bool, bad: list,
              samples: list, t_mig: float, cpu_src_s: float, cpu_dst_s: float, lag: tuple[tuple[float, float], ...],
              widths: tuple[int, int],
              sender: dict, sender_before: dict, links_before: list[dict], links_after: list[dict],
              guest_faults: float, warmup_s: float, guest_resumed_at: float | None, decode_s: float = 0.0) -> dict:
    ms = scale.memory_scale
    total = mig["total_time_s"]
    sent = mig["memory_bytes_sent"]
    # The migration process on the source, as PMigrate's tables count it.
    cpu_s = cpu_src_s / scale.dilation
    pages = {
        "normal": (sender.get("pages_normal", 0) - sender_before.get("pages_normal", 0)) / ms,
        "zero": (sender.get("pages_zero", 0) - sender_before.get("pages_zero", 0)) / ms,
        "compressed": (sender.get("pages_compressed", 0) - sender_before.get("pages_compressed", 0)) / ms,
        "delta": (sender.get("pages_delta", 0) - sender_before.get("pages_delta", 0)) / ms,
    }
    app = app_figures(samples, t_mig, mig, scale.dilation, warmup_s, guest_resumed_at)
    limit = getattr(vm.workload, "max_downtime_ms", None)
    if limit is not None:
        # An application that breaks on a long pause (the ERP of Svärd et al.):
        # it does not respond after a downtime beyond its limit.
        app |= {"max_downtime_ms": limit,
                "survived": mig["status"] == "completed" and mig["downtime_s"] * 1000 <= limit}
    return {
        "vm": vm.name,
        "status": mig["status"],
        "stop_reason": mig["stop_reason"],
        "verified": verified,
        "mismatched_pages": bad[:20],
        "memory_bytes": vm.memory_gib * GIB,
        "total_time_s": total,
        "downtime_ms": mig["downtime_s"] * 1000,
        "setup_time_s": mig["setup_time_s"],
        "iterations": mig["iteration_count"],
        "memory_bytes_sent": sent,
        "disk_bytes_sent": 0,
        "downtime_bytes_sent": mig["downtime_bytes"],
        "pages": {k: int(round(v)) for k, v in pages.items()},
        "avg_throughput_mbytes_s": sent / total / MIB if total > 0 else 0.0,
        "cpu_seconds": cpu_s,
        "cpu_usage_percent": 100 * cpu_s / total if total > 0 else 0.0,
        "cpu_seconds_destination": cpu_dst_s / scale.dilation,
        "app": app | {"dirty_tracking_faults": guest_faults},
        "compression": compression_figures(scenario, scale, sender, sender_before, decode_s, pages, total),
        "iteration_log": [
            {"iteration": it["number"], "pages": it["dirty_pages"], "bytes": it["wire_bytes"],
             "duration_s": it["duration_s"], "throughput_mbytes_s": it["bandwidth_bytes_s"] / MIB}
            for it in mig["iterations"]
        ],
        "links": _links(topo, links_before, links_after, scale, total),
        "pipeline": {
            "consumers": scenario.migration.consumers,
            "address_space_lock": scenario.migration.address_space_lock,
            "cpu_profile": scenario.cpu.profile,
            "strategy": scenario.migration.strategy,
            "memory_pool_high_water_bytes": sender.get("pool_high_water_bytes", 0) / ms,
            "lock": sender.get("lock", {}),
        },
        # Share of the migration's emulated cores (source or destination, the
        # worse) spent on this machine's overhead, which no modelled cost
        # accounts for and which stretches emulated time. Raise the dilation
        # when it is high.
        "saturation": max(late / (total * scale.dilation * width) if total > 0 else 0.0
                          for (late, _held), width in zip(lag, widths)),
    }


_SUMMED = ("total_time_s", "memory_bytes_sent", "disk_bytes_sent", "downtime_bytes_sent", "cpu_seconds", "iterations")


def combine(scenario: Scenario, path: str, per_vm: list[dict], scale: Scale, wall: dict) -> dict:
    """The run's result: top-level keys describe the whole run (for one VM, that VM)."""
    if not per_vm:
        status = "aborted"
    elif all(v["status"] == "completed" for v in per_vm):
        status = "completed"
    elif any(v["status"] == "failed" for v in per_vm):
        status = "failed"
    else:
        status = "aborted"
    out: dict = {"scenario": scenario.name, "scenario_file": path, "status": status,
                 "verified": bool(per_vm) and all(v["verified"] for v in per_vm)}
    if len(per_vm) == 1:
        out |= {k: v for k, v in per_vm[0].items() if k not in ("status", "verified")}
    elif per_vm:
        for k in _SUMMED:
            out[k] = sum(v[k] for v in per_vm)
        out["downtime_ms"] = max(v["downtime_ms"] for v in per_vm)
        out["setup_time_s"] = sum(v["setup_time_s"] for v in per_vm)
        out["pages"] = {k: sum(v["pages"][k] for v in per_vm) for k in per_vm[0]["pages"]}
        out["avg_throughput_mbytes_s"] = out["memory_bytes_sent"] / out["total_time_s"] / MIB if out["total_time_s"] else 0.0
        out["cpu_usage_percent"] = 100 * out["cpu_seconds"] / out["total_time_s"] if out["total_time_s"] else 0.0
        out["app"] = {v["vm"]: v["app"] for v in per_vm}
    out["vms"] = per_vm
    out["reference"] = scenario.reference.model_dump()
    saturation = max((v["saturation"] for v in per_vm), default=0.0)
    out["emulation"] = {
        "memory_scale": scale.memory_scale,
        "dilation": scale.dilation,
        "fidelity": {
            "saturation": saturation,
            "faithful": saturation < 0.05,
            "note": "saturation: share of the emulated cores' busy time not accounted for by the CPU model (this machine's overhead); above 0.05, raise dilation",
        },
        "wall_clock_s": wall,
    }
    return out


def write_result(result: dict, out_dir: str | Path) -> Path:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    p = d / "result.json"
    p.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return p


def _fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    if b >= GIB:
        return f"{b / GIB:.2f} GByte"
    if b >= MIB:
        return f"{b / MIB:.1f} MByte"
    return f"{b / 1024:.1f} KByte"


def _fmt(v, fmt: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{unit}"


def summary_rows(r: dict) -> list[tuple[str, str]]:
    """The rows of PMigrate's tables, for one VM's (or a prediction's) figures."""
    app = r.get("app") or {}
    deg = app.get("degradation")
    return [
        ("Status", f"{r.get('status', '-')}" + ("" if r.get("verified") is None else (" (verified)" if r.get("verified") else " (NOT verified)"))),
        ("Migration time", _fmt(r.get("total_time_s"), ".2f", " s")),
        ("Downtime", _fmt(r.get("downtime_ms"), ".1f", " ms")),
        ("# of pre-copy iterations", _fmt(r.get("iterations"), "d")),
        ("Stop reason", r.get("stop_reason") or "-"),
        ("Total memory sent", _fmt_bytes(r.get("memory_bytes_sent"))),
        ("Downtime send", _fmt_bytes(r.get("downtime_bytes_sent"))),
        ("Avg. network throughput", _fmt(r.get("avg_throughput_mbytes_s"), ".1f", " MByte/s")),
        ("Avg. CPU usage", _fmt(r.get("cpu_usage_percent"), ".1f", " %")),
        ("Total CPU cost", _fmt(r.get("cpu_seconds"), ".2f", " CPU-s")),
        ("App throughput before", _fmt(app.get("ops_per_s_before"), ",.0f", " ops/s")),
        ("App throughput during", _fmt(app.get("ops_per_s_during"), ",.0f", " ops/s")),
        ("App throughput after", _fmt(app.get("ops_per_s_after"), ",.0f", " ops/s")),
        ("App degradation", _fmt(None if deg is None else deg * 100, ".1f", " %")),
        ("App non-response", _fmt(app.get("non_response_s"), ".3f", " s")),
    ]

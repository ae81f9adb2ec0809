"""The `postcopy` section of a migration's result: what post-copy cost the guest.

From the technique's report (agents/techniques/postcopy.py: pages pushed and
pulled, the switch's reason, when the source could be released) and the
guest's fault handler on the destination (agents/guest/remote_memory.py:
faults, their latency in QEMU 10.1's power-of-two microsecond buckets,
blocktime). Names follow QEMU's query-migrate where one fits
(postcopy-requests, postcopy-blocktime, postcopy-latency,
postcopy-latency-dist). Emulated units; counts of pages per emulated page.
"""
from __future__ import annotations

from agents.techniques.postcopy import NEITHER_SIDE_WHOLE


def postcopy_figures(report: dict, faults: dict, memory_scale: float) -> dict | None:
    """None when the migration never switched to post-copy."""
    pc = report.get("postcopy") or {}
    if not pc:
        return None
    out = {"switched": True, **pc}
    out |= {
        "faults": faults.get("faults", 0.0),
        "faults_measured": faults.get("faults_measured", 0),
        "postcopy_requests": faults.get("page_requests", 0.0),
        "pages_requested_twice": faults.get("requested_twice", 0),
        "blocktime_ms": faults.get("blocktime_s", 0.0) * 1000,
        "postcopy_latency_us": faults.get("mean_us"),
        "latency_p50_us": faults.get("p50_us"),
        "latency_p99_us": faults.get("p99_us"),
        "latency_max_us": faults.get("max_us"),
        "postcopy_latency_dist": faults.get("postcopy_latency_dist", []),
        "latency_buckets": faults.get("bucket_us", ""),
        "neither_side_whole": f"For {pc.get('postcopy_time_s', 0.0):.3f} s after the switch-over, {NEITHER_SIDE_WHOLE}.",
        "note": ("faults and requests are per emulated page (measured / memory_scale); the latency histogram "
                 "counts the measured faults. The emulated vCPUs share one thread, so each fault blocks the "
                 f"whole guest; at memory_scale {memory_scale:g} the guest meets memory_scale times as many "
                 "faults as at full scale, so blocktime at full scale is about faults x postcopy_latency_us."),
    }
    return out

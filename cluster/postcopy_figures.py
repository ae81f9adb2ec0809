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
        "pages_written_on_destination": faults.get("pages_written", 0.0),
        "blocktime_ms": faults.get("blocktime_s", 0.0) * 1000,
        "postcopy_latency_us": faults.get("mean_us"),
        "latency_p50_us": faults.get("p50_us"),
        "latency_p99_us": faults.get("p99_us"),
        "latency_max_us": faults.get("max_us"),
        "postcopy_latency_dist": faults.get("postcopy_latency_dist", []),
        "latency_buckets": faults.get("bucket_us", ""),
        "neither_side_whole": f"For {pc.get('postcopy_time_s', 0.0):.3f} s after the switch-over, {NEITHER_SIDE_WHOLE}.",
        "note": ("each measured fault stands for up to 1/memory_scale emulated faults, taken in a row: the guest "
                 "stays blocked for them unless every page it may write arrived first (agents/guest/remote_memory.py); "
                 "faults and the latency histogram count those emulated faults, faults_measured the real ones. "
                 "The emulated vCPUs share one thread, so a fault blocks the whole guest."),
    }
    return out

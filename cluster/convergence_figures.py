"""result.json's `convergence` section: what convergence control did to one migration.

Computed from the migration's timeline events (agents/techniques/convergence.py
`Governor`: throttle-start, throttle, dirty-limit, throttle-stop) and its
guest's samples: which method, when it kicked in (`kicked_in_at_s`: emulated
seconds on the run's clock, from the guests' start, as `started_at_s` and every
other `*_at_s` of result.json; `kicked_in_after_s`: since this migration
started, what `livemig predict` gives; and at which dirty-log sync), every
throttle step (`at_s` on the run's clock, `after_s` since the start), the
highest throttle, and what it cost the application (its throughput while
throttled against before the migration). For dirty-limit, the vCPUs' dirty
rates the guest measured while the limit held.
"""
from __future__ import annotations


def convergence_figures(options, events: list[dict], guest_records: list[dict], rate, started_at_s: float,
                        warmup_s: float) -> dict | None:
    """`rate(t1, t2)`: the guest's operations per emulated second between two
    timeline times (None if unknown); `guest_records`: its timeline samples;
    `warmup_s`: the emulated seconds the guest ran before (the last 80% of them
    measure its throughput before, as result.json's app figures do)."""
    from agents.techniques.convergence import policy_from_options
    policy = policy_from_options(options)
    if policy is None:
        return None
    out: dict = {"method": policy.name, "kicked_in": False, "kicked_in_at_s": None, "kicked_in_after_s": None,
                 "kicked_in_sync": None, "throttle_steps": [], "max_throttle_pct": 0.0}
    at = {ev["event"]: ev for ev in reversed(events)}  # the first of each kind
    start = at.get("throttle-start")
    if start is None:
        return out
    stop_t = at.get("vm-stopped", at.get("throttle-stop", events[-1]))["t"]
    steps = [ev for ev in events if ev["event"] == "throttle"]
    out |= {"kicked_in": True, "kicked_in_at_s": start["t"], "kicked_in_after_s": start["t"] - started_at_s,
            "kicked_in_sync": start.get("dirty_sync_count"), "throttled_s": stop_t - start["t"],
            "throttle_steps": [{"at_s": ev["t"], "after_s": ev["t"] - started_at_s, "throttle_pct": ev["throttle_pct"]}
                               for ev in steps],
            "max_throttle_pct": max((ev["throttle_pct"] for ev in steps), default=0.0),
            "dirty_rate_at_kick_in_bytes_s": start.get("dirty_rate_bytes_s"),
            "transfer_rate_at_kick_in_bytes_s": start.get("transfer_rate_bytes_s")}
    out["app"] = _app_cost(rate, started_at_s, start["t"], stop_t, warmup_s)
    limit = at.get("dirty-limit")
    if limit is not None:
        out["vcpu_dirty_limit_mbytes_s"] = limit["vcpu_dirty_limit_mbytes_s"]
        out["vcpu_dirty_mbytes_s"] = _held_rates(guest_records, limit["t"] + 2 * limit["period_ms"] / 1000, stop_t)
    return out


def _app_cost(rate, started_at_s: float, t1: float, t2: float, warmup_s: float) -> dict:
    from cluster.collect import BEFORE_SHARE  # here: collect imports this module
    before = rate(started_at_s - BEFORE_SHARE * warmup_s, started_at_s)
    throttled = rate(t1, t2)
    return {"ops_per_s_before": before, "ops_per_s_throttled": throttled,
            "degradation_throttled": max(0.0, 1 - throttled / before) if before and throttled is not None else None,
            # Operations the throttle cost: what the guest did not do while throttled.
            "ops_lost": (before - throttled) * (t2 - t1) if before and throttled is not None else None}


def _held_rates(records: list[dict], t1: float, t2: float) -> dict | None:
    """Each vCPU's measured dirty rate once the limit settled (mean and highest over the samples)."""
    rows = [r["vcpu_dirty_mbytes_s"] for r in records if t1 <= r["t"] <= t2 and r.get("vcpu_dirty_mbytes_s")]
    if not rows:
        return None
    per_vcpu = list(zip(*rows))
    return {"mean": [sum(v) / len(v) for v in per_vcpu], "max": [max(v) for v in per_vcpu], "samples": len(rows)}

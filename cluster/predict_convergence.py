"""The analytic model of throttled pre-copy: auto-converge, dirty-limit and SDPS.

cluster/predict.py's image-oriented passes, with the guest slowed between
dirty-log syncs by the same policies the emulator runs
(agents/techniques/convergence.py). Writes are a Poisson process, so a
guest that runs a share s of a period of t seconds dirties what it would in
s*t (predict.py's `dirty_pages_after`). A CPU throttle of p percent runs
the vCPUs 1 - p/100 of the time; a dirty limit caps the guest's page writes
at vcpus x quota, which the guest's controller reaches after a few periods
(the model assumes at once). A decision taken at a sync applies from the
next pass on, as in the emulator. The stop rule is the emulator's, kept
going past a stop other than convergence while the policy can still act.
"""
from __future__ import annotations

from agents.techniques.convergence import (MIB, AutoConverge, DirtyLimit, SyncPeriod, keeps_going,
                                           policy_from_options, running_share)
from agents.techniques.precopy import stop_reason

PAGE = 4096
# A guest throttled to its floor can shrink its dirty set a little each pass forever (a zero
# downtime limit never converges, and only a stall ends pre-copy then): the model counts whole
# pages, as the dirty log does, and gives up as stalled after this many passes.
MAX_PASSES = 10_000


def throttled_iterations(mig):
    """A replacement for predict.py's `_image_oriented` when `mig` (a
    migration's options) asks for convergence control; None otherwise."""
    if mig.strategy != "image" or policy_from_options(mig) is None:
        return None

    def iterate(vm, policy, mem_pages, first, dirty, sync_s):
        return _passes(vm, policy, policy_from_options(mig), mem_pages, first, dirty, sync_s)
    return iterate


def write_bytes_s(vm) -> float:
    """The guest's page writes per second, in bytes (what a vCPU's dirty rate counts)."""
    from cluster.predict import _write_probabilities
    rate, _, _ = _write_probabilities(vm)
    return (rate + getattr(vm.workload, "hot_pages_per_s", 0.0)) * PAGE


def share_under(control, vm, limited: bool) -> float:
    """Share of its unthrottled writing a guest does under `control`."""
    if isinstance(control, DirtyLimit):
        if not limited:
            return 1.0
        writes = write_bytes_s(vm)
        return min(1.0, vm.vcpus * control.quota * MIB / writes) if writes > 0 else 1.0
    return running_share(control.throttle_pct)


def _passes(vm, policy, control, mem_pages, first, dirty, sync_s):
    """(left for stop-and-copy, sent, elapsed, iterations, reason, log) as predict._image_oriented,
    each log entry with the share of the time the guest ran during that pass."""
    from cluster.predict import dirty_pages_after
    todo, sent, elapsed = mem_pages, 0.0, 0.0
    history: list[float] = []
    log: list[dict] = []
    bytes_per_page, pages_per_s = first
    bandwidth, limited = 0.0, False
    while True:
        remaining = todo * PAGE
        if log:
            reason = stop_reason(policy, len(log), remaining, bandwidth, history, sent) or ""
            if reason and reason != "converged":
                control.on_stop(reason)  # SDPS kicks in where pre-copy would give up
            if reason and not keeps_going(control, reason):
                return todo, sent, elapsed, len(log), reason, log
            if len(log) >= MAX_PASSES:
                return todo, sent, elapsed, len(log), "stalled", log
        history.append(remaining)
        bandwidth = pages_per_s * bytes_per_page
        dt = todo / pages_per_s
        share = share_under(control, vm, limited)
        sent += todo * bytes_per_page
        elapsed += dt + sync_s
        log.append({"iteration": len(log) + 1, "pages": int(round(todo)), "bytes": todo * bytes_per_page,
                    "duration_s": dt, "throughput_mbytes_s": bandwidth / MIB, "running_share": share,
                    "throttle_pct": control.throttle_pct, "dirty_limited": limited})
        dirtied = dirty_pages_after(vm, (dt + sync_s) * share)
        decision = control.on_sync(SyncPeriod(dt + sync_s, dirtied * PAGE, todo * bytes_per_page, remaining,
                                              dirtied * PAGE))
        limited |= decision is not None and decision.dirty_limit_mbytes_s is not None
        todo = float(round(dirtied))
        bytes_per_page, pages_per_s = dirty


def convergence_summary(mig, log: list[dict]) -> dict | None:
    """The `convergence` section of a prediction: when the policy kicked in (`kicked_in_after_s`, since
    the migration's start: the model has no run clock), its steps, the guest's cost."""
    control = policy_from_options(mig)
    if control is None or not log:
        return None
    t, kicked, steps, ran = 0.0, None, [], 0.0
    for it in log:
        if kicked is None and (it["throttle_pct"] > 0 or it["dirty_limited"]):
            kicked = t
        if it["throttle_pct"] > 0 and (not steps or steps[-1] != it["throttle_pct"]):
            steps.append(it["throttle_pct"])
        t += it["duration_s"]
        ran += it["running_share"] * it["duration_s"]
    out = {"method": control.name, "kicked_in_after_s": kicked, "throttle_steps": steps,
           "max_throttle_pct": max(steps, default=0),
           # Operations lost while pre-copying, as a share of those offered (the throttle's cost).
           "app_degradation": 1 - ran / t if t > 0 else 0.0}
    if isinstance(control, DirtyLimit):
        out["vcpu_dirty_limit_mbytes_s"] = control.quota
    elif isinstance(control, AutoConverge):
        out["cpu_throttle_tailslow"] = control.tailslow
    return out

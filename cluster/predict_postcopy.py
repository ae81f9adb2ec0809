"""The analytic post-copy model: what the emulator should find for the `postcopy` technique.

Pre-copy rounds first, as cluster/predict.py models them (none for pure
post-copy), and the same switch rule as the emulator
(agents/techniques/postcopy.py `switch_reason`): a round that converges ends
in an ordinary stop-and-copy. The switch-over's downtime is the last dirty-log
sync, the device state, the link's one-way delay and the fixed resume cost:
no pages. Then every page left is sent once, at the pass rate, so post-copy
lasts (pages left) / (pages per second).

Faults, for a writer spreading its writes uniformly over W working-set pages
at r pages/s: U(t) of them are still missing, a write hits one with
probability p = U/W, and each fault blocks the guest for the fault latency L
(the request's one-way trip, the bytes ahead of the page on the source, the
page itself at line rate, the way back). The bytes ahead are the emulator's
rule (agents/techniques/postcopy.py `bytes_ahead_of_request`): none with
postcopy-preempt, else the socket buffers' backlog (10 MiB) or what is left to
push if less, at the stream's rate. The guest runs a share
u = 1/(1 + r p L) of the time, faults at F = r u p per second, and the
missing pages fall as the push (R pages/s, the working set first: it starts
at page 0, and the dirty set of a hybrid lies in it) and the faults bring
them: dU/dt = -(R + F). Integrated numerically until U = 0. Blocktime is the
time not run, (1 - u) dt. No Ray, no threads.

A fault can hit a page the push already sent that has not arrived yet. The
source does not send it twice (QEMU's ram.c clears a page's dirty bit as it
sends it; a request for a clean page sends nothing, with or without
postcopy-preempt), so the guest waits for it on the stream. In the emulator
the push's pages on their way are its ring's slots less those held for
requested pages, and the batch it has taken and waits to post, Q pages (emulated; topology's ring at the scenario's scale,
the emulated stand-in for the sockets' buffers): from the page the stream
delivers next to the one the push will have sent when the request reaches
the source, each arriving at the stream's rate. A fault lands among them with
probability q = min(1, Q / U) and then waits min(Q, U) / (2 R) on average
(uniform over the window), else L. With preempt L is the round trip, so these
faults wait longer than the others and, in the regime where the guest is
blocked most of the time, fewer of them fit (F = 1 / latency). A fault is
one draw in time, not an average: once a fresh fault's latency outlasts what
is left of the working set's push (U / R), the guest that takes one stays
blocked until the end and faults no more; the share of runs still faulting,
`free`, falls by those faults, so the end's fast faults on pages on their
way count only where no such fault came first (without preempt, L is the
sockets' 84 ms: the last 2,500 pages).

The push reaches the working set at the rate of its pages' encoding: a pure
post-copy's working set has lost the zero pages the guest wrote before the
switch (a whole-page write leaves no zero page: agents/guest/content.py), a
share 1 - exp(-r T / W) after T seconds of writing (warm-up and set-up).

Adaptive pre-paging moves the push to the first fault's page (the pivot) and
bubbles out both ways. In a pure post-copy the pages above the working set
are missing too, so half of the push goes there while the lower side is
still being filled: with the pivot uniform in the working set, the push
covers it after 1.25 W / R on average instead of W / R. A hybrid's missing
pages all lie in the working set, so nothing is spent outside it.
"""
from __future__ import annotations

import math
from typing import Callable

from agents.techniques.postcopy import SwitchPolicy, bytes_ahead_of_request, switch_reason
from agents.techniques.precopy import StopPolicy
from cluster.scenario import GIB, MigrationPlan, Scenario

PAGE = 4096


def fault_latency(scenario: Scenario, mp: MigrationPlan) -> Callable[[float], float]:
    """A fault's latency (s) as a function of the pages left to push: request and page
    each cross the link once; the page waits behind the bytes ahead of it on the source."""
    from cluster.scaling import Scale
    from cluster.topology import plan
    topo = plan(scenario, Scale(1.0, 1.0))
    conn = topo.connections_of_migration(mp.index)[0]
    link = topo.links[conn.link]
    stream = topo.stream_rate(mp.index)
    preempt = mp.options.postcopy_preempt

    def latency(left_pages: float) -> float:
        return 2 * link.one_way_s + bytes_ahead_of_request(preempt, left_pages * PAGE) / stream + PAGE / link.rate_bytes_s
    return latency


def faults_while_missing(rate: float, ws: float, missing: float, push: float,
                         latency: float | Callable[[float], float], left: float = 0.0,
                         in_flight: float = 0.0, steps: int = 4000) -> tuple[float, float, float, float]:
    """(faults, blocked seconds, seconds until the working set is all there, faults on pages on
    their way); see the module docstring. `latency`: seconds, or a function of the pages left to
    send (`left` of them at the start); `in_flight`: the push's pages sent but not yet there (Q)."""
    if missing <= 0 or ws <= 0:
        return 0.0, 0.0, 0.0, 0.0
    latency_of = latency if callable(latency) else (lambda _: latency)
    dt = missing / push / steps
    u_left, faults, on_way, blocked, t = missing, 0.0, 0.0, 0.0, 0.0
    free = 1.0  # probability no fault yet outlasts what is left of the working set's push
    while u_left > 0:
        p = u_left / ws
        q = min(1.0, in_flight / u_left)
        fresh = latency_of(left)
        lat = (1 - q) * fresh + q * min(in_flight, u_left) / (2 * push)
        run = 1.0 / (1.0 + rate * p * lat)
        f = rate * run * p * free
        faults += f * dt
        on_way += q * f * dt
        blocked += (free * (1 - run) + (1 - free)) * dt
        if fresh >= u_left / push:  # a fresh fault now ends after the push has brought the rest
            free -= (1 - q) * f * dt
        u_left -= (push + (1 - q) * f) * dt  # a fault on a page on its way brings nothing new
        left = max(0.0, left - (push + (1 - q) * f) * dt)
        t += dt
    return faults, blocked, t, on_way


def push_in_flight_pages(scenario: Scenario, mp: MigrationPlan) -> float:
    """Emulated pages of the push sent and not yet on the destination (Q in the module docstring):
    the ring's slots, less those held back for requested pages, and the batch the push has taken
    and waits to post (agents/techniques/postcopy.py `_push`), at the scenario's own scale."""
    from agents.techniques.postcopy import URGENT_SLOTS
    from cluster.scaling import scale_of
    from cluster.topology import plan
    conn = plan(scenario, scale_of(scenario)).connections_of_migration(mp.index)[0]
    return (max(0, conn.slots - URGENT_SLOTS) + 1) * conn.batch_pages / scenario.emulation.memory_scale


def working_set_zero_share(scenario: Scenario, mp: MigrationPlan, rate: float, ws: float) -> float:
    """The share of zero pages in the working set at a pure post-copy's switch (see the module docstring)."""
    content = mp.vm.content
    if content.working_set is not None:
        return 1.0 if content.working_set == "zero" else 0.0
    written_for = scenario.emulation.warmup_s + mp.options.setup_ms / 1000
    return content.zero * math.exp(-rate * written_for / ws)


def predict_postcopy(scenario: Scenario, mp: MigrationPlan) -> dict:
    """The figures of one post-copy migration, keyed as in result.json, with its `postcopy` section."""
    from cluster import predict as pre
    vm, mig = mp.vm, mp.options
    mem_pages = vm.memory_gib * GIB / PAGE
    wire_rate = pre.link_rate(scenario, mp)
    first = pre._pass_rates(scenario, mp, vm.content.zero, wire_rate)
    dirty = pre._pass_rates(scenario, mp, 0.0, wire_rate)
    costs = pre.resolve(scenario.cpu.profile, mig.address_space_lock, scenario.cpu.overrides())
    sync_s = costs.dirty_sync_ns * 1e-9 * mem_pages
    after = mig.postcopy_after_iterations
    if after == 0:
        todo, sent, elapsed, count, reason, log, rates = mem_pages, 0.0, 0.0, 0, "postcopy", [], first
        why = "pure"
    else:
        rounds = mig.max_iterations if after is None else min(after, mig.max_iterations)
        policy = StopPolicy(mig.downtime_limit_ms / 1000, rounds, mig.stall_iterations,
                            mig.max_sent_ratio * vm.memory_gib * GIB)
        todo, sent, elapsed, count, reason, log = pre._image_oriented(vm, policy, mem_pages, first, dirty, sync_s)
        rates = dirty
        why = switch_reason(SwitchPolicy(after, mig.postcopy_on_stall), reason, count, False)
        if why is None:  # converged: an ordinary stop-and-copy, as pre-copy predicts it
            out = pre.predict_migration(scenario, mp, precopy_only=True)
            return out | {"postcopy": {"switched": False, "switch_reason": None}}
    bytes_per_page, pages_per_s = rates
    one_way = pre._links(scenario, mp)[0].rtt_ms / 2000
    state = mig.device_state_kib * 1024
    downtime = (sync_s if count else 0.0) + state / wire_rate + one_way + mig.resume_ms / 1000
    post_s = todo / pages_per_s + one_way
    rate, _, ws = pre._write_probabilities(vm)
    latency = fault_latency(scenario, mp)
    missing_ws = min(ws, todo)
    bubbling = 1.25 if after == 0 and mig.adaptive_prepaging and todo > ws else 1.0
    push = pages_per_s
    if after == 0:  # the working set's own encoding (a hybrid's missing pages are dirty ones already)
        push = pre._pass_rates(scenario, mp, working_set_zero_share(scenario, mp, rate, ws), wire_rate)[1]
    faults, blocked, ws_s, on_way = faults_while_missing(rate, ws, missing_ws, push / bubbling, latency, todo,
                                                         push_in_flight_pages(scenario, mp))
    setup = mig.setup_ms / 1000
    total = setup + elapsed + downtime + post_s
    sent += todo * bytes_per_page
    return {
        "vm": vm.name, "migration": mp.index, "status": "predicted", "stop_reason": reason, "verified": None,
        "memory_bytes": vm.memory_gib * GIB, "total_time_s": total, "downtime_ms": downtime * 1000,
        "setup_time_s": setup, "iterations": count, "memory_bytes_sent": sent, "disk_bytes_sent": 0,
        "downtime_bytes_sent": state, "avg_throughput_mbytes_s": sent / total / 2**20, "app": None,
        "iteration_log": log,
        "postcopy": {"switched": True, "switch_reason": why, "precopy_iterations": count,
                     "faults": faults, "requests_for_pages_on_their_way": on_way, "blocktime_ms": blocked * 1000, "postcopy_latency_us": latency(todo) * 1e6,
                     "postcopy_preempt": mig.postcopy_preempt,
                     "pages_pulled": faults - on_way, "pages_pushed": todo - faults + on_way, "postcopy_time_s": post_s,
                     "working_set_arrived_after_s": ws_s, "source_released_after_s": total,
                     "model": "uniform writer over its working set; the push reaches the working set first"},
    }

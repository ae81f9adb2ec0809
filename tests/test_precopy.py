"""Pre-copy: the stop rule, and whole migrations in one process (no Ray).

The end-to-end tests run a real `Guest` thread dirtying a numpy image while
`PrecopyMigration` copies it into a second image through an in-process sink
paced like a link. Afterwards the destination must equal the source exactly.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from agents.datapath.clock import sleep_until
from agents.guest.content import assign_classes, fill_image, template_pools
from agents.guest.vcpus import Guest
from agents.guest.workloads import Idle, UniformWriter
from agents.techniques.base import MigrationContext, Trigger
from agents.techniques.precopy import PrecopyMigration, StopPolicy, stop_reason

PAGE = 4096
MB = 1e6

# --- the stop rule ----------------------------------------------------------------

POLICY = StopPolicy(downtime_limit_s=0.3, max_iterations=10, stall_iterations=3, max_sent_bytes=3e9)


def test_converged_when_remaining_fits_in_the_downtime_limit():
    # 30 MB at 100 MB/s: 0.3 s, exactly the limit.
    assert stop_reason(POLICY, 1, 30 * MB, 100 * MB, [1e9], 1e9) == "converged"
    assert stop_reason(POLICY, 1, 31 * MB, 100 * MB, [1e9], 1e9) is None


def test_converged_wins_over_the_other_reasons():
    assert stop_reason(POLICY, 10, 1 * MB, 100 * MB, [1e9] * 10, 5e9) == "converged"


def test_zero_bandwidth_never_converges():
    assert stop_reason(POLICY, 1, 0.0, 0.0, [1e9], 1e9) is None


def test_max_iterations():
    hist = [1000.0 - i for i in range(10)]  # still shrinking: not stalled
    assert stop_reason(POLICY, 10, 900 * MB, 100 * MB, [h * MB for h in hist], 1e9) == "max-iterations"
    assert stop_reason(POLICY, 9, 900 * MB, 100 * MB, [h * MB for h in hist[:9]], 1e9) is None


def test_max_sent():
    assert stop_reason(POLICY, 2, 900 * MB, 100 * MB, [1000 * MB, 950 * MB], 3e9) == "max-sent"
    assert stop_reason(POLICY, 2, 900 * MB, 100 * MB, [1000 * MB, 950 * MB], 2.9e9) is None


def test_stalled_when_the_remaining_set_stops_shrinking():
    # The best so far (500) is not beaten in the last 3 (including what remains now).
    hist = [1000 * MB, 500 * MB, 600 * MB, 550 * MB]
    assert stop_reason(POLICY, 4, 520 * MB, 100 * MB, hist, 1e9) == "stalled"
    # A new low in the window: not stalled.
    assert stop_reason(POLICY, 4, 490 * MB, 100 * MB, hist, 1e9) is None


def test_not_stalled_before_enough_history():
    assert stop_reason(POLICY, 2, 900 * MB, 100 * MB, [900 * MB, 900 * MB], 1e9) is None
    one = StopPolicy(0.3, 10, 1, 3e9)
    assert stop_reason(one, 1, 900 * MB, 100 * MB, [900 * MB], 1e9) == "stalled"
    assert stop_reason(one, 1, 899 * MB, 100 * MB, [900 * MB], 1e9) is None


def test_shrinking_series_goes_on():
    hist = [1000 * MB / 2 ** i for i in range(5)]
    assert stop_reason(POLICY, 5, hist[-1] / 2, 100 * MB, hist, 1e9) is None


# --- in-process end to end ----------------------------------------------------------

NPAGES = 1024  # 4 MiB
MIX = {"zero": 0.2, "text": 0.3, "structured": 0.2, "random": 0.3}


class CopySink:
    """A link in one process: copies pages straight into `dst`, paced at `bytes_s`."""

    def __init__(self, dst: np.ndarray, bytes_s: float, batch: int = 32) -> None:
        self.dst = dst
        self.rate = bytes_s
        self.batch = batch
        self.next_free = time.monotonic()
        self.pass_ended_at = 0.0  # paced in real time: a pass ends when its call returns
        self.pages_by_phase: dict[str, int] = {}
        self.state_bytes = 0
        self.calls: list[str] = []

    def _pace(self, nbytes: int) -> None:
        self.next_free = max(self.next_free, time.monotonic()) + nbytes / self.rate
        sleep_until(self.next_free)

    def send_pages(self, vm, image, idx, phase, should_stop, at=None) -> int:  # paced in real time: `at` unused
        self.calls.append(phase)
        wire = 0
        for start in range(0, len(idx), self.batch):
            if should_stop():
                break
            b = idx[start:start + self.batch]
            self.dst[b] = image[b]
            nbytes = len(b) * (PAGE + 8)
            self._pace(nbytes)
            wire += nbytes
            self.pages_by_phase[phase] = self.pages_by_phase.get(phase, 0) + len(b)
        self.pass_ended_at = time.monotonic()
        return wire

    def send_state(self, vm, state_bytes, at=None) -> None:
        self.calls.append("state")
        self.state_bytes = state_bytes
        self._pace(state_bytes)

    def drain(self) -> float:
        self.calls.append("drain")
        return time.monotonic()

    def set_rate_limit(self, rate_bytes_s) -> None:
        self.calls.append(f"limit {rate_bytes_s}")


@pytest.fixture
def guests():
    made = []

    def build(workload, seed=1):
        pools = template_pools(seed)
        classes = assign_classes(NPAGES, MIX, seed)
        pages = np.zeros((NPAGES, PAGE), dtype=np.uint8)
        fill_image(pages, classes, pools, seed)
        g = Guest(pages, workload, classes, pools, vcpus=2, dilation=1.0, fault_s=0.0, seed=seed)
        made.append(g)
        return g

    yield build
    for g in made:
        g.stop()


def uniform(rate, ws):
    return UniformWriter(NPAGES, 1.0, np.random.default_rng(3), dirty_pages_per_s=rate, working_set_pages=ws)


def migration(guest, sink, limit_s=0.005, max_it=20, stall=3, max_sent_ratio=10.0):
    policy = StopPolicy(limit_s, max_it, stall, max_sent_ratio * NPAGES * PAGE)
    ctx = MigrationContext(0, guest.pages, guest, sink, memory_scale=1.0, dilation=1.0)
    return PrecopyMigration(ctx, policy, state_bytes=2048, setup_s=0.0)


def assert_paused(guest):
    ops = guest.ops
    time.sleep(0.03)
    assert guest.ops == ops


def test_converging_migration_copies_the_image_exactly(guests):
    g = guests(uniform(rate=5000, ws=256))
    g.start()
    time.sleep(0.02)
    dst = np.zeros_like(g.pages)
    sink = CopySink(dst, bytes_s=100 * MB)
    r = migration(g, sink).run()
    assert r.status == "completed"
    assert r.stop_reason == "converged"
    assert len(r.iterations) >= 2  # the guest dirtied pages during the first pass
    assert_paused(g)
    assert np.array_equal(dst, g.pages)
    # Figures.
    assert r.iterations[0].dirty_pages == NPAGES
    assert [it.number for it in r.iterations] == list(range(1, len(r.iterations) + 1))
    wire = sum(it.wire_bytes for it in r.iterations)
    assert r.memory_bytes_sent == pytest.approx(wire + r.downtime_bytes - 2048)
    assert 0 < r.iterations[0].bandwidth_bytes_s <= 100 * MB * 1.02  # never faster than the link
    assert r.paused_at <= r.resumed_at
    assert 0 <= r.downtime_s <= r.total_time_s
    assert sink.calls[-2:] == ["state", "drain"]
    assert sink.state_bytes == 2048


def test_non_converging_migration_still_copies_the_image_exactly(guests):
    # 20,000 pages/s over the whole image against 50 MB/s (~12,000 pages/s): it cannot converge.
    g = guests(uniform(rate=20_000, ws=NPAGES))
    g.start()
    time.sleep(0.02)
    dst = np.zeros_like(g.pages)
    r = migration(g, CopySink(dst, bytes_s=50 * MB), max_it=6).run()
    assert r.status == "completed"
    assert r.stop_reason in ("max-iterations", "stalled", "max-sent")
    assert 1 <= len(r.iterations) <= 6
    assert_paused(g)
    assert np.array_equal(dst, g.pages)
    assert r.downtime_bytes > 0.2 * NPAGES * PAGE  # much was left for the stop-and-copy


def test_idle_guest_one_iteration(guests):
    g = guests(Idle(NPAGES, 1.0, np.random.default_rng(0)))
    g.start()
    dst = np.zeros_like(g.pages)
    sink = CopySink(dst, bytes_s=200 * MB)
    r = migration(g, sink).run()
    assert r.status == "completed" and r.stop_reason == "converged"
    assert len(r.iterations) == 1
    assert np.array_equal(dst, g.pages)
    assert sink.pages_by_phase.get("downtime", 0) == 0
    assert r.memory_bytes_sent == pytest.approx(NPAGES * (PAGE + 8))


def test_emulated_units_follow_memory_scale_and_dilation(guests):
    g = guests(Idle(NPAGES, 1 / 64, np.random.default_rng(0)))
    g.start()
    dst = np.zeros_like(g.pages)
    policy = StopPolicy(0.3, 20, 3, 1e15)
    ctx = MigrationContext(0, g.pages, g, CopySink(dst, bytes_s=200 * MB), memory_scale=1 / 64, dilation=2.0)
    mig = PrecopyMigration(ctx, policy, state_bytes=256 * 1024, setup_s=0.01)
    assert mig.remaining_bytes == NPAGES * PAGE * 64
    r = mig.run()
    assert r.status == "completed"
    it = r.iterations[0]
    assert it.dirty_pages == NPAGES * 64
    assert it.wire_bytes == pytest.approx(NPAGES * (PAGE + 8) * 64)
    real_s = NPAGES * (PAGE + 8) / (200 * MB)
    assert real_s / 2 * 0.98 <= it.duration_s < real_s * 5  # emulated = real / dilation
    assert 0.0099 <= r.setup_time_s < 0.1  # setup_s is emulated: 20 ms real
    assert np.array_equal(dst, g.pages)


def _run_and_abort(g, sink, after_s):
    mig = migration(g, sink)
    out = {}

    def run():
        out["result"] = mig.run()

    th = threading.Thread(target=run)
    th.start()
    time.sleep(after_s)
    t_abort = time.monotonic()
    mig.abort("aborted", "aborted by request")
    th.join(5)
    assert not th.is_alive()
    return mig, out["result"], time.monotonic() - t_abort


def test_abort_mid_run_leaves_the_guest_running(guests):
    g = guests(uniform(rate=20_000, ws=NPAGES))
    g.start()
    dst = np.zeros_like(g.pages)
    sink = CopySink(dst, bytes_s=10 * MB)  # the first pass alone takes ~0.4 s
    mig, r, took = _run_and_abort(g, sink, after_s=0.1)
    assert r.status == "aborted"
    assert r.stop_reason == "aborted by request"
    assert mig.phase == "aborted"
    assert took < 1.0
    assert sink.pages_by_phase["bulk"] < NPAGES  # the first round goes as "bulk": no XBZRLE yet
    assert "downtime" not in sink.calls and "state" not in sink.calls
    assert not g.paused
    ops = g.ops
    time.sleep(0.05)
    assert g.ops > ops + 100  # still running on the source


def test_abort_turns_dirty_logging_off(guests):
    g = guests(uniform(rate=20_000, ws=NPAGES))
    g.start()
    sink = CopySink(np.zeros_like(g.pages), bytes_s=10 * MB)
    _run_and_abort(g, sink, after_s=0.05)
    assert not g.logging


def _with_triggers(guest, sink, triggers, **kw):
    mig = migration(guest, sink, **kw)
    mig.ctx.triggers = triggers
    return mig


def test_events_carry_iterations_and_the_downtime_checkpoints_in_order(guests):
    g = guests(uniform(rate=2000, ws=256))
    g.start()
    mig = migration(g, CopySink(np.zeros_like(g.pages), bytes_s=40 * MB))
    assert mig.run().status == "completed"
    names = [e["event"] for e in mig.ctx.events]
    its = [e for e in mig.ctx.events if e["event"] == "iteration"]
    assert len(its) == mig.result.iteration_count >= 1
    assert [e["iteration"] for e in its] == list(range(1, len(its) + 1))
    # dirty-sync-count as QEMU counts it: the sync that starts logging, one per iteration, then the last one.
    assert [e["dirty_sync_count"] for e in its] == list(range(2, len(its) + 2))
    assert mig.report()["dirty_sync_count"] == len(its) + 2
    checkpoints = ["vm-stopped", "last-page-sent", "device-state-sent", "destination-loaded", "vm-started"]
    assert [n for n in names if n in checkpoints] == checkpoints
    times = [e["t_real"] for e in mig.ctx.events if e["event"] in checkpoints]
    assert times == sorted(times)
    assert times[-1] - times[0] == pytest.approx(mig.result.downtime_s, abs=1e-6)


@pytest.mark.parametrize("phase, iteration", [("setup", 0), ("precopy", 1), ("precopy", 2), ("stop-and-copy", 0)])
def test_cancel_on_entering_a_phase_leaves_the_guest_running_on_its_source(guests, phase, iteration):
    g = guests(uniform(rate=20_000, ws=NPAGES))
    g.start()
    sink = CopySink(np.zeros_like(g.pages), bytes_s=40 * MB)
    mig = _with_triggers(g, sink, [Trigger(0, phase, iteration, cancel=True)], limit_s=0.0005, max_it=4)
    r = mig.run()
    assert r.status == "cancelled", (r.status, r.stop_reason)
    assert phase in r.stop_reason
    assert "state" not in sink.calls  # the destination never got the device state
    assert not g.paused and not g.logging
    fired = [e for e in mig.ctx.events if e["event"] == "trigger"]
    assert len(fired) == 1 and fired[0]["phase"] == phase
    its = [e["iteration"] for e in mig.ctx.events if e["event"] == "iteration"]
    assert len(its) <= max(0, iteration - 1) + (4 if phase == "stop-and-copy" else 0)
    ops = g.ops
    time.sleep(0.05)
    assert g.ops > ops + 100  # the guest runs on


def test_a_trigger_without_cancel_is_recorded_and_the_migration_goes_on(guests):
    g = guests(uniform(rate=2000, ws=256))
    g.start()
    mig = _with_triggers(g, CopySink(np.zeros_like(g.pages), bytes_s=40 * MB), [Trigger(3, "precopy", 1)])
    assert mig.run().status == "completed"
    fired = [e for e in mig.ctx.events if e["event"] == "trigger"]
    assert [(e["trigger"], e["iteration"]) for e in fired] == [(3, 1)]


# --- the stop rules (issue "Fidelity" (9)) and the cap at switch-over (2) -------------

def _run_rule(guests, rule):
    g = guests(uniform(rate=500, ws=256))
    g.start()
    time.sleep(0.02)
    dst = np.zeros_like(g.pages)
    policy = StopPolicy(0.1, 30, 3, 10 * NPAGES * PAGE)
    ctx = MigrationContext(0, g.pages, g, CopySink(dst, bytes_s=2.5 * MB), memory_scale=1.0, dilation=1.0)
    r = PrecopyMigration(ctx, policy, state_bytes=2048, setup_s=0.0, stop_rule=rule).run()
    assert r.status == "completed"
    assert np.array_equal(dst, g.pages)
    return r


def test_qemus_stop_rule_syncs_mid_pass_and_both_rules_verify(guests):
    # A pass of the whole image takes ~1.7 s; the guest dirties its 256-page working set meanwhile.
    p = _run_rule(guests, "pass")
    q = _run_rule(guests, "qemu")
    assert p.stop_reason == q.stop_reason == "converged"
    assert len(q.iterations) >= len(p.iterations)
    # QEMU's first iteration ends before the pass does: the sync comes once the rest fits in the threshold.
    assert q.iterations[0].dirty_pages < NPAGES == p.iterations[0].dirty_pages


@pytest.mark.parametrize("switchover, lifted", [("link", True), ("capped", False)])
def test_a_bandwidth_cap_paces_the_iterations_and_is_lifted_at_stop_and_copy(guests, switchover, lifted):
    g = guests(Idle(NPAGES, 1.0, np.random.default_rng(0)))
    g.start()
    sink = CopySink(np.zeros_like(g.pages), bytes_s=200 * MB)
    ctx = MigrationContext(0, g.pages, g, sink, memory_scale=0.5, dilation=2.0)
    policy = StopPolicy(0.005, 20, 3, 10 * NPAGES * PAGE)
    r = PrecopyMigration(ctx, policy, 2048, 0.0, cap_bytes_s=50 * MB, switchover_bandwidth=switchover).run()
    assert r.status == "completed"
    # In real units: 50 MB/s emulated at memory_scale 1/2 and dilation 2 is 12.5 MB/s.
    assert sink.calls[0] == f"limit {12.5 * MB}"
    downtime = sink.calls.index("downtime")
    assert ("limit None" in sink.calls[:downtime]) is lifted
    events = [e for e in ctx.events if e["event"] == "rate-limit"]
    assert [e["bytes_s"] for e in events] == ([50 * MB, None] if lifted else [50 * MB])


def test_rate_limit_paces_to_its_rate_and_none_lifts_it():
    from agents.datapath.rate_limit import RateLimit
    limit = RateLimit(10 * MB)
    t0 = time.monotonic()
    limit.pace(500_000)  # one coarse batch: it leaves when its bytes would have at 10 MB/s
    assert time.monotonic() - t0 >= 0.05
    for _ in range(10):
        limit.pace(50_000)
    assert 0.1 <= time.monotonic() - t0 <= 0.2  # 1 MB at 10 MB/s, never faster
    limit.set_rate(None)
    t0 = time.monotonic()
    limit.pace(10**9)
    assert time.monotonic() - t0 < 0.01 and not limit.active

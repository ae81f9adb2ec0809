"""Convergence control without Ray: QEMU's auto-converge steps and trigger,
dirty-limit's controller, SDPS's aim, the guest's throttle, the throttled
predictor, and bad input (agents/techniques/convergence.py, agents/guest/throttle.py,
cluster/predict_convergence.py)."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from agents.guest.dirty_log import DirtyLog
from agents.guest.throttle import VcpuThrottle
from agents.guest.vcpus import Guest
from agents.guest.content import assign_classes, template_pools
from agents.guest.workloads import make_workload
from agents.techniques.convergence import (AutoConverge, Governor, Sdps, SyncPeriod, dirty_limit_step,
                                           keeps_going, running_share)
from cluster.predict import predict
from cluster.scenario import ScenarioError, parse_scenario
from tests.conftest import LIVEMIG, scenario_text

GB = 1e9


def high(s: float = 1.0) -> SyncPeriod:
    """A period in which the guest dirtied 90% of what was sent."""
    return SyncPeriod(s, 0.9 * GB, 1.0 * GB)


def calm(s: float = 1.0) -> SyncPeriod:
    return SyncPeriod(s, 0.1 * GB, 1.0 * GB)


def test_auto_converge_starts_after_two_high_periods_then_steps_by_the_increment_up_to_the_maximum():
    ac = AutoConverge(50, initial=20, increment=10, maximum=45)
    seen = [d.throttle_pct for d in (ac.on_sync(high()) for _ in range(12)) if d]
    assert seen == [20, 30, 40, 45, 45, 45]
    assert max(seen) <= 45 and ac.exhausted()


def test_auto_converge_compares_rates_over_at_least_a_second_and_keeps_its_count_over_calm_periods():
    ac = AutoConverge(50)
    # Four syncs of 0.25 s make one period: one high period only.
    assert [ac.on_sync(high(0.25)) for _ in range(4)] == [None] * 4
    assert ac.trigger.high == 1
    assert ac.on_sync(calm()) is None  # QEMU does not clear the count on a calm period
    assert ac.on_sync(high()).throttle_pct == 20


def test_auto_converge_threshold_is_a_percentage_of_the_bytes_transferred():
    ac = AutoConverge(95)
    assert all(ac.on_sync(high()) is None for _ in range(5))  # 90% < 95%


def test_tailslow_steps_only_as_far_as_the_threshold_needs():
    ac = AutoConverge(50, initial=20, increment=10, maximum=99, tailslow=True)
    ac.throttle_pct = 60
    # Dirtied 55% of sent: cpu_now 40, cpu_ideal = int(40 * 50/55) = 36, so +4 (not +10).
    assert ac.next_pct(SyncPeriod(1, 0.55 * GB, 1 * GB)) == 64
    assert ac.next_pct(SyncPeriod(1, 5 * GB, 1 * GB)) == 70  # far above: the full increment


def test_throttle_runs_the_vcpus_the_rest_of_the_time():
    assert running_share(20) == pytest.approx(0.8)
    assert running_share(150) == pytest.approx(0.01)  # clamped to 99%, as cpu_throttle_set does


def test_sdps_aims_the_dirty_rate_at_its_share_of_the_transfer_rate():
    sd = Sdps(target_ratio=0.5)
    assert sd.on_sync(SyncPeriod(1, 0.4 * GB, 1 * GB, 3 * GB, 2 * GB)) is None  # progress: stays out
    assert sd.on_sync(SyncPeriod(1, 1.2 * GB, 1 * GB, 2 * GB, 2.2 * GB)) is None  # one pass without progress
    assert sd.on_sync(SyncPeriod(1, 0.5 * GB, 1 * GB, 2.2 * GB, 2 * GB)) is None  # progress again: count restarts
    assert sd.on_sync(SyncPeriod(1, 1.2 * GB, 1 * GB, 2 * GB, 2.2 * GB)) is None
    d = sd.on_sync(SyncPeriod(1, 1.2 * GB, 1 * GB, 2.2 * GB, 2.2 * GB))  # the second in a row: kicks in
    assert d.throttle_pct == pytest.approx(100 * (1 - 0.5 / 1.2), abs=0.1)
    # Throttled at that share the guest dirtied 0.6 GB/s: the aim holds.
    ran = running_share(d.throttle_pct)
    assert sd.on_sync(SyncPeriod(1, 1.2 * GB * ran, 1 * GB)) is None


def test_sdps_kicks_in_where_pre_copy_would_give_up():
    sd = Sdps(0.5)
    sd.on_sync(SyncPeriod(1, 0.8 * GB, 1 * GB, 2 * GB, 1.9 * GB))
    assert keeps_going(sd, "stalled")
    d = sd.on_stop("stalled")
    assert d.throttle_pct == pytest.approx(100 * (1 - 0.5 / 0.8), abs=0.1)


def test_only_a_stall_ends_pre_copy_once_the_policy_has_done_all_it_can():
    ac = AutoConverge(50, maximum=20)
    for _ in range(2):
        ac.on_sync(high())
    assert ac.exhausted()
    assert keeps_going(ac, "max-sent") and not keeps_going(ac, "stalled") and not keeps_going(ac, "converged")


class _Log:
    def __init__(self, quota: float = 0.0, period: float = 0.1, pct: float = 0.0):
        self.dirty_limit, self.cpu_throttle = (quota, period), pct


def test_dirty_limit_holds_each_vcpu_within_ten_percent_of_its_quota():
    mib = 1 << 20
    vt, log = VcpuThrottle(2), _Log(quota=300 * mib, period=0.1)
    unthrottled = 900 * mib  # bytes/s the two vCPUs would write together
    for _ in range(400):  # 4 emulated seconds in 10 ms ticks
        shares = vt.shares(log)
        vt.count(shares, unthrottled * float(shares.mean()) * 0.01, 0.01, log)
    assert vt.rates == pytest.approx([300, 300], rel=0.10)


def test_dirty_limit_step_follows_qemu_bands():
    assert dirty_limit_step(1.0, 400, 410) == 1.0  # within 25 MB/s: left alone
    assert dirty_limit_step(1.0, 400, 500) == pytest.approx(1.1)  # 20% off: a tenth of a run
    assert dirty_limit_step(0.0, 100, 400) == pytest.approx(3.0)  # 75% off: in proportion
    assert dirty_limit_step(98.0, 1, 1000) == 99.0  # never beyond 99 runs of sleep


def test_governor_records_kick_in_steps_and_lifts_the_throttle():
    calls, events = [], []

    class Guest:
        def set_throttle(self, pct): calls.append(("throttle", pct))
        def set_dirty_limit(self, q, p): calls.append(("limit", q))

    gov = Governor(AutoConverge(50), Guest(), lambda ev, **f: events.append((ev, f)))
    for sync in range(2, 6):
        gov.on_sync(sync, high())
    gov.stop()
    assert [e for e, _ in events] == ["throttle-start", "throttle", "throttle", "throttle-stop"]
    assert events[0][1]["dirty_sync_count"] == 3
    assert calls[-2:] == [("throttle", 0.0), ("limit", 0.0)]


def test_a_throttled_guest_does_the_unthrottled_share_of_its_work_and_writes():
    npages = 4096
    log = DirtyLog(np.zeros(DirtyLog.nbytes(npages), dtype=np.uint8), npages)
    content = {"zero": 0.25, "text": 0.25, "structured": 0.25, "random": 0.25}
    g = Guest(np.zeros((npages, 4096), dtype=np.uint8), make_workload(
        {"kind": "uniform", "dirty_pages_per_s": 20000}, npages, 1.0, 1), assign_classes(npages, content, 1),
        template_pools(1), 2, 1.0, 0.0, 1, log=log)
    ops0 = g.ops
    for _ in range(100):
        g._tick(0.01, 0.0)
    unthrottled = g.ops - ops0
    log.set_throttle(30)
    ops0 = g.ops
    for _ in range(100):
        g._tick(0.01, 0.0)
    assert (g.ops - ops0) / unthrottled == pytest.approx(0.7, rel=0.01)
    assert g.throttle.status()["throttle_pct"] == 30
    log.stop()  # the migration ends: every throttle is lifted
    assert log.cpu_throttle == 0 and log.dirty_limit == (0.0, 0.0)


# --- the predictor -------------------------------------------------------------
BUSY = '{ kind = "uniform", dirty_pages_per_s = 500000, working_set_gib = 0.9 }'


def _predicted(migration: str) -> dict:
    text = scenario_text(memory_gib=1, gbps=10, workload=BUSY, downtime_ms=100, extra_vm="vcpus = 2",
                         migration=migration)
    return predict(parse_scenario(text))["vms"][0]


def test_predictor_the_busy_vm_converges_only_under_control():
    alone = _predicted("")
    assert alone["stop_reason"] != "converged" and alone["downtime_ms"] > 400
    for mig in ("auto_converge = true", "sdps = true",
                "dirty_limit = true\nvcpu_dirty_limit_mbytes_s = 250\nx_vcpu_dirty_limit_period_ms = 100"):
        p = _predicted(mig)
        assert p["stop_reason"] == "converged" and p["downtime_ms"] <= 110, mig
        assert p["convergence"]["kicked_in_after_s"] > 0


# --- bad input -----------------------------------------------------------------
@pytest.mark.parametrize("migration, field", [
    ("cpu_throttle_increment = 0", "migration.cpu_throttle_increment"),
    ("vcpu_dirty_limit_mbytes_s = 0", "migration.vcpu_dirty_limit_mbytes_s"),
    ("vcpu_dirty_limit_mbytes_s = -5", "migration.vcpu_dirty_limit_mbytes_s"),
    ("max_cpu_throttle = 100", "migration.max_cpu_throttle"),
    ("x_vcpu_dirty_limit_period_ms = 2000", "migration.x_vcpu_dirty_limit_period_ms"),
    ("throttle_trigger_threshold = 0", "migration.throttle_trigger_threshold"),
    ("auto_converge = true\ndirty_limit = true", "migration"),
    ("cpu_throttle_initial = 60\nmax_cpu_throttle = 50", "migration.cpu_throttle_initial"),
])
def test_bad_convergence_options_are_one_line_each(migration, field):
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(scenario_text(migration=migration), "bad.toml")
    assert len(exc.value.lines) == 1 and exc.value.lines[0].startswith(f"bad.toml: {field}:")


def test_cli_exits_2_with_one_line_on_a_throttle_increment_of_zero(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(scenario_text(migration="auto_converge = true\ncpu_throttle_increment = 0"))
    out = subprocess.run([LIVEMIG, "run", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "cpu_throttle_increment" in out.stderr


def test_a_policy_whose_trigger_never_fires_leaves_the_stop_rules_caps_in_force():
    """A guest dirtying 40% of what is sent never trips auto-converge's (or dirty-limit's) 50%
    trigger: once the trigger has judged the periods it needs, max-iterations ends pre-copy as
    without a policy, instead of iterating past every cap for ever (a fresh-eyes finding)."""
    from agents.techniques.convergence import AutoConverge, DirtyLimit, SyncPeriod, keeps_going
    for policy in (AutoConverge(), DirtyLimit(100)):
        low = SyncPeriod(1.0, dirtied_bytes=0.4e9, transferred_bytes=1e9)
        policy.on_sync(low)
        assert keeps_going(policy, "max-iterations")  # one period judged: it could still fire
        policy.on_sync(low)
        assert not keeps_going(policy, "max-iterations") and not keeps_going(policy, "max-sent")
        policy.on_sync(SyncPeriod(1.0, dirtied_bytes=0.8e9, transferred_bytes=1e9))
        assert keeps_going(policy, "max-iterations")  # a high period: the next one may fire it

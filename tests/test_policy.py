"""Management-layer policies (agents/techniques/policy.py): Nova's downtime
steps, the completion and progress timeouts and their actions, the hard
maximum downtime; then small pre-copy runs in one process (no Ray) built to
trigger each decision, and the scenario's side (an unknown preset).
"""
# ruff: noqa: F811  (the `guests` fixture is test_precopy's, imported)
from __future__ import annotations

import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest

from agents.techniques.policy import (
    GIB,
    PRESETS,
    SETTING_NAMES,
    Policy,
    PolicySettings,
    downtime_schedule,
    settings_from_options,
)
from agents.techniques.postcopy import SwitchPolicy, switch_reason
from cluster.scenario import ScenarioError, parse_scenario
from tests.test_precopy import NPAGES, PAGE, CopySink, guests, migration, uniform  # noqa: F401
from tests.test_scenario import LIVEMIG, edit

MB = 1e6

# --- the arithmetic ------------------------------------------------------------------


def test_nova_step_schedule_is_novas_own_example():
    # nova/virt/libvirt/migration.py downtime_steps: 10 steps, 30 s/GiB, 3 GiB, 400 ms.
    assert downtime_schedule(400, 10, 30, 3) == [(0, 40), (90, 76), (180, 112), (270, 148), (360, 184), (450, 220),
                                                 (540, 256), (630, 292), (720, 328), (810, 364), (900, 400)]


def test_nova_preset_for_a_4_gib_vm_and_the_2_gib_floor():
    p = Policy(PRESETS["nova"], 4 * GIB, base_limit_s=0.3)
    assert p.completion_timeout_s == 3200  # 800 s/GiB
    assert p.schedule()[:3] == [(0, 50), (300, 95), (600, 140)] and p.schedule()[-1] == (3000, 500)
    assert p.downtime_limit_s(0) == 0.05 and p.downtime_limit_s(299.9) == 0.05
    assert p.downtime_limit_s(300) == 0.095 and p.downtime_limit_s(1e9) == 0.5
    small = Policy(PRESETS["nova"], 0.5 * GIB, base_limit_s=0.3)
    assert small.completion_timeout_s == 1600 and small.schedule()[1] == (150, 95)  # counted as 2 GiB
    kube = Policy(PRESETS["kubevirt"], 0.5 * GIB, base_limit_s=0.3)
    assert kube.completion_timeout_s == 400 and kube.schedule() == [] and kube.downtime_limit_s(1e9) == 0.3


def test_the_hard_maximum_caps_the_stepped_limit():
    p = Policy(PolicySettings(downtime_max_ms=500, downtime_steps=10, hard_max_downtime_ms=200), GIB, 0.3)
    assert p.downtime_limit_s(1e9) == 0.2


def test_completion_timeout_cancels_or_forces():
    s = PolicySettings(completion_timeout_s_per_gib=10)
    p = Policy(s, GIB, 0.3)
    assert p.decide(9.9, 1e9, 1e8, None).action == "go-on"
    assert p.decide(10.1, 1e9, 1e8, None) == p.decide(10.1, 1e9, 1e8, "stalled")
    assert p.decide(10.1, 1e9, 1e8, None).action == "cancel"
    assert p.decide(10.1, 1e6, 1e8, "converged").action == "go-on"  # it finishes on its own
    force = PolicySettings(completion_timeout_s_per_gib=10, timeout_action="force")
    assert Policy(force, GIB, 0.3).decide(11, 1e9, 1e8, None).action == "force"
    assert Policy(force, GIB, 0.3, postcopy=True).decide(11, 1e9, 1e8, None).action == "force"


def test_progress_timeout_counts_from_the_last_new_low():
    p = Policy(PolicySettings(progress_timeout_s=5), GIB, 0.3)
    assert p.decide(1, 100, 1, None).action == "go-on"
    assert p.decide(5.5, 100, 1, None).action == "go-on"  # not lower, but 4.5 s since the low
    assert p.decide(5.9, 99, 1, None).action == "go-on"  # a new low: the clock restarts
    assert p.decide(10.8, 120, 1, None).action == "go-on"
    d = p.decide(11, 120, 1, None)
    assert (d.action, d.reason) == ("cancel", "progress-timeout")


def test_hard_maximum_refuses_a_long_stop_and_copy_or_cancels():
    s = PolicySettings(hard_max_downtime_ms=100, completion_timeout_s_per_gib=10, timeout_action="force")
    p = Policy(s, GIB, 0.3)
    assert p.decide(1, 50e6, 1e9, "converged").action == "go-on"  # 50 ms: allowed
    assert p.decide(1, 500e6, 1e9, "max-iterations").action == "refuse-switchover"
    d = p.decide(11, 500e6, 1e9, None)  # the timeout's force would pause for 500 ms: the fallback
    assert d.action == "cancel" and "hard_max_downtime_ms" in d.reason
    assert Policy(s, GIB, 0.3, postcopy=True).decide(11, 500e6, 1e9, None).action == "force"  # post-copy: short pause
    alone = Policy(PolicySettings(hard_max_downtime_ms=100), GIB, 0.3)  # no timeout would ever end it
    assert alone.decide(1, 500e6, 1e9, "stalled").action == "cancel"


def test_under_a_policy_with_timeouts_only_the_downtime_limit_or_a_timeout_ends_pre_copy():
    """libvirt's QEMU has no iteration, byte or stall cap: under Nova a stop rule's cap must not
    force a stop-and-copy above the stepped limit (a fresh-eyes finding: 506 ms of downtime while
    the step was 275 ms); the completion timeout ends it."""
    nova = Policy(PRESETS["nova"], 4 * GIB, 0.3)
    for cap in ("stalled", "max-iterations", "max-sent"):
        assert nova.decide(10, 500e6, 1e9, cap).action == "refuse-switchover"
    assert nova.decide(10, 200e6, 1e9, "converged").action == "go-on"
    assert nova.decide(nova.completion_timeout_s + 1, 500e6, 1e9, None).action == "cancel"
    plain = Policy(PolicySettings(downtime_max_ms=500, downtime_steps=10, downtime_delay_s_per_gib=75), GIB, 0.3)
    assert plain.decide(10, 500e6, 1e9, "stalled").action == "go-on"  # no timeout: the caps still end it


def test_options_name_a_preset_and_replace_its_numbers():
    opts = _opts
    assert settings_from_options(opts()) is None
    s = settings_from_options(opts(policy="nova", timeout_action="force", downtime_max_ms=100))
    assert (s.completion_timeout_s_per_gib, s.timeout_action, s.downtime_max_ms, s.min_gib) == (800, "force", 100, 2)
    assert settings_from_options(opts(progress_timeout_s=3)).progress_timeout_s == 3


def test_a_forced_completion_switches_to_postcopy_even_without_on_stall():
    assert switch_reason(SwitchPolicy(None, False), "policy-force", 3, False) == "policy-force"


# --- the scenario ------------------------------------------------------------------------


def test_a_preset_and_its_settings_parse_and_override_per_migration():
    s = parse_scenario(edit("downtime_limit_ms = 300", 'downtime_limit_ms = 300\npolicy = "nova-force"\n'
                            "hard_max_downtime_ms = 800"))
    assert s.migration.policy == "nova-force" and s.migration.hard_max_downtime_ms == 800


def test_an_unknown_preset_is_one_line(tmp_path):
    with pytest.raises(ScenarioError) as info:
        parse_scenario(edit("downtime_limit_ms = 300", 'downtime_limit_ms = 300\npolicy = "vmware"'), "exp.toml")
    assert len(info.value.lines) == 1 and "migration.policy" in info.value.lines[0]
    bad = tmp_path / "bad.toml"
    bad.write_text(edit("downtime_limit_ms = 300", 'downtime_limit_ms = 300\npolicy = "vmware"'))
    r = subprocess.run([str(LIVEMIG), "validate", str(bad)], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "policy" in r.stderr and "nova" in r.stderr and "Traceback" not in r.stderr


# --- in-process runs built to trigger each decision ------------------------------------------


def _opts(**kw):
    return SimpleNamespace(**({name: None for name in SETTING_NAMES} | {"policy": "none"} | kw))


def _run(guests, opts, rate=20_000, ws=NPAGES, link=50 * MB, **kw):
    g = guests(uniform(rate=rate, ws=ws))
    g.start()
    time.sleep(0.02)
    dst = np.zeros_like(g.pages)
    m = migration(g, CopySink(dst, bytes_s=link), **kw)._with_policy(opts)
    r = m.run()
    decisions = [(e["decision"], e["reason"]) for e in m.ctx.events if e["event"] == "policy"]
    return g, dst, r, decisions


def _still_running(g):
    ops = g.ops
    time.sleep(0.05)
    return g.ops > ops


FOREVER = {"max_it": 100_000, "stall": 100_000, "max_sent_ratio": 10_000.0}


def test_nova_completion_timeout_cancels(guests):
    # Nova's abort: 0.5 s/GiB over the 2 GiB floor = a 1 s timeout; the guest cannot converge.
    g, _, r, decisions = _run(guests, _opts(policy="nova", completion_timeout_s_per_gib=0.5, downtime_max_ms=10), limit_s=0.001, **FOREVER)
    assert (r.status, r.stop_reason) == ("cancelled", "policy: completion-timeout")
    assert ("cancel", "completion-timeout") in decisions
    assert 0.95 < r.total_time_s < 1.6
    assert _still_running(g)  # the VM stays on its source


def test_nova_force_completes_with_a_stop_and_copy(guests):
    g, dst, r, decisions = _run(guests, _opts(policy="nova-force", completion_timeout_s_per_gib=0.5, downtime_max_ms=10),
                                limit_s=0.001, **FOREVER)
    assert (r.status, r.stop_reason) == ("completed", "policy-force")
    assert ("force", "completion-timeout") in decisions
    assert np.array_equal(dst, g.pages)


def test_kubevirt_progress_timeout_cancels(guests):
    g, _, r, decisions = _run(guests, _opts(policy="kubevirt", progress_timeout_s=0.3), link=20 * MB,
                              limit_s=0.001, **FOREVER)
    assert (r.status, r.stop_reason) == ("cancelled", "policy: progress-timeout")
    assert ("cancel", "progress-timeout") in decisions
    assert _still_running(g)


def test_nova_downtime_steps_raise_the_limit_until_it_converges(guests):
    # 20 ms in 3 steps of 1 s (0.5 s/GiB x 2 GiB): 6, 11, 15, 20 ms; ~14 ms of dirty pages remain per pass.
    g, dst, r, decisions = _run(guests, _opts(policy="nova", downtime_max_ms=20, downtime_steps=3,
                                              downtime_delay_s_per_gib=0.5), ws=256, limit_s=0.3, **FOREVER)
    assert (r.status, r.stop_reason) == ("completed", "converged")
    limits = [d for d in decisions if d[0] == "downtime-limit"]
    assert len(limits) >= 2 and r.total_time_s > 0.95
    assert np.array_equal(dst, g.pages)


def test_hard_maximum_refuses_the_stop_and_copy_then_the_timeout_cancels(guests):
    g, _, r, decisions = _run(guests, _opts(hard_max_downtime_ms=1, completion_timeout_s_per_gib=0.5,
                                            policy="nova"), limit_s=0.001, max_it=3, stall=100_000,
                              max_sent_ratio=10_000.0)
    assert decisions.count(("refuse-switchover", "max-iterations")) == 1  # recorded once, refused at every check
    assert (r.status, r.stop_reason) == ("cancelled", "policy: completion-timeout")
    assert r.iteration_count > 3
    assert _still_running(g)


def test_hard_maximum_without_a_timeout_falls_back_to_cancel(guests):
    _, _, r, decisions = _run(guests, _opts(hard_max_downtime_ms=1), limit_s=0.001, max_it=3, stall=100_000,
                              max_sent_ratio=10_000.0)
    assert r.status == "cancelled" and r.iteration_count == 3
    assert decisions[0][0] == "cancel" and "max-iterations" in decisions[0][1]


# --- one run through Ray: a forced completion switches a hybrid to post-copy ----------------


def test_nova_force_switches_a_hybrid_to_postcopy_and_the_result_names_it(ray_cluster, tmp_path):
    from cluster.runner import RunOptions, run_scenario
    from tests.conftest import scenario_text
    text = scenario_text("force", memory_gib=0.5, downtime_ms=5,
                         workload='{ kind = "uniform", dirty_pages_per_s = 20000, working_set_gib = 0.125 }',
                         migration='technique = "postcopy"\nadaptive_prepaging = false\npolicy = "nova-force"\n'
                                   'completion_timeout_s_per_gib = 1\ndowntime_max_ms = 10\n'
                                   'stall_iterations = 1000\nmax_iterations = 1000')
    r = run_scenario(parse_scenario(text, "force.toml"), RunOptions(out_dir=str(tmp_path)))
    assert r["status"] == "completed" and r["verified"], r["stop_reason"]
    assert r["postcopy"]["switch_reason"] == "policy-force"
    forced = [d for d in r["policy"] if d["decision"] == "force"]
    assert len(forced) == 1 and forced[0]["reason"] == "completion-timeout"
    assert forced[0]["elapsed_s"] > 2  # 1 s/GiB over Nova's 2 GiB floor
    assert r["policy"][0] == r["policy"][0] | {"decision": "downtime-limit", "downtime_limit_ms": 1}


# --- the policy's monitor: decisions on time, even in the middle of a long pass ---------------


def _decision_times(m):
    t0 = m.result.started_at
    return {(e["decision"], e["reason"]): e["elapsed_s"] for e in m.ctx.events if e["event"] == "policy"}, t0


def test_a_completion_timeout_in_the_middle_of_a_long_first_pass_cancels_within_a_period(guests):
    # The first pass takes ~3 s at 1 MB/s; Nova's 0.5 s/GiB over its 2 GiB floor times out at 1 s,
    # and its monitor looks every 0.5 s: the cancel comes in (1, 1.5] s, not after the pass.
    g, _, r, decisions = _run(guests, _opts(policy="nova", completion_timeout_s_per_gib=0.5, downtime_max_ms=10),
                              link=1 * MB, limit_s=0.001, **FOREVER)
    assert (r.status, r.stop_reason) == ("cancelled", "policy: completion-timeout")
    assert r.memory_bytes_sent < 0.6 * NPAGES * PAGE  # its first pass cut short
    assert r.total_time_s < 1.5 + 0.3  # one period late at most (and the pass's last batch)
    assert _still_running(g)


def test_a_forced_completion_pauses_the_vm_at_its_time_and_finishes_the_pass(guests):
    g = guests(uniform(rate=20_000, ws=NPAGES))
    g.start()
    time.sleep(0.02)
    dst = np.zeros_like(g.pages)
    m = migration(g, CopySink(dst, bytes_s=2 * MB), limit_s=0.001, **FOREVER)._with_policy(
        _opts(policy="nova-force", completion_timeout_s_per_gib=0.5, downtime_max_ms=10))
    r = m.run()
    said, t0 = _decision_times(m)
    assert 1.0 < said[("force", "completion-timeout")] <= 1.5 + 0.05
    stopped = [e for e in m.ctx.events if e["event"] == "vm-stopped"]
    assert len(stopped) == 1 and stopped[0]["by"] == "policy-force: completion-timeout"
    assert (r.status, r.stop_reason) == ("completed", "policy-force")
    assert r.iteration_count == 1  # the pass went on with the VM paused, then the stop-and-copy
    assert r.downtime_s == pytest.approx(r.total_time_s - (stopped[0]["t_real"] - t0), abs=0.01)
    assert np.array_equal(dst, g.pages)


def test_through_ray_a_completion_timeout_mid_pass_cancels_on_time_and_drops_the_queued_pages(ray_cluster, tmp_path):
    # 1 GiB over 1 GbE: the first pass takes ~8.6 s; 2 s/GiB times out at 2 s, the monitor
    # looks every 0.5 s. The cancel drops the pages queued in the pipeline (as a cancel shuts
    # QEMU's channel): the run ends once the ring's batches in flight are back.
    from cluster.runner import RunOptions, run_scenario
    from tests.conftest import scenario_text
    text = scenario_text("timeout", memory_gib=1, workload='{ kind = "uniform", dirty_pages_per_s = 4000, '
                         'working_set_gib = 0.25 }', migration='technique = "precopy"\n'
                         'completion_timeout_s_per_gib = 2\ntimeout_action = "cancel"')
    r = run_scenario(parse_scenario(text, "timeout.toml"), RunOptions(out_dir=str(tmp_path)))
    assert (r["status"], r["stop_reason"]) == ("cancelled", "policy: completion-timeout")
    cancel = [d for d in r["policy"] if d["decision"] == "cancel"]
    assert len(cancel) == 1 and 2.0 < cancel[0]["elapsed_s"] <= 2.5 + 0.1
    assert r["total_time_s"] < cancel[0]["elapsed_s"] + 1.0  # not the ~6 s the pass had left


# --- through Ray: a forced pause keeps the emulated schedule at any dilation ------------------


@pytest.mark.slow  # two runs, 8 s and 20 s: make test-slow
def test_a_forced_pause_reports_the_same_downtime_at_dilations_1_and_4(ray_cluster):
    """scenarios/fidelity/force-complete.toml: the force pauses the VM 1 s into a 1.7 s first pass;
    the downtime is the rest of that pass and the stop-and-copy, all on the emulated schedule.
    Measured (3 runs each, load 2-5): 645.3-648.0 ms at dilation 1, 647.2-647.6 ms at 4."""
    from cluster.runner import RunOptions, run_scenario
    from tests.conftest import ROOT
    sc = parse_scenario((ROOT / "scenarios/fidelity/force-complete.toml").read_text(), "force-complete.toml")
    runs = {d: run_scenario(sc, RunOptions(dilation=d)) for d in (1.0, 4.0)}
    for r in runs.values():
        assert (r["status"], r["stop_reason"], r["verified"]) == ("completed", "policy-force", True), r["stop_reason"]
        lateness = r["vms"][0]["pipeline"]
        real_total = r["total_time_s"] * r["emulation"]["dilation"]
        assert r["emulation"]["fidelity"]["saturation"] >= lateness["drift_real_s"] / real_total * 0.99, lateness
        assert lateness["handover_late_real_s"] >= 0
    downtimes = {d: (r["downtime_ms"], r["vms"][0]["policy"]) for d, r in runs.items()}
    assert runs[1.0]["downtime_ms"] == pytest.approx(runs[4.0]["downtime_ms"], rel=0.02), downtimes

"""`livemig bench capacity`: the search for a scenario's faithful range (pure parts, no Ray)."""
from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from cluster.capacity import Probe, boundary, real_mb_s, setting
from tests.conftest import ROOT


def machine(limit: float, harder_up: bool):
    """A machine that saturates past `limit` of a knob; records the values it was run at."""
    tried = []

    def run(value: float) -> Probe:
        tried.append(value)
        over = value > limit if harder_up else value < limit
        return Probe(value, 0.2 if over else 0.01, 100.0, 1.0, True)
    return run, tried


@pytest.mark.parametrize("start", [0.5, 3.0, 40.0])
def test_the_largest_unsaturated_link_speed_is_found_within_one_bisection_step(start):
    run, tried = machine(7.0, harder_up=True)
    best, probes = boundary(run, start, harder_up=True, steps=4)
    assert best.ok and best.value <= 7.0
    bad = min(p.value for p in probes if not p.ok)
    assert bad > 7.0 and bad / best.value <= 2 ** (1 / 2 ** 3)  # four halvings of a factor of 2 in log space
    assert len(tried) <= 10


def test_the_smallest_unsaturated_dilation_is_found_from_below_and_above():
    for start in (0.25, 16.0):
        run, _ = machine(3.0, harder_up=False)
        best, probes = boundary(run, start, harder_up=False, steps=3)
        assert best.ok and best.value >= 3.0
        assert max(p.value for p in probes if not p.ok) < 3.0


def test_a_knob_that_never_saturates_stops_at_its_limit():
    run, tried = machine(1e9, harder_up=True)
    best, _ = boundary(run, 0.25, harder_up=True, steps=3, highest=1.0)
    assert best.value == 1.0 and tried == [0.25, 0.5, 1.0]


def test_an_unverified_run_is_never_the_answer():
    best, _ = boundary(lambda v: Probe(v, 0.0, 1.0, 1.0, False), 1.0, harder_up=True, steps=2, highest=4.0)
    assert best is None


def test_settings_reach_every_nic_and_drop_a_links_own_bandwidth():
    data = tomllib.loads((ROOT / "scenarios" / "quickstart.toml").read_text())
    data["network"]["links"][0]["bandwidth_gbps"] = 1
    out = setting(data, "link_gbps", 40.0, dilation=1.0)
    assert {n["speed_gbps"] for h in out["hosts"] for n in h["nics"]} == {40.0}
    assert "bandwidth_gbps" not in out["network"]["links"][0] and out["emulation"]["dilation"] == 1.0
    assert data["network"]["links"][0]["bandwidth_gbps"] == 1  # the base is left alone


def test_real_byte_rate_of_a_result():
    r = {"memory_bytes_sent": 2e9, "total_time_s": 2.0, "emulation": {"memory_scale": 0.25, "dilation": 4.0}}
    assert real_mb_s(r) == pytest.approx(2e9 * 0.25 / 8.0 / 1e6)


def test_a_bad_knob_is_one_line_and_exit_2():
    p = subprocess.run([sys.executable, "-m", "cluster.cli", "bench", "capacity", "scenarios/quickstart.toml",
                        "--knob", "colour"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "colour" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1

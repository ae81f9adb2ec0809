"""The soak and evacuation benches (cluster/bench_scale.py)."""
from __future__ import annotations

import pytest

from cluster.bench_scale import evacuation_scenario, slope, soak_bench, soak_scenario
from cluster.scenario import parse_scenario


def test_slope_is_the_least_squares_one():
    assert slope([1, 2, 3, 4], [10, 12, 14, 16]) == pytest.approx(2.0)
    assert slope([1, 2, 3], [5, 5, 5]) == 0.0
    assert slope([1], [3]) == 0.0


def test_soak_goes_back_and_forth_and_evacuation_empties_one_host():
    sc = parse_scenario(soak_scenario(3, 0.25, 1 / 64), "soak.toml")
    hops = [(m.from_host, *m.to) for m in sc.migrations]
    assert hops == [("a", "b"), ("b", "a")] * 3
    ev = parse_scenario(evacuation_scenario(5, 0.25, 1 / 64, 1.0), "ev.toml")
    assert {v.host for v in ev.vms} == {"a"} and {m.to for m in ev.migrations} == {("b",)}


def test_a_short_soak_has_no_failures(ray_cluster):
    r = soak_bench(rounds=2, memory_gib=0.25)
    assert r["migrations"] == 4 and r["failures"] == 0 and r["verification_failures"] == 0
    assert len(r["private_memory_mib_per_round"]) == 2 and all(m > 0 for m in r["private_memory_mib_per_round"])

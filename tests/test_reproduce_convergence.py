"""The convergence study's checks (cluster/reproduce_convergence.py), on hand-made rows."""
from __future__ import annotations

from cluster.reproduce_convergence import checks, markdown


def r(method: str, time_s: float, downtime_ms: float, kicked: float | None = None) -> dict:
    return {"method": method, "verified": True, "total_time_s": time_s, "downtime_ms": downtime_ms,
            "memory_bytes_sent": 1e10, "degradation": 0.1, "non_response_s": 0.3, "faults": None,
            "kicked_in_after_s": kicked}


def test_the_study_holds_when_methods_beat_forced_downtime_and_two_nics_save_30_percent():
    methods = [r("forced", 25, 2500), r("sdps", 28, 250, 22.0), r("post-copy", 6, 15)]
    got = dict(checks(methods, [r("1 nic", 30, 300, 18.0), r("2 nics", 21, 300)]))
    assert all(got.values()), got


def test_each_claim_can_fail():
    methods = [r("forced", 25, 2500), r("auto-converge", 25, 600, 10.0)]
    got = checks(methods, [r("1 nic", 30, 300), r("2 nics", 12, 300, 13.0)])
    failed = [c for c, ok in got if not ok]
    assert len(failed) == 4, failed  # downtime, no kick-in on 1 NIC, kick-in on 2, 60% less
    assert "✗" in markdown({"methods": methods, "nics": [], "checks": [{"check": c, "holds": ok} for c, ok in got]})

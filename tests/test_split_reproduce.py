"""S-memV's Figs. 7 and 12 reproduced (slow). Fig. 7 (about four minutes, the HDD-assisted run
alone two): an idle 12 GB VM over 10 GbE, ideal migration against split,
SSD- and HDD-assisted migration. The paper: split within 5% of ideal (and a
few ms of its downtime), SSD 2.2x, HDD 11.7x. Emulated figures computed
from bytes, device charges and link rates, so the margins survive load."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_fig7_split_is_within_5_percent_of_ideal_and_swap_assisted_is_far_slower(tmp_path):
    from cluster import reproduce_smemv
    rows = {r["variant"]: r for r in reproduce_smemv.run(tmp_path, ["idle-12g-10gbe"], progress=lambda m: None)}
    assert all(r["verified"] for r in rows.values())
    assert abs(rows["split"]["time_ratio"] - 1) <= 0.05
    assert abs(rows["split"]["downtime_diff_ms"]) <= 20
    assert 1.8 <= rows["ssd"]["time_ratio"] <= 2.7  # the paper's 2.2
    assert 9 <= rows["hdd"]["time_ratio"] <= 15  # the paper's 11.7


def test_fig12_memcached_at_one_eighth_scale_recovers_after_ssd_assisted_migration(tmp_path):
    """About eight minutes. memcached-1536m: the 12 GB run at 1/8 scale (the same real pages,
    every emulated second an eighth). After split migration the working set is on the main
    host (the paper: back in 5 s); after SSD-assisted migration it thrashes, then recovers
    within the 40 s observed (15.0 s and 20.5 s measured: 2-2.7 minutes at 12 GB, the paper's 21)."""
    from cluster import reproduce_smemv
    rows = {r["variant"]: r for r in reproduce_smemv.run(tmp_path, ["memcached-1536m"], progress=lambda m: None)}
    assert all(r["verified"] for r in rows.values())
    assert rows["split"]["recovery_s"] is not None and rows["split"]["recovery_s"] <= 5.0 / 8 + 0.5
    assert rows["ssd"]["recovery_s"] is not None, "the run reaches recovery"
    assert 5.0 <= rows["ssd"]["recovery_s"] <= 35.0
    assert rows["ssd"]["faults"] > 0

"""Reproductions of the storage studies (scenarios/vmotion/), slow: minutes each.

- DS2 (vMotion 5.1 seed, Figures 3-5): the 90 GB database disk copied by
  vSphere 5.1 vMotion over 10 GbE and by Storage vMotion's local copy take
  nearly the same time; the network carries about 2.3 Gbit/s meanwhile (the
  datastores bound the copy); the network migration's memory phase adds
  about 20 s; the SQL Server throughput (Figures 4 and 5) drops during the
  disk copy, barely during the memory copy, dips at switch-over.
- SolidDB (Figure 6): the memory copy of vMotion (disk on shared storage)
  and of vSphere 5.1 vMotion (disk moved first, its writes mirrored during
  the memory copy) within 5% of each other at 0 to 64 clients.
- PMigrate-KVM Tables 6 and 8 with their 16 GB disks: vanilla over PMigrate
  migration-time ratios near the paper's.
"""
from __future__ import annotations

import pytest

from cluster.scenario import load_scenario
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
VMOTION = ROOT / "scenarios" / "vmotion"


def _run(name: str, tmp_path) -> dict:
    from cluster.runner import RunOptions, run_scenario
    r = run_scenario(load_scenario(VMOTION / name), RunOptions(out_dir=str(tmp_path / name)))
    assert r["status"] == "completed" and r["verified"], (name, r["stop_reason"])
    return r


def memory_phase_s(r: dict) -> float:
    """The memory copy phase: the whole migration less the disk copy before it."""
    return r["total_time_s"] - (r.get("disk", {}).get("copy_time_s") or 0.0)


def test_ds2_disk_copy_takes_as_long_over_the_network_as_locally(ray_cluster, tmp_path):
    net = _run("ds2-vmotion-network.toml", tmp_path)
    local = _run("ds2-storage-vmotion.toml", tmp_path)
    assert net["disk"]["path"] == "network" and local["disk"]["path"] == "storage-interface"
    assert local["disk"]["network_bytes"] == 0
    assert net["disk"]["copy_time_s"] == pytest.approx(local["disk"]["copy_time_s"], rel=0.10)
    gbps = net["disk"]["network_bytes"] * 8 / net["disk"]["copy_time_s"] / 1e9
    assert 1.8 <= gbps <= 2.6  # the seed: "around 2.3 Gbps"
    assert 8 <= memory_phase_s(net) <= 30  # the seed: about 20 s longer than Storage vMotion
    # Figures 4 and 5: DS2's throughput (its closed loop's completed I/Os) drops during the disk
    # copy, barely during the memory copy, dips at switch-over, and is lower on the slower SAN after.
    for r in (net, local):
        ph = r["app"]["ops_per_s_by_phase"]
        assert ph["before"] == pytest.approx(1450, rel=0.05)
        assert ph["disk_copy"] < 0.95 * ph["before"] and ph["memory_copy"] > ph["disk_copy"]
        assert ph["switch_over"] < ph["memory_copy"] and ph["after"] < ph["before"]
        assert r["app"]["disk_ios_in_downtime"] == 0


@pytest.mark.parametrize("clients", [0, 8, 16, 32, 64])
def test_soliddb_memory_copy_barely_changes_with_the_disk_mirrored(ray_cluster, tmp_path, clients):
    plain = _run(f"soliddb-{clients}clients-vmotion.toml", tmp_path)
    unified = _run(f"soliddb-{clients}clients-unified.toml", tmp_path)
    assert unified["disk"]["verified"]
    assert memory_phase_s(unified) == pytest.approx(memory_phase_s(plain), rel=0.10)


@pytest.mark.parametrize("case, paper", [("idle", 203.9 / 57.4), ("dbench", 256.1 / 77.1)])
def test_pmigrate_kvm_with_its_disk_has_the_paper_s_migration_time_ratio(ray_cluster, tmp_path, case, paper):
    vanilla = _run(f"kvm-{case}-disk-vanilla.toml", tmp_path)
    pmigrate = _run(f"kvm-{case}-disk-pmigrate.toml", tmp_path)
    ratio = vanilla["total_time_s"] / pmigrate["total_time_s"]
    assert ratio == pytest.approx(paper, rel=0.35)
    assert vanilla["disk_bytes_sent"] >= 16 * 2**30 and pmigrate["disk_bytes_sent"] >= 16 * 2**30

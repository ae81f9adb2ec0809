"""The storage technique end to end on Ray: disk copy with I/O mirroring, then
memory pre-copy, then a switch-over that waits for the mirror; data paths;
the switch to synchronous mirroring; cancel."""
from __future__ import annotations

import pytest

from cluster.scenario import parse_scenario
from tests.test_storage_plan import storage_scenario

GIB = 1 << 30


def _run(text: str, tmp_path) -> dict:
    from cluster.runner import RunOptions, run_scenario
    return run_scenario(parse_scenario(text, "storage.toml"), RunOptions(out_dir=str(tmp_path)))


def _events(r: dict, tmp_path) -> list[dict]:
    import json
    lines = (tmp_path / "timeline.jsonl").read_text().splitlines()
    return [rec for rec in map(json.loads, lines) if rec.get("kind") == "event"]


def test_disk_then_memory_then_switch_over_verifies_both(ray_cluster, tmp_path):
    text = storage_scenario(disk_gib=0.5, workload='disk_workload = { preset = "ds2" }\n'
                                                   'workload = { kind = "uniform", dirty_pages_per_s = 2000 }')
    r = _run(text, tmp_path)
    assert r["status"] == "completed" and r["verified"], r["stop_reason"]
    d = r["disk"]
    assert d["verified"] and d["actively_synced"] and d["path"] == "network"
    # The whole disk (fully allocated) went, plus the guest's writes behind the copy.
    assert r["disk_bytes_sent"] == pytest.approx(0.5 * GIB + d["mirror"]["mirrored_bytes"])
    assert d["network_bytes"] == r["disk_bytes_sent"]
    assert d["mirror"]["mirrored_writes"] > 0
    # Bound by the slow SAN's 300 MB/s write: 512 MiB take at least 1.79 s.
    floor = 0.5 * GIB / 300e6
    assert floor * 0.98 <= d["copy_time_s"] <= floor * 3
    from cluster.predict_storage import predict_disk
    s = parse_scenario(text)
    predicted = predict_disk(s, s.migration_plans()[0], 0.0)
    assert predicted["copy_time_s"] * 0.95 <= d["copy_time_s"] <= predicted["copy_time_s"] * 3
    assert r["total_time_s"] > d["copy_time_s"]
    phases = [e["phase"] for e in _events(r, tmp_path) if e["event"] == "phase"]
    assert phases[:3] == ["disk-copy", "setup", "precopy"] and phases[-1] == "stop-and-copy"
    names = [e["event"] for e in _events(r, tmp_path)]
    assert names.index("disk-copy-done") < names.index("vm-stopped") < names.index("disk-synced")
    assert d["guest_iops"]["disk_copy"] > 0
    progress = [e for e in _events(r, tmp_path) if e["event"] == "disk-progress"]
    assert progress and all(e["offset"] <= e["len"] for e in progress) and progress[-1]["ready"]
    assert any(e["guest_iops"] > 0 for e in progress)


def test_storage_interface_moves_no_bytes_over_the_migration_network(ray_cluster, tmp_path):
    r = _run(storage_scenario(disk_gib=0.25, tgt_hosts='["src", "dst"]'), tmp_path)
    assert r["status"] == "completed" and r["disk"]["verified"]
    assert r["disk"]["path"] == "storage-interface" and r["disk"]["network_bytes"] == 0
    assert r["disk_bytes_sent"] == pytest.approx(0.25 * GIB)


def test_writes_outrunning_the_link_make_the_mirror_synchronous(ray_cluster, tmp_path):
    # SolidDB at 64 clients writes 50 MB/s; the link carries 25 MB/s.
    text = storage_scenario(disk_gib=1 / 32, memory_gib=1 / 32, workload='disk_workload = { preset = "soliddb-64" }')
    text = text.replace("speed_gbps = 10", "speed_gbps = 0.2")
    r = _run(text, tmp_path)
    assert r["status"] == "completed" and r["disk"]["verified"], r["stop_reason"]
    m = r["disk"]["mirror"]
    modes = [s["mode"] for s in m["switches"]]
    assert "write-blocking" in modes and m["mode_s"]["write-blocking"] > 0
    lat = m["write_latency_ms"]
    assert lat["write-blocking"] > lat["background"]
    assert any(e["event"] == "mirror-mode" for e in _events(r, tmp_path))
    last = [e for e in _events(r, tmp_path) if e["event"] == "disk-progress"][-1]
    assert last["write_latency_ms"]["write-blocking"] > 0


def test_a_cancelled_storage_migration_removes_the_partial_disk(ray_cluster, tmp_path):
    events = '[[events]]\nat_s = 0.3\naction = "cancel"\nvm = "db"'
    r = _run(storage_scenario(disk_gib=1.0, events=events), tmp_path)
    assert r["status"] == "cancelled"
    d = r["disk"]
    assert d["destination_removed"] and d["bytes_sent"] < 1.0 * GIB
    stays = [e for e in _events(r, tmp_path) if e["event"] == "stays-on-source"]
    assert stays and stays[0]["host"] == "src"


def test_dirty_bitmap_technique_verifies_with_a_writing_guest(ray_cluster, tmp_path):
    text = storage_scenario(disk_gib=0.25, technique="block-dirty",
                            workload='disk_workload = { preset = "dbench", span_fraction = 0.5 }\n'
                                     'workload = { kind = "uniform", dirty_pages_per_s = 2000 }')
    r = _run(text, tmp_path)
    assert r["status"] == "completed" and r["verified"], r["stop_reason"]
    d = r["disk"]
    assert d["verified"] and "mirror" not in d
    passes = d["passes"]
    assert passes[0]["number"] == 1 and passes[-1]["final"] and len(passes) >= 2
    assert passes[0]["bytes"] == pytest.approx(0.25 * GIB)
    # The guest's writes were sent again: more than the disk in all, the rest in the downtime.
    assert r["disk_bytes_sent"] > 0.25 * GIB
    assert d["downtime_bytes"] == passes[-1]["bytes"]

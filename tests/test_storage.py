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
    # The links carried memory and disk: the network throughput counts both.
    assert r["network_bytes_sent"] == pytest.approx(r["memory_bytes_sent"] + d["network_bytes"])
    assert r["avg_throughput_mbytes_s"] == pytest.approx(r["network_bytes_sent"] / r["total_time_s"] / 2**20)
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
    assert r["network_bytes_sent"] == r["memory_bytes_sent"]
    assert r["disk_bytes_sent"] == pytest.approx(0.25 * GIB)


def test_array_offload_copies_inside_the_array_at_the_datastores_pace(ray_cluster, tmp_path):
    # Both datastores on one VAAI array that offloads, and the source host reaches the target:
    # the array copies (seed, Figure 1), no byte crosses the migration network.
    array = 'array = "vnx1"\noffload = true\noffload_mbytes_s = 150'
    text = storage_scenario(disk_gib=0.25, tgt_hosts='["src", "dst"]', src_array=array, tgt_array=array)
    r = _run(text, tmp_path)
    assert r["status"] == "completed" and r["verified"] and r["disk"]["verified"], r["stop_reason"]
    d = r["disk"]
    assert d["path"] == "array-offload" and d["paths_allowed"][0] == "array-offload"
    assert d["network_bytes"] == 0 and r["disk_bytes_sent"] == pytest.approx(0.25 * GIB)
    # The slower of the array's copy (150 MB/s) and the slow SAN's writes (300 MB/s) sets the pace.
    floor = 0.25 * GIB / 150e6
    assert floor * 0.98 <= d["copy_time_s"] <= floor * 3


def test_a_disk_moves_from_where_it_is_and_only_once(ray_cluster, tmp_path):
    # There (the disk to san-b), back with the disk left on san-b (memory only), then there
    # again asking for san-a: a second move of the disk, refused with the VM where it is.
    both = 'role = ["source", "destination"]'
    legs = ('[[migrations]]\nvm = "db"\nto = "dst"\n'
            '[[migrations]]\nvm = "db"\nfrom = "dst"\nto = "src"\nstart_s = 0.5\n'
            '[[migrations]]\nvm = "db"\nfrom = "src"\nto = "dst"\nstart_s = 1.0\ntarget_datastore = "san-a"\n')
    text = storage_scenario(disk_gib=0.125, src_hosts='["src", "dst"]', tgt_hosts='["src", "dst"]', extra=legs)
    text = text.replace('role = "source"', both).replace('role = "destination"', both)
    r = _run(text.replace('name = "db"\n', 'name = "db"\nhost = "src"\n'), tmp_path)
    there, back, again = r["vms"]
    assert there["status"] == "completed" and there["disk"]["verified"] and there["disk_bytes_sent"] > 0
    assert back["status"] == "completed" and back["verified"] and back["disk_bytes_sent"] == 0
    assert again["status"] == "failed" and "moves once per run" in again["stop_reason"]


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


# --- faults during the disk copy --------------------------------------------------------
def _on_disk_copy(action: str, **fields) -> str:
    extra = "".join(f'{k} = {v}\n' for k, v in fields.items())
    return f'[[events]]\naction = "{action}"\non = {{ vm = "db", phase = "disk-copy" }}\n{extra}'


def _disk_copy_started(events: list[dict], migration: int = 0) -> float:
    return next(e["t"] for e in events if e["event"] == "phase" and e["phase"] == "disk-copy"
                and e["migration"] == migration)


def test_a_crash_in_the_disk_copy_cancels_it_at_once_and_a_retry_to_the_same_host_verifies(ray_cluster, tmp_path):
    retry = ('[[migrations]]\nvm = "db"\nto = "dst"\n'
             '[[migrations]]\nvm = "db"\nfrom = "src"\nto = "dst"\nstart_s = 1.0\n')
    text = storage_scenario(disk_gib=0.5, extra=retry, events=_on_disk_copy("crash-migration-thread", vm='"db"'))
    r = _run(text, tmp_path)
    first, second = r["vms"]
    events = _events(r, tmp_path)
    assert first["status"] == "aborted" and "crashed" in first["stop_reason"]
    d = first["disk"]
    assert d["destination_removed"] and d["bytes_sent"] < 0.5 * 0.5 * GIB
    aborted = next(e for e in events if e["event"] == "aborted" and e["migration"] == 0)
    assert aborted["during"] == "disk-copy"
    assert aborted["t"] - _disk_copy_started(events) < 1.0  # the copy alone takes 1.8 s
    assert r["faults"][0]["outcome"] == "aborted-vm-safe"
    # The retry finds no partial disk in its way, and the guest's disk writes went on meanwhile.
    assert second["status"] == "completed" and second["verified"] and second["disk"]["verified"], second["stop_reason"]


def test_a_killed_destination_in_the_disk_copy_aborts_at_once_and_removes_the_partial_disk(ray_cluster, tmp_path):
    r = _run(storage_scenario(disk_gib=1.0, events=_on_disk_copy("kill-destination", vm='"db"')), tmp_path)
    assert r["status"] == "aborted" and "destination" in r["stop_reason"]
    d = r["disk"]
    assert d["destination_removed"] and d["bytes_sent"] < 0.6 * GIB
    events = _events(r, tmp_path)
    aborted = next(e for e in events if e["event"] == "aborted")
    assert aborted["during"] == "disk-copy"
    assert aborted["t"] - _disk_copy_started(events) < 2.0  # the copy alone takes 3.6 s
    stays = [e for e in events if e["event"] == "stays-on-source"]
    assert stays and stays[0]["host"] == "src"


@pytest.mark.slow  # long end to end: make test-slow
def test_a_link_down_in_the_disk_copy_holds_the_disk_bytes_which_count_on_the_link(ray_cluster, tmp_path):
    text = storage_scenario(disk_gib=0.25, events=_on_disk_copy("link-down", link='"src:eth0->dst:eth0"',
                                                                duration_s=1.5))
    text = text.replace("speed_gbps = 10", "speed_gbps = 1")  # the link, not the SAN, paces the copy
    r = _run(text, tmp_path)
    assert r["status"] == "completed" and r["disk"]["verified"], r["stop_reason"]
    d = r["disk"]
    floor = 0.25 * GIB / 125e6  # 2.15 s at 1 Gbit/s
    assert d["copy_time_s"] >= (floor + 1.5) * 0.95
    link = r["links"][0]
    assert link["bytes_shaped"] >= d["network_bytes"] * 0.99
    samples = [x for x in map(__import__("json").loads, (tmp_path / "timeline.jsonl").read_text().splitlines())
               if x.get("kind") == "link"]
    assert sum(s["bytes"] for s in samples) >= 0.9 * d["network_bytes"]
    assert r["faults"][0]["outcome"] == "survived"


def test_a_link_down_for_good_in_the_disk_copy_aborts_after_the_user_timeout(ray_cluster, tmp_path):
    text = storage_scenario(disk_gib=0.25, events=_on_disk_copy("link-down", link='"src:eth0->dst:eth0"'),
                            mig_extra="tcp_user_timeout_ms = 1000")
    r = _run(text.replace("speed_gbps = 10", "speed_gbps = 1"), tmp_path)
    assert r["status"] == "aborted" and "tcp_user_timeout_ms" in r["stop_reason"]
    assert r["disk"]["destination_removed"] and r["disk"]["bytes_sent"] < 0.1 * GIB
    assert r["total_time_s"] >= 1.0
    assert r["faults"][0]["outcome"] == "aborted-vm-safe"


@pytest.mark.slow  # 17 s; tests/test_storage_core.py checks the pace follows the link's rate without Ray
def test_set_link_in_the_disk_copy_changes_the_disk_copys_pace(ray_cluster, tmp_path):
    import json
    text = storage_scenario(disk_gib=0.125, events=_on_disk_copy("set-link", link='"src:eth0->dst:eth0"',
                                                                 bandwidth_gbps=0.25))
    r = _run(text.replace("speed_gbps = 10", "speed_gbps = 1"), tmp_path)
    assert r["status"] == "completed" and r["disk"]["verified"], r["stop_reason"]
    records = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    changed = next(e["t"] for e in records if e.get("event") == "scheduled" and e.get("action") == "set-link")
    done = next(e["t"] for e in records if e.get("event") == "disk-copy-done")
    after = [s for s in records if s["kind"] == "link" and changed + 0.3 < s["t"] <= done]
    span = after[-1]["t"] - after[0]["t"] + 0.1
    assert sum(s["bytes"] for s in after[1:]) / span <= 0.25e9 / 8 * 1.15  # the new 0.25 Gbit/s, not 1
    # 134 MB at 125 MB/s take 1.07 s; at 31 MB/s after the change, much longer.
    assert r["disk"]["copy_time_s"] >= 2.0


def test_a_policys_completion_timeout_counts_the_disk_copy_and_cancels_during_it(ray_cluster, tmp_path):
    """Nova times the whole job: a completion timeout shorter than the disk copy (1.8 s alone) cancels
    it there, within one monitor period, and the VM and its disk stay on the source (before, the policy
    only started looking once the memory copy began)."""
    policy = 'policy = "nova"\ncompletion_timeout_s_per_gib = 0.5\n'  # memory counted as 2 GiB: 1 s
    r = _run(storage_scenario(disk_gib=0.5, mig_extra=policy), tmp_path)
    assert r["status"] == "cancelled" and "completion-timeout" in r["stop_reason"], r["stop_reason"]
    events = _events(r, tmp_path)
    decided = next(e for e in events if e["event"] == "policy" and e.get("decision") == "cancel")
    assert 1.0 <= decided["elapsed_s"] <= 1.0 + 0.5 + 0.1  # the timeout, plus at most one monitor period
    assert decided["t"] - _disk_copy_started(events) < 1.7
    assert r["disk"]["destination_removed"]
    assert any(e["event"] == "stays-on-source" for e in events)


def test_a_disk_on_shared_storage_does_no_io_while_the_vm_is_stopped(ray_cluster, tmp_path):
    # 20,000 IOPS at 1/64 are ~310 real requests a second: a 0.1 s downtime would see ~30.
    text = storage_scenario(disk_gib=0.25, src_hosts='["src", "dst"]', target="san-a",
                            workload='disk_workload = { read_iops = 16000, write_iops = 4000, read_kib = 4, '
                                     'write_kib = 4 }\nworkload = { kind = "uniform", dirty_pages_per_s = 2000 }')
    r = _run(text, tmp_path)
    assert r["status"] == "completed" and r["verified"], r["stop_reason"]
    assert "disk" not in r or not r["disk"].get("bytes_sent")  # the disk stayed where it was
    assert r["downtime_ms"] > 0 and r["app"]["disk_ios_in_downtime"] == 0
    assert r["app"]["disk_ios_after_downtime"] > 0  # and it went on once the VM ran again


@pytest.mark.parametrize("disk_gib, dilation, saturated", [(4.0, 0.01, True), (1.0, 1.0, False)])
def test_a_disk_copy_faster_than_this_machine_reports_saturation(ray_cluster, tmp_path, disk_gib, dilation,
                                                                 saturated):
    """The disk threads' overrun counts in fidelity.saturation: at dilation 0.01 the 4 GiB disk
    (64 MiB here) must cross in 0.14 real seconds; at dilation 1, 1 GiB has 3.6 s."""
    r = _run(storage_scenario(disk_gib=disk_gib, dilation=dilation), tmp_path)
    assert r["status"] == "completed" and r["verified"], r["stop_reason"]
    fid = r["emulation"]["fidelity"]
    assert fid["saturation"] >= r["disk"]["saturation"]
    if saturated:
        assert r["disk"]["saturation"] > 0.05 and not fid["faithful"]
    else:
        assert r["disk"]["saturation"] < 0.05


def test_a_corrupt_batch_fault_damages_disk_entries_too_and_they_are_sent_again(ray_cluster, tmp_path):
    events = _on_disk_copy("corrupt-batch", link='"src:eth0->dst:eth0"', count=3)
    r = _run(storage_scenario(disk_gib=0.25, events=events), tmp_path)
    assert r["status"] == "completed" and r["verified"], r["stop_reason"]
    d = r["disk"]
    assert d["path"] == "network" and d["verified"]
    assert d["batches_corrupted"] == d["batches_resent"] == 3
    assert r["faults"][0]["detail"]["disk_copies"] == ["db"]


@pytest.mark.slow
@pytest.mark.parametrize("scale, dilation", [(1 / 128, 1.0), (1 / 32, 1.0), (1 / 64, 2.0)])
def test_a_disk_migration_s_figures_do_not_depend_on_scaling(ray_cluster, tmp_path, scale, dilation):
    """Issue 10 item 8: total time and disk bytes sent within 5% of the base (1/64, dilation 1)."""
    def run(sc: float, d: float, out) -> dict:
        text = storage_scenario(disk_gib=2.0, memory_gib=0.5, scale=sc, dilation=d,
                                workload='disk_workload = { preset = "ds2" }\n'
                                         'workload = { kind = "uniform", dirty_pages_per_s = 2000 }')
        r = _run(text, out)
        assert r["status"] == "completed" and r["verified"], r["stop_reason"]
        return r
    base = run(1 / 64, 1.0, tmp_path / "base")
    other = run(scale, dilation, tmp_path / "other")
    assert other["total_time_s"] == pytest.approx(base["total_time_s"], rel=0.05)
    assert other["disk_bytes_sent"] == pytest.approx(base["disk_bytes_sent"], rel=0.05)
    assert other["disk"]["copy_time_s"] == pytest.approx(base["disk"]["copy_time_s"], rel=0.05)

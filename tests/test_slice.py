"""A datacenter slice on a real Ray cluster: concurrent migrations over shared
links, chained hosts, cancellation at every phase, scheduled link changes,
and a timeline that adds up (the control-plane issue's tests)."""
from __future__ import annotations

import json

import pytest

from cluster.runner import RunOptions, run_scenario
from cluster.scenario import parse_scenario

GBE = 125e6  # bytes/s of 1 Gbit/s


def _host(name: str, role: str, gbps: float = 1, memory_gib: float = 64) -> str:
    return f'''
[[hosts]]
name = "{name}"
role = {role}
memory_gib = {memory_gib}
nics = [{{ name = "eth0", speed_gbps = {gbps} }}]
'''


def _vm(name: str, gib: float, workload: str = '{ kind = "idle" }', host: str = "") -> str:
    where = f'host = "{host}"\n' if host else ""
    return f'''
[[vms]]
name = "{name}"
memory_gib = {gib}
{where}workload = {workload}
content = {{ zero = 0.1, text = 0.4, structured = 0.2, random = 0.3 }}
'''


def _run(text: str, tmp_path, name: str = "slice") -> tuple[dict, list[dict]]:
    r = run_scenario(parse_scenario(text, f"{name}.toml"), RunOptions(out_dir=str(tmp_path)))
    records = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    return r, records


HEAD = '''
name = "{name}"
[emulation]
memory_scale = 0.015625
dilation = 1.0
seed = 3
[network]
rtt_ms = 0.2
[migration]
downtime_limit_ms = 50
'''


@pytest.fixture(scope="module")
def evacuation(ray_cluster, tmp_path_factory):
    text = HEAD.format(name="evacuate") + _host("a", '"source"') + _host("b", '"destination"')
    text += "".join(_vm(f"vm{i}", 0.125) for i in range(4))
    return _run(text, tmp_path_factory.mktemp("evacuate"))


def test_evacuation_of_four_vms_over_one_shared_link(evacuation):
    r, records = evacuation
    assert r["status"] == "completed" and r["verified"], r.get("stop_reason")
    assert [v["verified"] for v in r["vms"]] == [True] * 4
    # All four start together (the quickstart's way: start_s defaults to 0).
    starts = [v["started_at_s"] for v in r["vms"]]
    assert max(starts) - min(starts) < 0.1
    evac = r["evacuations"]["a"]
    assert sorted(evac["vms"]) == [f"vm{i}" for i in range(4)]
    state = 256 * 1024
    floor = sum(v["memory_bytes_sent"] + state for v in r["vms"]) / GBE + 0.050  # all over the one link, plus set-up
    assert evac["evacuation_time_s"] == pytest.approx(floor, rel=0.10)
    # Sharing one link, each took about four times as long as alone would.
    assert evac["sum_of_migration_times_s"] > 3 * evac["evacuation_time_s"]


def test_four_transfer_rates_are_fair_while_all_four_run(evacuation):
    r, records = evacuation
    samples = [x for x in records if x["kind"] == "migration" and not x["final"]]
    # The window in which all four were in their first pass.
    start = max(v["started_at_s"] for v in r["vms"]) + 0.2
    end = min(x["t"] for x in records if x["kind"] == "event" and x["event"] == "vm-stopped") - 0.15
    assert end - start > 1.0, (start, end)
    rates = []
    for i in range(4):
        mine = [x for x in samples if x["vm"] == f"vm{i}" and start <= x["t"] <= end]
        # Each sample holds what moved since the previous one.
        rates.append(sum(x["transferred_bytes"] for x in mine[1:]) / (mine[-1]["t"] - mine[0]["t"]))
    assert max(rates) / min(rates) < 1.2, rates
    assert sum(rates) == pytest.approx(GBE, rel=0.1), rates


def test_timeline_bytes_add_up_to_the_results_and_to_what_the_link_carried(evacuation):
    r, records = evacuation
    for v in r["vms"]:
        mine = [x for x in records if x["kind"] == "migration" and x["vm"] == v["vm"]]
        total = sum(x["transferred_bytes"] for x in mine)
        assert total == pytest.approx(v["memory_bytes_sent"], rel=0.01)
        pages = sum(x["pages_normal"] + x["pages_zero"] for x in mine)
        assert pages == pytest.approx(v["pages"]["normal"] + v["pages"]["zero"], rel=0.01)
        # An independent count: the bytes the link shaped for this VM's connection (memory and state).
        shaped = sum(link["bytes_shaped"] for link in v["links"])
        state = 256 * 1024
        assert total + state == pytest.approx(shaped, rel=0.01)
    # Events carry QEMU's names and the downtime checkpoints.
    names = {x["event"] for x in records if x["kind"] == "event"}
    assert {"iteration", "vm-stopped", "last-page-sent", "device-state-sent", "destination-loaded",
            "vm-started", "verification", "switched-over"} <= names
    kinds = {x["kind"] for x in records}
    assert {"migration", "link", "host", "guest", "event"} <= kinds


@pytest.mark.slow  # long end to end: make test-slow
def test_a_to_b_while_b_to_c(ray_cluster, tmp_path):
    text = HEAD.format(name="chain") + _host("a", '"source"') + _host("b", '["source", "destination"]')
    text += _host("c", '"destination"')
    text += _vm("first", 0.25, '{ kind = "uniform", dirty_pages_per_s = 2000, working_set_gib = 0.05 }', "a")
    text += _vm("second", 0.25, '{ kind = "uniform", dirty_pages_per_s = 2000, working_set_gib = 0.05 }', "b")
    text += '''
[[migrations]]
vm = "first"
to = "b"
[[migrations]]
vm = "second"
to = "c"
'''
    r, records = _run(text, tmp_path, "chain")
    assert r["status"] == "completed" and r["verified"]
    assert [(v["source"], v["destination"], v["verified"]) for v in r["vms"]] == [("a", "b", True), ("b", "c", True)]
    # They ran at the same time.
    first, second = r["vms"]
    assert second["started_at_s"] < first["finished_at_s"] and first["started_at_s"] < second["finished_at_s"]


@pytest.mark.parametrize("phase, iteration", [("setup", 0), ("precopy", 1), ("precopy", 2), ("stop-and-copy", 0)])
def test_cancel_leaves_the_vm_on_its_source_and_a_second_migration_completes(ray_cluster, tmp_path, phase, iteration):
    text = HEAD.format(name="cancel") + _host("a", '"source"', 10) + _host("b", '"destination"', 10)
    text += _host("c", '"destination"', 10)
    text += _vm("vm", 0.5, '{ kind = "uniform", dirty_pages_per_s = 20000, working_set_gib = 0.1 }')
    on = f'{{ vm = "vm", phase = "{phase}"' + (f", iteration = {iteration} }}" if iteration else " }")
    text += f'''
[[migrations]]
vm = "vm"
to = "b"
downtime_limit_ms = 5  # so that there is a second iteration
[[migrations]]
vm = "vm"
from = "a"
to = "c"
[[events]]
on = {on}
action = "cancel"
vm = "vm"
'''
    r, records = _run(text, tmp_path, "cancel")
    first, second = r["vms"]
    assert first["status"] == "cancelled", first["stop_reason"]
    assert not first["verified"] and first["downtime_ms"] == 0
    assert second["status"] == "completed" and second["verified"], second["stop_reason"]
    assert second["started_at_s"] >= first["finished_at_s"]
    stays = [x for x in records if x["kind"] == "event" and x["event"] == "stays-on-source"]
    assert [(x["migration"], x["host"]) for x in stays] == [(0, "a")]
    # The guest kept running on its source between the two migrations.
    ops = [x["ops_per_s"] for x in records if x["kind"] == "guest"
           and first["finished_at_s"] + 0.05 < x["t"] < second["started_at_s"] + 0.05]
    assert all(o > 0 for o in ops)


@pytest.mark.slow  # long end to end: make test-slow
def test_a_scheduled_bandwidth_halving_halves_the_transfer_rate(ray_cluster, tmp_path):
    text = HEAD.format(name="halving") + _host("a", '"source"') + _host("b", '"destination"')
    text += _vm("vm", 0.5)
    text += '''
[[events]]
at_s = 2.0
action = "set-link"
link = "a:eth0->b:eth0"
bandwidth_gbps = 0.5
'''
    r, records = _run(text, tmp_path, "halving")
    assert r["status"] == "completed" and r["verified"]
    start = r["vms"][0]["started_at_s"]
    link = [x for x in records if x["kind"] == "link"]

    def rate(t1: float, t2: float) -> float:
        xs = [x["throughput_bytes_s"] for x in link if start + t1 <= x["t"] <= start + t2]
        return sum(xs) / len(xs)

    before, after = rate(0.5, 1.9), rate(2.3, 3.8)
    assert before == pytest.approx(GBE, rel=0.05)
    assert after / before == pytest.approx(0.5, rel=0.10)
    assert any(x["kind"] == "event" and x["event"] == "scheduled" for x in records)


def test_one_nic_sending_to_two_hosts_is_shared_between_their_links(ray_cluster, tmp_path):
    text = HEAD.format(name="fan-out") + _host("s", '"source"') + _host("d1", '"destination"')
    text += _host("d2", '"destination"')
    text += _vm("p", 0.25) + _vm("q", 0.25)
    text += '''
[[migrations]]
vm = "p"
to = "d1"
[[migrations]]
vm = "q"
to = "d2"
'''
    r, records = _run(text, tmp_path, "fanout")
    assert r["status"] == "completed" and r["verified"]
    p, q = r["vms"]
    both = (max(p["started_at_s"], q["started_at_s"]) + 0.3, min(p["finished_at_s"], q["finished_at_s"]) - 0.3)
    assert both[1] - both[0] > 0.8
    per_link = {}  # each link's records are dated when its actor read them
    for x in records:
        if x["kind"] == "link" and both[0] <= x["t"] <= both[1]:
            per_link.setdefault(x["link"], []).append(x["throughput_bytes_s"])
    # The two links together never carry more than the one NIC behind them.
    assert len(per_link) == 2
    mean = sum(sum(xs) / len(xs) for xs in per_link.values())
    assert mean == pytest.approx(GBE, rel=0.08)
    # Once one migration ends, the other gets the whole NIC.
    assert p["avg_throughput_mbytes_s"] + q["avg_throughput_mbytes_s"] < 1.5 * GBE / 2**20

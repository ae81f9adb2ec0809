"""Split migration end to end on real actors (agents/techniques/split.py,
cluster/split_run.py): a VM with a read-mostly hot set goes to a main host
holding half of it and a sub-host's memory server; verified page for page
on each host with every page on exactly one host, at the switch-over and
again after remote paging under the running workload; LRU splitting faults
less than random; a memory server that refuses to start, or is killed
during the migration, leaves the VM on its source, intact; one killed after
it loses the VM (reported with its pages lost); remote paging crosses the
main<->sub link and the vCPU waits for the faulting page only."""
from __future__ import annotations

from pathlib import Path

import pytest

from cluster.scenario import parse_scenario
from tests.conftest import ROOT

TINY = (ROOT / "scenarios" / "smemv" / "tiny-split.toml").read_text()
GIB_PAGES = (1 << 30) // 4096


def _run(text: str, tmp_path: Path, **opts) -> dict:
    from cluster.runner import RunOptions, run_scenario
    sc = parse_scenario(text, "tiny-split.toml")
    return run_scenario(sc, RunOptions(out_dir=str(tmp_path), **opts))["vms"][0]


@pytest.fixture(scope="module")
def runs(ray_cluster, tmp_path_factory):
    """The tiny scenario with LRU and with random splitting (one Ray for both)."""
    return {policy: _run(TINY.replace('split_policy = "lru"', f'split_policy = "{policy}"'),
                         tmp_path_factory.mktemp(policy)) for policy in ("lru", "random")}


@pytest.mark.parametrize("policy", ["lru", "random"])
def test_split_migration_verifies_on_every_host_and_places_each_page_once(runs, policy):
    v = runs[policy]
    assert v["status"] == "completed" and v["verified"], v["stop_reason"]
    s = v["split"]
    assert sum(s["pages_by_host"]) == 2 * GIB_PAGES
    assert s["pages_by_host"][0] <= s["capacity_chunks"][0] * s["chunk_pages"]
    assert s["misplaced_pages"] == 0
    rp = s["remote_paging"]
    assert rp["misplaced_pages_at_end"] == 0, "after remote paging under the running workload"
    assert rp["lost_pages_at_end"] == 0, "a page the guest did not write since is still the source's, wherever it is"
    assert rp["on_main_chunks"] <= rp["capacity_chunks"]
    assert rp["page_ins"] == rp["page_outs"], "the main host stays within its memory"


def test_lru_split_faults_less_than_random_and_recovers(runs):
    lru, rnd = runs["lru"]["split"], runs["random"]["split"]
    assert rnd["remote_paging"]["faults"] > 0, "random splitting leaves part of the hot set on the sub-host"
    assert lru["remote_paging"]["faults"] < rnd["remote_paging"]["faults"]
    assert lru["recovery_s"] is not None  # back to 90% of the rate before, and staying there
    assert rnd["remote_paging"]["fault_latency"]["p50_us"] > 0
    assert sum(rnd["remote_paging"]["fault_latency"]["histogram"]) == rnd["remote_paging"]["faults"]


def test_split_migration_time_is_within_10_percent_of_the_predictor(runs):
    """cluster/predict_split.py: pre-copy at the source NIC's rate shared by the links to
    the main host and the sub-host, plus the network page table and history in the
    stop-and-copy (measured: 1-2% apart on this machine)."""
    from cluster.predict import predict
    predicted = predict(parse_scenario(TINY, "tiny-split.toml"))["total_time_s"]
    assert runs["lru"]["total_time_s"] == pytest.approx(predicted, rel=0.10)


@pytest.mark.slow  # long end to end: make test-slow
def test_a_memory_server_that_refuses_to_start_leaves_the_vm_on_its_source(ray_cluster, tmp_path):
    v = _run(TINY.replace("observe_after_s = 2", "observe_after_s = 0"), tmp_path,
             inject_fault="memory-server-refuses")
    assert v["status"] == "failed" and not v["verified"]
    assert "memory server" in v["stop_reason"]
    import json
    events = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    names = [e.get("event") for e in events if e.get("kind") == "event"]
    assert "stays-on-source" in names and "switched-over" not in names
    running = [e["ops_per_s"] for e in events if e.get("kind") == "guest"]
    assert running[-1] > 0, "the VM runs on at its source"


@pytest.mark.slow  # long end to end: make test-slow
def test_swap_assisted_pages_to_the_device_during_and_after_and_verifies(ray_cluster, tmp_path):
    """The baseline: half the VM's memory free at the destination, the rest
    swapped to an SSD model through a real swap file; verified page for page
    (swapped pages read back), slower than the split migration of the same VM."""
    text = (ROOT / "scenarios" / "smemv" / "tiny-swap.toml").read_text().replace("observe_after_s = 2",
                                                                                 "observe_after_s = 1")
    v = _run(text, tmp_path)
    assert v["status"] == "completed" and v["verified"], v["stop_reason"]
    paging = v["swap"]["paging"]
    during = paging["during_migration"]
    # 2 GiB of which 20% zero pages (left unmapped, as QEMU does) into 1 GiB: about 0.6 GiB went to swap.
    assert 0.5 * GIB_PAGES <= during["swapped_out_pages"] <= 0.7 * GIB_PAGES
    # The device's time (at 510 MB/s) is in the migration time: the figure comes from the model.
    assert during["device_busy_s"] >= during["swapped_out_pages"] * 4096 / 510e6
    assert v["total_time_s"] > during["device_busy_s"]
    # cluster/predict_split.py: the network's time plus the device's (measured: 2.5% apart).
    from cluster.predict import predict
    predicted = predict(parse_scenario(text, "tiny-swap.toml"))
    assert v["total_time_s"] == pytest.approx(predicted["total_time_s"], rel=0.15)
    assert during["swapped_out_pages"] == pytest.approx(predicted["swap"]["swapped_out_pages"], rel=0.05)


@pytest.mark.slow  # long end to end: make test-slow
def test_remote_paging_waits_for_the_faulting_page_over_the_main_sub_link(ray_cluster, tmp_path):
    """Remote paging crosses the main<->sub link (here 20 ms round trip at 100 Mbit/s, the
    migration's links 0.2 ms at 10 GbE): a fault takes at least that link's round trip
    plus one page (20.3 ms), and the vCPU may resume with the faulting page, long before
    its 1 MiB chunk has crossed (84 ms more)."""
    text = TINY.replace('from = "main:eth0"\nto = "sub:eth0"\nrtt_ms = 0.2',
                        'from = "main:eth0"\nto = "sub:eth0"\nrtt_ms = 20\nbandwidth_gbps = 0.1')
    text = text.replace('split_policy = "lru"', 'split_policy = "random"')
    v = _run(text, tmp_path)
    assert v["status"] == "completed" and v["verified"], v["stop_reason"]
    rp = v["split"]["remote_paging"]
    assert rp["faults"] > 0
    # Power-of-two buckets: bucket 14 is [16.4, 32.8) ms, where a fault that waited for the
    # faulting page alone ends (20.3 ms on an idle link); the whole chunk takes 104 ms
    # (bucket 16). Faults behind another chunk on the link wait for it: FIFO, as on TCP.
    hist = rp["fault_latency"]["histogram"]
    assert sum(hist[:14]) == 0, "no fault is quicker than the paging link's round trip"
    assert hist[14] > 0, "the vCPU resumes with the faulting page, before its chunk is in"
    assert rp["misplaced_pages_at_end"] == 0 and rp["lost_pages_at_end"] == 0


def _events(tmp_path: Path) -> list[dict]:
    import json
    return [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]


def _with_kill(at_s: float) -> str:
    return TINY + f'\n[[events]]\nat_s = {at_s}\naction = "kill-memory-server"\nhost = "sub"\n'


def _result(tmp_path: Path, text: str) -> tuple[dict, dict]:
    from cluster.runner import RunOptions, run_scenario
    r = run_scenario(parse_scenario(text, "tiny-split.toml"), RunOptions(out_dir=str(tmp_path)))
    return r, r["vms"][0]


@pytest.mark.slow  # long end to end (25-30 s): make test-slow
def test_a_memory_server_killed_during_split_migration_aborts_it_and_the_vm_stays(ray_cluster, tmp_path):
    r, v = _result(tmp_path, _with_kill(2.3))  # the migration starts at 2 s and takes about 1.5 s
    assert v["status"] in ("aborted", "failed") and not v["verified"]
    assert r["faults"][0]["kind"] == "kill-memory-server" and r["faults"][0]["outcome"] == "aborted-vm-safe"
    assert r["fault_counts"] == {"kill-memory-server": {"aborted-vm-safe": 1}}
    names = [e.get("event") for e in _events(tmp_path) if e.get("kind") == "event"]
    assert "stays-on-source" in names and "switched-over" not in names and "fault-outcome" in names
    assert v["app"]["ops_per_s_after"] > 0.8 * v["app"]["ops_per_s_before"], "the VM runs on at its source"


@pytest.mark.slow  # two runs end to end (about 50 s): make test-slow
@pytest.mark.parametrize("when", ['at_s = 1', 'on = { vm = "vm", phase = "stop-and-copy" }'])
def test_a_memory_server_killed_before_or_at_the_switch_over_leaves_the_vm_on_its_source(ray_cluster, tmp_path, when):
    # Before the migration starts (at 2 s), or on entering its stop-and-copy: a fresh-eyes
    # reviewer found both crashed the run (calls to the dead actor); the VM must stay put.
    r, v = _result(tmp_path, TINY + f'\n[[events]]\n{when}\naction = "kill-memory-server"\nhost = "sub"\n')
    assert v["status"] in ("aborted", "failed") and not v["verified"], v["stop_reason"]
    assert r["faults"][0]["outcome"] in ("aborted-vm-safe", "no-effect")
    names = [e.get("event") for e in _events(tmp_path) if e.get("kind") == "event"]
    assert "stays-on-source" in names and "switched-over" not in names


@pytest.mark.slow  # long end to end (25-30 s): make test-slow
def test_a_memory_server_killed_after_split_migration_loses_the_vm_and_its_pages(ray_cluster, tmp_path):
    r, v = _result(tmp_path, _with_kill(4.5))  # switched over at about 3.5 s; observed until 5.5 s
    assert v["status"] == "completed" and v["verified"], "the migration itself completed"
    assert r["faults"][0]["outcome"] == "vm-lost" and r["fault_counts"] == {"kill-memory-server": {"vm-lost": 1}}
    lost = v["data_path_faults"]["lost"]
    assert v["data_path_faults"]["vm_lost"] and lost["host"] == "sub"
    # The sub-host held what the main host (1 GiB less the state) could not: about 1 GiB of 2.
    assert lost["pages_total"] == 2 * GIB_PAGES
    assert 0.45 * lost["pages_total"] <= lost["pages_lost"] <= 0.55 * lost["pages_total"]
    events = _events(tmp_path)
    lost_ev = [e for e in events if e.get("event") == "vm-lost"]
    assert lost_ev and lost_ev[0]["pages_lost"] == lost["pages_lost"]
    # Stopped where it is: no operation after the loss (the last record is the final sample).
    ops = [e["ops_per_s"] for e in events if e.get("kind") == "guest" and e["t"] > lost_ev[0]["t"] + 0.2]
    assert ops and max(ops) == 0


PAGING_LINK = "main:eth0->sub:eth0"


def _with_paging_link_down(**fields) -> str:
    """TINY with random splitting (faults go on after the switch-over), a 1 s user timeout,
    4 s observed after the switch-over, and a link-down on the main<->sub paging link."""
    text = TINY.replace('split_policy = "lru"', 'split_policy = "random"\ntcp_user_timeout_ms = 1000')
    text = text.replace("observe_after_s = 2", "observe_after_s = 4")
    return text + "\n[[events]]\naction = \"link-down\"\n" + f'link = "{PAGING_LINK}"\n' + "".join(
        f"{k} = {v!r}\n" for k, v in fields.items())


@pytest.mark.slow  # long end to end (about 30 s): make test-slow
def test_a_paging_link_down_for_good_loses_the_vm_after_the_user_timeout_with_its_pages(ray_cluster, tmp_path):
    r, v = _result(tmp_path, _with_paging_link_down(at_s=4.5))  # switched over at about 3.5 s
    assert v["status"] == "completed" and v["verified"], "the migration itself completed"
    assert r["faults"][0]["kind"] == "link-down" and r["faults"][0]["migrations"] == [0]
    assert r["faults"][0]["outcome"] == "vm-lost" and r["fault_counts"] == {"link-down": {"vm-lost": 1}}
    assert r["final_hosts"] == {"vm": "(lost)"}
    lost = v["data_path_faults"]["lost"]
    assert v["data_path_faults"]["vm_lost"] and lost["host"] == "sub" and "tcp_user_timeout_ms" in lost["reason"]
    # Every page is on the main host or the sub-host: about half each (the main host holds 1 GiB of 2).
    on = lost["pages_on_host"]
    assert set(on) == {"main", "sub"} and on["main"] + on["sub"] == lost["pages_total"] == 2 * GIB_PAGES
    assert 0.4 * lost["pages_total"] <= on["sub"] <= 0.6 * lost["pages_total"]
    assert v["split"]["remote_paging"]["link_down_s"] >= 1.0, "the fault waited out the whole user timeout"
    events = _events(tmp_path)
    lost_ev = [e for e in events if e.get("event") == "vm-lost"]
    assert lost_ev and lost_ev[0]["pages_on_host"] == on
    ops = [e["ops_per_s"] for e in events if e.get("kind") == "guest" and e["t"] > lost_ev[0]["t"] + 0.2]
    assert ops and max(ops) == 0, "stopped where it is: no operation after the loss"


@pytest.mark.slow  # long end to end (about 30 s): make test-slow
def test_a_short_paging_link_down_holds_the_faults_and_the_vm_survives(ray_cluster, tmp_path):
    r, v = _result(tmp_path, _with_paging_link_down(at_s=4.5, duration_s=0.4))  # back well within 1 s
    assert v["status"] == "completed" and v["verified"]
    assert r["faults"][0]["migrations"] == [0] and r["faults"][0]["outcome"] == "survived"
    assert r["final_hosts"] == {"vm": "main"} and not v["data_path_faults"]["vm_lost"]
    rp = v["split"]["remote_paging"]
    assert 0.0 < rp["link_down_s"] <= 0.4 + 0.1, "faults waited for the link, at most its outage"
    assert "lost" not in rp and rp["misplaced_pages_at_end"] == 0 and rp["lost_pages_at_end"] == 0

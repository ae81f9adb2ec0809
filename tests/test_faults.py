"""Faults: a link down for a while or for good, damaged batches, a killed
destination, a crashed migration thread (cluster/faults.py, agents/faults.py).

The data-path tests run the real sender, link shaper and receiver over
socket pairs, without Ray; the end-to-end ones run small scenarios on one
shared Ray and check what a user relies on: the run verifies when it should,
and when it cannot, the VM keeps running on its source.
"""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from agents.cpu import CorePool
from agents.datapath.channel import KIND_BATCH, Channel
from agents.datapath.link import LinkShaper
from agents.datapath.receiver import PageReceiver
from agents.datapath.sender import ConnectionLost, PageSender
from agents.datapath.wire_format import SlotLayout, SlotView, pack_pages, restore_pages
from agents.faults import Watchdog
from cluster.faults import Fault, counts, judge
from tests.conftest import scenario_text

PAGE = 4096
LINK = "src:eth0->dst:eth0"


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Channel(a), Channel(b)


class Wire:
    """Source image -> PageSender -> LinkShaper -> PageReceiver -> destination image."""

    def __init__(self, npages=256, batch=8, slots=4, rate=200e6, one_way=0.0005):
        rng = np.random.default_rng(3)
        self.src = rng.integers(0, 256, (npages, PAGE), dtype=np.uint8)
        self.dst = np.zeros_like(self.src)
        self.layout = SlotLayout(batch)
        self.ring = np.zeros(slots * self.layout.slot_bytes, dtype=np.uint8)
        to_link, link_in = _pair()
        link_out, from_link = _pair()
        acks_rx, acks_tx = _pair()
        self.link = LinkShaper(rate, one_way)
        self.link.run([(0, link_in, link_out)])
        self.sender = PageSender(self.ring, slots, self.layout, to_link, acks_rx)
        self.receiver = PageReceiver(self.ring, slots, self.layout, from_link, acks_tx, CorePool(4),
                                     lambda n, full: 0.0, {0: self.dst})
        self.batch = batch

    def send(self, idx: np.ndarray) -> None:
        for start in range(0, len(idx), self.batch):
            chunk = idx[start:start + self.batch]
            slot = self.sender.acquire_slot()
            stats = self.sender.pack(slot, self.src, chunk)
            self.sender.post(slot, 0, len(chunk), stats)

    def close(self):
        self.sender.close()


# --- pure ------------------------------------------------------------------------------
def test_outcomes_are_judged_from_the_migrations_a_fault_hit():
    ok = {"status": "completed", "verified": True}
    aborted = {"status": "aborted", "verified": False}
    lost = {"status": "failed", "verified": False, "vm_lost": True}
    f = Fault("link-down", 1.0, LINK, 0, migrations=[0, 1])
    assert judge(f, {0: ok, 1: ok}) == "survived"
    assert judge(f, {0: ok, 1: aborted}) == "aborted-vm-safe"
    assert judge(f, {0: lost, 1: ok}) == "vm-lost"
    assert judge(Fault("crash-migration-thread", 0.0, "vm", 1), {0: ok}) == "no-effect"
    f.outcome = "survived"
    assert counts([f, Fault("corrupt-batch", 0, LINK, 2, outcome="survived"), f]) == {
        "link-down": {"survived": 2}, "corrupt-batch": {"survived": 1}}


def test_a_damaged_batch_fails_its_checksum_and_would_not_restore_the_source():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (16, PAGE), dtype=np.uint8)
    layout = SlotLayout(16)
    ring = np.zeros(layout.slot_bytes, dtype=np.uint8)
    slot = SlotView(ring, 0, layout)
    pack_pages(image, np.arange(16), slot)
    slot.seal()
    assert slot.intact()
    slot.payload[5000] ^= 0x01  # one bit, in the second page
    assert not slot.intact()
    dst = np.zeros_like(image)
    restore_pages(dst, slot)  # what a receiver without the checksum would have written
    assert not np.array_equal(dst, image)
    slot.payload[5000] ^= 0x01
    slot.idx[3] = 7  # a damaged page number is caught too
    assert not slot.intact()


def test_damaged_batches_are_detected_resent_and_counted_and_the_copy_is_exact():
    w = Wire()
    hit = []

    def corrupt(cid, d):
        if d[0] == KIND_BATCH and len(hit) < 3 and d[5] % 5 == 0:
            SlotView(w.ring, d[2], w.layout).payload[123] ^= 0xFF
            hit.append(d[5])

    w.link.corrupt_next = corrupt
    try:
        w.send(np.arange(len(w.src)))
        w.sender.drain(timeout=30)
        assert len(hit) == 3
        assert w.receiver.batches_corrupted == 3
        assert w.sender.counters.batches_resent == 3
        assert np.array_equal(w.src, w.dst)
    finally:
        w.close()


def test_a_link_down_holds_batches_and_delivers_them_when_it_comes_back():
    w = Wire(rate=50e6)
    try:
        w.link.set_down(True)
        sending = threading.Thread(target=w.send, args=(np.arange(64),), daemon=True)
        sending.start()
        assert Watchdog.wait_for(lambda: w.sender.counters.batches >= 4, 10)  # the ring is full
        time.sleep(0.3)
        assert w.receiver.pages_restored == 0  # nothing crosses a link that is down
        assert w.sender.stalled_s() >= 0.3
        w.link.set_down(False)
        sending.join(30)  # every batch posted, then every batch acknowledged
        w.sender.drain(timeout=30)
        assert w.receiver.pages_restored == 64
        assert np.array_equal(w.src[:64], w.dst[:64])
    finally:
        w.close()


def test_the_watchdog_fails_a_stalled_connection_and_wakes_its_waiters():
    w = Wire(slots=2)
    done = threading.Event()
    try:
        w.link.set_down(True)
        dog = Watchdog([w.sender], 0.0, 1.0, done)  # the real floor: one second
        errors = []

        def send():
            try:
                w.send(np.arange(64))  # blocks on the ring: two slots, never acknowledged
            except ConnectionLost as exc:
                errors.append(exc)

        t = threading.Thread(target=send, daemon=True)
        t0 = time.monotonic()
        t.start()
        t.join(10)
        assert errors and "tcp_user_timeout_ms" in str(errors[0])
        assert 0.9 < time.monotonic() - t0 < 5 and dog.fired == 1
        with pytest.raises(ConnectionLost):
            w.sender.drain(timeout=5)
    finally:
        done.set()
        w.close()


def test_a_reset_drops_what_the_link_holds_and_returns_every_slot():
    w = Wire(slots=4)
    try:
        w.link.set_down(True)
        w.send(np.arange(32))  # four batches: every slot queued at the link
        w.sender.reset()
        w.sender.drain(timeout=10)  # all four slots came back, as DROPPED
        assert w.receiver.batches_dropped == 4 and w.receiver.pages_restored == 0
        assert w.sender.counters.batches_dropped == 4
        w.link.set_down(False)
        w.send(np.arange(32, 64))  # the connection works again
        w.sender.drain(timeout=10)
        assert np.array_equal(w.src[32:64], w.dst[32:64]) and not w.dst[:32].any()
    finally:
        w.close()


# --- end to end --------------------------------------------------------------------------
WRITER = '{ kind = "uniform", dirty_pages_per_s = 5000, working_set_gib = 0.0625 }'


def _event(action: str, **fields) -> str:
    """One [[events]] table: `on` as a dict, other values as TOML scalars."""
    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return f'"{v}"' if isinstance(v, str) else repr(v)
    return "\n[[events]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in (fields | {"action": action}).items())


def _run(tmp_path, events: str, migration: str = "", memory_gib: float = 0.25, **kw):
    from cluster.runner import RunOptions, run_scenario
    from cluster.scenario import parse_scenario
    text = scenario_text("faults", memory_gib=memory_gib, workload=WRITER, downtime_ms=300, migration=migration,
                         **kw) + events
    sc = parse_scenario(text, "faults.toml")
    r = run_scenario(sc, RunOptions(out_dir=str(tmp_path)))
    return r, [r for r in _timeline(tmp_path) if r["kind"] == "event"]


def _timeline(tmp_path):
    import json
    return [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]


def _stayed_on_source(r, events):
    assert r["status"] == "aborted" and not r["verified"]
    assert any(e["event"] == "stays-on-source" and e["host"] == "src" for e in events)
    assert not any(e["event"] == "switched-over" for e in events)
    app = r["app"]
    assert app["ops_per_s_after"] > 0.8 * app["ops_per_s_before"]  # its workload goes on, on the source
    assert r["faults"][0]["outcome"] == "aborted-vm-safe"


def test_precopy_waits_out_a_link_outage_and_verifies(ray_cluster, tmp_path):
    r, events = _run(tmp_path, _event("link-down", at_s=0.5, link=LINK, duration_s=1.5))
    assert r["status"] == "completed" and r["verified"], r["stop_reason"]
    assert r["faults"][0]["kind"] == "link-down" and r["faults"][0]["outcome"] == "survived"
    assert r["fault_counts"] == {"link-down": {"survived": 1}}
    # Both clocks: the scenario's (after the warm-up) and the run's, which the timeline and started_at_s use.
    fault = r["faults"][0]
    assert fault["at_s"] == pytest.approx(0.5, abs=0.05)
    assert fault["run_at_s"] == pytest.approx(next(e["t"] for e in events if e["event"] == "fault"), abs=1e-6)
    assert fault["run_at_s"] - fault["at_s"] == pytest.approx(r["emulation"]["warmup_s"], abs=0.05)
    # Its bytes' time on 1 GbE, plus the outage: nothing crossed the link meanwhile.
    assert r["total_time_s"] > r["memory_bytes_sent"] / 125e6 + 1.5
    assert any(e["event"] == "link-up" and e["by"] == "duration" for e in events)


def test_a_link_down_for_good_aborts_after_the_user_timeout_and_the_vm_stays(ray_cluster, tmp_path):
    r, events = _run(tmp_path, _event("link-down", at_s=0.5, link=LINK), migration="tcp_user_timeout_ms = 1500")
    _stayed_on_source(r, events)
    assert "tcp_user_timeout_ms" in r["stop_reason"]
    assert r["total_time_s"] >= 0.5 + 1.5


def test_a_fault_scheduled_after_the_run_ends_is_reported_as_never_fired(ray_cluster, tmp_path):
    # A user must not read a kill that never came as one the VM survived.
    r, events = _run(tmp_path, _event("corrupt-batch", at_s=0.3, link=LINK)
                     + _event("kill-destination", at_s=600, vm="vm"))
    assert r["status"] == "completed" and r["verified"]
    assert r["events_not_fired"] == [{"index": 1, "action": "kill-destination"}]
    assert [e["index"] for e in events if e["event"] == "event-not-fired"] == [1]
    assert [f["kind"] for f in r["faults"]] == ["corrupt-batch"]


def test_damaged_batches_are_resent_and_the_run_verifies(ray_cluster, tmp_path):
    r, _ = _run(tmp_path, _event("corrupt-batch", at_s=0.3, link=LINK, count=4))
    assert r["status"] == "completed" and r["verified"], r["stop_reason"]
    f = r["data_path_faults"]
    assert f["batches_corrupted"] == f["batches_resent"] == f["checksum_failures_at_receiver"] == 4
    assert r["faults"][0]["outcome"] == "survived"


def test_a_killed_destination_aborts_at_once_and_the_vm_stays(ray_cluster, tmp_path):
    r, events = _run(tmp_path, _event("kill-destination", at_s=0.5, vm="vm"))
    _stayed_on_source(r, events)
    assert "destination" in r["stop_reason"]
    assert r["total_time_s"] < 0.5 + 1.0  # its connection closed: no timeout to wait for


def test_a_migration_thread_crashed_in_stop_and_copy_aborts_and_the_paused_vm_runs_on(ray_cluster, tmp_path):
    r, events = _run(tmp_path, _event("crash-migration-thread", on={"vm": "vm", "phase": "stop-and-copy"}, vm="vm"))
    _stayed_on_source(r, events)  # the VM was paused for stop-and-copy: it runs again on its source
    assert "crashed" in r["stop_reason"]
    assert any(e["event"] == "vm-stopped" for e in events)
    assert r["faults"][0]["detail"] == {"on_the_spot": True}


# --- post-copy recovery --------------------------------------------------------------------
def test_pages_lost_with_a_broken_connection_are_pushed_again_pivot_included():
    from agents.techniques.postcopy import PushOrder
    order = PushOrder(np.ones(64, dtype=bool), adaptive=True)
    taken = order.demand([20])
    pushed = order.next_push(8)
    assert order.left == 64 - 9
    # The connection broke: the faulted page and the push never arrived.
    assert order.requeue(np.concatenate([taken, pushed])) == 9
    assert order.requeue(taken) == 0  # pending already: not counted twice
    out = []
    while order.left:
        out.append(order.next_push(16))
    out = np.concatenate(out)
    assert sorted(out.tolist()) == list(range(64))  # every page, the pivot itself included, once more
    assert order.sends.max() == 2 and int((order.sends == 2).sum()) == 9


POSTCOPY = '''technique = "postcopy"
postcopy_after_iterations = 0
tcp_user_timeout_ms = 1000'''
PC_WRITER = '{ kind = "uniform", dirty_pages_per_s = 20000, working_set_gib = 0.125 }'


def _run_postcopy(tmp_path, events: str):
    from cluster.runner import RunOptions, run_scenario
    from cluster.scenario import parse_scenario
    text = scenario_text("pc-faults", memory_gib=0.25, workload=PC_WRITER, migration=POSTCOPY) + events
    r = run_scenario(parse_scenario(text, "pc-faults.toml"), RunOptions(out_dir=str(tmp_path)))
    return r, [e for e in _timeline(tmp_path) if e["kind"] == "event"]


def test_postcopy_pauses_on_a_link_failure_survives_a_second_one_during_recovery_and_verifies(
        ray_cluster, tmp_path):
    r, events = _run_postcopy(tmp_path, _event("link-down", on={"vm": "vm", "phase": "postcopy-active"}, link=LINK)
                                 + _event("link-up", at_s=2.5, link=LINK)
                                 # down for twice the user timeout: the handshake gives up first
                                 + _event("link-down", on={"vm": "vm", "phase": "postcopy-recover"}, link=LINK,
                                          duration_s=2.0))
    assert r["status"] == "completed" and r["verified"], r["stop_reason"]
    names = [e["event"] for e in events]
    # paused, a recovery that fails (the link goes down again in its handshake), paused, recovered
    seq = [n for n in names if n in ("postcopy-paused", "postcopy-recover", "postcopy-recovered")]
    assert seq == ["postcopy-paused", "postcopy-recover", "postcopy-paused", "postcopy-recover",
                   "postcopy-recovered"], seq
    rec = r["postcopy"]["recovery"]
    assert rec["paused"] == 2 and rec["recover_attempts"] == 2 and rec["recovered"] == 1
    # While paused the VM did not run: at least the first outage (from its timeout to the link-up).
    assert r["app"]["non_response_s"] > 1.0
    assert [f["outcome"] for f in r["faults"]] == ["survived", "survived"]
    assert r["postcopy"]["max_sends_per_page"] <= 2


def test_postcopy_whose_link_never_returns_reports_the_vm_lost_and_each_sides_pages(ray_cluster, tmp_path):
    r, events = _run_postcopy(tmp_path, _event("link-down", at_s=0.5, link=LINK))
    assert r["status"] == "failed" and not r["verified"]
    lost = r["postcopy"]["lost"]
    assert lost["pages_on_destination"] > 0 and lost["pages_only_on_source"] > 0
    assert lost["pages_on_destination"] + lost["pages_only_on_source"] <= lost["pages_total"] == 0.25 * 2**30 / 4096
    assert r["data_path_faults"]["vm_lost"] and r["faults"][0]["outcome"] == "vm-lost"
    assert any(e["event"] == "vm-lost" for e in events)
    assert "neither side holds the whole VM" in r["postcopy"]["neither_side_whole"]


def test_fault_outcomes_become_a_counter_by_kind_and_outcome():
    """The exporter counts the timeline's fault-outcome records (as a run adds them)."""
    import urllib.request

    from cluster.metrics import MetricsExporter
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = MetricsExporter(port)
    try:
        for fault, outcome in (("link-down", "survived"), ("link-down", "survived"), ("kill-destination",
                                                                                    "aborted-vm-safe")):
            m.observe({"t": 1.0, "kind": "event", "event": "fault-outcome", "fault": fault, "outcome": outcome})
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'livemig_faults_total{kind="link-down",outcome="survived"} 2.0' in body
        assert 'livemig_faults_total{kind="kill-destination",outcome="aborted-vm-safe"} 1.0' in body
    finally:
        m.close()


@pytest.mark.slow
def test_a_destination_killed_during_postcopy_loses_the_vm_and_the_run_ends(ray_cluster, tmp_path):
    r, events = _run_postcopy(tmp_path, _event("kill-destination", at_s=0.5, vm="vm"))
    assert r["status"] == "failed" and r["data_path_faults"]["vm_lost"]
    assert "destination" in r["postcopy"]["lost"]["reason"]
    assert r["faults"][0]["outcome"] == "vm-lost"
    assert not any(e["event"] == "postcopy-recover" for e in events)  # no new connection reaches a dead host

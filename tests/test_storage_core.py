"""Storage migration's pure core, without Ray: datastore models, sparse disk
images, guest disk workloads, bulk copy with I/O mirroring and its switch
between asynchronous and synchronous mirroring."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.datapath.datastore import PRESETS, DatastoreModel, Device
from agents.datapath.mirror import (
    BACKGROUND,
    WRITE_BLOCKING,
    DataPath,
    LinkGate,
    MirrorJob,
    ModeSwitch,
)
from agents.guest.disk import (
    BLOCK,
    DISK_PRESETS,
    EXTENT,
    DiskImage,
    DiskWorkload,
    DiskWorkloadRunner,
)

MIB = 1 << 20


# --- datastore models ------------------------------------------------------------
def test_hdd_serves_random_4k_at_its_iops_and_sequential_at_its_bandwidth():
    hdd = PRESETS["hdd"]
    assert hdd.max_iops(False, 4096) == pytest.approx(79)
    assert hdd.service_s(False, 1, MIB, random=False) == pytest.approx(MIB / 175e6)
    ssd = PRESETS["local-ssd"]
    assert ssd.max_iops(False, 4096) == pytest.approx(75_000)
    assert ssd.max_iops(True, 1 << 20) == pytest.approx(460e6 / MIB)  # large requests: bandwidth-bound


@pytest.mark.parametrize("field", ["read_iops", "write_iops", "read_mbytes_s", "write_mbytes_s"])
@pytest.mark.parametrize("value", [0, -1])
def test_a_datastore_without_throughput_is_refused(field, value):
    figures = dict(read_iops=1, write_iops=1, read_mbytes_s=1, write_mbytes_s=1)
    figures[field] = value
    with pytest.raises(ValueError, match=field):
        DatastoreModel(**figures)


def test_device_serves_fifo_in_scaled_real_time():
    # 1/64 of the bytes, twice the time: 64 MiB emulated at 100 MB/s are 1.34 s emulated, 2.68 s real.
    dev = Device(DatastoreModel(1000, 1000, 100, 100, latency_ms=2), memory_scale=1 / 64, dilation=2)
    first = dev.reserve(False, MIB, random=False, t=10.0)
    assert first == pytest.approx(10.0 + 64 * MIB / 100e6 * 2 + 0.004)
    # A random 4 KiB read offered at the same time waits for the first: 64 requests at 1000 IOPS, doubled.
    second = dev.reserve(False, 4096, random=True, t=10.0)
    assert second == pytest.approx(first + 64 / 1000 * 2)
    assert dev.counters.reads == 2 and dev.counters.read_bytes == MIB + 4096


# --- disk images ----------------------------------------------------------------
def test_a_thin_disk_is_sparse_and_its_holes_read_as_zeros(tmp_path):
    disk = DiskImage.create(str(tmp_path / "d.img"), 64 * MIB, used_fraction=0.25, seed=3)
    share = disk.allocated.mean()
    assert 0.15 < share < 0.35
    assert os.stat(disk.path).st_blocks * 512 < 0.5 * 64 * MIB  # holes take no space
    hole = int(np.flatnonzero(~disk.allocated)[0])
    assert disk.pread(hole * EXTENT, EXTENT) == bytes(EXTENT)
    used = int(np.flatnonzero(disk.allocated)[0])
    assert disk.pread(used * EXTENT, EXTENT) != bytes(EXTENT)
    disk.unlink()
    assert not os.path.exists(disk.path)


def test_soliddb_presets_are_the_seed_table_2():
    for name, iops, mbs in (("soliddb-8", 906, 13.68), ("soliddb-64", 3220, 50.12)):
        w = DISK_PRESETS[name]
        assert w.write_iops == iops and w.write_mbytes_s() == pytest.approx(mbs)
    assert DISK_PRESETS["ds2"].read_iops == 1250 and DISK_PRESETS["ds2"].write_iops == 200


def test_workload_reaches_its_rate_on_an_idle_datastore_and_slows_behind_a_copy(tmp_path):
    disk = DiskImage.create(str(tmp_path / "d.img"), 8 * MIB, seed=1)
    dev = Device(PRESETS["local-ssd"], memory_scale=1 / 64)
    runner = DiskWorkloadRunner(DiskWorkload(read_iops=1600, write_iops=400, read_kib=4, write_kib=4), disk, dev)
    runner.start()
    time.sleep(2.0)
    idle = runner.stats.reads + runner.stats.writes
    # 2000 emulated IOPS at 1/64 are 31 real requests a second: 62 in 2 s (fewer on a loaded machine).
    assert 30 <= idle <= 66, idle
    # A copy hogging the device: 1 GiB emulated (16 MiB real) of sequential reads at 500 MB/s is 2.1 s.
    dev.reserve(False, 16 * MIB, random=False)
    time.sleep(2.0)
    runner.stop()
    busy = runner.stats.reads + runner.stats.writes - idle
    assert busy < idle / 2, (idle, busy)
    disk.unlink()


def test_a_closed_loop_thinks_to_reach_its_iops_unloaded():
    w = DISK_PRESETS["ds2"]
    model = PRESETS["fast-san"]
    assert w.clients == 12  # the seed's 12 DS2 users
    # Little's law: N / (Z + R0) is the preset's 1,450 IOPS on the datastore it starts on.
    assert w.clients / (w.think_s(model) + w.unloaded_latency_s(model)) == pytest.approx(w.iops)
    # On a slower datastore R0 grows and the same clients complete fewer requests.
    slow = PRESETS["slow-san"]
    assert w.clients / (w.think_s(model) + w.unloaded_latency_s(slow)) < w.iops


def test_a_closed_loop_slows_by_the_latency_a_copy_adds_on_its_datastore(tmp_path):
    disk = DiskImage.create(str(tmp_path / "d.img"), 8 * MIB, seed=1)
    dev = Device(PRESETS["hdd"], memory_scale=1 / 4)
    w = DiskWorkload(read_iops=20, write_iops=5, read_kib=4, write_kib=4, clients=2)
    runner = DiskWorkloadRunner(w, disk, dev)
    runner.start()
    time.sleep(3.0)
    idle = runner.stats.reads + runner.stats.writes
    # 25 emulated IOPS at 1/4 are 6.25 real requests a second: 19 in 3 s.
    assert 10 <= idle <= 21, idle  # fewer on a loaded machine
    stop = threading.Event()

    def copy() -> None:  # a bulk copy keeping the spindle busy, in 16 MiB (emulated) reads
        while not stop.is_set():
            done = dev.reserve(False, 4 * MIB, random=False)
            time.sleep(max(0.0, done - time.monotonic() - 0.02))
    t = threading.Thread(target=copy, daemon=True)
    t.start()
    time.sleep(6.0)
    stop.set()
    t.join()
    runner.stop()
    busy = runner.stats.reads + runner.stats.writes - idle
    r0 = w.unloaded_latency_s(dev.model)
    assert runner.latency_avg > r0 * 1.2, (runner.latency_avg, r0)
    assert busy / 6.0 < 0.8 * idle / 3.0, (idle, busy)
    disk.unlink()


# --- bulk copy and mirror -----------------------------------------------------------
def _pair(tmp_path, nbytes: int, used: float = 1.0, seed: int = 0) -> tuple[DiskImage, DiskImage]:
    src = DiskImage.create(str(tmp_path / f"src-{seed}.img"), nbytes, used_fraction=used, seed=seed)
    dst = DiskImage.create(str(tmp_path / f"dst-{seed}.img"), nbytes, fill=False)
    return src, dst


@pytest.mark.parametrize("region", [4 * BLOCK, EXTENT, 4 * EXTENT])
def test_bulk_copy_moves_the_allocated_extents_only_and_verifies(tmp_path, region):
    src, dst = _pair(tmp_path, 16 * MIB, used=0.5)
    job = MirrorJob(src, dst, None, None, None, region_bytes=region, buffer_bytes=1 * MIB)
    job.start()
    assert job.wait_synced(30)
    job.finish()
    assert job.stats.copied_bytes == src.allocated_bytes()
    assert job.status()["actively_synced"] and len(job.verify()) == 0
    assert os.stat(dst.path).st_blocks * 512 < 0.75 * 16 * MIB  # the holes stay holes


class _Storm:
    """Guest writers aimed at the region the copy is working on (its cursor),
    a little behind it and a little ahead of it."""

    def __init__(self, job: MirrorJob, seed: int, writers: int, blocks: int, spread: int) -> None:
        self.job, self.blocks, self.spread = job, blocks, spread
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(seed + i,)) for i in range(writers)]

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        job, size = self.job, self.blocks * BLOCK
        last = job.src.nbytes - size
        while not self.stop.is_set():
            near = job.cursor - job.region + int(rng.integers(-self.spread, self.spread + 1)) * BLOCK
            job.guest_write(int(np.clip(near, 0, last)) // BLOCK * BLOCK, rng.bytes(size))

    def __enter__(self) -> _Storm:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), writers=st.integers(1, 3), blocks=st.integers(1, 32),
       spread=st.integers(0, 64), copy_mode=st.sampled_from([BACKGROUND, WRITE_BLOCKING]))
def test_mirror_under_a_write_storm_at_the_copied_region_leaves_equal_disks(tmp_path, seed, writers, blocks,
                                                                            spread, copy_mode):
    src, dst = _pair(tmp_path, 2 * MIB, used=0.8, seed=seed)
    # 8 MB/s real: the 2 MiB copy takes about a quarter of a second, long enough for the storm to land.
    path = DataPath("network", rate_bytes_s=8e6, delay_s=0.001)
    job = MirrorJob(src, dst, None, None, path, region_bytes=EXTENT, buffer_bytes=4 * EXTENT, copy_mode=copy_mode)
    job.start()
    with _Storm(job, seed, writers, blocks, spread):
        while (not job.ready() or job.stats.guest_writes < 5) and job.error is None:
            time.sleep(0.005)
    assert job.wait_synced(30), job.status()
    job.finish()
    assert job.error is None
    assert job.stats.mirrored_writes > 0
    assert len(job.verify()) == 0, "a stale block won"
    src.unlink()
    dst.unlink()


def test_mode_switch_goes_write_blocking_when_writes_outrun_the_drain_and_back():
    sw = ModeSwitch(capacity=1000, drain_bytes_s=100, window_s=1.0)
    assert sw.observe(0.0, 50, 50) == BACKGROUND
    assert sw.observe(0.5, 80, 130) == WRITE_BLOCKING  # 130 B/s over the last second > 100
    assert sw.observe(0.9, 0, 10) == WRITE_BLOCKING  # stays at least a window
    assert sw.observe(2.0, 0, 0) == BACKGROUND  # nothing written for a window
    assert sw.observe(2.1, 0, 600) == WRITE_BLOCKING  # a burst that fills half the buffer
    fixed = ModeSwitch(1000, 100, 1.0, mode=WRITE_BLOCKING)
    assert fixed.observe(5.0, 0, 0) == WRITE_BLOCKING


def test_mode_switch_judges_against_the_drain_it_measures_not_the_planned_one():
    # Planned 100 B/s; the destination actually takes 20 B/s while it has work.
    sw = ModeSwitch(capacity=10_000, drain_bytes_s=100, window_s=1.0)
    assert sw.drain(0.0) == 100  # nothing measured yet: the plan stands in
    for i in range(1, 11):  # an entry of 2 B every 0.1 s, the buffer never empty
        sw.drained(i / 10, 2, buffer_fill=50)
    assert sw.drain(1.0) == pytest.approx(20, rel=0.15)
    # 40 B/s of mirrored writes: below the plan, above what is drained: synchronous.
    assert sw.observe(1.05, 40, 40, 90) == WRITE_BLOCKING
    # The destination recovers (1,000 B/s drained) and the writes slow to 10 B/s: back, after a window.
    t = 1.05
    for _ in range(30):
        t += 0.1
        sw.drained(t, 100, buffer_fill=10)
        mode = sw.observe(t, 1, 1, 10)
    assert sw.drain(t) > 500 and mode == BACKGROUND


def test_job_goes_synchronous_while_writes_outrun_the_link_and_back_when_they_stop(tmp_path):
    src, dst = _pair(tmp_path, 4 * MIB, seed=9)
    path = DataPath("network", rate_bytes_s=2e6)  # 2 MB/s real
    job = MirrorJob(src, dst, None, None, path, region_bytes=EXTENT, buffer_bytes=8 * EXTENT, window_s=0.2)
    job.start()
    assert job.wait_synced(30)
    assert job.switch.mode == BACKGROUND
    rng = np.random.default_rng(1)
    t_end = time.monotonic() + 0.8
    while time.monotonic() < t_end:  # 64 KiB every 5 ms: about 13 MB/s, six times the link
        job.guest_write(int(rng.integers(0, 60)) * EXTENT, rng.bytes(EXTENT))
        time.sleep(0.005)
    assert WRITE_BLOCKING in [m for _, m, _ in job.stats.switches]
    time.sleep(0.5)
    job.guest_write(0, rng.bytes(BLOCK))  # a quiet write after a quiet window
    assert job.wait_synced(10)
    job.finish()
    modes = [m for _, m, _ in job.stats.switches]
    assert modes[0] == WRITE_BLOCKING and modes[-1] == BACKGROUND
    lat = job.stats.write_latency_s
    assert lat[WRITE_BLOCKING][0] > 0 and lat[BACKGROUND][0] > 0
    # A synchronous write waits for the link (64 KiB at 2 MB/s: 33 ms); an asynchronous one does not.
    assert lat[WRITE_BLOCKING][1] / lat[WRITE_BLOCKING][0] > 5 * lat[BACKGROUND][1] / lat[BACKGROUND][0]
    assert job.stats.mode_s[WRITE_BLOCKING] > 0.2
    assert len(job.verify()) == 0


def test_cancel_removes_the_partial_destination_and_leaves_the_source(tmp_path):
    src, dst = _pair(tmp_path, 8 * MIB, seed=4)
    before = src.digests()
    job = MirrorJob(src, dst, None, None, DataPath("network", 4e6), region_bytes=EXTENT, buffer_bytes=4 * EXTENT)
    job.start()
    time.sleep(0.3)
    assert not job.ready()
    job.cancel()
    assert not os.path.exists(dst.path)
    assert np.array_equal(src.digests(), before)
    assert all(not t.is_alive() for t in job._threads)


def _running_link(rate_bytes_s: float, conn_id: int):
    """A link running with one memory connection open, as a LinkAgent's; and its close."""
    import socket

    from agents.datapath.channel import KIND_CLOSE, Channel
    from agents.datapath.link import LinkShaper
    link = LinkShaper(rate_bytes_s, 0.0)
    a, link_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link_out, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link.run([(conn_id, Channel(link_in), Channel(link_out))])

    def close() -> None:
        Channel(a).send(KIND_CLOSE)
        link.join(5)
        for sock in (a, b):
            sock.close()
    return link, close


def test_a_network_copy_waits_while_its_link_is_down_takes_the_links_rate_and_counts_on_it(tmp_path):
    src, dst = _pair(tmp_path, 4 * MIB, seed=5)
    link, close = _running_link(40e6, 7)
    link.set_down(True)

    def ask(nbytes: int, need: int = 0, wait_s: float = 0.0):  # LinkAgent.carry_disk
        return link.down, link.migration_rate, link.ask_disk(7, nbytes, need, wait_s)

    # The path says 1 GB/s; the link allows 40 MB/s.
    job = MirrorJob(src, dst, None, None, DataPath("network", 1e9), region_bytes=EXTENT, buffer_bytes=4 * EXTENT,
                    gate=LinkGate(ask))
    job.start()
    time.sleep(0.3)
    assert job.stats.copied_bytes == 0 and job.status()["link_down_s"] > 0.2
    link.set_down(False)
    t0 = time.monotonic()
    assert job.wait_synced(30)
    assert time.monotonic() - t0 >= 4 * MIB / 40e6 * 0.95  # paced at the link's rate, not the path's
    job.finish()
    assert job.status()["link_down_s"] == 0
    # Granted by the link's fair queue, and what was granted but not sent given back.
    assert link.disk_bytes == link.disk_by_connection[7] == 4 * MIB
    assert job.stats.copied_bytes == 4 * MIB
    assert len(job.verify()) == 0
    close()


def test_bench_disk_reports_the_machine_and_the_agent(tmp_path):
    from cluster.bench import disk_bench
    r = disk_bench(mib=8, seconds=0.2, directory=str(tmp_path))
    assert all(v["mbytes_s"] > 0 and v["iops"] > 0 for v in r["machine"].values())
    assert r["disk_agent"]["bulk_copy_mbytes_s"] > 0 and r["disk_agent"]["guest_random_4k_iops"] > 0
    assert list(tmp_path.iterdir()) == []  # its files are gone


# --- disk dirty-bitmap migration ----------------------------------------------------
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), writers=st.integers(1, 3), blocks=st.integers(1, 32),
       chunk_blocks=st.sampled_from([1, 4, 16, 64]))
def test_dirty_bitmap_passes_then_a_final_pass_leave_equal_disks(tmp_path, seed, writers, blocks, chunk_blocks):
    from agents.datapath.block_dirty import DirtyBitmapJob
    src, dst = _pair(tmp_path, 2 * MIB, used=0.7, seed=seed)
    job = DirtyBitmapJob(src, dst, None, None, DataPath("network", rate_bytes_s=8e6), region_bytes=EXTENT,
                         buffer_bytes=4 * EXTENT, chunk_bytes=chunk_blocks * BLOCK)
    job.start()
    with _Storm(job, seed, writers, blocks, spread=256):
        time.sleep(0.35)  # the bulk pass (about a quarter of a second) and a few dirty passes
    job.quiesce()  # the VM stops: no more writes
    assert job.wait_synced(30), job.status()
    job.finish()
    assert job.error is None
    assert job.passes[0]["number"] == 1 and job.passes[-1]["final"]
    assert len(job.verify()) == 0, "a stale chunk remained"
    src.unlink()
    dst.unlink()


def test_dirty_bitmap_resends_only_what_was_written(tmp_path):
    from agents.datapath.block_dirty import DirtyBitmapJob
    src, dst = _pair(tmp_path, 4 * MIB, seed=5)
    job = DirtyBitmapJob(src, dst, None, None, None, region_bytes=EXTENT, buffer_bytes=4 * EXTENT,
                         chunk_bytes=EXTENT)
    job.start()
    while not job.ready():
        time.sleep(0.005)
    bulk = job.stats.copied_bytes
    for k in (3, 7, 7, 20):  # three distinct chunks
        job.guest_write(k * EXTENT, b"x" * BLOCK)
    job.quiesce()
    assert job.wait_synced(10)
    job.finish()
    assert job.stats.copied_bytes - src.nbytes <= 3 * EXTENT and bulk <= src.nbytes
    assert job.stats.mirrored_bytes == 0 and len(job.verify()) == 0


def test_corrupted_disk_entries_are_caught_by_their_checksum_and_sent_again(tmp_path):
    src, dst = _pair(tmp_path, 2 * MIB, seed=11)
    job = MirrorJob(src, dst, None, None, DataPath("network", 20e6, 0.001), region_bytes=EXTENT,
                    buffer_bytes=4 * EXTENT)
    job.corrupt(3)
    job.start()
    assert job.wait_synced(30)
    job.finish()
    assert job.stats.batches_corrupted == job.stats.batches_resent == 3
    assert len(job.verify()) == 0  # the damaged bytes never reached the destination disk


def test_a_5_ms_link_down_stops_the_disk_copy_s_line_time():
    """A link-down shorter than the gate's period (20 ms) is not missed: the copy sends only
    what the link's fair queue granted, and a link that is down grants nothing."""
    link, close = _running_link(40e6, 3)
    grants, asked = [], 0
    t_end = time.monotonic() + 0.3
    down_at = up_at = None
    while (now := time.monotonic()) < t_end:
        got = link.ask_disk(3, max(0, 400_000 - asked))  # 10 ms of line time kept asked
        asked += max(0, 400_000 - asked) - got
        grants.append((now, got))
        if down_at is None and now > t_end - 0.2:
            link.set_down(True)
            down_at = time.monotonic()
        elif up_at is None and down_at is not None and now >= down_at + 0.005:
            link.set_down(False)
            up_at = time.monotonic()
        time.sleep(0.0005)
    link.ask_disk(3, -1)
    close()
    during = sum(g for t, g in grants if down_at + 0.0015 < t < up_at)
    assert up_at - down_at < 0.01 and during == 0, (up_at - down_at, during)
    assert sum(g for t, g in grants if up_at + 0.002 < t) > 0  # and it goes on once the link is up


def test_a_window_with_too_few_real_requests_is_not_measured():
    """disk.guest_iops: at memory_scale 1/256 a 0.5 s warm-up holds about 2 real DS2 requests; their
    'rate' is noise, so the window is null with its reason, and a well-filled window is a rate."""
    from agents.guest.disk import MIN_MEASURED_REQUESTS, measured_rates, window_rates
    done = np.concatenate([[0.1, 0.3], np.linspace(1.01, 1.99, 100)])  # 2 requests, then 100
    windows = window_rates(done, [0.0, 1.0, 2.0], scale=1 / 256, dilation=2.0)
    assert windows[0] == (2 * 256 / 0.5, 2) and windows[1] == (100 * 256 / 0.5, 100)
    out = measured_rates(("before", "disk_copy"), windows)
    assert out["before"] is None and out["disk_copy"] == 51_200
    assert list(out["not_measured"]) == ["before"]
    assert f"2 real disk requests in the window, fewer than {MIN_MEASURED_REQUESTS}" in out["not_measured"]["before"]
    assert "not_measured" not in measured_rates(("disk_copy",), windows[1:])


@pytest.mark.parametrize("dilation, overloaded", [(0.0005, True), (0.25, False)])
def test_a_copy_whose_threads_cannot_keep_its_pace_reports_its_overrun(tmp_path, dilation, overloaded):
    """The copy's reads, the path's sends and the destination writer pace themselves to their
    devices' and path's schedule; work that keeps them behind it (this machine's) is their
    saturation. At dilation 0.0005 a 2 GiB disk at 1/64 would have to move 32 MiB in 3.6 ms."""
    src, dst = _pair(tmp_path, 32 * MIB)
    scale = 1 / 64
    job = MirrorJob(src, dst, Device(PRESETS["fast-san"], scale, dilation), Device(PRESETS["slow-san"], scale, dilation),
                    DataPath("storage-interface", 1e9), buffer_bytes=4 * MIB, memory_scale=scale, dilation=dilation)
    job.start()
    assert job.wait_synced(60)
    job.finish()
    assert len(job.verify()) == 0
    if overloaded:
        assert job.saturation() > 0.05
    else:  # 18 real MB/s: 57 ms per region of 1 MiB
        assert job.saturation() < 0.05


def test_a_resent_damaged_entry_asks_the_link_for_its_line_time_again(tmp_path):
    """corrupt-batch on a network disk copy: each damaged entry is NACKed and sent again, and the
    resend crosses the link like any bytes: the link's fair queue grants (and counts) it, so the
    copy cannot end before all its bytes, the resent ones included, had their line time."""
    rate, region, disk = 40e6, 8 * EXTENT, 4 * MIB  # 8 entries of 512 KiB: 105 ms of line time
    figures = {}
    for bad in (0, 5):
        src, dst = _pair(tmp_path, disk, seed=20 + bad)
        link, close = _running_link(rate, 7)

        def ask(nbytes: int, need: int = 0, wait_s: float = 0.0, link=link):  # LinkAgent.carry_disk
            return link.down, link.migration_rate, link.ask_disk(7, nbytes, need, wait_s)

        job = MirrorJob(src, dst, None, None, DataPath("network", 1e9), region_bytes=region,
                        buffer_bytes=2 * region, gate=LinkGate(ask))
        job.corrupt(bad)
        job.start()
        assert job.wait_synced(30)
        job.finish()
        assert len(job.verify()) == 0 and job.stats.batches_resent == bad
        figures[bad] = (job.stats.copy_done_t, link.disk_by_connection[7])
        close()
    assert figures[0][1] == disk and figures[5][1] == disk + 5 * region  # the resends crossed the link
    assert figures[0][0] >= disk / rate * 0.98
    # At least 5 x 512 KiB / 40 MB/s (66 ms) longer than the copy's own line time (dilation 1).
    assert figures[5][0] >= (disk + 5 * region) / rate * 0.98, figures

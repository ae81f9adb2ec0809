"""Benchmarks: figures of this machine, printed as JSON (not tests).

- pipeline: unshaped real MB/s of the whole source-to-destination path on
  the real actors (gather + zero-page scan, send through the link, restore,
  acknowledge) and of verification (both sides hash their image in parallel):
  the first pass into the destination's fresh (prefaulted) image, and the
  steady passes after it.
- link: achieved rate of the link shaper against its target at 1 and 10
  Gbit/s, and the error of its emulated latency at 1 ms and 10 ms round trips.
- checksum: the per-batch checksum (agents/datapath/wire_format.py) against
  packing the same batch, per batch size.
- scaling: PMigrate Figures 6-7 (consumers and address-space locks).
- timeline: what recording the timeline costs a run.
- lru: S-memV's Figure 14 (collection of the access history, LRU splitting,
  page-out decision) against memory size, and the ratio to the paper's.
- disk: the machine's own file I/O (dd-like sequential 1 MiB and random
  4 KiB reads and writes) against what the disk agent's code reaches on it
  unpaced (the storage migration's bulk copy through its transmit buffer and
  the guest workload runner's random 4 KiB requests): the fastest datastore
  a run can emulate unsaturated is that rate / memory_scale x dilation.
"""
from __future__ import annotations

import multiprocessing as mp
import socket
import statistics
import threading
import time

from agents.datapath.channel import KIND_BATCH, KIND_CLOSE, Channel
from agents.datapath.link import LinkShaper

MIXES = {
    "random": {"zero": 0.0, "text": 0.0, "structured": 0.0, "random": 1.0},
    "text": {"zero": 0.0, "text": 1.0, "structured": 0.0, "random": 0.0},
    "mixed": {"zero": 0.25, "text": 0.25, "structured": 0.25, "random": 0.25},
    "zero": {"zero": 1.0, "text": 0.0, "structured": 0.0, "random": 0.0},
}


def saturation_fields(result: dict) -> dict:
    """A benchmark row's saturation and whether it is over the limit: `saturated` rows
    ran unfaithfully (their figures are not this machine's emulation of the scenario)."""
    from cluster.tables import SATURATION_LIMIT, saturation_of
    s = saturation_of(result)
    return {"saturation": None if s is None else round(s, 4),
            "saturated": s is None or s > SATURATION_LIMIT}


def pipeline_bench(mib: int = 256, batch_pages: int = 256) -> dict:
    """The whole path on the real actors, unshaped and with no CPU charged."""
    import ray

    from agents.actors.host import HostAgent
    from agents.actors.link import LinkAgent
    from agents.datapath.shm import region_path
    from cluster.runner import Cluster, RunOptions, verify_images
    from cluster.scaling import Scale

    npages = mib * 256
    out: dict = {"bench": "pipeline", "image_mib": mib, "batch_pages": batch_pages,
                 "unit": "MB/s real (1e6 bytes/s)", "mixes": {}}
    free = {"send_us": 0.0, "receive_us": 0.0, "restore_us": 0.0, "dirty_sync_ns": 0.0}
    with Cluster(None, Scale(1.0, 1.0), RunOptions()) as cl:
        src = cl.track(HostAgent.options(name="bench-source").remote("source", "bench-src"))
        dst = cl.track(HostAgent.options(name="bench-destination").remote("destination", "bench-dst"))
        link = cl.track(LinkAgent.options(name="bench-link").remote("bench", 1e15, 0.0, 0.0, False, 0.0, 1.0))
        for host in (src, dst):
            ray.get(host.configure.remote(2, free, 1.0, 1.0))
        for i, mix in enumerate(MIXES.values()):
            ray.get([src.create_image.remote(f"s{i}", region_path(cl.run_id, f"s{i}"), npages, mix, 1),
                     dst.create_image.remote(f"d{i}", region_path(cl.run_id, f"d{i}"), npages, None, 1)])
        ring, slots, d = region_path(cl.run_id, "ring"), 8, cl.sock_dir
        ray.get(src.create_ring.remote(0, ring, slots, batch_pages))
        ray.get(dst.attach_ring.remote(0, ring))
        ray.get(link.listen.remote([(0, f"{d}/in", f"{d}/out")]))
        ray.get(src.listen.remote(f"{d}/ack"))
        ray.get(dst.open_receiver.remote(0, f"{d}/out", f"{d}/ack", slots, batch_pages,
                                         {i: f"d{i}" for i in range(len(MIXES))}))
        ray.get(src.open_sender.remote(0, f"{d}/in", f"{d}/ack", slots, batch_pages))
        ray.get(src.start_pipeline.remote(0, [0], 1, "global", 128 << 20, batch_pages))
        nbytes = npages * 4096
        for i, name in enumerate(MIXES):
            # The first pass into the prefaulted destination, then the steady passes (median of 3).
            first_s = ray.get(src.send_image.remote(0, f"s{i}", i))
            send_s = statistics.median(ray.get(src.send_image.remote(0, f"s{i}", i)) for _ in range(3))
            t0 = time.monotonic()
            ok = not verify_images(src, dst, f"s{i}", f"d{i}", npages)
            verify_s = time.monotonic() - t0
            out["mixes"][name] = {
                "first_pass_mb_s": round(nbytes / first_s / 1e6, 1),
                "transfer_mb_s": round(nbytes / send_s / 1e6, 1),
                "verify_mb_s": round(nbytes / verify_s / 1e6, 1),
                "transfer_and_verify_mb_s": round(nbytes / (send_s + verify_s) / 1e6, 1),
                "verified": ok,
            }
    return out


def _link_process(rate: float, one_way: float, a_fd: int, b_fd: int) -> None:
    inbound = Channel(socket.socket(fileno=a_fd))
    outbound = Channel(socket.socket(fileno=b_fd))
    shaper = LinkShaper(rate, one_way)
    shaper.run([(0, inbound, outbound)])
    shaper.join()


def _shaped_pair(rate: float, one_way: float):
    """A link shaper in its own process, as in a run; returns (to_link, from_link, process)."""
    a1, a2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b1, b2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_link_process, args=(rate, one_way, a2.fileno(), b1.fileno()), daemon=True)
    p.start()
    a2.close()
    b1.close()
    return Channel(a1), Channel(b2), p


def _measure_rate(rate: float, seconds: float, batch_bytes: int) -> dict:
    to_link, from_link, proc = _shaped_pair(rate, 0.0)
    arrivals: list[tuple[float, int]] = []

    def receive() -> None:
        while True:
            d = from_link.recv()
            if d is None or d[0] == KIND_CLOSE:
                return
            arrivals.append((time.monotonic(), d[4]))

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    n = int(rate * seconds / batch_bytes) + 1
    for i in range(n):
        to_link.send(KIND_BATCH, 0, 0, 0, batch_bytes, i, time.monotonic())
    to_link.send(KIND_CLOSE)
    rx.join(seconds * 3 + 10)
    proc.join(5)
    # Steady state: skip the first 10% (the initial burst of the bucket).
    skip = len(arrivals) // 10
    t0, t1 = arrivals[skip][0], arrivals[-1][0]
    moved = sum(b for _, b in arrivals[skip + 1:])
    achieved = moved / (t1 - t0)
    return {"target_bytes_s": rate, "achieved_bytes_s": round(achieved), "error_percent": round(100 * (achieved / rate - 1), 3),
            "batch_bytes": batch_bytes}


def _measure_latency(rtt_s: float, samples: int = 400, gap_s: float = 0.004) -> dict:
    one_way = rtt_s / 2
    to_link, from_link, proc = _shaped_pair(1e12, one_way)
    errors: list[float] = []

    def receive() -> None:
        while True:
            d = from_link.recv()
            if d is None or d[0] == KIND_CLOSE:
                return
            errors.append(time.monotonic() - d[6] - one_way)

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    for i in range(samples):
        to_link.send(KIND_BATCH, 0, 0, 0, 64, i, time.monotonic())
        time.sleep(gap_s)
    to_link.send(KIND_CLOSE)
    rx.join(10)
    proc.join(5)
    errs_ms = sorted(e * 1000 for e in errors)
    p = lambda q: errs_ms[min(len(errs_ms) - 1, int(q * len(errs_ms)))]
    return {"rtt_ms": rtt_s * 1000, "one_way_ms": one_way * 1000, "samples": len(errs_ms),
            "error_ms_p50": round(statistics.median(errs_ms), 4), "error_ms_p99": round(p(0.99), 4),
            "error_ms_max": round(errs_ms[-1], 4)}


def link_bench(seconds: float = 3.0) -> dict:
    return {
        "bench": "link",
        "rates": {
            "1gbit": _measure_rate(125e6, seconds, 256 * 1024),
            "10gbit": _measure_rate(1.25e9, seconds, 1024 * 1024),
        },
        "latency": {
            "rtt_1ms": _measure_latency(0.001),
            "rtt_10ms": _measure_latency(0.010),
        },
    }


_SCALING_SCENARIO = """
name = "scaling-{lock}-{n}"
description = "PMigrate Figures 6-7: an idle Xen VM, {n} consumers, each thread limited to 40 MByte/s"
[emulation]
memory_scale = {scale}
dilation = {dilation}
[[hosts]]
name = "src"
role = "source"
cores = 12
nics = [{nics}]
[[hosts]]
name = "dst"
role = "destination"
cores = 12
nics = [{nics}]
[network]
rtt_ms = 0.076
[[vms]]
name = "idle"
memory_gib = {memory_gib}
workload = {{ kind = "idle" }}
content = {{ zero = 0.0, text = 0.5, structured = 0.2, random = 0.3 }}
[migration]
consumers = {n}
address_space_lock = "{lock}"
[cpu]
profile = "xen-4.1"
"""


def checksum_bench(batches=(16, 64, 256), repeats: int = 200) -> dict:
    """Real microseconds to pack a batch of random pages and to checksum it (medians), its
    GiB/s, and the checksum's share of packing; per 4 KiB page, the real us it adds on each
    side (sender seals, receiver checks)."""
    import numpy as np

    from agents.datapath.wire_format import SlotLayout, SlotView, pack_pages
    image = np.random.default_rng(0).integers(0, 256, (4096, 4096), dtype=np.uint8)
    out = {}
    for n in batches:
        layout = SlotLayout(n)
        slot = SlotView(np.zeros(layout.slot_bytes, dtype=np.uint8), 0, layout)
        pack, seal = [], []
        for k in range(repeats):
            idx = (np.arange(n) + k * n) % len(image)
            t0 = time.perf_counter()
            pack_pages(image, idx, slot)
            t1 = time.perf_counter()
            slot.seal()
            seal.append(time.perf_counter() - t1)
            pack.append(t1 - t0)
        p, c = statistics.median(pack), statistics.median(seal)
        out[f"{n}_pages"] = {"pack_us": round(p * 1e6, 1), "checksum_us": round(c * 1e6, 1),
                             "checksum_gib_s": round(n * 4096 / c / 2**30, 2),
                             "checksum_over_pack": round(c / p, 2), "checksum_us_per_page": round(c * 1e6 / n, 3)}
    return out


def scaling_bench(memory_gib: float = 1.0, memory_scale: float = 1 / 512, dilation: float = 0.15,
                  workers=(1, 2, 4, 8), locks=("global", "rwlock", "range")) -> dict:
    """Migration time of an idle VM with 1-8 consumers under each address-space lock.

    As in PMigrate §6.2.3, each consumer thread is limited to 40 MByte/s: here
    by giving it a NIC pair of its own at that speed (0.3355 Gbit/s).
    """

    from cluster.local_ray import local_ray
    from cluster.runner import RunOptions, run_in_series
    from cluster.scenario import parse_scenario

    nic_gbps = 40 * 2**20 * 8 / 1e9
    out: dict = {"bench": "scaling", "memory_gib": memory_gib, "cpu_profile": "xen-4.1",
                 "per_thread_limit_mbytes_s": 40, "memory_scale": memory_scale, "dilation": dilation, "locks": {}}
    with local_ray("livemig-bench"):
        for lock in locks:
            rows = []
            for n in workers:
                nics = ", ".join(f'{{ name = "eth{k}", speed_gbps = {nic_gbps:.6f} }}' for k in range(n))
                text = _SCALING_SCENARIO.format(lock=lock, n=n, scale=memory_scale, dilation=dilation,
                                                nics=nics, memory_gib=memory_gib)
                r = run_in_series(parse_scenario(text, f"scaling-{lock}-{n}"), RunOptions())
                rows.append({"workers": n, "migration_time_s": round(r["total_time_s"], 2),
                             "throughput_mbytes_s": round(r["avg_throughput_mbytes_s"], 1),
                             "cpu_seconds": round(r["cpu_seconds"], 1), "verified": r["verified"],
                             **saturation_fields(r)})
            base = rows[0]["migration_time_s"]
            for row in rows:
                row["speedup"] = round(base / row["migration_time_s"], 2)
            out["locks"][lock] = rows
    out["saturated_runs"] = sum(row["saturated"] for rows in out["locks"].values() for row in rows)
    return out


def timeline_bench(scenario_path: str, repeats: int = 2) -> dict:
    """What recording the timeline costs: the driver's real time spent sampling
    at 0.1 emulated-second intervals, as a share of the run, and the figures
    with the timeline sampled every 0.1 s against every 10 s."""
    from cluster.local_ray import local_ray
    from cluster.runner import RunOptions, run_in_series
    from cluster.scenario import load_scenario

    sc = load_scenario(scenario_path)
    out: dict = {"bench": "timeline", "scenario": scenario_path, "runs": []}
    with local_ray("livemig-bench"):
        for _ in range(repeats):
            for interval in (0.1, 10.0):
                r = run_in_series(sc, RunOptions(interval_s=interval))
                wall = r["emulation"]["wall_clock_s"]
                run_s = wall["total_s"] - wall["setup_s"]
                out["runs"].append({
                    "interval_s": interval, "records": r["timeline"]["records"],
                    "sampling_s": wall["timeline_sampling_s"], "run_s": round(run_s, 3),
                    "sampling_share": round(wall["timeline_sampling_s"] / run_s, 4),
                    "total_time_s": [round(v["total_time_s"], 3) for v in r["vms"]],
                    **saturation_fields(r)})
    fine = [x for x in out["runs"] if x["interval_s"] == 0.1]
    coarse = [x for x in out["runs"] if x["interval_s"] == 10.0]
    mean = lambda xs: sum(x["run_s"] for x in xs) / len(xs)  # noqa: E731
    # The run's wall clock with the timeline at 100 ms against nearly without one;
    # sampling happens in the driver, beside the actors, so it costs the run little.
    out["wall_clock_cost_at_100ms"] = round(mean(fine) / mean(coarse) - 1, 4)
    out["driver_time_sampling_at_100ms"] = max(x["sampling_share"] for x in fine)
    return out


# S-memV Fig. 14 (§V-E), 2 TB of memory: collection 0.6 s, splitting 0.8 s, page-out decision 12.7 ms.
PAPER_FIG14_2TB_S = {"collection": 0.6, "splitting": 0.8, "pageout_decision": 0.0127}


def _best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _lru_one_size(gib: int, chunk_pages: int, repeats: int, rng) -> dict:
    import numpy as np

    from agents.split.history import AccessHistory, bitmap_bytes
    from agents.split.paging import RemotePager
    from agents.split.splitting import assign_hosts, lru_split, page_hosts

    npages = gib << 18  # 4 KiB pages
    hist = AccessHistory(npages, chunk_pages)
    hist.page[:] = rng.integers(0, 256, npages, dtype=np.uint8)
    hist.chunk[:] = rng.integers(0, 256, hist.chunk.shape[0], dtype=np.uint8)
    bits = rng.integers(0, 256, bitmap_bytes(npages), dtype=np.uint8)
    bitmap = bits.copy()

    def collect() -> None:
        bitmap[:] = bits  # the access bits the vCPUs set since the last collection (not timed below)
        t0 = time.perf_counter()
        hist.collect(bitmap)
        collect.elapsed = min(collect.elapsed, time.perf_counter() - t0)
    collect.elapsed = float("inf")
    for _ in range(repeats):
        collect()
    half = hist.chunk.shape[0] // 2  # "split the memory into two equally"
    holder: dict = {}

    def split() -> None:
        holder["host"] = assign_hosts(lru_split(hist.chunk, half), [hist.chunk.shape[0] - half])
        holder["table"] = page_hosts(holder["host"], chunk_pages, npages)  # the network page table
    split_s = _best_of(repeats, split)
    pager = RemotePager(holder["host"], chunk_pages, npages, hist.chunk, half)
    decide_s = _best_of(max(repeats, 5), pager.victim)
    return {"memory_gib": gib, "collection_s": round(collect.elapsed, 4), "splitting_s": round(split_s, 4),
            "pageout_decision_ms": round(decide_s * 1e3, 3)}


def lru_bench(sizes_gib: list[int], chunk_pages: int = 256, repeats: int = 3, seed: int = 0) -> dict:
    """S-memV's LRU overheads on one core against memory size (access bits and
    histories random, memory split in two equal halves, as in §V-E). The ratio
    is ours over the paper's at 2 TB (from the largest size measured, scaled
    linearly when it is below 2 TB); below 1 means faster than the paper."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = [_lru_one_size(g, chunk_pages, repeats, rng) for g in sizes_gib]
    top = rows[-1]
    scale = 2048 / top["memory_gib"]
    ours = {"collection": top["collection_s"] * scale, "splitting": top["splitting_s"] * scale,
            "pageout_decision": top["pageout_decision_ms"] / 1e3 * scale}
    return {"bench": "lru", "chunk_pages": chunk_pages, "unit": "seconds (one core, best of repeats)",
            "sizes": rows, "paper_2tb_s": PAPER_FIG14_2TB_S,
            "ours_2tb_s": {k: round(v, 4) for k, v in ours.items()},
            "extrapolated_from_gib": None if scale == 1 else top["memory_gib"],
            "ratio_to_paper": {k: round(ours[k] / PAPER_FIG14_2TB_S[k], 3) for k in ours}}


# --- disk ------------------------------------------------------------------------------
def _dd(path: str, nbytes: int, request: int, write: bool, random: bool, seconds: float) -> dict:
    """Requests of `request` bytes on a file of `nbytes`, for up to `seconds`: MB/s and IOPS."""
    import os

    import numpy as np
    fd = os.open(path, os.O_RDWR)
    n = nbytes // request
    offsets = (np.random.default_rng(1).integers(0, n, 1 << 20) if random else np.arange(1 << 20) % n) * request
    data = os.urandom(request)
    done, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds and done < len(offsets):
            for off in offsets[done:done + 256].tolist():
                if write:
                    os.pwrite(fd, data, off)
                else:
                    os.pread(fd, request, off)
            done += 256
        if write:
            os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    return {"mbytes_s": done * request / dt / 1e6, "iops": done / dt}


def _agent_copy(tmp: str, nbytes: int) -> float:
    """MB/s of the storage migration's bulk copy, unpaced (read, transmit buffer, write, three threads)."""
    import os

    from agents.datapath.mirror import MirrorJob
    from agents.guest.disk import DiskImage
    src = DiskImage.create(os.path.join(tmp, "copy-src.img"), nbytes, seed=2)
    dst = DiskImage.create(os.path.join(tmp, "copy-dst.img"), nbytes, fill=False)
    job = MirrorJob(src, dst, None, None, None)
    t0 = time.perf_counter()
    job.start()
    job.wait_synced(600)
    dt = time.perf_counter() - t0
    job.finish()
    src.unlink()
    dst.unlink()
    return nbytes / dt / 1e6


def _agent_random(path: str, nbytes: int, seconds: float) -> float:
    """Real IOPS of the guest workload runner's random 4 KiB requests on a device that never waits."""
    import numpy as np

    from agents.datapath.datastore import DatastoreModel, Device
    from agents.guest.disk import DiskImage, DiskWorkload, DiskWorkloadRunner
    image = DiskImage(path, nbytes, np.ones(1, dtype=bool))
    fast = Device(DatastoreModel(1e12, 1e12, 1e12, 1e12))
    runner = DiskWorkloadRunner(DiskWorkload(read_iops=5e8, write_iops=5e8, read_kib=4, write_kib=4), image, fast)
    runner.start()
    time.sleep(seconds)
    runner.stop()
    image.close()
    return (runner.stats.reads + runner.stats.writes) / seconds


def disk_bench(mib: int = 256, seconds: float = 2.0, directory: str | None = None) -> dict:
    """The machine's file I/O against the disk agent's, real units (see the module's docstring)."""
    import os
    import tempfile
    nbytes = mib << 20
    with tempfile.TemporaryDirectory(prefix="livemig-bench-disk-", dir=directory) as tmp:
        path = os.path.join(tmp, "dd.img")
        with open(path, "wb") as f:
            f.truncate(nbytes)
        machine = {"sequential_write_1m": _dd(path, nbytes, 1 << 20, True, False, seconds),
                   "sequential_read_1m": _dd(path, nbytes, 1 << 20, False, False, seconds),
                   "random_write_4k": _dd(path, nbytes, 4096, True, True, seconds),
                   "random_read_4k": _dd(path, nbytes, 4096, False, True, seconds)}
        agent = {"bulk_copy_mbytes_s": _agent_copy(tmp, nbytes),
                 "guest_random_4k_iops": _agent_random(path, nbytes, seconds)}
    copy = agent["bulk_copy_mbytes_s"]
    return {"bench": "disk", "file_mib": mib, "directory": directory or tempfile.gettempdir(),
            "unit": "real MB/s (1e6 bytes/s) and requests/s; buffered I/O (page cache)",
            "machine": machine, "disk_agent": agent,
            "copy_share_of_machine": copy / min(machine["sequential_read_1m"]["mbytes_s"],
                                                machine["sequential_write_1m"]["mbytes_s"]),
            "note": "a datastore copying at R MB/s is emulated unsaturated while R x memory_scale / dilation "
                    "stays well below bulk_copy_mbytes_s; guest IOPS likewise against guest_random_4k_iops"}

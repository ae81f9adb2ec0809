"""The runner: turns a scenario into a live cluster, migrates, and tears down.

It starts (or joins) Ray, creates the host, link and guest actors, wires
their shared-memory rings and descriptor sockets, lets the guests run, drives
each VM's migration while polling progress for the screen and the metrics
exporter, verifies every page at switchover and collects the figures. Tear
down always happens, also after an error or Ctrl-C, and removes every
process and shared-memory region the run created.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from cluster.scaling import Scale, gbps_to_bytes_s, scale_of, vm_real_pages
from cluster.scenario import MIB, Scenario

PAGE = 4096
WARMUP_S = 1.0  # emulated seconds of guest activity measured before migrating
AFTER_S = 1.0  # ... and after switchover


@dataclass
class LinkPlan:
    index: int
    name: str
    rate_bytes_s: float  # real, for migration
    one_way_s: float  # real
    background_bytes_s: float  # real
    batch_pages: int
    slots: int
    emulated_bandwidth_bytes_s: float


@dataclass
class RunOptions:
    address: str | None = None
    dilation: float | None = None
    dashboard: bool = False
    metrics_port: int | None = None
    inject_fault: str | None = None
    progress: Callable[[dict], None] | None = None


@dataclass
class RunState:
    """What the driver knows while the run goes on (for progress and metrics)."""
    vm: str = ""
    phase: str = "starting"
    iteration: int = 0
    remaining_bytes: float = 0.0
    memory_bytes: float = 0.0
    sent_bytes: float = 0.0
    elapsed_s: float = 0.0
    throughput_bytes_s: float = 0.0
    extra: dict = field(default_factory=dict)


def plan_link(scenario: Scenario, scale: Scale, index: int = 0) -> LinkPlan:
    link = scenario.migration_links()[index]
    gbps = scenario.link_bandwidth_gbps(link)
    if scenario.migration.bandwidth_cap_gbps is not None:
        gbps = min(gbps, scenario.migration.bandwidth_cap_gbps)
    emu_rate = gbps_to_bytes_s(gbps)
    background = min(link.background.mbytes_s * MIB, emu_rate * 0.95)
    rate = scale.real_rate(emu_rate)
    one_way = scale.real_seconds(link.rtt_ms / 2000)
    batch = scenario.migration.batch_pages or auto_batch_pages(scale.real_rate(emu_rate - background), scale)
    slot_bytes = batch * PAGE
    bdp = rate * 2 * one_way
    slots = int(min(64, max(4, math.ceil(bdp / slot_bytes) + 3)))
    return LinkPlan(index, f"{link.from_nic}->{link.to_nic}", rate, one_way, scale.real_rate(background),
                    batch, slots, emu_rate)


def auto_batch_pages(real_rate: float, scale: Scale, target_emulated_s: float = 0.008) -> int:
    """Pages per batch so one batch crosses the link in a few emulated ms.

    Coarser batches would blur the downtime (the last batch is sent whole);
    finer ones cost per-batch overhead on this machine.
    """
    pages = real_rate * scale.real_seconds(target_emulated_s) / PAGE
    return int(min(256, max(2, pages)))


def verify_images(src, dst, vm: int, npages: int) -> list[int]:
    """Page numbers whose contents differ between the two hosts' images of `vm`."""
    import ray

    from agents.verify import chunk_pages, mismatched
    bad_chunks = mismatched(*ray.get([src.digests.remote(vm), dst.digests.remote(vm)]))
    if len(bad_chunks) == 0:
        return []
    idx = chunk_pages(bad_chunks, npages)
    bad = mismatched(*ray.get([src.page_digests.remote(vm, idx), dst.page_digests.remote(vm, idx)]))
    return idx[bad].tolist()


def new_run_id() -> str:
    return f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


class Cluster:
    """The actors of one run. Use as a context manager: leaving it tears all down."""

    def __init__(self, scenario: Scenario | None, scale: Scale, opts: RunOptions) -> None:
        self.scenario, self.scale, self.opts = scenario, scale, opts
        self.run_id = new_run_id()
        self.sock_dir = tempfile.mkdtemp(prefix=f"livemig-{self.run_id}-", dir="/tmp")
        self.actors: list = []
        self._started_ray = False

    def __enter__(self) -> "Cluster":
        from agents import shm
        shm.sweep_stale()
        self._start_ray()
        return self

    def _start_ray(self) -> None:
        import ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if not ray.is_initialized():
            kwargs = dict(namespace=f"livemig-{self.run_id}", log_to_driver=False,
                          include_dashboard=self.opts.dashboard, configure_logging=False)
            if self.opts.address:
                ray.init(address=self.opts.address, **kwargs)
            else:
                ray.init(num_cpus=os.cpu_count() or 2, **kwargs)
            self._started_ray = True

    def __exit__(self, *exc) -> None:
        self.teardown()

    def teardown(self) -> None:
        import ray
        from agents import shm
        for a in self.actors:
            try:
                ray.get(a.close.remote(), timeout=5)
            except Exception:
                pass
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        self.actors.clear()
        if self._started_ray:
            ray.shutdown()
        shm.remove_run(self.run_id)
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def track(self, actor):
        self.actors.append(actor)
        return actor


def run_scenario(scenario: Scenario, opts: RunOptions, scenario_path: str = "") -> dict:
    """Run every VM's migration; returns the result dict (see cluster/results.py)."""
    import numpy as np
    import ray

    from agents.actors import GuestAgent, HostAgent, LinkAgent
    from agents.shm import region_path
    from cluster import results
    from cluster.metrics import MetricsExporter

    scale = scale_of(scenario, opts.dilation)
    lp = plan_link(scenario, scale)
    cpu = scenario.cpu
    metrics = MetricsExporter(opts.metrics_port) if opts.metrics_port is not None else None
    per_vm: list[dict] = []
    wall0 = time.monotonic()
    state = RunState()

    def emit(**kw) -> None:
        for k, v in kw.items():
            setattr(state, k, v)
        if opts.progress:
            opts.progress(state)

    with Cluster(scenario, scale, opts) as cl:
        t_ray = time.monotonic() - wall0
        emit(phase="starting actors")
        src_h, dst_h = scenario.source, scenario.destination
        src = cl.track(HostAgent.options(name=f"source:{src_h.name}").remote("source", src_h.name, cl.run_id, cl.sock_dir, src_h.cores))
        dst = cl.track(HostAgent.options(name=f"destination:{dst_h.name}").remote("destination", dst_h.name, cl.run_id, cl.sock_dir, dst_h.cores))
        link = cl.track(LinkAgent.options(name=f"link:{lp.name}").remote(lp.name, lp.rate_bytes_s, lp.one_way_s, lp.background_bytes_s))

        # Images: the source fills its guests' memory, the destination pre-touches.
        emit(phase="allocating memory")
        waits = []
        npages = {}
        for i, vm in enumerate(scenario.vms):
            n = npages[i] = vm_real_pages(scale, vm)
            seed = scenario.emulation.seed + 1000 * i
            waits.append(src.create_image.remote(i, region_path(cl.run_id, f"src-vm{i}"), n, vm.content.model_dump(), seed))
            waits.append(dst.create_image.remote(i, region_path(cl.run_id, f"dst-vm{i}"), n, None, seed))
        ray.get(waits)

        # Wiring: ring in shared memory, descriptor sockets through the link.
        ring = region_path(cl.run_id, "ring0")
        ray.get(src.create_ring.remote(0, ring, lp.slots, lp.batch_pages))
        ray.get(dst.attach_ring.remote(0, ring))
        s = cl.sock_dir
        ray.get(link.listen.remote(f"{s}/l0in", f"{s}/l0out"))
        ray.get(src.listen.remote(f"{s}/ack0"))
        send_cost = scale.real_cpu_seconds(cpu.send_ns_per_page, 1)
        recv_cost = scale.real_cpu_seconds(cpu.receive_ns_per_page, 1)
        ray.get(dst.open_receiver.remote(0, f"{s}/l0out", f"{s}/ack0", lp.slots, lp.batch_pages, recv_cost))
        ray.get(src.open_sender.remote(0, f"{s}/l0in", f"{s}/ack0", lp.slots, lp.batch_pages, send_cost))
        if opts.inject_fault == "corrupt-page":
            ray.get(link.corrupt_one_page.remote(ring, lp.batch_pages))

        guests = []
        for i, vm in enumerate(scenario.vms):
            g = cl.track(GuestAgent.options(name=f"guest:{vm.name}").remote(
                vm.name, region_path(cl.run_id, f"src-vm{i}"), vm.workload.model_dump(), vm.content.model_dump(),
                vm.vcpus, scale.memory_scale, scale.dilation, cpu.guest_fault_us * 1e-6,
                scenario.emulation.seed + 1000 * i))
            guests.append(g)
        ray.get([g.start.remote() for g in guests])
        setup_wall_s = time.monotonic() - wall0

        # Guests run a while before migration, so "before" throughput is measured.
        emit(phase="guest warm-up")
        time.sleep(scale.real_seconds(WARMUP_S))

        policy_base = scenario.migration
        for i, vm in enumerate(scenario.vms):
            mem_bytes = vm.memory_gib * (1 << 30)
            policy = dict(downtime_limit_s=policy_base.downtime_limit_ms / 1000,
                          max_iterations=policy_base.max_iterations,
                          stall_iterations=policy_base.stall_iterations,
                          max_sent_bytes=policy_base.max_sent_ratio * mem_bytes)
            before_status = ray.get(src.status.remote(i))
            before_recv = ray.get(dst.receiver_status.remote())
            link_before = ray.get(link.stats.remote())
            t_mig = time.monotonic()
            ray.get(src.migrate.remote(i, 0, guests[i], policy, scale.memory_scale, scale.dilation,
                                       policy_base.device_state_kib * 1024, policy_base.setup_ms / 1000))
            emit(vm=vm.name, phase="setup", iteration=0, memory_bytes=mem_bytes, remaining_bytes=mem_bytes, sent_bytes=0.0)
            last_t, last_sent = t_mig, 0.0
            interrupted = False
            while True:
                try:
                    st = ray.get(src.status.remote(i))
                    if st.get("error"):
                        break
                    sent = (st.get("wire_bytes", 0) - before_status.get("wire_bytes", 0)) / scale.memory_scale
                    now = time.monotonic()
                    thr = (sent - last_sent) / scale.emulated_seconds(now - last_t) if now > last_t else 0.0
                    last_t, last_sent = now, sent
                    emit(phase=st["phase"], iteration=st["iteration"], remaining_bytes=st["remaining_bytes"],
                         sent_bytes=sent, elapsed_s=scale.emulated_seconds(now - t_mig), throughput_bytes_s=thr)
                    if metrics:
                        metrics.update_progress(vm.name, lp.name, state, st, scale)
                    if st.get("status") in ("completed", "aborted", "failed"):
                        break
                    time.sleep(0.1)
                except KeyboardInterrupt:
                    # Abort: the VM keeps running on its source; tear down cleanly.
                    interrupted = True
                    ray.get(src.abort.remote(i))
                    emit(phase="aborting")
            st = ray.get(src.status.remote(i))
            mig = ray.get(src.migration_result.remote(i))
            if st.get("error"):
                mig["status"] = "failed"
                mig["stop_reason"] = st["error"].strip().splitlines()[-1]

            # Switchover: verify page for page, then the guest runs on the destination.
            # Otherwise it runs on (or never left) its source, whose memory is intact.
            verified, bad = False, []
            if mig["status"] == "completed":
                emit(phase="verifying")
                bad = verify_images(src, dst, i, npages[i])
                recv_errors = ray.get(dst.receiver_status.remote())["errors"]
                verified = not bad and not recv_errors
                if not verified:
                    mig["status"] = "failed"
                    mig["stop_reason"] = (f"verification failed: {len(bad)} page(s) differ" if bad
                                          else f"destination could not restore: {recv_errors[0]}")
            if verified:
                guest_resumed_at = ray.get(guests[i].resume_on.remote(region_path(cl.run_id, f"dst-vm{i}")))
            else:
                guest_resumed_at = ray.get(guests[i].resume.remote())
            emit(phase="after switchover" if verified else "VM stays on source")
            time.sleep(scale.real_seconds(AFTER_S))
            samples, faults = ray.get(guests[i].timeline.remote())
            after_status = ray.get(src.status.remote(i))
            after_recv = ray.get(dst.receiver_status.remote())
            link_after = ray.get(link.stats.remote())
            vm_result = results.vm_result(
                scenario, vm, scale, lp, mig, verified, bad, samples, t_mig,
                cpu_src_s=after_status["cpu_charged_s"] - before_status["cpu_charged_s"],
                cpu_dst_s=after_recv["cpu_charged_s"] - before_recv["cpu_charged_s"],
                overrun_s=(after_status["cpu_overrun_s"] - before_status["cpu_overrun_s"],
                           after_recv["cpu_overrun_s"] - before_recv["cpu_overrun_s"]),
                sender=after_status, sender_before=before_status,
                link_bytes=link_after["bytes"] - link_before["bytes"], guest_faults=faults,
                warmup_s=WARMUP_S, guest_resumed_at=guest_resumed_at)
            per_vm.append(vm_result)
            if metrics:
                metrics.finish(vm.name, vm_result)
            emit(phase=vm_result["status"])
            if interrupted:
                break
        ray.get([g.stop.remote() for g in guests])
        wall = {"ray_start_s": round(t_ray, 3), "setup_s": round(setup_wall_s, 3)}
    wall["total_s"] = round(time.monotonic() - wall0, 3)
    out = results.combine(scenario, scenario_path, per_vm, scale, lp, wall)
    if metrics:
        metrics.close()
    return out

"""The runner: turns a scenario into a live cluster, migrates, and tears down.

It starts (or joins) Ray, creates the host, link and guest actors, wires
their shared-memory rings and descriptor sockets, lets the guests run, drives
each VM's migration while polling progress for the screen and the metrics
exporter, verifies every page at switchover and collects the figures. Tear
down always happens, also after an error or Ctrl-C, and removes every
process and shared-memory region the run created.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from cluster.scaling import Scale, scale_of, vm_real_pages
from cluster.scenario import MIB, Scenario
from cluster.topology import Topology, plan

PAGE = 4096
WARMUP_S = 1.0  # emulated seconds of guest activity measured before migrating
AFTER_S = 1.0  # ... and after switchover


@dataclass
class RunOptions:
    address: str | None = None
    dilation: float | None = None
    dashboard: bool = False
    metrics_port: int | None = None
    inject_fault: str | None = None
    progress: Callable[["RunState"], None] | None = None


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


def _lag(before: dict, after: dict) -> tuple[float, float]:
    """(real seconds cores were held beyond their charges and modelled lock waits, seconds held)."""
    held = after["cpu_held_s"] - before["cpu_held_s"]
    charged = after["cpu_charged_s"] - before["cpu_charged_s"]
    waited = after.get("lock", {}).get("wait_seconds", 0.0) - before.get("lock", {}).get("wait_seconds", 0.0)
    return max(0.0, held - charged - waited), held


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


def start_local_ray(namespace: str, dashboard: bool = False, num_cpus: int | None = None) -> None:
    """Start the embedded one-machine Ray cluster livemig runs on.

    Token authentication stays on (Ray 2.60's default, the token kept in
    ~/.ray/auth_token; Ray prints a notice about it). Setting RAY_AUTH_MODE
    to "token" explicitly to silence that notice made ray.init fail here, so
    it is left unset. No usage statistics are sent (there is no network here).
    """
    import ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=num_cpus or os.cpu_count() or 2, namespace=namespace, log_to_driver=False,
             include_dashboard=dashboard, configure_logging=False)


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
        from agents.datapath import shm
        shm.sweep_stale()
        self._start_ray()
        return self

    def _start_ray(self) -> None:
        import ray
        if not ray.is_initialized():
            if self.opts.address:
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                ray.init(address=self.opts.address, namespace=f"livemig-{self.run_id}", log_to_driver=False,
                         include_dashboard=self.opts.dashboard, configure_logging=False)
            else:
                start_local_ray(f"livemig-{self.run_id}", dashboard=self.opts.dashboard)
            self._started_ray = True

    def __exit__(self, *exc) -> None:
        self.teardown()

    def teardown(self) -> None:
        import ray

        from agents.datapath import shm
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


def _wire(cl: "Cluster", topo: Topology, src, dst, links: list) -> None:
    """Rings in shared memory and descriptor sockets: source -> link -> destination, acks back."""
    import ray

    from agents.datapath.shm import region_path
    d = cl.sock_dir
    for lp in topo.links:
        ray.get(links[lp.index].listen.remote([(c.index, f"{d}/c{c.index}in", f"{d}/c{c.index}out")
                                               for c in topo.connections_of(lp.index)]))
    for c in topo.connections:
        ring = region_path(cl.run_id, f"ring{c.index}")
        ray.get(src.create_ring.remote(c.index, ring, c.slots, c.batch_pages))
        ray.get(dst.attach_ring.remote(c.index, ring))
        ray.get(src.listen.remote(f"{d}/c{c.index}ack"))
        ray.get(dst.open_receiver.remote(c.index, f"{d}/c{c.index}out", f"{d}/c{c.index}ack", c.slots, c.batch_pages))
        ray.get(src.open_sender.remote(c.index, f"{d}/c{c.index}in", f"{d}/c{c.index}ack", c.slots, c.batch_pages))


def run_scenario(scenario: Scenario, opts: RunOptions, scenario_path: str = "") -> dict:
    """Run every VM's migration; returns the result dict (see cluster/results.py)."""
    import ray

    from agents.actors.guest import GuestAgent
    from agents.actors.host import HostAgent
    from agents.actors.link import LinkAgent
    from agents.cpu import resolve
    from agents.datapath.shm import region_path
    from cluster import results
    from cluster.metrics import MetricsExporter

    scale = scale_of(scenario, opts.dilation)
    topo = plan(scenario, scale)
    mig_cfg = scenario.migration
    net = scenario.network
    costs = resolve(scenario.cpu.profile, mig_cfg.address_space_lock, scenario.cpu.overrides())
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
        src = cl.track(HostAgent.options(name=f"source:{src_h.name}").remote("source", src_h.name))
        dst = cl.track(HostAgent.options(name=f"destination:{dst_h.name}").remote("destination", dst_h.name))
        links = [cl.track(LinkAgent.options(name=f"link:{lp.name}").remote(
            lp.name, lp.rate_bytes_s, lp.one_way_s, lp.background_bytes_s, net.rate_control,
            scale.real_rate(net.reserved_mbytes_s * MIB), scale.real_seconds(1.0))) for lp in topo.links]
        host_cores = [min(h.cores, scenario.cpu.migration_cores or h.cores) for h in (src_h, dst_h)]
        cpu = scenario.cpu
        ray.get(src.configure.remote(host_cores[0], costs.__dict__, scale.memory_scale, scale.dilation,
                                     cpu.shared_cores, cpu.migration_priority))
        ray.get(dst.configure.remote(host_cores[1], costs.__dict__, scale.memory_scale, scale.dilation))

        # Images: the source fills its guests' memory, the destination pre-touches.
        emit(phase="allocating memory")
        waits = []
        npages = {}
        for i, vm in enumerate(scenario.vms):
            n = npages[i] = vm_real_pages(scale, vm)
            seed = scenario.emulation.seed + 1000 * i
            waits.append(src.create_image.remote(i, region_path(cl.run_id, f"src-vm{i}"), n, vm.content.model_dump(), seed))
            if vm.migrate:
                waits.append(dst.create_image.remote(i, region_path(cl.run_id, f"dst-vm{i}"), n, None, seed))
        ray.get(waits)

        _wire(cl, topo, src, dst, links)
        task_pages = min(c.batch_pages for c in topo.connections)
        compression = dict(method=mig_cfg.compression, zstd_level=mig_cfg.zstd_level,
                           xbzrle_cache_bytes=int(mig_cfg.xbzrle_cache_mib * MIB * scale.memory_scale),
                           xbzrle_budget=mig_cfg.xbzrle_budget)
        ray.get(src.start_pipeline.remote(mig_cfg.consumers, mig_cfg.address_space_lock,
                                          int(mig_cfg.memory_pool_mib * MIB * scale.memory_scale), task_pages,
                                          compression))
        if opts.inject_fault == "corrupt-page":
            c0 = topo.connections[0]
            ray.get(links[c0.link].corrupt_one_page.remote(region_path(cl.run_id, f"ring{c0.index}"), c0.batch_pages))

        guests = []
        for i, vm in enumerate(scenario.vms):
            g = cl.track(GuestAgent.options(name=f"guest:{vm.name}").remote(
                vm.name, region_path(cl.run_id, f"src-vm{i}"), vm.workload.model_dump(), vm.content.model_dump(),
                vm.vcpus, scale.memory_scale, scale.dilation, costs.guest_fault_us * 1e-6,
                scenario.emulation.seed + 1000 * i, vm.io_bound))
            guests.append(g)
        ray.get([g.start.remote() for g in guests])
        colocated = [i for i, vm in enumerate(scenario.vms) if not vm.migrate]
        if colocated and cpu.shared_cores:
            # Cores are accounted when released: average over a few tasks.
            ray.get(src.share_cores_with.remote(colocated, max(0.05, scale.real_seconds(0.05))))
        setup_wall_s = time.monotonic() - wall0

        # Guests run a while before migration, so "before" throughput is measured.
        emit(phase="guest warm-up")
        time.sleep(scale.real_seconds(WARMUP_S))

        t_first = time.monotonic()
        for i, vm in enumerate(scenario.vms):
            if not vm.migrate:
                continue
            mem_bytes = vm.memory_gib * (1 << 30)
            policy = dict(downtime_limit_s=mig_cfg.downtime_limit_ms / 1000,
                          max_iterations=mig_cfg.max_iterations,
                          stall_iterations=mig_cfg.stall_iterations,
                          max_sent_bytes=mig_cfg.max_sent_ratio * mem_bytes)
            before_status = ray.get(src.status.remote(i))
            before_recv = ray.get(dst.receiver_status.remote())
            links_before = ray.get([l.stats.remote() for l in links])
            t_mig = time.monotonic()
            ray.get(src.migrate.remote(i, guests[i], policy, mig_cfg.device_state_kib * 1024,
                                       mig_cfg.setup_ms / 1000, mig_cfg.strategy, mig_cfg.slice_mib * MIB,
                                       mig_cfg.resume_ms / 1000, mig_cfg.io_thread_taken))
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
                        metrics.update_progress(vm.name, [lp.name for lp in topo.links], state, st, scale)
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
            links_after = ray.get([l.stats.remote() for l in links])
            vm_result = results.vm_result(
                scenario, vm, scale, topo, mig, verified, bad, samples, t_mig,
                cpu_src_s=after_status["cpu_charged_s"] - before_status["cpu_charged_s"],
                cpu_dst_s=after_recv["cpu_charged_s"] - before_recv["cpu_charged_s"],
                lag=(_lag(before_status, after_status), _lag(before_recv, after_recv)),
                # How many cores each side can keep busy at once.
                widths=(min(mig_cfg.consumers, host_cores[0]), min(len(topo.connections), host_cores[1])),
                sender=after_status, sender_before=before_status,
                links_before=links_before, links_after=links_after, guest_faults=faults,
                warmup_s=WARMUP_S, guest_resumed_at=guest_resumed_at,
                decode_s=after_recv.get("decode_s", 0.0) - before_recv.get("decode_s", 0.0))
            per_vm.append(vm_result)
            if metrics:
                metrics.finish(vm.name, vm_result)
            emit(phase=vm_result["status"])
            if interrupted:
                break
        t_last = time.monotonic()
        colocated_figures = {}
        for i in colocated:
            samples, _ = ray.get(guests[i].timeline.remote())
            colocated_figures[scenario.vms[i].name] = results.colocated_figures(samples, t_first, t_last, scale.dilation,
                                                                                WARMUP_S)
        ray.get([g.stop.remote() for g in guests])
        wall = {"ray_start_s": round(t_ray, 3), "setup_s": round(setup_wall_s, 3)}
    wall["total_s"] = round(time.monotonic() - wall0, 3)
    out = results.combine(scenario, scenario_path, per_vm, scale, wall)
    if colocated_figures:
        out["colocated"] = colocated_figures
    if metrics:
        metrics.close()
    return out

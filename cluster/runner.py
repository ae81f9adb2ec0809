"""The runner: a scenario in, a result out.

Three steps, each in its own module: build the cluster (cluster/build.py:
Ray, actors, images, wiring), orchestrate the migrations (cluster/orchestrate.py:
start, events, timeline, switch-over), collect the figures
(cluster/collect.py, from the timeline). Before any of it, the resource guard
(cluster/footprint.py) refuses a run that would not fit this machine. Tear-down always happens, also after
an error or Ctrl-C, and removes every process and shared-memory region the
run created.
"""
from __future__ import annotations

import datetime
import time
from pathlib import Path

from agents.datapath.shm import run_bytes
from cluster import crossnode
from cluster.build import Cluster, RunOptions, build_slice, swaps
from cluster.local_ray import start_local_ray
from cluster.footprint import MemorySampler, guard
from cluster.orchestrate import Orchestrator, verify_images
from cluster.results import unless_interrupted
from cluster.scaling import scale_of
from cluster.scenario import Scenario
from cluster.timeline import Timeline

__all__ = ["RunOptions", "run_scenario", "start_local_ray", "verify_images", "Cluster"]


def run_scenario(scenario: Scenario, opts: RunOptions, scenario_path: str = "") -> dict:
    """Run every migration of the scenario; returns the result dict (see cluster/collect.py).
    With `opts.out_dir`, the timeline is written there as `timeline.jsonl` as the run goes."""
    wall0 = time.monotonic()  # Ray's start counts its import
    import ray

    from cluster import collect
    from cluster.metrics import MetricsExporter

    scale = scale_of(scenario, opts.dilation)
    if not opts.address:  # on a cluster of several machines this one's memory says little
        guard(scenario, scale, scenario_path, opts.out_dir)
    metrics = MetricsExporter(opts.metrics_port) if opts.metrics_port is not None else None
    path = None
    if opts.out_dir:
        Path(opts.out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(opts.out_dir) / "timeline.jsonl"
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    timeline = Timeline(wall0, scale.dilation, path, [metrics.observe] if metrics else [])
    try:
        with MemorySampler(period_s=1.0) as memory, Cluster(scenario, scale, opts) as cl:
            t_ray = time.monotonic() - wall0
            run_id = cl.run_id
            crossnode.check_nodes(scenario, scenario_path or "<scenario>")
            sl = build_slice(cl, scenario, scale, opts)
            setup_s = time.monotonic() - wall0
            orchestrator = Orchestrator(sl, timeline, opts)
            migs = orchestrator.run()
            data_path = crossnode.data_path(sl)
            for m in migs:  # remote paging after a split migration, while the guests still run
                if "split" in m.report and m.verified:
                    from cluster.split_run import placement_now
                    m.split = ray.get(sl.guests[m.vm_index].split_status.remote(), timeout=60)
                    if not m.vm_lost:  # a lost one's memory server is gone
                        m.split["misplaced_pages_at_end"], m.split["lost_pages_at_end"] = placement_now(
                            sl, m, m.src_key)
                elif swaps(m.plan) and m.status == "completed":
                    m.split = (ray.get(sl.hosts[m.plan.destinations[0].name].swap_status.remote(m.index))
                               | ray.get(sl.guests[m.vm_index].split_status.remote()))
            guest_data = [(crossnode.samples_to_driver_clock(sl, i, samples), faults) for i, (samples, faults)
                          in enumerate(ray.get([g.timeline.remote() for g in sl.guests], timeout=60))]
            # A vCPU blocked for good (a page behind a dead link) never stops; tear-down kills it.
            ray.wait([g.stop.remote() for g in sl.guests], num_returns=len(sl.guests), timeout=10)
            disk_done = _disk_completions(sl)
            per_vm = []
            for m in migs:
                samples, m.guest_faults = guest_data[m.vm_index]
                later = [n.t_start for n in migs if n.vm_index == m.vm_index and n.index > m.index and n.t_start]
                per_vm.append(collect.migration_result(sl, timeline, m, samples, scenario.emulation.warmup_s,
                                                         min(later, default=None), disk_done.get(m.vm_index)))
                if metrics:
                    metrics.finish(m.vm, per_vm[-1])
            colocated = _colocated(sl, migs, guest_data, scale)
            faults, fault_counts = orchestrator.fault_list, orchestrator.faults.counts()
            unfired = orchestrator.unfired
            final_hosts = {vm.name: sl.location[i][0] for i, vm in enumerate(scenario.vms)}
            shm = run_bytes(run_id)
            t_collected = time.monotonic()
            wall = {"ray_start_s": round(t_ray, 3), "setup_s": round(setup_s, 3),
                    "guests_started_s": round(orchestrator.t_run - wall0, 3),  # the timeline's zero
                    "timeline_sampling_s": round(orchestrator.sampling_s, 4),
                    # Where the rest went, real seconds in run order (setup_s includes Ray's start).
                    "phases": _phases(wall0 + t_ray, wall0 + setup_s, orchestrator.t_due,
                                      orchestrator.t_migrated, orchestrator.t_after, t_collected)}
        wall["phases"]["teardown_s"] = round(time.monotonic() - t_collected, 3)
        # Ray's own part of the phases: its start, its actors' processes (in build), its shutdown.
        wall["ray_s"] = {"start_s": round(t_ray, 3), "actor_processes_s": round(sl.actor_processes_s, 3),
                         "shutdown_s": round(cl.ray_stop_s, 3)}
        wall["total_s"] = round(time.monotonic() - wall0, 3)
        if metrics and opts.linger_s > 0:
            time.sleep(opts.linger_s)  # the final figures stay up for Prometheus's next scrapes
    finally:
        timeline.close()
        if metrics:
            metrics.close()
    out = collect.combine(scenario, scenario_path, per_vm, scale, wall, final_hosts)
    out["emulation"] |= _peak_memory(memory, shm)
    out["faults"] = faults
    out["data_path"] = data_path
    out["fault_counts"] = fault_counts
    out["events_not_fired"] = unfired
    out["run"] = _provenance(run_id, started)
    out["scenario_as_loaded"] = scenario.as_loaded()
    out["timeline"] = {"file": "timeline.jsonl" if path else None, "records": len(timeline.records),
                       "interval_s": opts.interval_s}
    if colocated:
        out["colocated"] = colocated
    return out


def run_in_series(scenario: Scenario, opts: RunOptions, scenario_path: str = "") -> dict:
    """run_scenario for a command that runs scenarios one after another (a benchmark, a capacity
    search): KeyboardInterrupt when Ctrl-C or SIGTERM aborted this run, so that the command stops
    there instead of going on with its next runs."""
    return unless_interrupted(run_scenario(scenario, opts, scenario_path))


def _phases(*t: float) -> dict:
    """Real seconds between the run's milestones (monotonic): Ray up, slice built, migrations
    started, migrations ended, window after ended, figures collected. The guests start during
    set-up, so `warmup_s` is only what is left of the warm-up once set-up is done."""
    names = ("build_s", "warmup_s", "migrations_s", "after_s", "collect_s")
    return {n: round(b - a, 3) for n, a, b in zip(names, t, t[1:])}


def _peak_memory(memory: MemorySampler, shm: int) -> dict:
    """What the run took from this machine at its peak: its processes' private
    memory (sampled each second) plus the shared memory its images and rings hold."""
    private = max((b for _, b in memory.samples), default=0)
    return {"peak_memory_bytes": private + shm, "peak_private_memory_bytes": private, "shared_memory_bytes": shm}


def _provenance(run_id: str, started: str) -> dict:
    """What made this result: livemig's version, the run's id, when it started (UTC)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("livemig")
    except PackageNotFoundError:
        v = "unknown"
    return {"livemig_version": v, "run_id": run_id, "started_at": started}


def _disk_completions(sl) -> dict:
    """Per VM with a disk workload: the real times its disk requests completed (its DiskAgent)."""
    import ray
    vms = [(i, vm) for i, vm in enumerate(sl.scenario.vms)
           if vm.disk_gib > 0 and (f := vm.disk_workload.figures())["read_iops"] + f["write_iops"] > 0]
    got = ray.get([sl.datastores[vm.datastore].completions.remote(vm.name) for _, vm in vms], timeout=60)
    return {i: done for (i, _), done in zip(vms, got)}


def _colocated(sl, migs, guest_data, scale) -> dict:
    """VMs that stay put: their throughput before and during the others' migrations."""
    from cluster import collect
    ran = [m for m in migs if m.t_start]
    if not ran:
        return {}
    t_first, t_last = min(m.t_start for m in ran), max(m.t_end for m in ran)
    return {vm.name: collect.colocated_figures(guest_data[i][0], t_first, t_last, scale.dilation,
                                                 sl.scenario.emulation.warmup_s)
            for i, vm in enumerate(sl.scenario.vms) if not vm.migrate}

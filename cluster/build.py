"""Building the cluster: from a scenario to live, wired actors.

`Cluster` starts (or joins) Ray and tears everything down however the run
ends: actors, shared memory, socket directory. `build_slice` creates one
HostAgent per host that runs a VM or takes part in a migration, one
LinkAgent per link any migration uses, the VM images (each VM's on its
first host, and one destination copy per migration), every migration's
connections (ring, descriptor sockets through its link, receiver, sender,
pipeline) and one GuestAgent per VM. All of it before the clock starts;
what happens next is cluster/orchestrate.py's business.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from cluster import actor_pool, crossnode
from cluster.local_ray import RAY_TOKEN_FILE, keeping_sigterm_handler, start_local_ray, stop_local_ray
from cluster.scaling import Scale, vm_real_pages
from cluster.scenario import MIB, Scenario, ScenarioError
from cluster.topology import Topology, plan


@dataclass
class RunOptions:
    address: str | None = None
    dilation: float | None = None
    dashboard: bool = False
    dashboard_port: int = 8265  # the Ray dashboard's port on 127.0.0.1, with `dashboard`
    metrics_port: int | None = None
    inject_fault: str | None = None
    progress: object = None  # callable(list of per-migration states), for a progress display
    out_dir: str | None = None  # where timeline.jsonl is written as the run goes
    interval_s: float = 0.1  # the timeline's sampling interval, emulated seconds
    linger_s: float = 0.0  # real seconds the metrics exporter stays up after the run, for a last scrape


def _sweep_socket_dirs() -> None:
    """Remove socket directories of runs whose driver is gone (killed before its tear-down)."""
    import glob

    from agents.datapath.shm import driver_gone
    for d in glob.glob("/tmp/livemig-*_*-*"):
        if driver_gone(d):
            shutil.rmtree(d, ignore_errors=True)


def new_run_id() -> str:
    return f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


class Cluster:
    """The actors of one run. Use as a context manager: leaving it tears all down."""

    def __init__(self, scenario: Scenario | None, scale: Scale, opts: RunOptions) -> None:
        self.scenario, self.scale, self.opts = scenario, scale, opts
        self.run_id = new_run_id()
        self.sock_dir = tempfile.mkdtemp(prefix=f"livemig-{self.run_id}-", dir="/tmp")
        self.actors: list = []
        self.hosts: list = []  # HostAgents: each clears its node of the run's files at tear-down
        self.reusable: list = []  # (key, actor): may serve the next run of a sweep (cluster/actor_pool.py)
        self._started_ray = False
        self.ray_stop_s = 0.0  # real seconds Ray's shutdown took, at tear-down (0 for a joined Ray)

    def __enter__(self) -> "Cluster":
        from agents.datapath import shm
        shm.sweep_stale()
        _sweep_socket_dirs()
        self._start_ray()
        return self

    def _start_ray(self) -> None:
        import ray
        if not ray.is_initialized():
            self._init_ray()
            self._started_ray = True

    def _init_ray(self) -> None:
        import ray
        if self.opts.address:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            try:
                with keeping_sigterm_handler():  # start_local_ray keeps it for its own ray.init
                    ray.init(address=self.opts.address, namespace=f"livemig-{self.run_id}", log_to_driver=False,
                             include_dashboard=self.opts.dashboard, configure_logging=False)
            except ConnectionError as exc:  # unreachable, or refused: a wrong or missing token
                from cluster.join import join_refused
                raise ScenarioError([join_refused(self.opts.address, exc)]) from None
        else:
            url = start_local_ray(f"livemig-{self.run_id}", dashboard=self.opts.dashboard,
                                  dashboard_port=self.opts.dashboard_port,
                                  ray_metrics=self.opts.metrics_port is not None)
            if url:  # the user asked for it to watch the run: say where it is, and its token
                print(f"Ray dashboard: {url} (actors named by role; token: {RAY_TOKEN_FILE})",
                      file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        self.teardown()

    def teardown(self) -> None:
        import ray

        from agents.datapath import shm
        _close_all(self.actors)
        # Other Ray nodes' shared memory and sockets (this node's: below), every host at once;
        # a dead host's node is swept by its next run.
        sweeps = []
        for a in self.hosts:
            try:
                sweeps.append(a.sweep_node.remote(self.run_id, self.sock_dir))
            except Exception:  # noqa: BLE001 - a killed actor may refuse the call itself
                pass
        if sweeps:
            ray.wait(sweeps, num_returns=len(sweeps), timeout=5)
        self.hosts.clear()
        kept = actor_pool.keep(self, self.reusable)
        for a in self.actors:
            if id(a) in kept:
                continue
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001
                pass
        self.actors.clear()
        self.reusable.clear()
        if self._started_ray:
            t = time.monotonic()
            stop_local_ray()
            self.ray_stop_s = time.monotonic() - t
        shm.remove_run(self.run_id)
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def track(self, actor, reuse_key: tuple[str, str] | None = None):
        """Tear `actor` down with the run; with a `reuse_key`, a sweep may keep it (cluster/actor_pool.py)."""
        self.actors.append(actor)
        if reuse_key is not None:
            self.reusable.append((reuse_key, actor))
        return actor


def _close_all(actors: list, timeout_s: float = 5.0) -> None:
    """Ask every actor to close at once and wait for them together (at most `timeout_s`
    real seconds in all): one at a time, a run's tear-down took a round trip per actor."""
    import ray
    refs = []
    for a in actors:
        try:
            refs.append(a.close.remote())
        except Exception:  # noqa: BLE001 - a dead actor is what tear-down is for
            pass
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)


@dataclass
class Slice:
    """The live datacenter slice of a run: actors by name, and where each VM's image is."""

    cluster: Cluster
    scenario: Scenario
    scale: Scale
    topo: Topology
    hosts: dict = field(default_factory=dict)  # host name -> HostAgent
    links: dict = field(default_factory=dict)  # link index -> LinkAgent
    guests: list = field(default_factory=list)  # by VM index
    paths: dict = field(default_factory=dict)  # image key -> shared-memory path
    location: dict = field(default_factory=dict)  # VM index -> (host name, image key) where it runs now
    npages: dict = field(default_factory=dict)  # VM index -> real pages
    datastores: dict = field(default_factory=dict)  # datastore name -> DiskAgent
    disk_moves: dict = field(default_factory=dict)  # migration index -> its disk move, for the technique
    disk_at: dict = field(default_factory=dict)  # VM index -> the datastore its disk is on now
    nodes: dict = field(default_factory=dict)  # host name -> its Ray node {"id", "ip"} (cluster/crossnode.py)
    standby: dict = field(default_factory=dict)  # migration index -> the guest waiting on its destination's node
    guest_host: dict = field(default_factory=dict)  # VM index -> the host beside whose node its guest actor runs
    guests_started_at: float = 0.0  # real, monotonic: the guests' vCPUs started (the warm-up's start)
    actor_processes_s: float = 0.0  # real seconds the build waited for Ray to start actors' processes

    @staticmethod
    def first_key(vm: int) -> str:
        return f"vm{vm}"

    @staticmethod
    def copy_key(vm: int, m: int, host: int = 0) -> str:
        """Migration `m`'s copy of VM `vm` on its destination number `host` (split migration: 1.. the sub-hosts)."""
        return f"vm{vm}-m{m}" + (f"-h{host}" if host else "")

    def targets(self, mp) -> tuple:
        """The destinations migration `mp` sends pages to: all of a split migration's, else the first."""
        return mp.destinations if splits(mp) else mp.destinations[:1]


def swaps(mp) -> bool:
    """Whether migration plan `mp`'s destination pages to swap (S-memV's swap-assisted baseline)."""
    from agents.techniques import registry
    return bool(getattr(registry.get(mp.technique).load(), "swaps", False))


def splits(mp) -> bool:
    """Whether migration plan `mp`'s technique splits the VM over several hosts (S-memV)."""
    from agents.techniques import registry
    return bool(getattr(registry.get(mp.technique).load(), "splits", False))


def build_slice(cl: Cluster, scenario: Scenario, scale: Scale, opts: RunOptions) -> Slice:
    import ray

    sl = Slice(cl, scenario, scale, plan(scenario, scale))
    configured = _hosts(sl)
    if not opts.address:  # one node: links and guests need no placement, so their processes start meanwhile
        _links(sl)
        _spawn_guests(sl)
    _waiting_for_actors(sl, configured)  # the hosts' processes (their configuration is quick)
    sl.nodes = crossnode.locate(sl.hosts)  # on a cluster, links and guests go beside their hosts
    if opts.address:
        _links(sl)
        _spawn_guests(sl)
    ray.get(_images(sl))
    _guests(sl)
    _access_histories(sl)
    _disks(sl)
    # The warm-up runs while the data path is wired: the guests and their disks are up and
    # measured from here; no migration starts before the rest is set up and the warm-up is over.
    _start_guests(sl)
    _wire(sl)
    _pipelines(sl)
    if opts.inject_fault == "corrupt-page":
        from agents.datapath.shm import region_path
        c0 = sl.topo.connections[0]
        # Damaged before its checksum was taken: the transport cannot see it, verification must.
        ray.get(sl.links[c0.link].corrupt.remote({c0.index: (region_path(cl.run_id, f"ring{c0.index}"), c0.batch_pages)},
                                                 1, True))
    _share_cores(sl)
    if (pool := actor_pool.active()) is not None:
        pool.kill_idle()  # kept from the last run, not wanted by this one
    return sl


def _waiting_for_actors(sl: Slice, refs: list) -> None:
    """Wait for `refs`, answered by actors as soon as Ray has their processes up; the wait counts
    in `sl.actor_processes_s` (Ray's part of the build: a worker process's start, 0.5 s of CPU)."""
    import ray
    t = time.monotonic()
    ray.get(refs)
    sl.actor_processes_s += time.monotonic() - t


def _start_guests(sl: Slice) -> None:
    """Start every guest's vCPUs at once; `sl.guests_started_at` is when (real, monotonic)."""
    import ray

    from cluster.faults import ACTOR_CALL_S
    sl.guests_started_at = ray.get([g.start.remote() for g in sl.guests], timeout=ACTOR_CALL_S)[0]


def _disks(sl: Slice) -> None:
    """A DiskAgent per datastore that holds a disk or receives one; each VM's
    disk on its datastore with its workload running; each migration's disk move."""
    import ray

    from agents.actors.disk import DiskAgent
    from agents.guest.disk import EXTENT
    from cluster.storage_plan import disk_move
    sc, scale = sl.scenario, sl.scale
    moves = {mp.index: disk_move(sc, mp) for mp in sc.migration_plans()}
    used = {vm.datastore for vm in sc.vms if vm.disk_gib > 0} | {mv.target.name for mv in moves.values() if mv}
    for ds in sc.datastores:
        if ds.name in used:
            sl.datastores[ds.name] = actor_pool.new_or_kept(sl.cluster, DiskAgent, f"datastore:{ds.name}", (
                ds.name, ds.model_figures(), _datastore_dir(sl, ds.name), scale.memory_scale, scale.dilation))
    waits = []
    for i, vm in enumerate(sc.vms):
        if vm.disk_gib > 0:
            nbytes = max(1, round(vm.disk_gib * (1 << 30) * scale.memory_scale / EXTENT)) * EXTENT
            agent = sl.datastores[vm.datastore]
            waits.append(agent.create_disk.remote(vm.name, nbytes, vm.disk_used_fraction, sc.emulation.seed + 1000 * i))
            sl.disk_at[i] = vm.datastore
    ray.get(waits)
    ray.get([sl.datastores[vm.datastore].start_workload.remote(vm.name, vm.disk_workload.figures(),
                                                               sc.emulation.seed + 1000 * i + 7)
             for i, vm in enumerate(sc.vms) if vm.disk_gib > 0])
    for k, mv in moves.items():
        if mv is not None:
            sl.disk_moves[k] = _disk_move_spec(sl, mv, sc.migration_plans()[k])


def _datastore_dir(sl: Slice, name: str) -> str:
    return os.path.join(sl.cluster.sock_dir, f"ds-{name}")


def _disk_move_spec(sl: Slice, mv, mp) -> dict:
    """What the storage technique is handed (real sizes, physical rates); `chunk_bytes`
    > 0 for the dirty-bitmap technique.

    Floors in real bytes keep a small memory_scale from distorting the copy:
    a region of at least 16 KiB (per-region overhead stays small), a
    transmit buffer of at least 8 regions (read, send and write overlap) and
    16 of the guest's largest requests (request sizes do not scale: one real
    request stands for 1/memory_scale of them, and must not fill the buffer alone)."""
    from agents.guest.disk import BLOCK
    scale, o = sl.scale, mp.options
    region = max(4, round(o.disk_region_mib * MIB * scale.memory_scale / BLOCK)) * BLOCK
    chunk = max(1, round(o.disk_chunk_mib * MIB * scale.memory_scale / BLOCK)) * BLOCK
    w = sl.scenario.vms[mv.vm_index].disk_workload.figures()
    request = int(max(w["read_kib"], w["write_kib"]) * 1024)
    buffer = max(8 * region, 16 * request, int(o.mirror_buffer_mib * MIB * scale.memory_scale))
    return {"agent": sl.datastores[mv.source.name], "vm": sl.scenario.vms[mv.vm_index].name,
            "source": mv.source.name, "target": mv.target.name, "target_dir": _datastore_dir(sl, mv.target.name),
            "target_figures": mv.target.model_figures(), "allowed": list(mv.allowed), "disk_bytes": mv.disk_bytes,
            "path": {"kind": mv.path, "rate_bytes_s": mv.rate_bytes_s, "delay_s": mv.delay_s},
            "region_bytes": region, "buffer_bytes": buffer, "copy_mode": o.copy_mode, "window_s": o.mirror_window_s,
            "chunk_bytes": chunk if mp.technique == "block-dirty" else 0,
            "links": _disk_links(sl, mp.index) if mv.path == "network" else []}


def _disk_links(sl: Slice, m: int) -> list:
    """On the network path the disk crosses migration `m`'s links: each LinkAgent with the
    migration's first connection on it (whose statistics its disk bytes join)."""
    topo = sl.topo
    return [(sl.links[lp.index], next(c.index for c in topo.connections_of_migration(m) if c.link == lp.index))
            for lp in topo.links_of_migration(m)]


def _share_cores(sl: Slice) -> None:
    """CPU rate control (PMigrate §3.2, §6.3): on each host whose migrations
    share cores with VMs that stay, tell those VMs what the migrations take."""
    import ray
    sc = sl.scenario
    if not sc.cpu.shared_cores:
        return
    staying: dict[str, list[str]] = {}
    for i, vm in enumerate(sc.vms):
        if not vm.migrate:
            staying.setdefault(sc.initial_host(vm).name, []).append(sl.first_key(i))
    # Cores are accounted when released: average over a few tasks.
    period = max(0.05, sl.scale.real_seconds(0.05))
    ray.get([sl.hosts[h].share_cores_with.remote(keys, period) for h, keys in staying.items()])


def _costs(scenario: Scenario, lock: str) -> dict:
    from agents.cpu import resolve
    return resolve(scenario.cpu.profile, lock, scenario.cpu.overrides()).__dict__


def _hosts(sl: Slice) -> list:
    """A HostAgent per host that runs a VM or takes part in a migration, named by its roles
    (their configuration's pending results)."""
    from agents.actors.host import HostAgent
    sc, cpu = sl.scenario, sl.scenario.cpu
    used = {sc.initial_host(vm).name for vm in sc.vms}
    for mp in sc.migration_plans():
        used |= {mp.source.name, *(h.name for h in mp.destinations)}
    costs = _costs(sc, sc.migration.address_space_lock)
    waits = []
    for h in sc.hosts:
        if h.name not in used:
            continue
        roles = "+".join(h.roles)
        actor = actor_pool.new_or_kept(sl.cluster, HostAgent, f"{roles}:{h.name}", (roles, h.name),
                                       crossnode.host_options(h))
        sl.hosts[h.name] = actor
        sl.cluster.hosts.append(actor)
        cores = min(h.cores, cpu.migration_cores or h.cores)
        # CPU rate control where migrations share cores with VMs that stay (PMigrate §6.3).
        shares = any(not vm.migrate and sc.initial_host(vm).name == h.name for vm in sc.vms)
        waits.append(actor.configure.remote(cores, costs, sl.scale.memory_scale, sl.scale.dilation,
                                            cpu.shared_cores if shares else 0, cpu.migration_priority))
    return waits


def _links(sl: Slice) -> None:
    from agents.actors.link import LinkAgent
    net, scale = sl.scenario.network, sl.scale
    for lp in sl.topo.links:
        sl.links[lp.index] = actor_pool.new_or_kept(sl.cluster, LinkAgent, f"link:{lp.name}", (
            lp.name, lp.rate_bytes_s, lp.one_way_s, lp.background_bytes_s, net.rate_control,
            scale.real_rate(net.reserved_mbytes_s * MIB), scale.real_seconds(1.0), scale.memory_scale),
            crossnode.beside(sl, lp.source))


def _images(sl: Slice) -> list:
    """Each VM's image on its first host, filled with its contents; an empty,
    pre-touched copy on the destination of each of its migrations."""
    from agents.datapath.shm import region_path
    sc, waits = sl.scenario, []
    for i, vm in enumerate(sc.vms):
        n = sl.npages[i] = vm_real_pages(sl.scale, vm)
        key = sl.first_key(i)
        sl.paths[key] = region_path(sl.cluster.run_id, key)
        host = sc.initial_host(vm).name
        sl.location[i] = (host, key)
        waits.append(sl.hosts[host].create_image.remote(key, sl.paths[key], n, vm.content.model_dump(),
                                                        sc.emulation.seed + 1000 * i))
    for mp in sc.migration_plans():
        for d, dst in enumerate(sl.targets(mp)):
            key = sl.copy_key(mp.vm_index, mp.index, d)
            sl.paths[key] = region_path(sl.cluster.run_id, key)
            waits.append(sl.hosts[dst.name].create_image.remote(
                key, sl.paths[key], sl.npages[mp.vm_index], None, sc.emulation.seed + 1000 * mp.vm_index))
    return waits


def _wire(sl: Slice) -> None:
    """Rings in shared memory and descriptor sockets: source -> link -> destination, acks back."""
    import ray

    from agents.datapath.shm import region_path
    d, plans = sl.cluster.sock_dir, {mp.index: mp for mp in sl.scenario.migration_plans()}
    ray.get([sl.links[lp.index].listen.remote([(c.index, f"{d}/c{c.index}in", f"{d}/c{c.index}out")
                                               for c in sl.topo.connections_of(lp.index)]) for lp in sl.topo.links])
    for c in sl.topo.connections:
        mp = plans[c.migration]
        src, dst = sl.hosts[mp.source.name], sl.hosts[mp.destinations[c.host].name]
        if crossnode.crosses(sl, mp.source.name, mp.destinations[c.host].name):
            crossnode.wire(sl, c, mp.source.name, mp.destinations[c.host].name,
                           {mp.index: sl.copy_key(mp.vm_index, mp.index, c.host)}, d)
            continue
        ring = region_path(sl.cluster.run_id, f"ring{c.index}")
        ray.get(src.create_ring.remote(c.index, ring, c.slots, c.batch_pages))
        ray.get(dst.attach_ring.remote(c.index, ring))
        ray.get(src.listen.remote(f"{d}/c{c.index}ack"))
        ray.get(dst.open_receiver.remote(c.index, f"{d}/c{c.index}out", f"{d}/c{c.index}ack", c.slots, c.batch_pages,
                                         {mp.index: sl.copy_key(mp.vm_index, mp.index, c.host)}))
        ray.get(src.open_sender.remote(c.index, f"{d}/c{c.index}in", f"{d}/c{c.index}ack", c.slots, c.batch_pages))
    for mp in plans.values():
        if swaps(mp):
            conns = [c.index for c in sl.topo.connections_of_migration(mp.index)]
            ray.get(sl.hosts[mp.destinations[0].name].attach_swap.remote(
                mp.index, sl.copy_key(mp.vm_index, mp.index), conns, mp.options.swap_resident_share,
                mp.options.swap_device))


def _pipelines(sl: Slice) -> None:
    import ray
    waits = []
    for mp in sl.scenario.migration_plans():
        o, conns = mp.options, sl.topo.connections_of_migration(mp.index)
        compression = dict(method=o.compression, zstd_level=o.zstd_level,
                           xbzrle_cache_bytes=int(o.xbzrle_cache_mib * MIB * sl.scale.memory_scale),
                           xbzrle_budget=o.xbzrle_budget)
        waits.append(sl.hosts[mp.source.name].start_pipeline.remote(
            mp.index, [c.index for c in conns], o.consumers, o.address_space_lock,
            int(o.memory_pool_mib * MIB * sl.scale.memory_scale), task_pages(o, conns, sl.scale.memory_scale), compression,
            _costs(sl.scenario, o.address_space_lock), [c.host for c in conns]))
    ray.get(waits)


def task_pages(o, conns, memory_scale: float) -> int:
    """Real pages per task of the producer. Several consumers share out tasks of `o.task_pages`
    emulated pages (PMigrate's unit of work: how evenly a pass's last pages spread over them),
    at least one real page; one consumer takes a batch at a time, whose size then changes nothing."""
    batch = min(c.batch_pages for c in conns)
    return batch if o.consumers == 1 else max(1, int(round(o.task_pages * memory_scale)))


def _access_histories(sl: Slice) -> None:
    """The source keeps the access history of each VM a split migration will move (S-memV §IV-B)."""
    import ray
    waits = []
    for mp in sl.scenario.migration_plans():
        if not splits(mp) or mp.source.name != sl.scenario.initial_host(mp.vm).name:
            continue
        from agents.techniques.split import real_chunk_pages
        o = mp.options
        waits.append(sl.hosts[mp.source.name].track_access.remote(
            sl.first_key(mp.vm_index), real_chunk_pages(o.chunk_pages, sl.scale.memory_scale),
            sl.scale.real_seconds(o.history_collect_ms / 1000), o.history_age_collections))
    ray.get(waits)


def _spawn_guests(sl: Slice) -> None:
    """A GuestAgent per VM, created early: Ray starts their processes (a core's worth
    at a time, 0.5-1 s each) while the hosts make the images; `_guests` boots them."""
    for vm in sl.scenario.vms:
        sl.guest_host[len(sl.guests)] = sl.scenario.initial_host(vm).name
        sl.guests.append(_new_guest(sl, vm.name, sl.scenario.initial_host(vm).name, f"guest:{vm.name}"))


def _new_guest(sl: Slice, vm: str, host: str, name: str):
    """An empty GuestAgent on the Ray node of `host` (anywhere before the nodes are located)."""
    from agents.actors.guest import GuestAgent
    return actor_pool.new_or_kept(sl.cluster, GuestAgent, name, (vm,), crossnode.beside(sl, host))


def _guests(sl: Slice) -> None:
    """Each guest on its image. Dozens of guests take many seconds to start: wait
    for them here, in set-up, not in the first deadlined call."""
    import ray
    sc, scale = sl.scenario, sl.scale
    fault_s = _costs(sc, sc.migration.address_space_lock)["guest_fault_us"] * 1e-6

    def boot(g, i: int, key: str):
        vm = sc.vms[i]
        return g.boot.remote(sl.paths[key], vm.workload.model_dump(), vm.content.model_dump(), vm.vcpus,
                             scale.memory_scale, scale.dilation, fault_s, sc.emulation.seed + 1000 * i, vm.io_bound,
                             any(splits(mp) for mp in sc.migration_plans() if mp.vm_index == i))

    booted = []

    def standby(i: int, key: str, host: str):
        g = _new_guest(sl, sc.vms[i].name, host, f"guest:{sc.vms[i].name}@{key}")
        booted.append(boot(g, i, key))
        return g
    crossnode.standby_guests(sl, standby)
    _waiting_for_actors(sl, [g.pid.remote() for g in sl.guests])  # their processes, started with the hosts'
    ray.get(booted + [boot(g, i, sl.first_key(i)) for i, g in enumerate(sl.guests)])

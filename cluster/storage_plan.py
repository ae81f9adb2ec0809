"""Where disks are and how they move: the storage side of a scenario.

Pure functions over a validated scenario: `storage_problems` checks the
datastores and disks (each problem a field path and a message, as
cluster/scenario.py reports them), `disk_move` resolves one migration's
disk move and picks its data path the way vSphere 5.1 vMotion does (seed,
Figure 1 and after): the array copies when both datastores are on one array
that can offload (VAAI) and the source host reaches the destination
datastore; else the source host's own storage interface when it reaches the
destination datastore (no migration-network bytes); else the migration
network. Cheapest first: no host CPU and no network, then no network.
"""
from __future__ import annotations

from dataclasses import dataclass

PATHS = ("array-offload", "storage-interface", "network")
GIB = 1 << 30


@dataclass(frozen=True)
class DiskMove:
    """One migration's disk move: from `source` to `target` datastore over `path`
    (physical units: bytes/s, seconds), and the paths the topology allowed."""

    vm_index: int
    source: object  # cluster.scenario.Datastore
    target: object
    path: str
    rate_bytes_s: float
    delay_s: float
    allowed: tuple[str, ...]
    disk_bytes: int


def allowed_paths(s, mp, src, tgt) -> dict[str, tuple[float, float]]:
    """The data paths the topology allows for moving a disk from `src` to `tgt`
    in migration plan `mp`, cheapest first: path -> (rate bytes/s, one-way delay s)."""
    host = mp.source
    out: dict[str, tuple[float, float]] = {}
    reaches = host.name in tgt.hosts
    if reaches and src.array is not None and src.array == tgt.array and src.offload and tgt.offload:
        out["array-offload"] = (min(src.offload_mbytes_s, tgt.offload_mbytes_s) * 1e6, 0.0)
    if reaches:
        out["storage-interface"] = (host.storage_gbps * 1e9 / 8, 0.0)
    # Over the network the disk goes through the migration's own connections
    # (one per consumer, spread over the NIC pairs): those links' capacity.
    links = s.links_between(host, mp.destination)[: max(1, getattr(mp.options, "consumers", 1))]
    if links:
        out["network"] = (sum(s.link_bandwidth_gbps(lk) for lk in links) * 1e9 / 8, links[0].rtt_ms / 2000)
    return out


def disk_move(s, mp) -> DiskMove | None:
    """Migration plan `mp`'s disk move, or None when its disk stays where it is."""
    vm, o = mp.vm, mp.options
    target = getattr(o, "target_datastore", None)
    if vm.disk_gib <= 0 or target is None or target == vm.datastore:
        return None
    src, tgt = s.datastore_named(vm.datastore), s.datastore_named(target)
    paths = allowed_paths(s, mp, src, tgt)
    choice = next(iter(paths)) if o.disk_path == "auto" else o.disk_path
    rate, delay = paths[choice]
    return DiskMove(mp.vm_index, src, tgt, choice, rate, delay, tuple(paths), int(vm.disk_gib * GIB))


REAL_DISK_LIMIT = 16 * GIB  # real bytes of disk images (source and destination) a run may write


def storage_problems(s) -> list[tuple[str, str]]:
    problems = _datastore_problems(s)
    if problems:
        return problems
    return _disk_problems(s) + _move_problems(s) + _real_size_problems(s)


def real_disk_bytes(s) -> float:
    """Real bytes of disk images at most (they are real files): each disk once, and once more where it moves."""
    moved = sum(mp.vm.disk_gib for mp in s.migration_plans() if getattr(mp.options, "target_datastore", None))
    return (sum(vm.disk_gib for vm in s.vms) + moved) * GIB * s.emulation.memory_scale


def _real_size_problems(s) -> list[tuple[str, str]]:
    real = real_disk_bytes(s)
    if real <= REAL_DISK_LIMIT:
        return []
    return [("emulation.memory_scale", f"the disk images would take {real / GIB:.1f} GiB of real files; lower "
                                       f"memory_scale so they stay under {REAL_DISK_LIMIT // GIB} GiB")]


def _datastore_problems(s) -> list[tuple[str, str]]:
    problems = []
    hosts = {h.name for h in s.hosts}
    seen: dict[str, int] = {}
    for i, d in enumerate(s.datastores):
        if d.name in seen:
            problems.append((f"datastores[{i}].name", f"\"{d.name}\" is already the name of datastores[{seen[d.name]}]; "
                                                      f"datastore names must be unique"))
        seen.setdefault(d.name, i)
        if not d.hosts:
            problems.append((f"datastores[{i}].hosts", f"no host reaches datastore \"{d.name}\"; list the hosts "
                                                       f"that do (known: {', '.join(sorted(hosts))})"))
        for h in d.hosts:
            if h not in hosts:
                problems.append((f"datastores[{i}].hosts", f"\"{h}\" is not a host; known: {', '.join(sorted(hosts))}"))
    return problems


def _disk_problems(s) -> list[tuple[str, str]]:
    problems = []
    used: dict[str, float] = {}
    for i, vm in enumerate(s.vms):
        if vm.disk_gib <= 0:
            continue
        ds = s.datastore_named(vm.datastore)
        if vm.datastore is None or ds is None:
            known = ", ".join(d.name for d in s.datastores) or "none: add a [[datastores]] table"
            problems.append((f"vms[{i}].datastore", "a VM with disk_gib > 0 needs the datastore its disk is on"
                             if vm.datastore is None else f"\"{vm.datastore}\" is not a datastore; known: {known}"))
            continue
        host = s.initial_host(vm)
        if host is not None and host.name not in ds.hosts:
            problems.append((f"vms[{i}].datastore", f"host \"{host.name}\" where {vm.name} starts does not reach "
                                                    f"datastore \"{ds.name}\" (reached by: {', '.join(ds.hosts)})"))
        used[ds.name] = used.get(ds.name, 0.0) + vm.disk_gib
        if used[ds.name] > ds.capacity_gib:
            problems.append((f"vms[{i}].disk_gib", f"{vm.disk_gib:g} GiB does not fit datastore \"{ds.name}\": its "
                                                   f"disks take {used[ds.name]:g} GiB of its capacity_gib "
                                                   f"{ds.capacity_gib:g}"))
    return problems


def _shared_disk_problems(s, mp, places: set, where: str) -> list[tuple[str, str]]:
    """A migration that leaves the disk where it is needs a destination that reaches it (shared
    storage, vMotion's usual case); otherwise the VM would run on without its disk."""
    dst, known = mp.destinations[0], [ds for ds in map(s.datastore_named, places) if ds is not None]
    if mp.vm.disk_gib <= 0 or not known or any(dst.name in d.hosts for d in known):
        return []  # no disk, or one _disk_problems already refuses
    on = " or ".join(f'"{d.name}"' for d in sorted(known, key=lambda d: d.name))
    return [(f"{where}.technique", f"{mp.vm.name}'s disk stays on datastore {on}, which destination host "
                                   f"\"{dst.name}\" does not reach; move it with technique = \"storage\" and a "
                                   f"target_datastore that host reaches, or put it on a datastore both hosts reach")]


def _move_problems(s) -> list[tuple[str, str]]:
    problems = []
    could_be_on: dict[str, set] = {}  # VM -> datastores its disk may be on (where it started, earlier targets)
    for mp in s.migration_plans():
        o = mp.options
        where = f"migrations[{mp.index}]" if s.migrations else "migration"
        target = getattr(o, "target_datastore", None)
        places = could_be_on.setdefault(mp.vm.name, {mp.vm.datastore})
        if target is None:
            problems += _shared_disk_problems(s, mp, places, where)
            continue
        places.add(target)
        tgt = s.datastore_named(target)
        if tgt is None:
            problems.append((f"{where}.target_datastore", f"\"{target}\" is not a datastore; known: "
                                                          f"{', '.join(d.name for d in s.datastores) or 'none'}"))
            continue
        if mp.vm.disk_gib <= 0:
            problems.append((f"{where}.target_datastore", f"{mp.vm.name} has no disk (disk_gib = 0) to move"))
            continue
        if mp.destination.name not in tgt.hosts:
            problems.append((f"{where}.target_datastore", f"destination host \"{mp.destination.name}\" does not reach "
                                                          f"datastore \"{tgt.name}\" (reached by: {', '.join(tgt.hosts)})"))
            continue
        if target != mp.vm.datastore and mp.vm.disk_gib > tgt.capacity_gib:
            problems.append((f"{where}.target_datastore", f"{mp.vm.name}'s {mp.vm.disk_gib:g} GiB disk does not fit "
                                                          f"datastore \"{tgt.name}\" (capacity_gib {tgt.capacity_gib:g})"))
            continue
        if o.disk_path != "auto" and target != mp.vm.datastore:
            allowed = allowed_paths(s, mp, s.datastore_named(mp.vm.datastore), tgt)
            if o.disk_path not in allowed:
                problems.append((f"{where}.disk_path", f"\"{o.disk_path}\" is not possible here; the topology allows: "
                                                       f"{', '.join(allowed)}"))
    return problems

"""Placement on Ray nodes and the cross-node path, for cluster/build.py and orchestrate.py.

A host with `ray_node = "node-b"` runs on the Ray node started with the custom
resource "node-b" (`ray start --resources='{"node-b": 1}'`; Ray's documented
way to steer actors to nodes, docs.ray.io "Resources"); each of its actors
asks for a sliver of it, so one node may play many hosts. Once the hosts are
placed (`locate`), each link's actor goes beside its source host and each
guest beside the host its VM starts on (node affinity), because both work
on that host's shared memory.

A connection crosses (`crosses`) when its two hosts are on different nodes,
or when the scenario forces it (`network.transport = "tcp"`): it is then
wired through the TCP bridge (agents/datapath/crossnode.py) with a ring on
each side; otherwise through the one shared ring, as before. A migration that
crosses switches its guest over by hand-off to a standby guest started on the
destination's node (agents/actors/crossnode.py), since the destination's
image is in that node's memory only.
"""
from __future__ import annotations

from cluster.scenario import ScenarioError

RESOURCE_SHARE = 0.001  # of a node's custom resource per actor: up to 1000 actors on a node


def host_options(host) -> dict:
    """Ray actor options that put host `host`'s actor on its `ray_node`."""
    return {"resources": {host.ray_node: RESOURCE_SHARE}} if host.ray_node else {}


def check_nodes(scenario, path: str = "<scenario>") -> None:
    """Every `ray_node` the scenario names is a resource some node of the cluster offers;
    ScenarioError (one line per host) otherwise, instead of actors that wait for ever."""
    import ray
    offered = ray.cluster_resources()
    lines = [f"{path}: hosts[{i}].ray_node: no Ray node offers the resource \"{h.ray_node}\"; start one with "
             f"ray start --resources='{{\"{h.ray_node}\": 1}}' (custom resources here: "
             f"{', '.join(_custom(offered)) or 'none'})"
             for i, h in enumerate(scenario.hosts) if h.ray_node and offered.get(h.ray_node, 0) <= 0]
    if lines:
        raise ScenarioError(lines)


def _custom(resources: dict) -> list[str]:
    builtin = ("CPU", "GPU", "memory", "object_store_memory", "accelerator_type")
    return sorted(k for k in resources if not k.startswith(builtin) and not k.startswith("node:"))


CLOCK_PROBES = 5  # round trips per host; the shortest bounds the offset's error best


def locate(hosts: dict) -> dict:
    """Host name -> {"id", "ip"} of the Ray node its actor runs on, and "clock_offset_s": how far
    that node's monotonic clock is ahead of the driver's. Exactly 0 on the driver's machine (one
    kernel boot, one CLOCK_MONOTONIC); elsewhere measured over the shortest of CLOCK_PROBES round
    trips, to within half of it (Cristian's algorithm)."""
    import time

    import ray

    from agents.actors.crossnode import boot_id
    ray.get([hosts[n].node.remote() for n in hosts], timeout=120)  # every actor up: round trips are calls only
    mine, nodes = boot_id(), {}
    for name, actor in hosts.items():
        probes = []
        for _ in range(CLOCK_PROBES):
            t0 = time.monotonic()
            node = ray.get(actor.node.remote(), timeout=120)
            t1 = time.monotonic()
            probes.append((t1 - t0, node.pop("clock") - (t0 + t1) / 2, node))
        _, offset, node = min(probes, key=lambda p: p[0])
        node["clock_offset_s"] = 0.0 if mine is not None and node["boot_id"] == mine else offset
        nodes[name] = node
    return nodes


def to_driver_clock(sl, host: str, t: float) -> float:
    """A monotonic time read by an actor on host `host`'s node, on the driver's clock (the timeline's)."""
    node = sl.nodes.get(host)
    return t - node["clock_offset_s"] if node else t


def samples_to_driver_clock(sl, vm: int, samples: list) -> list:
    """A guest's (time, ops) samples, read on its guest actor's node, on the driver's clock."""
    offset = (sl.nodes.get(sl.guest_host.get(vm)) or {}).get("clock_offset_s", 0.0)
    return [(t - offset, ops) for t, ops in samples] if offset else samples


def beside(sl, host: str) -> dict:
    """Ray actor options that put an actor on the node of host `host`'s actor."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    node = sl.nodes.get(host)
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node["id"], soft=False)} if node else {}


def crosses(sl, source: str, destination: str) -> bool:
    """Whether a connection from `source` to `destination` takes the TCP path."""
    if sl.scenario.network.transport == "tcp":
        return True
    return sl.nodes[source]["id"] != sl.nodes[destination]["id"]


def wire(sl, c, source: str, destination: str, images: dict, sock_dir: str) -> None:
    """Connection `c` through the TCP bridge: the destination's ring, receiver and listener,
    then the source's bridge end (after its acknowledgement socket listens), then its sender."""
    import ray

    from agents.datapath.shm import region_path
    d, src, dst = sock_dir, sl.hosts[source], sl.hosts[destination]
    ring = region_path(sl.cluster.run_id, f"ring{c.index}")
    ray.get(src.create_ring.remote(c.index, ring, c.slots, c.batch_pages))
    # An embedded cluster listens on 127.0.0.1 only; a joined one on the address Ray knows the node by.
    bind = sl.nodes[destination]["ip"] if sl.cluster.opts.address else "127.0.0.1"
    address = ray.get(dst.open_bridge_in.remote(c.index, ring + "-rx", c.slots, c.batch_pages, images, bind))
    ray.get(src.listen.remote(f"{d}/c{c.index}ack"))
    ray.get(src.open_bridge_out.remote(c.index, f"{d}/c{c.index}out", f"{d}/c{c.index}ack", address, c.slots,
                                       c.batch_pages))
    ray.get(src.open_sender.remote(c.index, f"{d}/c{c.index}in", f"{d}/c{c.index}ack", c.slots, c.batch_pages))


def standby_guests(sl, make) -> None:
    """A standby guest on the destination's node of each migration that crosses (`make(vm index,
    image key, host)` starts one, not running), kept in `sl.standby` by migration."""
    for mp in sl.scenario.migration_plans():
        dst = mp.destinations[0].name
        if crosses(sl, mp.source.name, dst):
            sl.standby[mp.index] = make(mp.vm_index, sl.copy_key(mp.vm_index, mp.index), dst)


def hand_over(sl, m: int, vm: int, destination: str, timeout: float) -> float:
    """Switch VM `vm` over to migration `m`'s standby guest on `destination`'s node: the paused
    guest hands its state over, the standby runs on from it; returns when it resumed, on the
    driver's clock."""
    import ray
    new, old = sl.standby.pop(m), sl.guest_host[vm]
    state = ray.get(sl.guests[vm].hand_off.remote(), timeout=timeout)
    shift = sl.nodes[destination]["clock_offset_s"] - sl.nodes[old]["clock_offset_s"]
    resumed = ray.get(new.take_over.remote(state, shift), timeout=timeout)
    sl.guests[vm], sl.guest_host[vm] = new, destination  # the old actor stays tracked: tear-down closes it
    return to_driver_clock(sl, destination, resumed)


def data_path(sl, timeout: float = 30.0) -> dict:
    """For result.json: where each host ran, and what crossed TCP (connections, real bytes sent)."""
    import ray
    names = list(sl.hosts)
    refs = [sl.hosts[n].bridge_status.remote() for n in names]
    ends = []
    for ref in refs:
        try:
            ends.append(ray.get(ref, timeout=timeout))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            ends.append({})  # a host killed by a fault: its figures are lost with it
    sent = [e for got in ends for e in got.values() if "sent" in e]
    return {"transport": sl.scenario.network.transport,
            "ray_nodes": {n: sl.nodes[n]["id"][:12] for n in names},
            # Timestamps from actors enter the timeline as they are: on several machines these offsets
            # are the error they carry (cluster_utils nodes share this machine's clock).
            "clock_offset_ms": {n: round(sl.nodes[n]["clock_offset_s"] * 1e3, 3) for n in names},
            "tcp_connections": len(sent), "tcp_bytes_sent": sum(e["sent"] for e in sent),
            "tcp_errors": [e["error"] for got in ends for e in got.values() if e["error"]]}

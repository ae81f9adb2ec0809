"""`livemig bench crossnode`: cross-node (TCP) throughput against same-node (shared memory).

Starts a real two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`,
nodes offering the resources "node-a" and "node-b") and sends a guest image,
batch by batch, through the real actors, unshaped and with no CPU charged:

- shm: source and destination hosts both on node-a, one shared ring (the
  same-node path);
- tcp: source on node-a, destination on node-b, every batch over the TCP
  bridge into node-b's own ring (the cross-node path);
- ray: the same batches as numpy arrays passed to an actor on node-b, a few
  calls in flight (Ray's own object transfer, the alternative the TCP path
  was chosen over).

Figures are MB/s of real bytes (1e6 bytes/s, image bytes over the time until
the last batch is restored), best of `repeats`; each image is verified after.
"""
from __future__ import annotations

import os
import time

import numpy as np

from cluster.bench import MIXES

PAGE = 4096


def crossnode_bench(mib: int = 64, batch_pages: int = 256, repeats: int = 3, mix: str = "random") -> dict:
    """Returns {"bench", "image_mib", "batch_pages", "unit", "paths": {path: {"mb_s", "verified"}}}."""
    import ray
    from ray.cluster_utils import Cluster as RayNodes

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    nodes = RayNodes(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node-a": 1},
                                                           "include_dashboard": False})
    try:
        nodes.add_node(num_cpus=1, resources={"node-b": 1})
        nodes.wait_for_nodes()
        ray.init(address=nodes.address, namespace="livemig-bench-crossnode", log_to_driver=False,
                 logging_level="WARNING")
        out = {"bench": "crossnode", "image_mib": mib, "batch_pages": batch_pages, "mix": mix,
               "unit": "MB/s real (1e6 bytes/s)", "paths": {}}
        out["paths"] = _measure(nodes.address, mib * 256, batch_pages, repeats, MIXES[mix])
        return out
    finally:
        ray.shutdown()
        nodes.shutdown()


def _measure(address: str, npages: int, batch_pages: int, repeats: int, content: dict) -> dict:
    import ray

    from agents.actors.host import HostAgent
    from agents.actors.link import LinkAgent
    from agents.datapath.shm import region_path
    from cluster.build import Cluster, RunOptions
    from cluster.orchestrate import verify_images
    from cluster.scaling import Scale
    free = {"send_us": 0.0, "receive_us": 0.0, "restore_us": 0.0, "dirty_sync_ns": 0.0}
    paths = {}
    with Cluster(None, Scale(1.0, 1.0), RunOptions(address=address)) as cl:
        def host(name: str, node: str):
            actor = cl.track(HostAgent.options(name=name, resources={node: 0.001}).remote(name, name))
            ray.get(actor.configure.remote(2, free, 1.0, 1.0))
            return actor

        src, near, far = host("bench-src", "node-a"), host("bench-near", "node-a"), host("bench-far", "node-b")
        ray.get([src.create_image.remote("s", region_path(cl.run_id, "s"), npages, content, 1),
                 near.create_image.remote("d", region_path(cl.run_id, "d-near"), npages, None, 1),
                 far.create_image.remote("d", region_path(cl.run_id, "d-far"), npages, None, 1)])
        for conn, (label, dst) in enumerate((("shm", near), ("tcp", far))):
            link = cl.track(LinkAgent.options(name=f"bench-link-{label}", resources={"node-a": 0.001})
                            .remote(label, 1e15, 0.0, 0.0, False, 0.0, 1.0))
            _wire(cl, src, dst, link, conn, batch_pages, tcp=label == "tcp")
            ray.get(src.start_pipeline.remote(conn, [conn], 1, "global", 128 << 20, batch_pages))
            ray.get(src.send_image.remote(conn, "s", 0))  # warm-up: first touch of rings and maps
            send_s = min(ray.get(src.send_image.remote(conn, "s", 0)) for _ in range(repeats))
            paths[label] = {"mb_s": round(npages * PAGE / send_s / 1e6, 1),
                            "verified": not verify_images(src, dst, "s", "d", npages)}
        paths["ray"] = _ray_transfer(npages, batch_pages, repeats)
    return paths


def _wire(cl, src, dst, link, conn: int, batch_pages: int, tcp: bool, slots: int = 8) -> None:
    """One connection src -> link -> dst, through the shared ring or the TCP bridge."""
    import ray

    from agents.datapath.shm import region_path
    d, ring = cl.sock_dir, region_path(cl.run_id, f"ring{conn}")
    ends = (f"{d}/c{conn}in", f"{d}/c{conn}out", f"{d}/c{conn}ack")
    ray.get(link.listen.remote([(conn, ends[0], ends[1])]))
    ray.get(src.create_ring.remote(conn, ring, slots, batch_pages))
    ray.get(src.listen.remote(ends[2]))
    if tcp:
        address = ray.get(dst.open_bridge_in.remote(conn, ring + "-rx", slots, batch_pages, {0: "d"}))
        ray.get(src.open_bridge_out.remote(conn, ends[1], ends[2], address, slots, batch_pages))
    else:
        ray.get(dst.attach_ring.remote(conn, ring))
        ray.get(dst.open_receiver.remote(conn, ends[1], ends[2], slots, batch_pages, {0: "d"}))
    ray.get(src.open_sender.remote(conn, ends[0], ends[2], slots, batch_pages))


def _ray_transfer(npages: int, batch_pages: int, repeats: int, in_flight: int = 8) -> dict:
    """The same image in batches as Ray objects, driver (node-a) -> an actor on node-b, which
    writes each into its copy; `in_flight` calls outstanding, as the ring has slots."""
    import ray

    @ray.remote(num_cpus=0, resources={"node-b": 0.001})
    class Sink:
        def __init__(self, n: int) -> None:
            self.image = np.zeros((n, PAGE), dtype=np.uint8)

        def take(self, start: int, batch: np.ndarray) -> int:
            self.image[start:start + len(batch)] = batch
            return len(batch)

        def digest(self) -> bytes:
            import hashlib
            return hashlib.blake2b(self.image).digest()

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (npages, PAGE), dtype=np.uint8)
    sink = Sink.remote(npages)
    ray.get(sink.take.remote(0, image[:1]))  # the actor is up

    def send() -> float:
        t0, pending = time.monotonic(), []
        for start in range(0, npages, batch_pages):
            pending.append(sink.take.remote(start, image[start:start + batch_pages]))
            if len(pending) >= in_flight:
                done, pending = ray.wait(pending, num_returns=1)
        ray.get(pending)
        return time.monotonic() - t0

    send()
    best = min(send() for _ in range(repeats))
    import hashlib
    ok = ray.get(sink.digest.remote()) == hashlib.blake2b(image).digest()
    ray.kill(sink)
    return {"mb_s": round(npages * PAGE / best / 1e6, 1), "verified": ok}

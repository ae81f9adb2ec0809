"""A host's ends of cross-node connections (a mixin of HostAgent).

When a connection's source and destination hosts are on different Ray nodes
(or the scenario forces the TCP path), the destination opens `open_bridge_in`
(its own ring, a TCP listener on the node's address, and the same
PageReceiver as on one node) and the source `open_bridge_out` (connected to
the link's outbound socket, the sender's acknowledgement socket and the
destination's TCP port); agents/datapath/crossnode.py moves the bytes.
`node()` tells the control plane where a host runs, so it can place the
link and the guest beside it. `GuestHandOff` (a mixin of GuestAgent) moves a
guest's running state to a standby guest on another node at switch-over.
"""
from __future__ import annotations

import pickle
import threading
import time

from agents.datapath.channel import Channel
from agents.datapath.crossnode import (
    BridgeIn,
    BridgeOut,
    TcpListener,
    channel_pair,
    connect,
)
from agents.datapath.shm import Region
from agents.datapath.wire_format import SlotLayout


def boot_id() -> str | None:
    """This kernel's boot id (Linux), None where there is none: two processes with the same one
    read the same CLOCK_MONOTONIC."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


class CrossNodeEnds:
    """Cross-node connection ends; expects HostAgent's `rings`, `receivers`, `_accepted`, `_receiver`."""

    def node(self) -> dict:
        """This host's Ray node: its id, the address other nodes reach it at, its monotonic clock
        now, and the kernel's boot id (processes of one boot share CLOCK_MONOTONIC)."""
        import ray
        return {"id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                "clock": time.monotonic(), "boot_id": boot_id()}

    def _bridges(self) -> dict:
        if not hasattr(self, "_bridge_ends"):
            self._bridge_ends = {}
        return self._bridge_ends

    def open_bridge_in(self, conn: int, ring_path: str, slots: int, batch_pages: int,
                       images: dict[int, str], bind: str = "127.0.0.1") -> tuple[str, int]:
        """The destination's end: a ring of this node for connection `conn`, its receiver,
        and a TCP listener on `bind` (this node's address other nodes reach; 127.0.0.1 on
        one machine), on a port of the kernel's choosing; returns (address, port) for the source."""
        layout = SlotLayout(batch_pages)
        ring = self.rings[conn] = Region.create(ring_path, slots * layout.slot_bytes)
        ring.prefault()
        to_rx, rx_from = channel_pair()
        rx_acks, bridge_acks = channel_pair()
        self._receiver(conn, rx_from, rx_acks, slots, batch_pages, images)
        listener = TcpListener(bind)

        def accept() -> None:
            try:
                sock = listener.accept()
            finally:
                listener.close()
            self._bridges()[conn] = BridgeIn(ring.array, slots, layout, sock, to_rx, bridge_acks)

        threading.Thread(target=accept, daemon=True, name=f"tcp-accept-{conn}").start()
        return listener.address

    def open_bridge_out(self, conn: int, link_out: str, ack_path: str, address: tuple[str, int], slots: int,
                        batch_pages: int) -> None:
        """The source's end: what the link delivers for `conn` goes over TCP to `address`;
        acknowledgements come back to the sender's socket at `ack_path` (call before open_sender)."""
        from_link = Channel.connect(link_out)
        to_sender = Channel.connect(ack_path)
        sock = connect(address)
        self._bridges()[conn] = BridgeOut(self.rings[conn].array, slots, SlotLayout(batch_pages), from_link,
                                          to_sender, sock)

    def sweep_node(self, run_id: str, sock_dir: str) -> int:
        """Remove what run `run_id` left on this node (shared memory, its socket directory), after
        every actor closed: on a cluster of several machines the driver's clean-up reaches its own only."""
        import shutil

        from agents.datapath.shm import remove_run
        shutil.rmtree(sock_dir, ignore_errors=True)
        return remove_run(run_id)

    def bridge_status(self) -> dict:
        """By connection: the real bytes a sending end wrote to TCP (frames, descriptors and
        batch bytes), or that it is a receiving end; and its error, if any."""
        return {c: ({"sent": b.bytes_sent} if isinstance(b, BridgeOut) else {"received": True}) | {"error": b.error}
                for c, b in self._bridges().items()}


# What a guest carries to another node: its workload's state and what it has measured.
_GUEST_STATE = ("workload", "classes", "rng", "rate_factor", "ops", "samples", "faults", "throttle", "_counter",
                "_tick_no")


class GuestHandOff:
    """A guest that moves to another Ray node (a mixin of GuestAgent).

    On one node the guest switches onto the destination's image in place
    (`resume_on`). Its actor cannot follow the VM to another machine, so a
    standby GuestAgent is started on the destination's node in set-up, on the
    destination's image; at switch-over the paused guest hands its state over
    (`hand_off`: workload, page classes, random state, counters, samples) and
    the standby runs on from it (`take_over`)."""

    def hand_off(self) -> dict:
        """Stop this guest's vCPUs for good and return their state (paused before: stop-and-copy)."""
        g = self.guest
        g.pause()
        g.stop()
        with g._lock:
            return {k: getattr(g, k) for k in _GUEST_STATE}

    def take_over(self, state: dict, clock_shift_s: float = 0.0) -> float:
        """Run on from `state` (another node's guest), on this actor's image; returns when it resumed.
        `clock_shift_s` (this node's monotonic clock minus the other's) puts the state's samples on this
        node's clock, so that the guest's timeline has one clock."""
        g = self.guest
        state = pickle.loads(pickle.dumps(state))  # Ray hands numpy arrays over read-only; the guest writes them
        state["samples"] = [(t + clock_shift_s, ops) for t, ops in state["samples"]]
        with g._lock:
            for k, v in state.items():
                setattr(g, k, v)
            g.paused = False
        g.start()
        return time.monotonic()

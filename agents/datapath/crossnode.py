"""The cross-node data path: a connection whose two ends are on different Ray nodes.

On one node a connection is sender -> link -> receiver, the batch bytes in
one shared-memory ring and only descriptors on Unix sockets. Across nodes
the ring cannot be shared. The link (agents/datapath/link.py) still runs on
the sending node and shapes the descriptors exactly as on one node (token
bucket, latency, fair queue); what it delivers goes to a `BridgeOut` in the
source host instead of a receiver. `BridgeOut` sends each descriptor, with
its batch's bytes read from the source ring, over a real TCP connection
(agents/datapath/tcp_frames.py) to a `BridgeIn` in the destination host,
which writes them into the same slot of a ring of its own node and hands the
descriptor to the destination's unchanged `PageReceiver` over a local socket
pair. Acknowledgements (ACK, NACK, DROPPED, CLOSE) go back the same way, an
ACK's restore time restamped on the sending node's clock as it arrives
(monotonic clocks of two machines are not comparable). So
the receiver checks each batch's checksum on the bytes that crossed the
network, and a batch damaged at the link is sent back and re-sent as on one
node.

    sender --unix--> link --unix--> BridgeOut ==TCP==> BridgeIn --pair--> PageReceiver
    sender <--unix------------------ BridgeOut <==TCP== BridgeIn <--pair-- (acks)

Each socket end is written by one thread and read by one thread.
"""
from __future__ import annotations

import socket
import threading
import time

import numpy as np

from agents.datapath.channel import (
    KIND_ACK,
    KIND_BATCH,
    KIND_CLOSE,
    KIND_STATE,
    KIND_URGENT,
    Channel,
    Listener,
)
from agents.datapath.tcp_frames import recv_frame, send_frame
from agents.datapath.wire_format import SlotLayout, SlotView

_CLOSE = (KIND_CLOSE, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0)
SOCK_BUFFER = 4 << 20  # bytes of kernel buffer each way: a few batches in flight at 10 Gbit/s


def _tune(sock: socket.socket) -> socket.socket:
    """Descriptors go at once (no Nagle delay); buffers hold several batches."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUFFER)
    return sock


def _views(ring: np.ndarray, slots: int, layout: SlotLayout) -> list[SlotView]:
    return [SlotView(ring, i, layout) for i in range(slots)]


def _carries_bytes(kind: int) -> bool:
    return kind in (KIND_BATCH, KIND_STATE, KIND_URGENT)


def _start(end, loops) -> list[threading.Thread]:
    """Run each loop of a bridge end in a thread. A loop that fails records why and shuts the TCP
    connection down, so both sides see it closed (the sender fails at once) instead of waiting."""
    def guarded(loop):
        def run() -> None:
            try:
                loop()
            except Exception as exc:  # noqa: BLE001 - a bug must fail the connection, not hang it
                end.error = end.error or f"{type(exc).__name__}: {exc}"
                end.close()
        return run

    threads = [threading.Thread(target=guarded(f), daemon=True, name=n) for f, n in loops]
    for t in threads:
        t.start()
    return threads


class TcpListener:
    """The destination's end: listens on `host` (the node's address Ray uses) and an ephemeral port."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0), backlog=4)
        self.address = self.sock.getsockname()[:2]

    def accept(self, timeout: float = 60.0) -> socket.socket:
        return _tune(Listener.accept(self, timeout).sock)  # the Unix listener's accept, on this socket

    def close(self) -> None:
        self.sock.close()


def connect(address: tuple[str, int], timeout: float = 30.0) -> socket.socket:
    sock = socket.create_connection(tuple(address), timeout=timeout)
    sock.settimeout(None)
    return _tune(sock)


class _BridgeEnd:
    """What both halves share: the ring's slot views, the TCP socket, two pumping threads."""

    def __init__(self, ring: np.ndarray, slots: int, layout: SlotLayout, sock: socket.socket) -> None:
        self.views = _views(ring, slots, layout)
        self.sock = sock
        self.error: str | None = None

    def _pump(self, read, write) -> None:
        """Move descriptors from `read()` (None: closed) to `write(d)` until a CLOSE has gone
        through; a peer that vanished counts as a CLOSE, a write that fails ends the pump."""
        while True:
            d = read()
            if d is None:
                d = _CLOSE
            try:
                write(d)
            except OSError as exc:
                self.error = self.error or f"{type(exc).__name__}: {exc}"
                return
            if d[0] == KIND_CLOSE:
                return

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)

    def close(self) -> None:
        Channel(self.sock).close()  # shut down both ways, then close, as a descriptor channel


class BridgeOut(_BridgeEnd):
    """The sending node's half: link deliveries -> TCP; acknowledgements from TCP -> the sender.

    `from_link`: the link's outbound channel of this connection; `to_sender`: the
    sender's acknowledgement channel; `ring`: the connection's ring, read here."""

    def __init__(self, ring: np.ndarray, slots: int, layout: SlotLayout, from_link: Channel, to_sender: Channel,
                 sock: socket.socket) -> None:
        super().__init__(ring, slots, layout, sock)
        self.bytes_sent = 0  # real bytes written to TCP: frames, descriptors and batch bytes
        self._threads = _start(self, ((lambda: self._pump(from_link.recv, self._send), "bridge-out"),
                                      (lambda: self._pump(self._ack, lambda d: to_sender.send(*d)), "bridge-acks")))

    def _send(self, d: tuple) -> None:
        self.bytes_sent += send_frame(self.sock, d, self.views[d[2]] if _carries_bytes(d[0]) else None)

    def _ack(self) -> tuple:
        d = recv_frame(self.sock)
        if d is None:  # the far node closed: the sender hears the connection closed
            d = _CLOSE
        elif d[0] == KIND_ACK:  # restored "now" on this node's clock: another machine's is not ours
            d = (*d[:7], time.monotonic())
        return d


class BridgeIn(_BridgeEnd):
    """The receiving node's half: TCP -> the local ring and the receiver; its acknowledgements -> TCP.

    `ring`: a ring of this node with the connection's layout, written here;
    `to_receiver` / `from_receiver`: this side's ends of the receiver's channels."""

    def __init__(self, ring: np.ndarray, slots: int, layout: SlotLayout, sock: socket.socket,
                 to_receiver: Channel, from_receiver: Channel) -> None:
        super().__init__(ring, slots, layout, sock)
        self._threads = _start(self, ((lambda: self._pump(self._frame, lambda d: to_receiver.send(*d)), "bridge-in"),
                                      (lambda: self._pump(from_receiver.recv, lambda d: send_frame(self.sock, d)),
                                       "bridge-acks")))

    def _frame(self) -> tuple | None:
        try:
            d = recv_frame(self.sock, lambda d: self.views[d[2]])
        except (ValueError, IndexError) as exc:
            self.error, d = f"bad frame: {exc}", None
        return d


def channel_pair() -> tuple[Channel, Channel]:
    """Two connected SEQPACKET channels in one process (the receiver's link and ack ends)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Channel(a), Channel(b)

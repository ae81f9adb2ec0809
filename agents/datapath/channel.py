"""Descriptor channels between processes: Unix SOCK_SEQPACKET sockets.

Bulk bytes travel in shared memory; these sockets carry only small
fixed-size descriptors (which slot, how many bytes, when sent). SEQPACKET keeps
message boundaries, so one send is one receive.
"""
from __future__ import annotations

import os
import socket
import struct

# kind, vm, slot, npages, wire_bytes, seq, t_sent, t_done, t_first. A batch cut through the
# link (agents/datapath/link.py): t_first is, on its way to the link, when its encoding began
# (0: ready only whole, at t_sent) and, on its way to the receiver, when its first page arrived
# (t_done: its last).
DESCRIPTOR = struct.Struct("<BxxxIIIQQddd")
KIND_BATCH, KIND_STATE, KIND_ACK, KIND_CLOSE = 1, 2, 3, 4
# Post-copy's return path, destination -> source: one page request (page number in wire_bytes).
KIND_PAGE_REQUEST = 5
# Faults (agents/datapath/link.py, receiver.py): a batch whose checksum did not match,
# sent back for re-sending; a batch lost with its connection (post-copy's broken
# connection), acknowledged without being restored; a sender's request to drop what
# its connection still has queued or in flight (the connection broke).
KIND_NACK, KIND_DROPPED, KIND_RESET = 6, 7, 8
# Post-copy's requested pages (agents/techniques/postcopy.py): a batch the link lets
# through ahead of the connection's queue, interleaved with the batch leaving the NIC
# (its frames go between theirs); the receiver restores it without waiting for the push's batch.
KIND_URGENT = 9


class Listener:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)  # on another Ray node, too
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(path)
        self.sock.listen(8)

    def accept(self, timeout: float = 60.0) -> "Channel":
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        conn.settimeout(None)
        return Channel(conn)

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def connect(cls, path: str) -> "Channel":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(path)
        return cls(s)

    def send(self, kind: int, vm: int = 0, slot: int = 0, npages: int = 0, wire_bytes: int = 0,
             seq: int = 0, t_sent: float = 0.0, t_done: float = 0.0, t_first: float = 0.0) -> None:
        self.sock.send(DESCRIPTOR.pack(kind, vm, slot, npages, wire_bytes, seq, t_sent, t_done, t_first))

    def recv(self) -> tuple | None:
        """A descriptor tuple, or None when the peer closed."""
        try:
            data = self.sock.recv(DESCRIPTOR.size)
        except OSError:
            return None
        if not data:
            return None
        return DESCRIPTOR.unpack(data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

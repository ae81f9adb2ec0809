"""TCP framing of the cross-node data path: a descriptor and its batch's bytes in one frame.

On one machine a batch stays in the shared-memory ring and only its
descriptor (agents/datapath/channel.py) travels. Between Ray nodes the ring
cannot be shared, so each descriptor crosses a TCP connection followed by
the bytes its slot holds (agents/datapath/wire_format.py's layout, only the
parts in use), and is written into the same slot of a ring on the far side:

    frame = DESCRIPTOR (48 bytes) | u32 body length | body
    body  = slot header (24 bytes) | page numbers (8 n) | encodings (n)
            | lengths (4 n) | payload (payload_len bytes)

The body is the batch as sealed by its sender, checksum included, so the
receiver's `SlotView.intact()` checks what crossed the network, as it checks
the shared ring on one machine. A descriptor without a batch (acks, close,
CPU state) has an empty body. Sending gathers the slot's pieces with one
`sendmsg` (no copy in Python); receiving reads straight into the far ring's
slot (`recv_into`). Pure: sockets and numpy only, no Ray.
"""
from __future__ import annotations

import socket
import struct

import numpy as np

from agents.datapath.channel import DESCRIPTOR
from agents.datapath.wire_format import _HDR, SlotView

LENGTH = struct.Struct("<I")
FRAME_HEAD = DESCRIPTOR.size + LENGTH.size


class FrameError(ValueError):
    """A frame that cannot be one: a body longer than a slot holds."""


def _bounded(view: SlotView) -> tuple[int, int]:
    """The slot's page count and payload length, clamped to what the slot holds
    (a damaged header must not overrun it: the checksum then fails instead)."""
    n, _, payload_len = view.get_header()
    return min(n, view.batch_pages), min(payload_len, len(view.payload))


def body_parts(view: SlotView) -> list[memoryview]:
    """The pieces of a packed slot that cross the network, in frame order."""
    n, payload_len = _bounded(view)
    parts = (view.header, view.idx[:n], view.enc[:n], view.lengths[:n], view.payload[:payload_len])
    return [memoryview(p.view(np.uint8)) for p in parts]


def send_frame(sock: socket.socket, d: tuple, view: SlotView | None = None) -> int:
    """Send descriptor `d` (a DESCRIPTOR tuple), with its batch's bytes when `view` is given.
    Returns the bytes written."""
    parts = body_parts(view) if view is not None else []
    size = sum(len(p) for p in parts)
    bufs = [memoryview(DESCRIPTOR.pack(*d) + LENGTH.pack(size)), *parts]
    total = FRAME_HEAD + size
    sent = 0
    while bufs:
        k = sock.sendmsg(bufs)
        sent += k
        while bufs and k >= len(bufs[0]):
            k -= len(bufs[0])
            bufs.pop(0)
        if bufs and k:
            bufs[0] = bufs[0][k:]
    return total


def _recv_exact(sock: socket.socket, buf: memoryview) -> bool:
    """Fill `buf`; False when the peer closed first."""
    while len(buf):
        k = sock.recv_into(buf)
        if k == 0:
            return False
        buf = buf[k:]
    return True


def recv_frame(sock: socket.socket, slot_of=None) -> tuple | None:
    """The next descriptor, its batch's bytes written into the slot `slot_of(descriptor)`
    (a SlotView) when it carries a body; None when the peer closed. Raises FrameError
    on a body that no slot could hold."""
    head = bytearray(FRAME_HEAD)
    try:
        if not _recv_exact(sock, memoryview(head)):
            return None
        d = DESCRIPTOR.unpack_from(head)
        (size,) = LENGTH.unpack_from(head, DESCRIPTOR.size)
        if size and not _recv_body(sock, d, size, slot_of):
            return None
    except OSError:
        return None
    return d


def _recv_body(sock: socket.socket, d: tuple, size: int, slot_of) -> bool:
    """Read a body of `size` bytes straight into its slot: the header, then each piece at its
    offset. A header that disagrees with the size (damaged before sending) fills what it can;
    the rest is read and dropped, and the batch's checksum fails at the receiver."""
    if slot_of is None:
        raise FrameError(f"a frame of kind {d[0]} carries {size} bytes and has no slot to land in")
    view = slot_of(d)
    if size < _HDR or size > _HDR + 13 * view.batch_pages + len(view.payload):
        raise FrameError(f"a frame body of {size} bytes does not fit a slot of {view.batch_pages} pages")
    if not _recv_exact(sock, memoryview(view.header.view(np.uint8))):
        return False
    left = size - _HDR
    for piece in body_parts(view)[1:]:
        take = min(len(piece), left)
        if not _recv_exact(sock, piece[:take]):
            return False
        left -= take
    return _recv_exact(sock, memoryview(bytearray(left))) if left else True

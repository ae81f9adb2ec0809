"""The cross-node data path without Ray: TCP framing (agents/datapath/tcp_frames.py)
and the bridge halves (agents/datapath/crossnode.py) over a real TCP connection on
127.0.0.1, with the real sender, link shaper and receiver, each end with its own ring."""
from __future__ import annotations

import numpy as np
import pytest

from agents.cpu import CorePool
from agents.datapath.channel import KIND_ACK, KIND_BATCH, KIND_CLOSE
from agents.datapath.crossnode import (
    BridgeIn,
    BridgeOut,
    TcpListener,
    channel_pair,
    connect,
)
from agents.datapath.link import LinkShaper
from agents.datapath.receiver import PageReceiver
from agents.datapath.sender import PageSender
from agents.datapath.tcp_frames import FRAME_HEAD, FrameError, recv_frame, send_frame
from agents.datapath.wire_format import SlotLayout, SlotView, pack_pages, restore_pages
from agents.encodings.encoding import BatchEncoder, Compression, XbzrleCaches

PAGE = 4096


def _tcp_pair():
    lst = TcpListener("127.0.0.1")
    a = connect(lst.address)
    b = lst.accept(5)
    lst.close()
    return a, b


def _image(npages=64, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (npages, PAGE), dtype=np.uint8)
    img[::3] = 0  # zero pages travel as markers
    return img


def test_a_batch_crosses_tcp_into_another_ring_intact_and_restores_exactly():
    image, layout = _image(), SlotLayout(32)
    src_ring, dst_ring = (np.zeros(2 * layout.slot_bytes, dtype=np.uint8) for _ in range(2))
    a, b = _tcp_pair()
    try:
        src = SlotView(src_ring, 1, layout)
        stats = pack_pages(image, np.arange(32, 64), src)
        src.seal()
        d = (KIND_BATCH, 0, 1, 32, stats.wire_bytes, 7, 1.5, 0.0, 0.0)
        sent = send_frame(a, d, src)
        got = recv_frame(b, lambda desc: SlotView(dst_ring, desc[2], layout))
        assert got == d
        dst = SlotView(dst_ring, 1, layout)
        assert dst.intact()
        # Only the slot's pieces in use cross: header, 13 bytes of metadata per page, the payload.
        assert sent == FRAME_HEAD + 24 + 13 * 32 + stats.payload_bytes
        out = np.zeros_like(image)
        restore_pages(out, dst)
        assert np.array_equal(out[32:], image[32:]) and not out[:32].any()
        # A descriptor without bytes, then the peer closing.
        send_frame(a, (KIND_ACK, 0, 1, 32, 0, 7, 1.5, 2.0, 0.0))
        assert recv_frame(b) == (KIND_ACK, 0, 1, 32, 0, 7, 1.5, 2.0, 0.0)
        a.close()
        assert recv_frame(b) is None
    finally:
        a.close()
        b.close()


def test_a_batch_damaged_before_sending_arrives_damaged_and_fails_its_checksum():
    image, layout = _image(), SlotLayout(16)
    src_ring, dst_ring = (np.zeros(layout.slot_bytes, dtype=np.uint8) for _ in range(2))
    a, b = _tcp_pair()
    try:
        src = SlotView(src_ring, 0, layout)
        pack_pages(image, np.arange(16), src)
        src.seal()
        src.payload[100] ^= 0xFF
        src.header[0] += 1  # a damaged page count changes what is sent: the frame still parses
        send_frame(a, (KIND_BATCH, 0, 0, 16, 0, 1, 0.0, 0.0, 0.0), src)
        send_frame(a, (KIND_CLOSE, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0))
        view = lambda d: SlotView(dst_ring, d[2], layout)
        assert recv_frame(b, view)[0] == KIND_BATCH
        assert not SlotView(dst_ring, 0, layout).intact()
        assert recv_frame(b, view)[0] == KIND_CLOSE  # the stream stayed in step
    finally:
        a.close()
        b.close()


def test_a_body_larger_than_a_slot_is_refused():
    layout = SlotLayout(4)
    ring = np.zeros(layout.slot_bytes, dtype=np.uint8)
    a, b = _tcp_pair()
    try:
        a.sendall(bytes(FRAME_HEAD - 4) + (10 ** 7).to_bytes(4, "little"))
        with pytest.raises(FrameError):
            recv_frame(b, lambda d: SlotView(ring, 0, layout))
        a.sendall(bytes(FRAME_HEAD - 4) + (100).to_bytes(4, "little"))
        with pytest.raises(FrameError):
            recv_frame(b)  # bytes with no slot to land in
    finally:
        a.close()
        b.close()


class Damage:
    """The link's fault hook: flips a payload byte of every 7th batch (two in all) in the source
    ring as it enters the link, as the fault injector does (agents/actors/link.py)."""

    def __init__(self, ring: np.ndarray, layout: SlotLayout) -> None:
        self.ring, self.layout, self.hit = ring, layout, []

    def __call__(self, conn_id: int, d: tuple) -> None:
        if d[0] != KIND_BATCH or len(self.hit) >= 2 or d[5] % 7:
            return
        SlotView(self.ring, d[2], self.layout).payload[77] ^= 0xFF
        self.hit.append(d[5])


class CrossWire:
    """PageSender -> LinkShaper -> BridgeOut ==TCP==> BridgeIn -> PageReceiver, two rings."""

    def __init__(self, npages=512, batch=16, slots=4, rate=400e6, encoder=None):
        self.src, self.dst = _image(npages, 5), np.zeros((npages, PAGE), dtype=np.uint8)
        self.layout, self.batch, self.encoder = SlotLayout(batch), batch, encoder
        self.src_ring = np.zeros(slots * self.layout.slot_bytes, dtype=np.uint8)
        self.dst_ring = np.zeros_like(self.src_ring)
        to_link, link_in = channel_pair()
        link_out, bridge_from_link = channel_pair()
        acks_rx, bridge_to_sender = channel_pair()
        self.link = LinkShaper(rate, 0.0005)
        self.link.run([(0, link_in, link_out)])
        self.sender = PageSender(self.src_ring, slots, self.layout, to_link, acks_rx)
        a, b = _tcp_pair()
        self.out = BridgeOut(self.src_ring, slots, self.layout, bridge_from_link, bridge_to_sender, a)
        to_rx, rx_from = channel_pair()
        rx_acks, bridge_acks = channel_pair()
        self.into = BridgeIn(self.dst_ring, slots, self.layout, b, to_rx, bridge_acks)
        self.receiver = PageReceiver(self.dst_ring, slots, self.layout, rx_from, rx_acks, CorePool(2),
                                     lambda n, full: 0.0, {0: self.dst})

    def send(self, idx):
        for start in range(0, len(idx), self.batch):
            chunk = idx[start:start + self.batch]
            slot = self.sender.acquire_slot()
            self.sender.post(slot, 0, len(chunk), self.sender.pack(slot, self.src, chunk, self.encoder))

    def close(self):
        self.sender.close()
        for part in (self.receiver, self.out, self.into):
            part.join(10)
        self.out.close()
        self.into.close()


@pytest.mark.parametrize("method", ["none", "zstd", "xbzrle"])
def test_pages_cross_the_bridge_restored_exactly_with_damaged_batches_resent(method):
    settings = Compression(method=method, xbzrle_cache_bytes=4 << 20)
    caches = XbzrleCaches(settings.xbzrle_cache_bytes, None) if settings.xbzrle else None
    w = CrossWire(encoder=None if method == "none" else BatchEncoder(settings, caches))
    if caches is not None:
        w.sender.on_resend = caches.invalidate
    w.link.corrupt_next = damage = Damage(w.src_ring, w.layout)
    try:
        w.send(np.arange(len(w.src)))
        w.sender.drain(timeout=30)
        w.src[::5] += 1  # a second round: XBZRLE sends deltas against what the far side holds
        w.send(np.arange(0, len(w.src), 5))
        w.sender.drain(timeout=30)
        assert np.array_equal(w.src, w.dst)
        assert len(damage.hit) == 2 and w.receiver.batches_corrupted == 2 and w.sender.counters.batches_resent == 2
        assert w.out.bytes_sent >= w.sender.counters.payload_bytes
        assert not (w.out.error or w.into.error or w.receiver.error)
    finally:
        w.close()
    assert w.sender.failure is None  # the close went through and came back


def test_the_receiving_node_closing_fails_the_sender():
    w = CrossWire()
    try:
        w.into.close()  # the far node's end of TCP goes away
        with pytest.raises(ConnectionError):
            w.send(np.arange(len(w.src)))
            w.sender.drain(timeout=10)
    finally:
        w.close()

"""The sending end of one connection: pages -> a wire slot -> the link.

A `PageSender` owns the shared-memory ring of one connection (PMigrate gives
every consumer its own connection; several connections share a NIC pair's
link). A consumer takes a free slot (waiting, without a core, while the
link or the receiver is behind), packs its batch into it and posts a small
descriptor to the link. Slots come back when the receiver acknowledges them:
the ring is the bounded memory of this stage.

Faults (agents/faults.py names them): a batch the receiver found damaged
comes back as a NACK and is packed again from the image, raw, and re-posted
(counted in `batches_resent`); `stalled_s()` says how long batches have
waited for any acknowledgement, so a watchdog can `fail()` the connection
(TCP's user timeout), which wakes every thread waiting on it with
`ConnectionLost`; an acknowledgement channel closed under a live sender means
the destination is gone, and fails it at once. `reset()` drops the
connection's queued and in-flight batches at the link (its slots come back
as DROPPED acknowledgements): what a broken connection loses.

Post-copy's requested pages go through slots held back from the ring
(`reserve_urgent`), so a page never waits for the ring to drain: they are
posted as KIND_URGENT, which the link lets through at once (QEMU's
postcopy-preempt channel, or the sender's own emulated wait before it,
agents/techniques/postcopy.py).
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from agents.datapath.channel import (
    KIND_ACK,
    KIND_BATCH,
    KIND_CLOSE,
    KIND_DROPPED,
    KIND_NACK,
    KIND_RESET,
    KIND_STATE,
    KIND_URGENT,
    Channel,
)
from agents.datapath.wire_format import PackStats, SlotLayout, SlotView, pack_pages

if TYPE_CHECKING:
    from agents.encodings.encoding import BatchEncoder


class ConnectionLost(ConnectionError):
    """A connection gave up: no acknowledgement within the user timeout, or its peer is gone."""


class DestinationGone(ConnectionLost):
    """The receiving end closed under a live connection: its host is gone, for good."""


@dataclass
class SendCounters:
    pages_normal: int = 0
    pages_zero: int = 0
    pages_compressed: int = 0
    pages_delta: int = 0
    pages_unchanged: int = 0
    raw_bytes: int = 0  # non-zero pages sent, PAGE each
    payload_bytes: int = 0  # what they cost on the wire after encoding
    encode_s: float = 0.0  # measured CPU seconds of compression
    encode_model_us: float = 0.0  # what the codec cost model charged for it (us at scale 1)
    wire_bytes: int = 0  # everything: pages, their headers, and CPU/device state
    state_bytes: int = 0  # of which CPU and device state
    delivered_bytes: int = 0  # wire bytes the receiver acknowledged (restored): what the link has carried
    delivered_state_bytes: int = 0  # of which CPU and device state
    batches: int = 0
    last_restore_t: float = 0.0
    batches_corrupted: int = 0  # NACKs: batches the receiver found damaged
    batches_resent: int = 0
    batches_dropped: int = 0  # lost with a broken connection (reset)


class PageSender:
    def __init__(self, ring: np.ndarray, slots: int, layout: SlotLayout, to_link: Channel, acks: Channel) -> None:
        self.layout = layout
        self.views = [SlotView(ring, i, layout) for i in range(slots)]
        self.free: queue.Queue[int] = queue.Queue()
        self.freed_at = [0.0] * slots  # per slot: when it came back (monotonic seconds, emulated schedule)
        for i in range(slots):
            self.free.put(i)
        self.to_link = to_link
        self.counters = SendCounters()
        self._seq = 0
        self._outstanding = 0
        self._cv = threading.Condition()
        self._inflight: dict[int, tuple] = {}  # slot -> (vm, image, page numbers), to pack again on a NACK
        self._posted = [(0, False)] * slots  # per slot: (wire bytes, device state?) of what it carries now
        self._progress_t = time.monotonic()  # the last acknowledgement, or when the first batch went out
        self.failure: ConnectionLost | None = None
        self._closing = False
        self.on_resend = lambda vm, idx: None  # an XBZRLE cache forgets re-sent pages
        self.urgent: set[int] = set()  # slots held back for urgent batches (reserve_urgent)
        self.urgent_free: queue.Queue[int] = queue.Queue()
        self._ack_thread = threading.Thread(target=self._collect_acks, args=(acks,), daemon=True, name="acks")
        self._ack_thread.start()

    def _collect_acks(self, acks: Channel) -> None:
        while True:
            d = acks.recv()
            if d is None or d[0] == KIND_CLOSE:
                if not self._closing:  # the receiving end went away under a live connection
                    self.fail(DestinationGone("the destination closed the connection (its host is gone)"))
                break
            if d[0] == KIND_NACK:
                self._resend(d[2])
            elif d[0] in (KIND_ACK, KIND_DROPPED):
                self._inflight.pop(d[2], None)
                nbytes, state = self._posted[d[2]]  # before the slot is free to carry another batch
                # Free since its restore ended on the emulated schedule (the ack's t_done).
                self.freed_at[d[2]] = d[7] if d[0] == KIND_ACK and d[7] > 0 else time.monotonic()
                (self.urgent_free if d[2] in self.urgent else self.free).put(d[2])
                with self._cv:
                    self._outstanding -= 1
                    self._progress_t = time.monotonic()
                    if d[0] == KIND_DROPPED:
                        self.counters.batches_dropped += 1
                    else:
                        self.counters.last_restore_t = max(self.counters.last_restore_t, d[7])
                        self.counters.delivered_bytes += nbytes
                        self.counters.delivered_state_bytes += nbytes if state else 0
                    self._cv.notify_all()

    def _resend(self, slot: int) -> None:
        """The receiver found the batch in `slot` damaged: pack its pages again, raw, from the
        image as it is now (never older than what was sent), and post it again."""
        vm, image, idx = self._inflight[slot]
        self.on_resend(vm, idx)
        stats = pack_pages(image, idx, self.views[slot])
        self.views[slot].seal(stats.payload_digest)
        with self._cv:
            self.counters.batches_corrupted += 1
            self.counters.batches_resent += 1
            self.counters.wire_bytes += stats.wire_bytes
            self._progress_t = time.monotonic()
            self._outstanding -= 1  # _post counts it again
        self._post(KIND_BATCH, vm, slot, len(idx), stats.wire_bytes)

    def acquire_slot(self) -> int:
        """A free slot; blocks while every slot is on the wire or being restored.
        Raises ConnectionLost once the connection has failed."""
        return self._get(self.free)

    def _get(self, slots: queue.Queue) -> int:
        while True:
            if self.failure is not None:
                raise self.failure
            try:
                return slots.get(timeout=0.05)
            except queue.Empty:
                continue

    def reserve_urgent(self, n: int = 1) -> None:
        """Hold `n` slots back from the ring for `send_urgent` (waits for them to come back)."""
        for _ in range(n):
            slot = self.acquire_slot()
            self.urgent.add(slot)
            self.urgent_free.put(slot)

    def release_urgent(self) -> None:
        """Give the held-back slots to the ring again, once each is back."""
        for _ in range(len(self.urgent)):
            slot = self._get(self.urgent_free)
            self.urgent.discard(slot)
            self.free.put(slot)

    def send_urgent(self, vm: int, image: np.ndarray, idx: np.ndarray) -> int:
        """Pages `idx` (at most a slot's worth) in a held-back slot, posted ahead of the ring's
        batches; returns their wire bytes. Raises ConnectionLost once the connection has failed."""
        slot = self._get(self.urgent_free)
        stats = self.pack(slot, image, idx, vm=vm)
        self._count(stats)
        self._post(KIND_URGENT, vm, slot, stats.pages, stats.wire_bytes)
        return stats.wire_bytes

    # --- liveness -----------------------------------------------------------
    def stalled_s(self) -> float:
        """Real seconds batches have been waiting without any acknowledgement (0: none waiting)."""
        with self._cv:
            return time.monotonic() - self._progress_t if self._outstanding > 0 else 0.0

    def fail(self, exc: ConnectionLost) -> None:
        """Give the connection up: every thread waiting on it raises `exc`."""
        with self._cv:
            if self.failure is None:
                self.failure = exc
            self._cv.notify_all()

    def reset(self) -> None:
        """The connection broke: ask the link to drop what it still holds of ours (each such slot
        comes back DROPPED); the connection may be used again (a new one, as far as the
        emulated network knows) once `drain()` returns."""
        with self._cv:
            if isinstance(self.failure, DestinationGone):
                raise self.failure  # no new connection can reach a host that is gone
            self.failure = None
            self._progress_t = time.monotonic()
        self.to_link.send(KIND_RESET)

    def pack(self, slot: int, image: np.ndarray, idx: np.ndarray, encoder: BatchEncoder | None = None,
             vm: int = 0, last_stage: bool = False, bulk: bool = False) -> PackStats:
        """Encode pages `idx` of `image` into `slot` (zero pages only, without an encoder).
        `bulk`: the first round over the image, before XBZRLE starts."""
        if encoder is None:
            stats = pack_pages(image, idx, self.views[slot])
        else:
            stats = encoder.pack(vm, image, idx, self.views[slot], last_stage, bulk)
        # The digest packing computed as it copied; an encoder may rewrite the payload after it.
        self.views[slot].seal(stats.payload_digest if encoder is None else None)
        self._inflight[slot] = (vm, image, idx.copy())
        return stats

    def post(self, slot: int, vm: int, npages: int, stats: PackStats, at: float | None = None,
             began: float = 0.0) -> None:
        """Hand the packed slot to the link; `at`: when it was sent on the emulated schedule
        (monotonic seconds, not later than now; default now); `began`: when its encoding
        began, its first page ready to leave (0: the batch is ready only whole, at `at`)."""
        self._count(stats)
        self._post(KIND_BATCH, vm, slot, npages, stats.wire_bytes, at, began)

    def _count(self, stats: PackStats) -> None:
        with self._cv:
            c = self.counters
            c.pages_normal += stats.normal
            c.pages_zero += stats.zero
            c.pages_compressed += stats.compressed
            c.pages_delta += stats.delta
            c.pages_unchanged += stats.unchanged
            c.raw_bytes += stats.raw_bytes
            c.payload_bytes += stats.payload_bytes
            c.encode_s += stats.encode_s
            c.encode_model_us += stats.model_us
            c.wire_bytes += stats.wire_bytes

    def send_state(self, vm: int, state_bytes: int, at: float | None = None) -> None:
        """CPU and device state: one message of the given wire size (single-threaded, as in the paper);
        `at`: when it was sent on the emulated schedule (not later than now; default now)."""
        slot = self.acquire_slot()
        self.views[slot].set_header(0, 0, 0)
        with self._cv:
            self.counters.wire_bytes += state_bytes
            self.counters.state_bytes += state_bytes
        self._post(KIND_STATE, vm, slot, 0, state_bytes, at)

    def _post(self, kind: int, vm: int, slot: int, npages: int, wire_bytes: int, at: float | None = None,
              began: float = 0.0) -> None:
        """To the link: t_sent is when the batch was ready whole, t_first when its first page
        was (`began`, for the cut-through link; 0: not before t_sent)."""
        with self._cv:
            if self._outstanding == 0:
                self._progress_t = time.monotonic()
            self._outstanding += 1
            self._seq += 1
            seq = self._seq
            self.counters.batches += 1
            self._posted[slot] = (wire_bytes, kind == KIND_STATE)
            now = time.monotonic()
            sent = now if at is None else min(at, now)
            self.to_link.send(kind, vm, slot, npages, wire_bytes, seq, sent, 0.0, min(began, sent) if began > 0 else 0.0)

    def drain(self, timeout: float = 600.0) -> float:
        """Wait until every batch posted so far is restored; returns the last restore time."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._outstanding > 0:
                if self.failure is not None:
                    raise self.failure
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._outstanding} batches never acknowledged")
                self._cv.wait(min(left, 0.5))
            return self.counters.last_restore_t

    def close(self) -> None:
        self._closing = True
        try:
            self.to_link.send(KIND_CLOSE)
        except OSError:
            pass

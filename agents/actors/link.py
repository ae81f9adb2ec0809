"""LinkAgent: a Ray actor that plays one NIC pair.

It accepts the descriptor sockets of every connection routed over its link
(each named by its connection id) and runs the shaper
(agents/datapath/link.py) on them; the control plane may change the link's
bandwidth, latency or background traffic at run time, in real units.

Remote paging after a split migration (S-memV §IV-E) crosses the link
between a main host and a sub-host without a connection of its own: the
pager books its messages here (`carry_paging`), each direction a queue of
its own (the link is full duplex), behind earlier paging, at the rate a
migration may take on the link now (its capacity less the background's
share); bytes the way the link is listed also take their line time from
the batches of migrations on it.
"""
from __future__ import annotations

import threading
import time

import ray

from agents.datapath.channel import KIND_BATCH, Listener
from agents.actors.reuse import Reusable
from agents.datapath.clock import precise_threads
from agents.datapath.link import LinkShaper
from agents.datapath.shm import Region
from agents.datapath.wire_format import SlotLayout, SlotView
from agents.split.paging import PagingLine


PAGING = -1  # the connection number remote paging's bytes are booked under on the shaper


@ray.remote(num_cpus=0, max_concurrency=4)
class LinkAgent(Reusable):
    def __init__(self, name: str, rate_bytes_s: float, one_way_s: float, background_bytes_s: float,
                 rate_control: bool, reserved_bytes_s: float, monitor_period_s: float,
                 memory_scale: float = 1.0) -> None:
        self.note_threads()
        precise_threads()
        self.name = name
        self.shaper = LinkShaper(rate_bytes_s, one_way_s, background_bytes_s=background_bytes_s,
                                 rate_control=rate_control, reserved_bytes_s=reserved_bytes_s,
                                 monitor_period_s=monitor_period_s, memory_scale=memory_scale)
        self._listeners: list[Listener] = []
        self._rings: list[Region] = []
        self.corrupted = 0
        self._paging_lock = threading.Lock()
        self.paging = PagingLine()

    def carry_paging(self, forward: bool, sizes: list[float], back: float = 0.0) -> tuple[bool, list[float]]:
        """Remote paging (agents/split/paging.py `PagingLine.book`): a request crosses, messages of
        `sizes` real bytes come back to back (`forward`: the way the link is listed), then `back`
        real bytes go the other way. Returns (whether the link is down, real seconds from now
        until each message of `sizes` has arrived)."""
        s = self.shaper
        if s.down:  # nothing crosses: the request waits on its side (split_memory asks again)
            return True, []
        with self._paging_lock:
            arrivals = self.paging.book(time.monotonic(), max(1.0, s.migration_rate), s.one_way_s, forward, sizes, back)
        listed_way = sum(sizes) if forward else back
        if listed_way:
            s.add_disk_bytes(PAGING, int(listed_way))
        return s.down, arrivals

    def listen(self, paths: list[tuple[int, str, str]]) -> None:
        """One (conn_id, inbound, outbound) socket pair per connection; shaping starts when all are connected."""
        pairs = [(cid, Listener(i), Listener(o)) for cid, i, o in paths]
        self._listeners += [l for _, lin, lout in pairs for l in (lin, lout)]

        def accept_then_run() -> None:
            self.shaper.run([(cid, lin.accept(), lout.accept()) for cid, lin, lout in pairs])

        threading.Thread(target=accept_then_run, daemon=True).start()

    def corrupt(self, rings: dict[int, tuple[str, int]], count: int = 1, undetected: bool = False) -> None:
        """Fault injection: flip one byte in the payload of each of the next `count` batches
        with contents that enter the link, on the connections of `rings` (conn_id -> its
        ring's path and batch pages). `undetected`: seal the batch again, as if it had been
        damaged before its checksum was taken (only verification can catch that)."""
        views = {}
        for cid, (path, batch_pages) in rings.items():
            ring = Region.attach(path)
            self._rings.append(ring)
            views[cid] = (ring.array, SlotLayout(batch_pages))
        left = [count]

        def corrupt(cid: int, d: tuple) -> None:
            if d[0] != KIND_BATCH or cid not in views or left[0] <= 0:
                return
            view = SlotView(views[cid][0], d[2], views[cid][1])
            payload_len = view.get_header()[2]
            if payload_len:  # a batch with payload: not only zero pages
                view.payload[(d[5] * 7919) % payload_len] ^= 0xFF
                if undetected:
                    view.seal()
                left[0] -= 1
                self.corrupted += 1
                if left[0] <= 0:
                    self.shaper.corrupt_next = None

        self.shaper.corrupt_next = corrupt

    def set_down(self, down: bool) -> None:
        """Fault injection: the link goes down (nothing crosses it) or comes back up."""
        self.shaper.set_down(down)

    def set_bandwidth(self, rate_bytes_s: float) -> None:
        """The link's capacity in real bytes/s, for batches not yet on the wire."""
        self.shaper.set_bandwidth(rate_bytes_s)

    def set_one_way(self, one_way_s: float) -> None:
        """The one-way latency in real seconds, for batches not yet on the wire."""
        self.shaper.set_one_way(one_way_s)

    def set_background(self, bytes_s: float) -> None:
        """What the co-located background flow wants, in real bytes/s."""
        self.shaper.set_background(bytes_s)

    def carry_disk(self, conn_id: int, nbytes: int, need: int = 0, wait_s: float = 0.0) -> tuple[bool, float, int]:
        """A disk copy on the network path (agents/datapath/mirror.py `LinkGate`) for connection
        `conn_id`'s migration asks for the line time of `nbytes` more (< 0: withdraws its asks);
        whether the link is down, the rate (real bytes/s) a migration may take on it now, and
        the bytes the link's fair queue granted it since its last call (waiting up to `wait_s`
        for `need` of them)."""
        s = self.shaper
        granted = s.ask_disk(conn_id, nbytes, need, wait_s)
        return s.down, s.migration_rate, granted

    def stats(self) -> dict:
        s = self.shaper
        by_conn = dict(s.bytes_by_connection)
        for c, n in dict(s.disk_by_connection).items():
            by_conn[c] = by_conn.get(c, 0) + n
        paging = sum(self.paging.bytes)
        by_conn.pop(PAGING, None)
        return {"bytes": s.bytes_carried + self.paging.bytes[1], "batches": s.batches_forwarded,
                "rate_bytes_s": s.migration_rate, "paging_bytes": paging,
                "disk_bytes": s.disk_bytes - s.disk_by_connection.get(PAGING, 0),
                "background_seen": list(s.background_seen), "by_connection": by_conn,
                "capacity_bytes_s": s.capacity, "one_way_s": s.one_way_s,
                "down": s.down, "batches_dropped": s.batches_dropped, "batches_corrupted": self.corrupted,
                # dates the record: a slow reply, or a loop behind its schedule, must not squeeze its interval
                "t_read": s.counted_until(time.monotonic())}

    def close(self) -> None:
        for lst in self._listeners:
            lst.close()



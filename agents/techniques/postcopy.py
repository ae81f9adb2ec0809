"""Post-copy live migration with adaptive pre-paging (Hines and Gopalan, VEE
2009; QEMU's postcopy-ram): the `postcopy` technique.

Zero or more pre-copy rounds first (the hybrid: QEMU switches when told to,
migrate-start-postcopy; here after `postcopy_after_iterations` rounds, when
pre-copy stops without converging, or on a `start-postcopy` event). Then the
switch-over: pause the guest, take the last dirty set, send the CPU and
device state, and resume the guest on the destination at once, telling it
which pages it lacks (QEMU's discard of the dirty bitmap). From then on the
guest's accesses to missing pages fault and are requested over the return
path (agents/guest/remote_memory.py); a thread of their own answers them,
the faulting pages in their own batch, while this thread pushes the pages
not sent yet in the background. With adaptive pre-paging the push
"bubbles" outward from the most recent fault (Hines' pivot); without it, it
goes in page order. A page goes at most once: once sent it is never sent
again, a request for a page on its way is dropped and the guest waits for it.
How long a requested page queues on the source is an emulated quantity,
not this machine's ring of slots (agents/datapath/sender.py holds slots back
for requested pages, and the link lets them through at once). Without QEMU's
`postcopy-preempt` the page goes on the migration stream, behind what the
background push has in the socket buffers: the sender holds it for
min(SOCKET_BACKLOG_BYTES, bytes left to push) at the stream's rate, taken
from the push when its request reaches the source (it joins the stream
then: the push cannot overtake it). With it,
requested pages go on their own channel (QEMU docs/devel/migration/
postcopy.rst, "Postcopy preemption mode") and wait behind nothing.
cluster/predict_postcopy.py uses the same rule.

The migration completes when every page is on the destination: only then
can the source be released. Until that moment neither host holds the whole
VM (the source's copy is stale where the guest wrote since, the destination
lacks what has not arrived): losing either host or the link loses the VM,
so a cancel is refused once the guest has switched.

Recovery (QEMU's postcopy-recover). When a connection gives up during
post-copy (agents/faults.py: no acknowledgement within tcp_user_timeout_ms),
the migration enters `postcopy-paused`: the guest on the destination is
asked to stop (a vCPU blocked on a missing page stops once it has it) and
the broken connection's queued and in-flight batches are dropped. It waits
for `recover()` (the control plane calls it when the link comes back: QEMU's
migrate-recover and migrate resume=true), then enters `postcopy-recover`:
every slot of the old connection back, then the handshake over the new one
(the destination's received bitmap, a bit per page, crosses the link:
QEMU's MIG_CMD_RECV_BITMAP). A failure during the handshake goes back to
`postcopy-paused`. Once through, the pages neither received nor on their way
are pending again (those lost with the old connection are sent a second
time: the one exception to "at most once", counted), the guest resumes and
post-copy goes on. `give_up()` (the link will not return) ends it with the
VM lost; the result says how many pages each side held.

Pre-copy's rounds are agents/techniques/precopy.py's, inherited; this module
adds the switch decision, the push order, the post-copy phase and its recovery.
"""
from __future__ import annotations

import heapq
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from agents.datapath.channel import KIND_PAGE_REQUEST, Listener
from agents.datapath.clock import sleep_until
from agents.datapath.sender import ConnectionLost, DestinationGone
from agents.datapath.shm import Region
from agents.guest.dirty_log import DirtyLog
from agents.techniques.precopy import PrecopyMigration, PrecopyResult, StopPolicy

# The bytes a requested page waits behind on the migration stream without postcopy-preempt:
# the push keeps the socket buffers full, Linux's default maxima 4 MiB of send buffer
# (net.ipv4.tcp_wmem) plus 6 MiB of receive buffer (net.ipv4.tcp_rmem).
SOCKET_BACKLOG_BYTES = (4 + 6) * 2**20
URGENT_SLOTS = 2  # slots of the ring held back for requested pages


def bytes_ahead_of_request(preempt: bool, left_bytes: float) -> float:
    """Bytes (emulated) a requested page waits behind on the source: none on a preempt
    channel; else the socket buffers' backlog, or what is left to push if that is less."""
    return 0.0 if preempt else min(SOCKET_BACKLOG_BYTES, max(0.0, left_bytes))


NEITHER_SIDE_WHOLE = ("during post-copy neither side holds the whole VM: the source's copy is stale where the "
                      "guest wrote since the switch, the destination lacks the pages not yet received; losing "
                      "either host or the link loses the VM")


# --- pure logic: when to switch, and which page next ------------------------------
@dataclass(frozen=True)
class SwitchPolicy:
    after_iterations: int | None  # 0: pure post-copy; None: only when pre-copy gives up or on request
    on_stall: bool


def switch_reason(policy: SwitchPolicy, stop_reason: str, iterations: int, requested: bool) -> str | None:
    """Why to switch to post-copy once pre-copy stopped (`stop_reason`, after
    `iterations` rounds), or None to finish with an ordinary stop-and-copy."""
    if requested:
        return "requested"
    if stop_reason == "policy-force":
        return "policy-force"  # a management policy's timeout with force (Nova's force_complete)
    if stop_reason == "converged":
        return None  # pre-copy finished the job within the downtime limit: nothing to gain
    if policy.after_iterations is not None and iterations >= policy.after_iterations:
        return "after-iterations"
    return f"precopy-{stop_reason}" if policy.on_stall and stop_reason else None


class PushOrder:
    """The source's order of post-copy pages: requested pages first, then the
    background push, each page once.

    `pending`: the pages still to send. Without adaptive pre-paging the push
    walks the image in page order. With it (Hines' bubbling), every fault
    makes its page the pivot, and the push expands from the pivot in both
    directions, nearest pages first, until the next fault moves it.
    """

    def __init__(self, pending: np.ndarray, adaptive: bool) -> None:
        self.pending = pending.astype(bool, copy=True)
        self.left = int(np.count_nonzero(self.pending))
        self.adaptive = adaptive
        self.sends = np.zeros(len(pending), dtype=np.uint8)  # times each page was handed out
        self.pivot: int | None = None
        self.fwd = 0  # next page to look at upwards (from the pivot, or from 0 in page order)
        self.back = -1  # next page to look at downwards from the pivot
        self.dropped = 0  # requests for pages already sent (on their way)
        np.unique(np.zeros(1, dtype=np.int64), return_index=True)  # loads lazily (ms): not in a fault's latency

    def demand(self, pages) -> np.ndarray:
        """The requested pages not sent yet, in request order, now taken; the last becomes the pivot."""
        pages = np.asarray(pages, dtype=np.int64)
        _, first = np.unique(pages, return_index=True)
        pages = pages[np.sort(first)]
        take = pages[self.pending[pages]]
        self.dropped += len(pages) - len(take)
        self._take(take)
        if self.adaptive and len(pages):
            self.pivot = int(pages[-1])
            self.fwd, self.back = self.pivot + 1, self.pivot - 1
        return take

    def next_push(self, n: int) -> np.ndarray:
        """Up to `n` pages of the background push, now taken."""
        if self.pivot is None:
            out = self._upwards(n)
        else:
            up = self._upwards((n + 1) // 2)
            down = self._downwards(n - len(up))
            if len(up) + len(down) < n:
                up = np.concatenate([up, self._upwards(n - len(up) - len(down))])
            out = np.concatenate([up, down])
            out = out[np.argsort(np.abs(out - self.pivot), kind="stable")]  # nearest the pivot first
        if not len(out) and self.left > 0:  # the walks passed pages pending again: start over
            self.pivot, self.fwd, self.back = None, 0, -1
            out = self._upwards(n)
        self._take(out)
        return out

    def requeue(self, pages: np.ndarray) -> int:
        """Pages handed out but lost on the way (a broken connection): pending again. Returns how many."""
        pages = np.asarray(pages, dtype=np.int64)
        pages = pages[~self.pending[pages]]
        self.pending[pages] = True
        self.left += len(pages)
        self.fwd, self.back = (0, -1) if self.pivot is None else (self.pivot, self.pivot - 1)
        return len(pages)

    def _take(self, pages: np.ndarray) -> None:
        self.pending[pages] = False
        self.sends[pages] += 1
        self.left -= len(pages)

    def _upwards(self, n: int) -> np.ndarray:
        found, window = [], 4096
        while n > 0 and self.fwd < len(self.pending):
            hit = np.flatnonzero(self.pending[self.fwd:self.fwd + window])[:n] + self.fwd
            found.append(hit)
            n -= len(hit)
            self.fwd = int(hit[-1]) + 1 if n == 0 else self.fwd + window
            window *= 2
        return np.concatenate(found) if found else np.empty(0, dtype=np.int64)

    def _downwards(self, n: int) -> np.ndarray:
        found, window = [], 4096
        while n > 0 and self.back >= 0:
            lo = max(0, self.back - window + 1)
            hit = (np.flatnonzero(self.pending[lo:self.back + 1]) + lo)[::-1][:n]
            found.append(hit)
            n -= len(hit)
            self.back = int(hit[-1]) - 1 if n == 0 else lo - 1
            window *= 2
        return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


class ReturnPath:
    """Page requests from the destination (QEMU's return path), each held back
    by the link's one-way delay before the source sees it."""

    def __init__(self, path: str, delay_s: float) -> None:
        self.listener = Listener(path)
        self.delay_s = delay_s
        self.due: list[tuple[float, int]] = []  # (real time it reaches the source, page): a heap
        self.inbox: queue.Queue = queue.Queue()
        self.received = 0
        threading.Thread(target=self._serve, daemon=True, name="return-path").start()

    def _serve(self) -> None:
        try:
            chan = self.listener.accept(timeout=600)
        except OSError:
            return
        while True:
            d = chan.recv()
            if d is None:
                return
            if d[0] == KIND_PAGE_REQUEST:
                self.inbox.put((d[6] + self.delay_s, int(d[4])))

    def arrived(self) -> list[int]:
        """Pages whose requests have reached the source by now."""
        while not self.inbox.empty():
            heapq.heappush(self.due, self.inbox.get_nowait())
        now, out = time.monotonic(), []
        while self.due and self.due[0][0] <= now:
            out.append(heapq.heappop(self.due)[1])
        self.received += len(out)
        return out

    def next_due(self, stop: threading.Event, until: float = float("inf")) -> list[int]:
        """Waits until requests reach the source (returns their pages), or until `until`
        (real time) or `stop` is set (returns [])."""
        while not stop.is_set():
            out = self.arrived()
            if out:
                return out
            next_t = min(self.due[0][0] if self.due else float("inf"), until)
            wait = min(next_t - time.monotonic(), 0.05)
            if self.inbox.empty() and wait < 0.002:
                sleep_until(next_t)  # the last stretch precisely
                if next_t == until:
                    return []
                continue
            try:
                heapq.heappush(self.due, self.inbox.get(timeout=min(max(wait - 0.001, 0.0), 0.05)))
            except queue.Empty:
                pass
        return []

    def close(self) -> None:
        self.listener.close()


class PostcopyLost(ConnectionLost):
    """A paused post-copy whose link will not return: the VM is lost."""


# --- the technique ----------------------------------------------------------------
@dataclass
class PostcopyResult(PrecopyResult):
    guest_on_destination: bool = False  # the technique moved the guest itself (the orchestrator must not)
    postcopy: dict = field(default_factory=dict)


class PostcopyMigration(PrecopyMigration):
    """One VM's hybrid or pure post-copy on the source. Events: pre-copy's, then
    `postcopy-start` (its reason), `vm-stopped`, `device-state-sent`,
    `destination-loaded`, `vm-started` (on the destination, pages still
    missing), the phase `postcopy-active`, and `source-released` once every page is there."""

    name: ClassVar[str] = "postcopy"

    def __init__(self, ctx, policy: StopPolicy, switch: SwitchPolicy, adaptive: bool, preempt: bool = False,
                 **kw) -> None:
        super().__init__(ctx, policy, **kw)
        self.result = PostcopyResult()
        self.switch = switch
        self.adaptive = adaptive
        self.preempt = preempt  # QEMU's postcopy-preempt: requested pages on a channel of their own
        self._lock = threading.Lock()  # the push order and the counts, shared with the answering thread
        self._answering = 0  # requested pages taken but not yet posted
        self._requested = False  # migrate-start-postcopy
        self._request_reason = "requested"  # or "policy-force": a policy's timeout asked for it
        self._cancelled = False
        self._pass_todo = np.arange(len(self.image))  # the pre-copy pass under way, for a switch mid-pass
        self.order: PushOrder | None = None
        self.missing_at_switch: np.ndarray | None = None
        self._recover = threading.Event()  # migrate-recover: the link is back
        self._give_up = threading.Event()  # the link will not return
        self._dest_regions: dict[str, Region] = {}
        self.recovery = {"paused": 0, "recover_attempts": 0, "recovered": 0, "pages_resent_after_recovery": 0,
                         "paused_s": 0.0}

    @classmethod
    def from_options(cls, ctx, o) -> "PostcopyMigration":
        memory_bytes = len(ctx.image) * 4096 / ctx.memory_scale
        after = o.postcopy_after_iterations
        rounds = o.max_iterations if not after else min(after, o.max_iterations)
        policy = StopPolicy(o.downtime_limit_ms / 1000, rounds, o.stall_iterations, o.max_sent_ratio * memory_bytes)
        return cls(ctx, policy, SwitchPolicy(after, o.postcopy_on_stall), o.adaptive_prepaging,
                   getattr(o, "postcopy_preempt", False), state_bytes=o.device_state_kib * 1024, setup_s=o.setup_ms / 1000,
                   resume_s=o.resume_ms / 1000)._with_policy(o)

    # --- control ------------------------------------------------------------------
    def abort(self, status: str = "cancelled", reason: str = "cancelled") -> None:
        if self.result.guest_on_destination:
            self.ctx.record("cancel-refused", reason=f"{reason}: the guest already runs on the destination")
            return
        self._cancelled = True
        super().abort(status, reason)

    def start_postcopy(self) -> None:
        """migrate-start-postcopy: switch as soon as the pass under way stops queueing pages."""
        if self.phase in ("setup", "precopy") and not self._requested:
            self._requested = True
            self.ctx.record("postcopy-requested")
            self.abort_requested = True  # ends the pass early; run() sees it was not a cancel

    def _force(self, reason: str) -> None:
        """A policy's forced completion: switch to post-copy (Nova's force_complete where post-copy is permitted)."""
        self._request_reason = "policy-force"
        self.start_postcopy()

    def recover(self) -> bool:
        """QEMU's migrate-recover: the link is back; a paused post-copy reconnects. False when not paused."""
        if self.phase != "postcopy-paused":
            return False
        self._recover.set()
        return True

    def give_up(self) -> bool:
        """The link will not return: a paused post-copy ends with the VM lost. False when not post-copy."""
        if not self.result.guest_on_destination or self.result.status != "running" or self._give_up.is_set():
            return False
        self._give_up.set()
        return True

    def progress(self) -> dict:
        out = super().progress()
        if self.order is not None:
            out["remaining_bytes"] = self.order.left * 4096 / self.scale
        return out

    # --- pre-copy rounds, then the switch -----------------------------------------------
    def _enter(self, phase: str, iteration: int = 0) -> None:
        super()._enter(phase, iteration)
        if self.ctx.postcopy_requested:
            self.start_postcopy()

    def _harvest(self, at: float | None = None) -> np.ndarray:
        idx = super()._harvest(at)
        if self._requested:  # the pass cut short may not have sent its pages: keep them
            mask = np.zeros(len(self.image), dtype=bool)
            mask[self._pass_todo] = True
            mask[idx] = True
            self._pass_todo = np.flatnonzero(mask)
        else:
            self._pass_todo = idx  # the next pass sends these
        return idx

    def run(self) -> PostcopyResult:
        if self.switch.after_iterations == 0:
            return self._pure()
        return super().run()

    def _pure(self) -> PostcopyResult:
        """Pure post-copy: set-up, then switch with every page still to send."""
        r = self.result
        r.started_at = time.monotonic()
        self.ctx.record("setup")
        self._enter("setup")
        if not self.abort_requested:
            time.sleep(self.setup_s * self.dilation)
        r.setup_time_s = self._emu(time.monotonic() - r.started_at)
        if self._cancelled:
            return self._cancel()
        r.stop_reason = "postcopy"
        return self._postcopy(np.arange(len(self.image)), "pure")

    def _cancel(self, paused: bool = False) -> PostcopyResult:
        if self._requested and not self._cancelled:  # a pass cut short by migrate-start-postcopy
            self.abort_requested = False
            self.result.stop_reason = "postcopy"
            return self._postcopy(self._pass_todo, self._request_reason)
        return super()._cancel(paused)

    def switch_over(self, todo: np.ndarray) -> PostcopyResult:
        r = self.result
        why = switch_reason(self.switch, r.stop_reason, r.iteration_count, self._requested)
        why = self._request_reason if why == "requested" else why
        if why is None:
            return super().switch_over(todo)
        r.stop_reason = "postcopy"  # pre-copy ended in a switch to post-copy; `why` says what made it
        return self._postcopy(todo, why)

    # --- post-copy ----------------------------------------------------------------------
    def _postcopy(self, todo: np.ndarray, why: str) -> PostcopyResult:
        r = self.result
        self.ctx.record("postcopy-start", reason=why, iterations=r.iteration_count)
        self.phase = "postcopy-switch"
        dest = self.ctx.destination
        back = ReturnPath(dest["return_path"], dest.get("one_way_s", 0.0))
        self._sent = {"pulled": 0, "pushed": 0, "wire": 0}
        self._stop_answering = threading.Event()
        try:
            self._switch(todo, back)
            return self._serve(back, why)
        finally:
            self._stop_answering.set()
            back.close()

    def _answer_from(self, missing: np.ndarray, back: ReturnPath) -> None:
        """Before the guest resumes on the destination: the push order, the slots held back
        for requested pages and the thread that answers them, ready for its first fault."""
        self.missing_at_switch = missing
        self.order = PushOrder(missing, self.adaptive)
        stream = self.sink.connections[0]
        stream.reserve_urgent(URGENT_SLOTS)
        threading.Thread(target=self._answer, args=(self.order, back, stream, self._sent, self._stop_answering),
                         daemon=True, name="postcopy-answer").start()

    def _hold_s(self) -> float:
        """Real seconds a page requested now waits on the source before it leaves."""
        rate = self.ctx.destination.get("stream_bytes_s", 0.0)
        left = self.order.left * 4096 / self.scale if self.order is not None else 0.0
        return bytes_ahead_of_request(self.preempt, left) * self.scale / rate if rate > 0 else 0.0

    def _switch(self, todo: np.ndarray, back: ReturnPath) -> np.ndarray:
        """Pause, last dirty set, device state, resume on the destination. Returns the pages it lacks."""
        r = self.result
        r.paused_at = self.guest.pause()
        self.ctx.record("vm-stopped", t_real=r.paused_at)
        self._convergence_stop()
        missing = np.zeros(len(self.image), dtype=bool)
        missing[todo] = True
        missing[self._harvest(at=self._stopped_at(r.paused_at))] = True  # charged from the pause on, as pre-copy's
        self.guest.stop_dirty_log()
        self.sink.send_state(self.vm, max(1, int(self.state_bytes * self.scale)), at=self.guest.synced_at)
        self.ctx.record("device-state-sent", bytes=self.state_bytes)  # the downtime's bytes, as pre-copy's
        loaded = self.sink.drain()
        self.ctx.record("destination-loaded", t_real=loaded)
        sleep_until(loaded + self.resume_s * self.dilation)
        self._answer_from(missing, back)
        # From here on the guest is the destination's: no way back.
        r.guest_on_destination = True
        dest = self.ctx.destination
        t_call = time.monotonic()
        r.resumed_at = self.guest.resume_on_destination(dest["image"], missing, dest["return_path"])
        # The resume itself is the fixed cost slept above; the call that carries it is not.
        self._control_hop(t_call, r.resumed_at)
        self.ctx.record("vm-started", t_real=r.resumed_at, missing_pages=int(np.count_nonzero(missing) / self.scale))
        r.downtime_s = self._emu(r.resumed_at - r.paused_at)
        r.downtime_bytes = self.state_bytes
        return missing

    def _serve(self, back: ReturnPath, why: str) -> PostcopyResult:
        """Requests first, else the background push, until every page is sent and restored;
        a connection that gives up pauses post-copy until it recovers (or the VM is lost)."""
        r, order, sent = self.result, self.order, self._sent
        self._enter("postcopy-active")
        # Each page goes once, so no copy can overtake another: no barrier between batches.
        if hasattr(self.sink, "barrier_each_pass"):
            self.sink.barrier_each_pass = False
        batch = getattr(self.sink, "task_pages", 64)
        while True:
            try:
                self._push(order, batch, sent)
                released = self.sink.drain()
                break
            except ConnectionLost as exc:
                if isinstance(exc, (PostcopyLost, DestinationGone)):
                    raise  # the VM ran there: it is lost with its host
                self._pause_and_recover(exc, order)
        self._stop_answering.set()
        self.sink.connections[0].release_urgent()
        self.ctx.record("source-released", t_real=released)
        r.memory_bytes_sent += sent["wire"] / self.scale
        r.total_time_s = self._emu(released - r.started_at)
        r.status, self.phase = "completed", "completed"
        r.postcopy = {"switch_reason": why, "precopy_iterations": r.iteration_count,
                      "pages_pulled": sent["pulled"] / self.scale, "pages_pushed": sent["pushed"] / self.scale,
                      "requests_received": back.received / self.scale,
                      "requests_for_pages_on_their_way": order.dropped / self.scale,
                      "adaptive_prepaging": self.adaptive, "postcopy_preempt": self.preempt,
                      "max_sends_per_page": int(order.sends.max()) if len(order.sends) else 0,
                      "postcopy_time_s": self._emu(released - r.resumed_at),
                      "source_released_after_s": r.total_time_s, "recovery": self._recovery_figures()}
        return r

    def _push(self, order: PushOrder, batch: int, sent: dict) -> None:
        """The background push, until every page is sent (requested ones by `_answer`)."""
        while order.left or self._answering:
            with self._lock:
                pages = order.next_push(batch)
                sent["pushed"] += len(pages)
            if not len(pages):
                time.sleep(0.001)  # the last pages are requested ones on their way out
                continue
            wire = self.sink.send_pages(self.vm, self.image, pages, "postcopy", lambda: False)
            with self._lock:
                sent["wire"] += wire

    def _answer(self, order: PushOrder, back: ReturnPath, stream, sent: dict, stop: threading.Event) -> None:
        """Requested pages: taken from the push when the request reaches the source (the
        page joins the stream then, so the push cannot overtake it), sent once the queue
        ahead of it has gone (`_hold_s`), in slots held back from the ring."""
        held: list[tuple[float, int, np.ndarray]] = []  # (real time it leaves, seq, pages): a heap
        seq = 0
        while not stop.is_set():
            asked = back.next_due(stop, held[0][0] if held else float("inf"))
            while self.phase in ("postcopy-paused", "postcopy-recover") and not stop.is_set():
                time.sleep(0.01)  # paused: answered once the new connection is up
            if asked:
                with self._lock:
                    pages = order.demand(asked)
                    sent["pulled"] += len(pages)
                    self._answering += len(pages)
                if len(pages):
                    seq += 1
                    heapq.heappush(held, (time.monotonic() + self._hold_s(), seq, pages))
            while held and held[0][0] <= time.monotonic():
                self._send_requested(heapq.heappop(held)[2], stream, sent)

    def _send_requested(self, pages: np.ndarray, stream, sent: dict) -> None:
        try:
            for at in range(0, len(pages), stream.layout.batch_pages):
                wire = stream.send_urgent(self.vm, self.image, pages[at:at + stream.layout.batch_pages])
                with self._lock:
                    sent["wire"] += wire
        except ConnectionLost:
            pass  # lost with the connection: the recovery sends them again
        finally:
            with self._lock:
                self._answering -= len(pages)

    # --- recovery -------------------------------------------------------------------------
    def _pause_and_recover(self, exc: ConnectionLost, order: PushOrder) -> None:
        """postcopy-paused until the link is back and a handshake gets through; raises
        PostcopyLost when told the link will not return."""
        t0 = time.monotonic()
        self._paused(str(exc))
        while True:
            while not self._recover.wait(0.05):
                if self._give_up.is_set():
                    self.recovery["paused_s"] += self._emu(time.monotonic() - t0)
                    raise PostcopyLost(f"post-copy paused ({exc}) and the link did not return")
            self._recover.clear()
            self.recovery["recover_attempts"] += 1
            self._enter("postcopy-recover")
            self.ctx.record("postcopy-recover", attempt=self.recovery["recover_attempts"])
            try:
                self.sink.drain()  # every slot of the broken connection back (dropped at the link)
                # The handshake: the destination's received bitmap, a bit per page, over the new connection.
                self.sink.send_state(self.vm, max(1, len(self.image) // 8))
                self.sink.drain()
                break
            except DestinationGone:
                raise
            except ConnectionLost as again:
                self._paused(f"recovery failed: {again}")
        received = self._destination_map("-recv")[:len(self.image)] != 0
        with self._lock:
            lost = order.requeue(np.flatnonzero(self.missing_at_switch & ~received & ~order.pending))
        self.recovery["pages_resent_after_recovery"] += lost / self.scale
        self.recovery["recovered"] += 1
        self.recovery["paused_s"] += self._emu(time.monotonic() - t0)
        self.guest.resume_async()  # vCPUs blocked on a missing page stop asking once it is there
        self.phase = "postcopy-active"
        self.ctx.record("postcopy-recovered", pages_to_send_again=lost / self.scale,
                        pages_left=order.left / self.scale)

    def _paused(self, reason: str) -> None:
        """Both sides stop: the guest on the destination, and this thread's sending;
        the broken connection's batches are dropped at the link."""
        self.phase = "postcopy-paused"
        self.recovery["paused"] += 1
        self._destination_log().ask_pause()
        self.sink.reset()
        self.ctx.record("postcopy-paused", reason=reason, **self._sides())

    def _sides(self) -> dict:
        """Emulated pages on each side: received by the destination, and held only by the source."""
        received = self._destination_map("-recv")[:len(self.image)] != 0
        only_source = self.missing_at_switch & ~received if self.missing_at_switch is not None else ~received
        return {"pages_on_destination": int(np.count_nonzero(received)) / self.scale,
                "pages_only_on_source": int(np.count_nonzero(only_source)) / self.scale,
                "pages_total": len(self.image) / self.scale}

    def _destination_map(self, suffix: str) -> np.ndarray:
        """A region next to the destination's image (its received map, its control page), attached once."""
        path = self.ctx.destination["image"] + suffix
        if path not in self._dest_regions:
            self._dest_regions[path] = Region.attach(path)
        return self._dest_regions[path].array

    def _destination_log(self) -> DirtyLog:
        return DirtyLog(self._destination_map("-log"), len(self.image))

    def vm_lost(self, reason: str) -> None:
        """The migration ended after the switch without finishing: say what each side holds."""
        lost = self._sides() | {"reason": reason}
        self.result.postcopy = {"lost": lost, "recovery": self._recovery_figures(),
                                "neither_side_whole": NEITHER_SIDE_WHOLE}

    def _recovery_figures(self) -> dict:
        return dict(self.recovery)

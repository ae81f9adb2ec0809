"""HostAgent: a Ray actor that plays one host (source, destination, or both).

It owns the VM images of its side in shared memory with their dirty logs,
the sending or receiving ends of the connections of every migration that
touches it, the emulated cores it lends those migrations, and, on the
source side, each migration's thread and pipeline. The technique itself
(agents/techniques/) decides what to send and when; this actor only holds
state, moves bytes and reports.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
from types import SimpleNamespace

import numpy as np
import ray

from agents.actors.crossnode import CrossNodeEnds
from agents.cpu import CoreClock, CorePool, CostModel
from agents.datapath.channel import Channel, Listener
from agents.actors.reuse import Reusable
from agents.datapath.clock import precise_threads
from agents.datapath.memory_pool import MemoryPool
from agents.datapath.pipeline import SourcePipeline
from agents.datapath.range_lock import GlobalLock, RangeLock, ReadWriteLock
from agents.datapath.receiver import PageReceiver
from agents.datapath.sender import PageSender
from agents.datapath.shm import Region, resident_bytes
from agents.datapath.wire_format import SlotLayout
from agents.encodings import cost_model as codec_costs
from agents.encodings.encoding import BatchEncoder, Compression, XbzrleCaches
from agents.faults import ENDS_MIGRATION, MigrationThreadCrash, Watchdog
from agents.guest.content import assign_classes, fill_image, template_pools
from agents.guest.dirty_log import DirtyLog
from agents.split.history import AccessHistory, bitmap_bytes
from agents.split.paging import PageSubTable
from agents.techniques import registry as techniques
from agents.techniques.base import MigrationContext, Trigger
from agents.verify import chunk_digests, page_digests

LOCKS = {"global": GlobalLock, "rwlock": ReadWriteLock, "range": RangeLock}


@ray.remote(num_cpus=0, max_concurrency=64)
class HostAgent(CrossNodeEnds, Reusable):
    def __init__(self, role: str, name: str) -> None:
        self.note_threads()
        precise_threads()
        self.role, self.name = role, name
        self.images: dict[str, Region] = {}  # by key: "vm<i>" at its first host, "vm<i>-m<k>" as migration k's copy
        self.logs: dict[str, Region] = {}
        self.received: dict[str, Region] = {}  # per image: a byte per page, set once restored (post-copy's map)
        self.access: dict[str, Region] = {}  # per image: the guest's accessed bits (split migration's EPT A bits)
        self.histories: dict[str, AccessHistory] = {}  # per image whose access history this host keeps
        self.memory_servers: dict[int, PageSubTable] = {}  # by migration: this sub-host's share of a split VM
        self.swaps: dict[int, object] = {}  # by migration: a swap-assisted destination (agents/techniques/swap.py)
        self.swap_keys: dict[str, int] = {}  # image key -> its migration's number there
        self.rings: dict[int, Region] = {}
        self.senders: dict[int, PageSender] = {}
        self.receivers: dict[int, PageReceiver] = {}
        self.jobs: dict[int, _Job] = {}
        self.cores = CorePool(1)
        self.costs = CostModel()
        self.memory_scale, self.dilation = 1.0, 1.0
        self._listeners: list[Listener] = []
        self._accepted: dict[str, Channel] = {}
        self._closing = False

    def configure(self, cores: int, costs: dict, memory_scale: float, dilation: float,
                  shared_cores: int = 0, priority: float = 1.0) -> None:
        """The emulated cores this host lends its migrations, and what each step costs."""
        self.cores = CorePool(cores, shared_cores, priority)
        self.costs = CostModel(**costs)
        self.memory_scale, self.dilation = memory_scale, dilation

    def _real_s(self, us_per_page: float, real_pages: int) -> float:
        """Real seconds that `real_pages` cost at `us_per_page` per emulated page."""
        return us_per_page * 1e-6 * real_pages / self.memory_scale * self.dilation

    # --- images -----------------------------------------------------------
    def create_image(self, key: str, path: str, npages: int, content: dict | None, seed: int) -> float:
        """Allocate a VM image with its dirty log next to it (any image may
        later be migrated on); the VM's first host fills it with the guest's
        contents, a destination pre-touches it. Returns seconds taken."""
        t0 = time.monotonic()
        region = Region.create(path, npages * 4096)
        pages = region.pages()
        if content is not None:
            fill_image(pages, assign_classes(npages, content, seed), template_pools(seed), seed)
        else:
            region.prefault()
        self.logs[key] = Region.create(path + "-log", DirtyLog.nbytes(npages))
        self.received[key] = Region.create(path + "-recv", npages)
        self.access[key] = Region.create(path + "-acc", bitmap_bytes(npages))
        self.images[key] = region
        return time.monotonic() - t0

    def image_resident_bytes(self, key: str) -> tuple[int, int]:
        """(bytes of image `key` resident in this process's page tables, bytes allocated in its file)."""
        region = self.images[key]
        return resident_bytes(region.path), os.stat(region.path).st_blocks * 512

    def release_image(self, key: str) -> None:
        """Discard an image (a cancelled migration's partial copy)."""
        swap = self.swaps.pop(self.swap_keys.pop(key, -1), None)
        if swap is not None:
            swap.close()
        for regions in (self.images, self.logs, self.received, self.access):
            region = regions.pop(key, None)
            if region is not None:
                region.unlink()

    def _contents(self, key: str) -> np.ndarray:
        """Image `key` as its VM sees it (a swap-assisted destination's swapped pages read back)."""
        swap = self.swaps.get(self.swap_keys.get(key, -1))
        return self.images[key].pages() if swap is None else swap.space.contents()

    def digests(self, key: str) -> np.ndarray:
        """Digests of runs of pages (see agents/verify.py)."""
        return chunk_digests(self._contents(key))

    def page_digests(self, key: str, idx: np.ndarray) -> np.ndarray:
        return page_digests(self._contents(key)[idx])

    # --- swap-assisted migration: the destination pages to a swap device ----------
    def attach_swap(self, m: int, key: str, conns: list[int], share: float, device: str) -> None:
        """Image `key` (migration `m`'s copy) keeps `share` of its pages in memory, the rest on `device`."""
        from agents.techniques.swap import SwapDestination
        swap = SwapDestination(self.images[key].pages(), self.received[key].array, self.access[key].array, share,
                               device, self.memory_scale, self.dilation)
        self.swaps[m], self.swap_keys[key] = swap, m
        for c in conns:
            self.receivers[c].swaps[m] = swap

    def swap_done(self, m: int) -> dict:
        return self.swaps[m].migration_done()

    def swap_fault(self, m: int, idx: np.ndarray) -> float:
        return self.swaps[m].fault(idx)

    def swap_status(self, m: int) -> dict:
        swap = self.swaps.get(m)
        return swap.status() if swap is not None else {}

    # --- split migration: access history (source), memory server (sub-host) ----
    def track_access(self, key: str, chunk_pages: int, collect_s: float, age_every: int) -> None:
        """Keep image `key`'s 8-bit access history: collect the guest's accessed
        bits every `collect_s` real seconds, age every `age_every` collections
        (S-memV §IV-B); a thread until the host closes."""
        npages = len(self.images[key].pages())
        hist = self.histories[key] = AccessHistory(npages, chunk_pages)
        bitmap = self.access[key].array[:bitmap_bytes(npages)]

        def collect() -> None:
            n = 0
            while not self._closing and key in self.access:
                time.sleep(collect_s)
                hist.collect(bitmap)
                n += 1
                if n % age_every == 0:
                    hist.age()

        threading.Thread(target=collect, daemon=True, name=f"access-{key}").start()

    def open_memory_server(self, m: int, npages: int, capacity_pages: int, refuse: bool = False) -> int:
        """Start migration `m`'s memory server here: a page sub-table of
        `capacity_pages` frames (S-memV §IV-D). Returns this process's id."""
        if refuse:
            raise RuntimeError(f"{self.name}: the memory server refused to start (injected fault)")
        self.memory_servers[m] = PageSubTable(npages, capacity_pages)
        return os.getpid()

    def load_memory_server(self, m: int, key: str, pages: np.ndarray) -> int:
        """Take the pages split migration `m` sent here (received into image `key`)
        into the memory server's sub-table, then free the image. Returns pages held."""
        server = self.memory_servers[m]
        server.page_out(pages, self.images[key].pages()[pages])
        self.release_image(key)
        return server.held

    def close_memory_server(self, m: int) -> None:
        self.memory_servers.pop(m, None)

    def memory_server_holds(self, m: int) -> np.ndarray:
        """Packed bits: the pages migration `m`'s memory server holds."""
        return np.packbits(self.memory_servers[m].holds())

    def memory_server_digests(self, m: int, pages: np.ndarray) -> np.ndarray:
        server = self.memory_servers[m]
        return page_digests(server.frames[server.slot[pages]])

    def swap(self, m: int, page_in: np.ndarray, page_out: np.ndarray, data: np.ndarray | None) -> np.ndarray:
        """Remote paging (§IV-E): return and free pages `page_in`, then store
        `data` as pages `page_out`: one request each way."""
        server = self.memory_servers[m]
        got = server.page_in(page_in) if len(page_in) else np.empty((0, 4096), dtype=np.uint8)
        if page_out is not None and len(page_out):
            server.page_out(page_out, data)
        return got

    def set_split_nic_rate(self, m: int, rate_bytes_s: float | None) -> None:
        """Split migration `m`'s links share this host's NIC: pace them together at `rate_bytes_s`."""
        job = self.jobs.get(m)
        if job is not None and hasattr(job.pipeline, "set_nic_rate"):
            job.pipeline.set_nic_rate(rate_bytes_s)

    def split_table(self, m: int) -> np.ndarray | None:
        """Split migration `m`'s host per page (0: main, 1..k: sub-hosts), or None."""
        return getattr(self.jobs[m].technique, "page_host", None)

    def split_history(self, m: int) -> np.ndarray | None:
        """The access history migration `m` sent with the main host's pages (uint8 per page)."""
        return getattr(self.jobs[m].technique, "sent_history", None)

    # --- connections --------------------------------------------------------
    def create_ring(self, conn: int, path: str, slots: int, batch_pages: int) -> None:
        self.rings[conn] = Region.create(path, slots * SlotLayout(batch_pages).slot_bytes)
        self.rings[conn].prefault()  # first touches stay out of the migration's charged time

    def attach_ring(self, conn: int, path: str) -> None:
        self.rings[conn] = Region.attach(path)

    def listen(self, path: str) -> str:
        """Listen on a Unix socket; the connection is accepted in the background."""
        lst = Listener(path)
        self._listeners.append(lst)
        threading.Thread(target=lambda: self._accepted.__setitem__(path, lst.accept()), daemon=True).start()
        return path

    def _wait_accepted(self, path: str, timeout: float = 60) -> Channel:
        deadline = time.monotonic() + timeout
        while path not in self._accepted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: nobody connected to {path}")
            time.sleep(0.002)
        return self._accepted.pop(path)

    def open_sender(self, conn: int, link_in: str, ack_path: str, slots: int, batch_pages: int) -> None:
        to_link = Channel.connect(link_in)
        acks = self._wait_accepted(ack_path)
        self.senders[conn] = PageSender(self.rings[conn].array, slots, SlotLayout(batch_pages), to_link, acks)

    def open_receiver(self, conn: int, link_out: str, ack_path: str, slots: int, batch_pages: int,
                      images: dict[int, str]) -> None:
        """`images`: for each migration whose batches may arrive here, the key of its destination image."""
        self._receiver(conn, Channel.connect(link_out), Channel.connect(ack_path), slots, batch_pages, images)

    def _receiver(self, conn: int, from_link: Channel, acks: Channel, slots: int, batch_pages: int,
                  images: dict[int, str]) -> None:
        c = self.costs

        def restore_cost(pages: int, with_contents: int) -> float:
            # Every page is restored; only pages that carried contents were received in full.
            return self._real_s(c.restore_us, pages) + self._real_s(c.receive_us, with_contents)

        self.receivers[conn] = PageReceiver(self.rings[conn].array, slots, SlotLayout(batch_pages), from_link, acks,
                                            self.cores, restore_cost,
                                            {m: self.images[key].pages() for m, key in images.items()},
                                            decode_cost=lambda us: self._real_s(us, 1), codec_costs=codec_costs.load(),
                                            received={m: self.received[key].array for m, key in images.items()})

    def start_pipeline(self, m: int, conns: list[int], consumers: int, lock: str, pool_bytes: int,
                       task_pages: int, compression: dict | None = None, costs: dict | None = None,
                       hosts: list[int] | None = None) -> None:
        """Migration `m`'s source pipeline over its connections `conns`.
        `hosts`: the destination host (0, 1, ...) of each connection when there
        are several (split migration): one pipeline per host, under one sink.
        `compression`: agents.encodings.encoding.Compression's fields (real units); None: zero pages only.
        `costs`: this migration's CostModel fields when they differ from the host's (its address-space lock)."""
        pool = MemoryPool(max(pool_bytes, task_pages * 4096))
        settings = Compression(**(compression or {}))
        caches = encoders = None
        if settings.method != "none":
            if settings.xbzrle:
                caches = XbzrleCaches(settings.xbzrle_cache_bytes, settings.xbzrle_budget)
            encoders = [BatchEncoder(settings, caches) for _ in range(consumers)]
        if caches is not None:
            for c in conns:
                self.senders[c].on_resend = caches.invalidate
        cost = CostModel(**costs) if costs else self.costs
        if hosts is not None and len(set(hosts)) > 1:
            from agents.techniques.split import SplitSink
            groups = [[c for c, h in zip(conns, hosts) if h == d] for d in sorted(set(hosts))]
            pipeline = SplitSink([SourcePipeline([self.senders[c] for c in g], len(g), self.cores, LOCKS[lock](),
                                                 cost, self._real_s, MemoryPool(max(pool_bytes, task_pages * 4096)),
                                                 task_pages, encoders, tag=(m, "send")) for g in groups])
        else:
            pipeline = SourcePipeline([self.senders[c] for c in conns], consumers, self.cores, LOCKS[lock](),
                                      cost, self._real_s, pool, task_pages, encoders, tag=(m, "send"))
        self.jobs[m] = _Job(conns, pipeline, caches)

    # --- migrations (source) ------------------------------------------------
    def migrate(self, m: int, key: str, guest, technique: str, options: dict, triggers: list,
                destination: dict | None = None) -> None:
        """Start migration `m` of image `key` with `technique` in a thread;
        follow it with `poll`, wait for it with `wait`, cancel it with `cancel`.
        `destination`: the destination image's path, a return path socket and the
        link's one-way delay, for techniques that move the guest themselves."""
        job = self.jobs[m]
        pages = self.images[key].pages()
        control = _GuestControl(DirtyLog(self.logs[key].array, len(pages)), guest, self.cores,
                                self._real_s(self.costs.dirty_sync_ns / 1000, len(pages)), (m, "sync"))
        if job.caches is not None:
            control.on_sync = lambda: job.caches.new_generation(m, time.monotonic() / self.dilation,
                                                                self._pages_saved(job))
        if (destination or {}).get("disk_io"):
            from agents.techniques.storage import HoldsSharedDisk
            control = HoldsSharedDisk(control, destination["disk_io"]["agent"], destination["disk_io"]["vm"])
        ctx = MigrationContext(m, pages, control, job.pipeline, self.memory_scale, self.dilation,
                               [Trigger(**tr) for tr in triggers], destination=destination or {},
                               access_history=self.histories.get(key))
        ctx.act = lambda tr: self._fault_on_the_spot(m, tr)
        job.ctx = ctx
        job.technique = techniques.get(technique).load().from_options(ctx, SimpleNamespace(**options))
        timeout_ms = options.get("tcp_user_timeout_ms", 10_000)
        job.watchdog = Watchdog([self.senders[c] for c in job.conns], timeout_ms / 1000 * self.dilation, timeout_ms,
                                job.done)
        job.thread = threading.Thread(target=job.run, daemon=True, name=f"migrate-{m}")
        job.thread.start()

    def _fault_on_the_spot(self, m: int, tr: Trigger) -> None:
        """A phase-triggered fault, carried out by the migration thread as it enters the phase."""
        if tr.crash:
            self.jobs[m].pipeline.crash = MigrationThreadCrash("the migration thread crashed (injected fault)")
        if tr.link_down is not None:
            ray.get(tr.link_down.set_down.remote(True), timeout=10)

    def crash_migration(self, m: int) -> bool:
        """Fault injection: migration `m`'s thread crashes at its next step. False when none runs."""
        job = self.jobs.get(m)
        if job is None or job.technique is None or job.done.is_set():
            return False
        job.pipeline.crash = MigrationThreadCrash("the migration thread crashed (injected fault)")
        return True

    def recover_postcopy(self, m: int) -> bool:
        """QEMU's migrate-recover/resume: a paused post-copy may reconnect now. False when not paused."""
        job = self.jobs.get(m)
        recover = getattr(job.technique, "recover", None) if job is not None else None
        return bool(recover and recover())

    def give_up_postcopy(self, m: int) -> bool:
        """The link will not return: a paused post-copy ends, the VM lost. False when not paused."""
        job = self.jobs.get(m)
        give_up = getattr(job.technique, "give_up", None) if job is not None else None
        return bool(give_up and give_up())

    def wait(self, m: int, timeout: float) -> bool:
        """True once migration `m` has finished (whatever its outcome)."""
        self.jobs[m].done.wait(timeout)
        return self.jobs[m].done.is_set()

    def cancel(self, m: int, status: str = "cancelled", reason: str = "cancelled") -> None:
        job = self.jobs.get(m)
        if job is not None and job.technique is not None:
            job.technique.abort(status, reason)

    def start_postcopy(self, m: int) -> bool:
        """migrate-start-postcopy: False when the technique has no post-copy phase."""
        job = self.jobs.get(m)
        switch = getattr(job.technique, "start_postcopy", None) if job is not None else None
        if switch is not None:
            switch()
        return switch is not None

    def poll(self, m: int, since: int = 0) -> dict:
        """Migration `m`'s progress and counters (real units) and its events from number `since` on."""
        job = self.jobs[m]
        out = job.technique.progress() if job.technique else {"phase": "idle", "status": "idle"}
        out["error"] = job.error
        out["done"] = job.done.is_set()
        cs = [self.senders[c].counters for c in job.conns]
        for key in ("wire_bytes", "state_bytes", "delivered_bytes", "delivered_state_bytes", "pages_normal", "pages_zero", "pages_compressed", "pages_delta",
                    "pages_unchanged", "raw_bytes", "payload_bytes", "encode_s", "encode_model_us", "batches",
                    "batches_corrupted", "batches_resent", "batches_dropped"):
            out[key] = sum(getattr(c, key) for c in cs)
        if job.caches is not None:
            out["xbzrle"] = job.caches.counters(m)
        out["pool_high_water_bytes"] = job.pipeline.pool.high_water
        out["lock"] = job.pipeline.lock.stats()
        out["drift_s"] = job.pipeline.drift_s
        out["handover_late_s"] = job.pipeline.handover_late_s
        out["events"] = job.ctx.events[since:] if job.ctx else []
        return out

    def sample(self, since: dict[int, int]) -> dict:
        """One call per timeline interval: `poll` of each migration in `since`
        (its number -> events already seen), this host's `usage`, and `t_read`: when
        they were read (this node's monotonic clock), which dates the record."""
        out = {"polls": {m: self.poll(m, k) for m, k in since.items()}, "usage": self.usage()}
        return out | {"t_read": time.monotonic()}

    def _pages_saved(self, job: _Job) -> int:
        """Pages migration `job` has sent so far, zero pages included (QEMU's target_page_count)."""
        return sum(c.pages_normal + c.pages_zero + c.pages_compressed + c.pages_delta
                   for c in (self.senders[k].counters for k in job.conns))

    def report(self, m: int) -> dict:
        job = self.jobs[m]
        return job.technique.report() if job.technique else {}

    def usage(self) -> dict:
        """This host's emulated cores: real seconds charged and held, in all and by (migration, stage)."""
        return self.cores.usage()

    def receiver_status(self, conns: list[int]) -> dict:
        rs = [self.receivers[c] for c in conns if c in self.receivers]
        return {"pages_restored": sum(r.pages_restored for r in rs),
                "errors": [r.error for r in rs if r.error],
                "decode_s": sum(r.decode_s for r in rs),
                "batches_corrupted": sum(r.batches_corrupted for r in rs),
                "batches_dropped": sum(r.batches_dropped for r in rs),
                "decode_model_us": sum(r.decode_model_us for r in rs)}

    def share_cores_with(self, keys: list[str], period_s: float) -> None:
        """CPU rate control: every `period_s`, tell the co-located VMs how many
        vCPUs' worth of their shared cores the migrations are taking."""
        logs = [DirtyLog(self.logs[k].array, len(self.images[k].pages())) for k in keys]
        pool = self.cores

        def watch() -> None:
            last_t, last_busy = time.monotonic(), pool.shared_busy_s
            while not self._closing:
                time.sleep(period_s)
                now, busy = time.monotonic(), pool.shared_busy_s
                taken = (busy - last_busy) / (now - last_t) * pool.priority / max(1, len(logs))
                for log in logs:
                    log.take_cpu(taken)
                last_t, last_busy = now, busy

        threading.Thread(target=watch, daemon=True, name="cpu-share").start()

    def send_image(self, m: int, key: str, tag: int) -> float:
        """Benchmark: send image `key` once through migration `m`'s pipeline, its
        batches tagged `tag` for the receiver; real seconds until restored."""
        t0 = time.monotonic()
        pages = self.images[key].pages()
        pipeline = self.jobs[m].pipeline
        pipeline.send_pages(tag, pages, np.arange(len(pages)), "bench")
        pipeline.drain()
        return time.monotonic() - t0

    def close(self) -> None:
        self._closing = True
        for job in self.jobs.values():
            if job.technique is not None:
                job.technique.abort("aborted", "host closing")
                give_up = getattr(job.technique, "give_up", None)
                if give_up is not None:
                    give_up()  # a paused post-copy waits no more
            job.pipeline.close()
        for c, s in self.senders.items():
            if not any(c in job.conns for job in self.jobs.values()):
                s.close()
        for lst in self._listeners:
            lst.close()
        for region in [*self.images.values(), *self.logs.values(), *self.rings.values(), *self.access.values()]:
            region.unlink()


class _Job:
    """One migration leaving this host: its connections, pipeline, XBZRLE
    caches, technique and thread."""

    def __init__(self, conns: list[int], pipeline: SourcePipeline, caches: XbzrleCaches | None) -> None:
        self.conns, self.pipeline, self.caches = conns, pipeline, caches
        self.ctx: MigrationContext | None = None
        self.technique = None
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self.done = threading.Event()
        self.watchdog: Watchdog | None = None

    def run(self) -> None:
        try:
            self.technique.run()
        except ENDS_MIGRATION as exc:  # a fault: the migration ends, the VM stays where it can
            self._fault_ended(exc)
        except Exception:  # reported to the driver, which fails the migration cleanly
            self.error = traceback.format_exc()
            self.technique.result.status = "failed"
            self.technique.phase = "failed"
            if getattr(self.technique.result, "guest_on_destination", False):
                return  # post-copy: the guest already runs on the destination; it cannot come back
            try:
                self.ctx.guest.stop_dirty_log()
                self.ctx.guest.resume()  # the VM keeps running on its source
            except Exception:
                pass
        finally:
            self._clean_up()
            self.done.set()

    def _clean_up(self) -> None:
        """The technique's own clean-up, whatever ended its run (storage: cancel a disk copy still going)."""
        cleanup = getattr(self.technique, "cleanup", None)
        if cleanup is None:
            return
        try:
            cleanup()
        except Exception:  # noqa: BLE001 - reported like a failure of the run itself
            self.error = (self.error or "") + traceback.format_exc()

    def _fault_ended(self, exc: BaseException) -> None:
        """Abort on a fault. Before a post-copy switch the VM keeps running on its source;
        after it, neither side holds the whole VM: it is lost."""
        t, r = self.technique, self.technique.result
        lost = bool(getattr(r, "guest_on_destination", False))
        r.status, r.stop_reason = ("failed" if lost else "aborted"), str(exc)
        if lost:
            t.vm_lost(str(exc))
        else:
            stop = getattr(t, "_convergence_stop", None)
            if stop is not None:
                stop()
            try:
                self.ctx.guest.stop_dirty_log()
                self.ctx.guest.resume()  # a no-op unless it was paused for stop-and-copy
            except Exception:  # noqa: BLE001 - the VM's own actor is gone: nothing to resume
                pass
        r.total_time_s = (time.monotonic() - r.started_at) / t.dilation
        self.ctx.record(r.status, reason=r.stop_reason, during=t.phase, fault=type(exc).__name__)
        t.phase = r.status


class _GuestControl:
    """The guest as the migration thread sees it: the dirty log is read here,
    in shared memory (each fetch charged to a core, as the hypervisor's
    bitmap sync would be); pausing and resuming are calls to its GuestAgent."""

    def __init__(self, log: DirtyLog, handle, cores: CorePool, sync_real_s: float, tag=None) -> None:
        self.log, self.h, self.cores, self.sync_real_s, self.tag = log, handle, cores, sync_real_s, tag
        self.on_sync = lambda: None  # a dirty-log sync ages the XBZRLE cache
        self.synced_at = 0.0  # when the last fetch's charged work ended, on the emulated schedule

    def start_dirty_log(self) -> None:
        self.log.start()

    def stop_dirty_log(self) -> None:
        self.log.stop()

    def take_io_thread(self, share: float) -> None:
        self.log.take_io_thread(share)

    def set_throttle(self, pct: float) -> None:
        self.log.set_throttle(pct)

    def set_dirty_limit(self, quota_bytes_s: float, period_s: float) -> None:
        self.log.set_dirty_limit(quota_bytes_s, period_s)

    def harvest(self, at: float | None = None) -> np.ndarray:
        """The dirty log's pages since the last fetch (sorted); the fetch is charged to a core
        (QEMU's migration_bitmap_sync). `at`: when it began on the emulated schedule (monotonic
        seconds, e.g. the moment the VM stopped); its charge runs from then, not from when this
        thread got to it, and `synced_at` is when it ended (at high dilation it sleeps to that)."""
        clock = None
        if at is not None:
            clock = CoreClock()
            clock.t, clock.busy = at, True
        with self.cores.core(self.tag, clock) as core:
            idx = self.log.harvest()
            self.on_sync()
            core.charge(self.sync_real_s)
        self.synced_at = core.t
        return idx

    def pause(self) -> float:
        return self.log.request_pause()

    def resume(self) -> float:
        return ray.get(self.h.resume.remote())

    def resume_async(self) -> None:
        """Resume without waiting: a vCPU blocked on a missing page holds the guest until the page comes."""
        self.h.resume.remote()

    def resume_on_destination(self, image_path: str, missing: np.ndarray, return_path: str = "") -> float:
        return ray.get(self.h.resume_on.remote(image_path, {"missing": np.packbits(missing),
                                                            "return_path": return_path, "vm": self.tag[0]}))



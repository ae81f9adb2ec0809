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

import numpy as np
import ray

from agents.cpu import CorePool, CostModel
from agents.datapath.channel import Channel, Listener
from agents.datapath.clock import precise_threads
from agents.datapath.memory_pool import MemoryPool
from agents.datapath.pipeline import SourcePipeline
from agents.datapath.range_lock import GlobalLock, RangeLock, ReadWriteLock
from agents.datapath.receiver import PageReceiver
from agents.datapath.sender import PageSender
from agents.datapath.shm import Region
from agents.datapath.wire_format import SlotLayout
from agents.encodings.encoding import BatchEncoder, Compression, XbzrleCaches
from agents.guest.content import assign_classes, fill_image, template_pools
from agents.guest.dirty_log import DirtyLog
from agents.techniques.precopy import PrecopyMigration, StopPolicy
from agents.verify import chunk_digests, page_digests

LOCKS = {"global": GlobalLock, "rwlock": ReadWriteLock, "range": RangeLock}


@ray.remote(num_cpus=0, max_concurrency=8)
class HostAgent:
    def __init__(self, role: str, name: str) -> None:
        precise_threads()
        self.role, self.name = role, name
        self.images: dict[int, Region] = {}
        self.logs: dict[int, Region] = {}
        self.rings: dict[int, Region] = {}
        self.senders: dict[int, PageSender] = {}
        self.receivers: dict[int, PageReceiver] = {}
        self.migrations: dict[int, PrecopyMigration] = {}
        self.errors: dict[int, str] = {}
        self.pipeline: SourcePipeline | None = None
        self.xbzrle: XbzrleCaches | None = None
        self.cores = CorePool(1)
        self.costs = CostModel()
        self.memory_scale, self.dilation = 1.0, 1.0
        self._listeners: list[Listener] = []
        self._accepted: dict[str, Channel] = {}
        self._closing = False

    def pid(self) -> int:
        return os.getpid()

    def configure(self, cores: int, costs: dict, memory_scale: float, dilation: float,
                  shared_cores: int = 0, priority: float = 1.0) -> None:
        """The emulated cores this host lends the migration, and what each step costs."""
        self.cores = CorePool(cores, shared_cores, priority)
        self.costs = CostModel(**costs)
        self.memory_scale, self.dilation = memory_scale, dilation

    def _real_s(self, us_per_page: float, real_pages: int) -> float:
        """Real seconds that `real_pages` cost at `us_per_page` per emulated page."""
        return us_per_page * 1e-6 * real_pages / self.memory_scale * self.dilation

    # --- images -----------------------------------------------------------
    def create_image(self, vm: int, path: str, npages: int, content: dict | None, seed: int) -> float:
        """Allocate a VM image; the source fills it with the guest's contents and
        keeps its dirty log next to it. Returns seconds taken."""
        t0 = time.monotonic()
        region = Region.create(path, npages * 4096)
        pages = region.pages()
        if content is not None:
            fill_image(pages, assign_classes(npages, content, seed), template_pools(seed), seed)
            self.logs[vm] = Region.create(path + "-log", DirtyLog.nbytes(npages))
        else:
            region.prefault()
        self.images[vm] = region
        return time.monotonic() - t0

    def digests(self, vm: int) -> np.ndarray:
        """Digests of runs of pages (see agents/verify.py)."""
        return chunk_digests(self.images[vm].pages())

    def page_digests(self, vm: int, idx: np.ndarray) -> np.ndarray:
        return page_digests(self.images[vm].pages()[idx])

    # --- connections --------------------------------------------------------
    def create_ring(self, conn: int, path: str, slots: int, batch_pages: int) -> None:
        self.rings[conn] = Region.create(path, slots * SlotLayout(batch_pages).slot_bytes)

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

    def open_receiver(self, conn: int, link_out: str, ack_path: str, slots: int, batch_pages: int) -> None:
        from_link = Channel.connect(link_out)
        acks = Channel.connect(ack_path)
        images = {vm: r.pages() for vm, r in self.images.items()}
        c = self.costs

        def restore_cost(pages: int, with_contents: int) -> float:
            # Every page is restored; only pages that carried contents were received in full.
            return self._real_s(c.restore_us, pages) + self._real_s(c.receive_us, with_contents)

        self.receivers[conn] = PageReceiver(self.rings[conn].array, slots, SlotLayout(batch_pages), from_link, acks,
                                            self.cores, restore_cost, images,
                                            decode_cost=lambda s: self._real_s(s * 1e6, 1))

    def start_pipeline(self, consumers: int, lock: str, pool_bytes: int, task_pages: int,
                       compression: dict | None = None) -> None:
        """`compression`: agents.encodings.encoding.Compression's fields (real units); None: zero pages only."""
        conns = [self.senders[k] for k in sorted(self.senders)]
        pool = MemoryPool(max(pool_bytes, task_pages * 4096))
        settings = Compression(**(compression or {}))
        encoders = None
        if settings.method != "none":
            if settings.xbzrle:
                self.xbzrle = XbzrleCaches(settings.xbzrle_cache_bytes, settings.xbzrle_budget)
            encoders = [BatchEncoder(settings, self.xbzrle) for _ in range(consumers)]
        self.pipeline = SourcePipeline(conns, consumers, self.cores, LOCKS[lock](), self.costs, self._real_s,
                                       pool, task_pages, encoders)

    # --- migration (source) ----------------------------------------------
    def migrate(self, vm: int, guest, policy: dict, state_bytes: float, setup_s: float,
                strategy: str, slice_bytes: float, resume_s: float, io_thread_taken: float = 0.0) -> None:
        """Start migrating `vm` in a thread; poll `status` and fetch `migration_result`."""
        pages = self.images[vm].pages()
        control = _GuestControl(DirtyLog(self.logs[vm].array, len(pages)), guest, self.cores,
                                self._real_s(self.costs.dirty_sync_ns / 1000, len(pages)))
        if self.xbzrle is not None:
            control.on_sync = lambda: self.xbzrle.new_generation(vm)
        mig = PrecopyMigration(vm, pages, control, self.pipeline, StopPolicy(**policy),
                               self.memory_scale, self.dilation, state_bytes, setup_s, strategy, slice_bytes,
                               resume_s, io_thread_taken)
        self.migrations[vm] = mig

        def run() -> None:
            try:
                mig.run()
            except Exception:  # reported to the driver, which fails the run cleanly
                self.errors[vm] = traceback.format_exc()
                mig.result.status = "failed"
                mig.phase = "failed"
                try:
                    control.stop_dirty_log()
                    ray.get(guest.resume.remote())  # the VM keeps running on its source
                except Exception:
                    pass

        threading.Thread(target=run, daemon=True, name=f"migrate-{vm}").start()

    def share_cores_with(self, vms: list[int], period_s: float) -> None:
        """CPU rate control: every `period_s`, tell the co-located VMs how many
        vCPUs' worth of their shared cores the migration is taking."""
        logs = [DirtyLog(self.logs[vm].array, len(self.images[vm].pages())) for vm in vms]
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

    def send_image(self, vm: int) -> float:
        """Benchmark: send the whole image once through the pipeline; real seconds until restored."""
        t0 = time.monotonic()
        pages = self.images[vm].pages()
        self.pipeline.send_pages(vm, pages, np.arange(len(pages)), "bench")
        self.pipeline.drain()
        return time.monotonic() - t0

    def abort(self, vm: int) -> None:
        if vm in self.migrations:
            self.migrations[vm].abort_requested = True

    def status(self, vm: int) -> dict:
        mig = self.migrations.get(vm)
        out = {"phase": "idle", "iteration": 0, "remaining_bytes": 0.0, "error": self.errors.get(vm)}
        if mig is not None:
            r = mig.result
            its = r.iterations
            out.update(phase=mig.phase, iteration=r.iteration_count + (1 if mig.phase == "precopy" else 0),
                       remaining_bytes=mig.remaining_bytes, status=r.status)
            if len(its) >= 2 and its[-2].duration_s > 0:
                out["dirty_pages_per_s"] = its[-1].dirty_pages / its[-2].duration_s
        if self.senders:
            cs = [s.counters for s in self.senders.values()]
            out.update(wire_bytes=sum(c.wire_bytes for c in cs), pages_normal=sum(c.pages_normal for c in cs),
                       pages_zero=sum(c.pages_zero for c in cs), batches=sum(c.batches for c in cs))
            for key in ("pages_compressed", "pages_delta", "pages_unchanged", "raw_bytes", "payload_bytes",
                        "encode_s"):
                out[key] = sum(getattr(c, key) for c in cs)
        if self.xbzrle is not None:
            out["xbzrle"] = self.xbzrle.counters(vm)
        out["cpu_charged_s"] = self.cores.charged_s
        out["cpu_overrun_s"] = self.cores.overrun_s
        out["cpu_held_s"] = self.cores.held_s
        if self.pipeline is not None:
            out["pool_high_water_bytes"] = self.pipeline.pool.high_water
            out["lock"] = self.pipeline.lock.stats()
        return out

    def migration_result(self, vm: int) -> dict:
        from dataclasses import asdict
        return asdict(self.migrations[vm].result)

    def receiver_status(self) -> dict:
        return {
            "pages_restored": sum(r.pages_restored for r in self.receivers.values()),
            "errors": [r.error for r in self.receivers.values() if r.error],
            "decode_s": sum(r.decode_s for r in self.receivers.values()),
            "cpu_charged_s": self.cores.charged_s,
            "cpu_overrun_s": self.cores.overrun_s,
            "cpu_held_s": self.cores.held_s,
        }

    def close(self) -> None:
        self._closing = True
        if self.pipeline is not None:
            self.pipeline.close()
        else:
            for s in self.senders.values():
                s.close()
        for lst in self._listeners:
            lst.close()
        for region in [*self.images.values(), *self.logs.values(), *self.rings.values()]:
            region.unlink()


class _GuestControl:
    """The guest as the migration thread sees it: the dirty log is read here,
    in shared memory (each fetch charged to a core, as the hypervisor's
    bitmap sync would be); pausing and resuming are calls to its GuestAgent."""

    def __init__(self, log: DirtyLog, handle, cores: CorePool, sync_real_s: float) -> None:
        self.log, self.h, self.cores, self.sync_real_s = log, handle, cores, sync_real_s
        self.on_sync = lambda: None  # a dirty-log sync ages the XBZRLE cache

    def start_dirty_log(self) -> None:
        self.log.start()

    def stop_dirty_log(self) -> None:
        self.log.stop()

    def take_io_thread(self, share: float) -> None:
        self.log.take_io_thread(share)

    def harvest(self) -> np.ndarray:
        with self.cores.core() as core:
            idx = self.log.harvest()
            self.on_sync()
            core.charge(self.sync_real_s)
        return idx

    def pause(self) -> float:
        return self.log.request_pause()

    def resume(self) -> float:
        return ray.get(self.h.resume.remote())



"""The Ray actors: thin shells that hold state and call the pure core.

- `HostAgent` plays a host (source, destination): it owns the VM images of
  its side in shared memory, the sending or receiving end of every link, and
  on the source the migration thread.
- `LinkAgent` plays one NIC pair and shapes what crosses it.
- `GuestAgent` plays a VM's vCPUs: its workload writes into the image of the
  host it runs on.
Actors are named by role so that the Ray dashboard shows who is who.
"""
from __future__ import annotations

import os
import threading
import time
import traceback

import numpy as np
import ray

from agents.channel import Channel, Listener
from agents.clock import ChargedCore
from agents.content import assign_classes, fill_image, template_pools
from agents.guest import Guest
from agents.link import LinkShaper
from agents.precopy import PrecopyMigration, StopPolicy
from agents.receiver import PageReceiver
from agents.sender import PageSender
from agents.shm import Region
from agents.verify import chunk_digests, page_digests
from agents.wire_format import SlotLayout
from agents.workloads import make_workload


@ray.remote(num_cpus=0, max_concurrency=8)
class HostAgent:
    def __init__(self, role: str, name: str, run_id: str, sock_dir: str, cores: int) -> None:
        self.role, self.name, self.run_id, self.sock_dir = role, name, run_id, sock_dir
        self.images: dict[int, Region] = {}
        self.rings: dict[int, Region] = {}
        self.senders: dict[int, PageSender] = {}
        self.receivers: dict[int, PageReceiver] = {}
        self.migrations: dict[int, PrecopyMigration] = {}
        self.errors: dict[int, str] = {}
        self.core = ChargedCore()
        self.cores = cores
        self._listeners: list[Listener] = []
        self._accepted: dict[str, Channel] = {}

    def pid(self) -> int:
        return os.getpid()

    # --- images -----------------------------------------------------------
    def create_image(self, vm: int, path: str, npages: int, content: dict | None, seed: int) -> float:
        """Allocate a VM image; the source fills it with the guest's contents. Returns seconds taken."""
        t0 = time.monotonic()
        region = Region.create(path, npages * 4096)
        pages = region.pages()
        if content is not None:
            fill_image(pages, assign_classes(npages, content, seed), template_pools(seed), seed)
        else:
            region.prefault()
        self.images[vm] = region
        return time.monotonic() - t0

    def digests(self, vm: int) -> np.ndarray:
        """Digests of runs of pages (see agents/verify.py)."""
        return chunk_digests(self.images[vm].pages())

    def page_digests(self, vm: int, idx: np.ndarray) -> np.ndarray:
        return page_digests(self.images[vm].pages()[idx])

    # --- links ------------------------------------------------------------
    def create_ring(self, link: int, path: str, slots: int, batch_pages: int) -> None:
        self.rings[link] = Region.create(path, slots * SlotLayout(batch_pages).slot_bytes)

    def attach_ring(self, link: int, path: str) -> None:
        self.rings[link] = Region.attach(path)

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

    def open_sender(self, link: int, link_in: str, ack_path: str, slots: int, batch_pages: int,
                    send_cost_s_per_page: float) -> None:
        to_link = Channel.connect(link_in)
        acks = self._wait_accepted(ack_path)
        self.senders[link] = PageSender(self.rings[link].array, slots, SlotLayout(batch_pages), to_link, acks,
                                        self.core, send_cost_s_per_page)

    def open_receiver(self, link: int, link_out: str, ack_path: str, slots: int, batch_pages: int,
                      restore_cost_s_per_page: float) -> None:
        from_link = Channel.connect(link_out)
        acks = Channel.connect(ack_path)
        images = {vm: r.pages() for vm, r in self.images.items()}
        self.receivers[link] = PageReceiver(self.rings[link].array, slots, SlotLayout(batch_pages), from_link, acks,
                                            self.core, restore_cost_s_per_page, images)

    # --- migration (source) ----------------------------------------------
    def migrate(self, vm: int, link: int, guest, policy: dict, memory_scale: float, dilation: float,
                state_bytes: float, setup_s: float) -> None:
        """Start migrating `vm` in a thread; poll `status` and fetch `migration_result`."""
        mig = PrecopyMigration(vm, self.images[vm].pages(), _RemoteGuest(guest), self.senders[link],
                               StopPolicy(**policy), memory_scale, dilation, state_bytes, setup_s)
        self.migrations[vm] = mig

        def run() -> None:
            try:
                mig.run()
            except Exception:  # reported to the driver, which fails the run cleanly
                self.errors[vm] = traceback.format_exc()
                mig.result.status = "failed"
                mig.phase = "failed"
                try:
                    ray.get(guest.resume.remote())  # the VM keeps running on its source
                except Exception:
                    pass

        threading.Thread(target=run, daemon=True, name=f"migrate-{vm}").start()

    def send_image(self, vm: int, link: int) -> float:
        """Benchmark: send the whole image once, unshaped by any policy; real seconds until restored."""
        t0 = time.monotonic()
        pages = self.images[vm].pages()
        self.senders[link].send_pages(vm, pages, np.arange(len(pages)), "bench")
        self.senders[link].drain()
        return time.monotonic() - t0

    def abort(self, vm: int) -> None:
        if vm in self.migrations:
            self.migrations[vm].abort_requested = True

    def status(self, vm: int) -> dict:
        mig = self.migrations.get(vm)
        c = next(iter(self.senders.values())).counters if self.senders else None
        out = {"phase": "idle", "iteration": 0, "remaining_bytes": 0.0, "error": self.errors.get(vm)}
        if mig is not None:
            its = mig.result.iterations
            out.update(phase=mig.phase, iteration=len(its) + (1 if mig.phase == "precopy" else 0),
                       remaining_bytes=mig.remaining_bytes, status=mig.result.status)
            if len(its) >= 2 and its[-2].duration_s > 0:
                out["dirty_pages_per_s"] = its[-1].dirty_pages / its[-2].duration_s
        if c is not None:
            out.update(wire_bytes=c.wire_bytes, pages_normal=c.pages_normal, pages_zero=c.pages_zero,
                       batches=c.batches, by_phase={k: list(v) for k, v in c.by_phase.items()})
        out["cpu_charged_s"] = self.core.charged_s
        out["cpu_overrun_s"] = self.core.overrun_s
        return out

    def migration_result(self, vm: int) -> dict:
        from dataclasses import asdict
        return asdict(self.migrations[vm].result)

    def receiver_status(self) -> dict:
        return {
            "pages_restored": sum(r.pages_restored for r in self.receivers.values()),
            "errors": [r.error for r in self.receivers.values() if r.error],
            "cpu_charged_s": self.core.charged_s,
            "cpu_overrun_s": self.core.overrun_s,
        }

    def close(self) -> None:
        for s in self.senders.values():
            s.close()
        for lst in self._listeners:
            lst.close()
        for region in list(self.images.values()) + list(self.rings.values()):
            region.unlink()


class _RemoteGuest:
    """The guest as the migration thread sees it: calls to its GuestAgent."""

    def __init__(self, handle) -> None:
        self.h = handle

    def start_dirty_log(self) -> None:
        ray.get(self.h.start_dirty_log.remote())

    def harvest(self) -> np.ndarray:
        return ray.get(self.h.harvest.remote())

    def pause(self) -> float:
        return ray.get(self.h.pause.remote())

    def resume(self) -> float:
        return ray.get(self.h.resume.remote())


@ray.remote(num_cpus=0, max_concurrency=4)
class LinkAgent:
    def __init__(self, name: str, rate_bytes_s: float, one_way_s: float, background_bytes_s: float) -> None:
        self.name = name
        self.shaper = LinkShaper(rate_bytes_s, one_way_s, background_bytes_s=background_bytes_s)
        self._listeners: list[Listener] = []
        self._ring: Region | None = None

    def listen(self, in_path: str, out_path: str) -> None:
        lin, lout = Listener(in_path), Listener(out_path)
        self._listeners += [lin, lout]

        def accept_then_run() -> None:
            inbound = lin.accept()
            outbound = lout.accept()
            self.shaper.run(inbound, outbound)

        threading.Thread(target=accept_then_run, daemon=True).start()

    def corrupt_one_page(self, ring_path: str, batch_pages: int) -> None:
        """Fault injection: flip one byte of the first page of the next batch in transit."""
        self._ring = Region.attach(ring_path)
        layout = SlotLayout(batch_pages)
        ring = self._ring.array

        def corrupt(d: tuple) -> None:
            from agents.channel import KIND_BATCH
            if d[0] == KIND_BATCH and self.shaper.corrupt_next is not None:
                from agents.wire_format import SlotView
                view = SlotView(ring, d[2], layout)
                n, _, payload_len = view.get_header()
                if payload_len:
                    view.payload[100] ^= 0xFF
                    self.shaper.corrupt_next = None

        self.shaper.corrupt_next = corrupt

    def stats(self) -> dict:
        s = self.shaper
        return {"bytes": s.bytes_forwarded, "batches": s.batches_forwarded, "rate_bytes_s": s.migration_rate}

    def close(self) -> None:
        for lst in self._listeners:
            lst.close()


@ray.remote(num_cpus=0, max_concurrency=4)
class GuestAgent:
    def __init__(self, name: str, image_path: str, workload: dict, content: dict, vcpus: int,
                 memory_scale: float, dilation: float, fault_s: float, seed: int) -> None:
        self.name = name
        self.region = Region.attach(image_path)
        pages = self.region.pages()
        npages = len(pages)
        self.guest = Guest(pages, make_workload(workload, npages, memory_scale, seed),
                           assign_classes(npages, content, seed), template_pools(seed),
                           vcpus, dilation, fault_s, seed)
        self._dest: Region | None = None

    def start(self) -> float:
        self.guest.start()
        return time.monotonic()

    def start_dirty_log(self) -> None:
        self.guest.start_dirty_log()

    def harvest(self) -> np.ndarray:
        return self.guest.harvest()

    def pause(self) -> float:
        return self.guest.pause()

    def resume(self) -> float:
        return self.guest.resume()

    def resume_on(self, dest_image_path: str) -> float:
        """Switchover: run on the destination's image from now on."""
        self._dest = Region.attach(dest_image_path)
        self.guest.stop_dirty_log()
        return self.guest.resume(self._dest.pages())

    def timeline(self) -> tuple[list, float]:
        return list(self.guest.samples), self.guest.faults

    def stop(self) -> None:
        self.guest.stop()

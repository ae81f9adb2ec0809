"""DiskAgent: a Ray actor that plays one datastore.

It holds the file-backed disk images on its datastore (sparse files in its
directory under the run's directory), serves them at the datastore's speed
(one `Device`, agents/datapath/datastore.py), runs each VM's guest disk
workload against them, and, when a VM's disk moves away, the storage
migration's bulk copy and I/O mirror (agents/datapath/mirror.py) towards
the target datastore. The migration technique (agents/techniques/storage.py)
drives it by VM: start the mirror, watch it, hold the guest's I/O and wait
for the mirror to be in sync at switch-over, then verify and hand the
guest's I/O to the destination disk, or cancel and discard the copy.

The target datastore's device is played here too, for the migrated disk:
after switch-over the guest's I/O on the destination disk is served at the
target datastore's speed by this actor (another VM's I/O on the target
datastore during the copy does not contend with it).
"""
from __future__ import annotations

import os
import time

import numpy as np
import ray

from agents.actors.reuse import Reusable
from agents.datapath.block_dirty import DirtyBitmapJob
from agents.datapath.clock import precise_threads
from agents.datapath.datastore import DatastoreModel, Device
from agents.datapath.mirror import DataPath, LinkGate, MirrorJob
from agents.guest.disk import DiskImage, DiskWorkload, DiskWorkloadRunner, window_rates


@ray.remote(num_cpus=0, max_concurrency=16)
class DiskAgent(Reusable):
    def __init__(self, name: str, figures: dict, directory: str, memory_scale: float, dilation: float) -> None:
        self.note_threads()  # a sweep may build the next run's agent in this process (agents/actors/reuse.py)
        precise_threads()
        self.name, self.dir = name, directory
        self.scale, self.dilation = memory_scale, dilation
        self.device = Device(DatastoreModel(**figures), memory_scale, dilation)
        os.makedirs(directory, exist_ok=True)
        self.disks: dict[str, DiskImage] = {}
        self.runners: dict[str, DiskWorkloadRunner] = {}
        self.jobs: dict[str, MirrorJob] = {}
        self._corrupt_pending: dict[str, int] = {}  # corrupt-batch faults that came before the copy began

    def create_disk(self, vm: str, nbytes: int, used_fraction: float, seed: int) -> str:
        """A VM's disk on this datastore, filled; its path."""
        self.disks[vm] = DiskImage.create(os.path.join(self.dir, f"{vm}.img"), nbytes, used_fraction, seed)
        return self.disks[vm].path

    def start_workload(self, vm: str, workload: dict, seed: int) -> None:
        runner = DiskWorkloadRunner(DiskWorkload(**workload), self.disks[vm], self.device, seed)
        self.runners[vm] = runner
        runner.start()

    def io_rates(self, vm: str, marks: list) -> list[tuple[float, int]]:
        """(the guest's disk requests per emulated second, the real requests counted) between
        consecutive real times `marks` (the first None: since its workload started)."""
        runner = self.runners.get(vm)
        done = np.asarray(runner.stats.completions if runner else [], dtype=float)
        if marks and marks[0] is None:
            marks = [runner.started_at if runner else marks[1], *marks[1:]]
        return window_rates(done, marks, self.scale, self.dilation)

    def completions(self, vm: str) -> np.ndarray:
        """Real monotonic times at which the guest's disk requests completed (each stands for
        1/memory_scale emulated ones); empty without a workload."""
        runner = self.runners.get(vm)
        return np.asarray(runner.stats.completions if runner else [], dtype=float)

    def pause_workload(self, vm: str) -> None:
        """The VM stops (its disk stays where it is): no request is in flight when this returns."""
        if vm in self.runners:
            self.runners[vm].pause()

    def io_counts(self, vm: str) -> dict:
        """The guest's disk requests and bytes so far, read and written (emulated: real / memory_scale)."""
        runner = self.runners.get(vm)
        st = runner.stats if runner else None
        return {k: (getattr(st, k) if st else 0) / self.scale for k in ("reads", "writes", "read_bytes", "write_bytes")}

    # --- storage migration ----------------------------------------------------
    def start_mirror(self, vm: str, target_dir: str, target_figures: dict, path: dict, region_bytes: int,
                     buffer_bytes: int, copy_mode: str, window_s: float, chunk_bytes: int = 0,
                     links: list | None = None) -> str:
        """Begin moving `vm`'s disk to the target datastore; the destination disk's path.
        `chunk_bytes` > 0: by dirty bitmap (agents/datapath/block_dirty.py) instead of the mirror.
        `links`: on the network path, (LinkAgent, connection id) of each link the migration crosses:
        the copy follows their state and is counted in their statistics."""
        src = self.disks[vm]
        os.makedirs(target_dir, exist_ok=True)
        dst = DiskImage.create(os.path.join(target_dir, f"{vm}.img"), src.nbytes, fill=False)
        dst_dev = Device(DatastoreModel(**target_figures), self.scale, self.dilation)
        args = (src, dst, self.device, dst_dev, DataPath(**path), region_bytes, buffer_bytes, copy_mode, window_s,
                self.scale, self.dilation)
        gate = LinkGate(_ask_links(links)) if links else None
        job = (DirtyBitmapJob(*args, chunk_bytes=chunk_bytes, gate=gate) if chunk_bytes
               else MirrorJob(*args, gate=gate))
        self.jobs[vm] = job
        job.corrupt(self._corrupt_pending.pop(vm, 0))
        if vm in self.runners:
            self.runners[vm].write = job.guest_write
        job.start()
        return dst.path

    def mirror_status(self, vm: str) -> dict:
        job = self.jobs[vm]
        s = job.stats
        return job.status() | {"copied_bytes": s.copied_bytes, "mirrored_bytes": s.mirrored_bytes,
                               "mirrored_writes": s.mirrored_writes, "switches": list(s.switches),
                               "copy_done_t": s.copy_done_t, "t0": job.t0, "buffer_high_water": job.buffer.high_water,
                               "write_latency_ms": _mean_ms(s.write_latency_s)}

    def corrupt_disk(self, vm: str, count: int) -> bool:
        """Fault injection (`corrupt-batch` on the link a network disk copy crosses): damage the
        next `count` entries of `vm`'s copy on their way (of the copy about to start, when the
        fault came with its disk-copy phase)."""
        job = self.jobs.get(vm)
        if job is None:  # the fault came with the disk-copy phase, before its job started: it waits for it
            self._corrupt_pending[vm] = self._corrupt_pending.get(vm, 0) + count
            return True
        job.corrupt(count)
        return True

    def sync_for_switchover(self, vm: str, timeout_s: float) -> dict:
        """The VM is stopped: hold its disk I/O and wait until the mirror is in sync.
        `t_enter` and `t_real`: when this began and ended here (real monotonic s)."""
        t_enter = time.monotonic()
        if vm in self.runners:
            self.runners[vm].pause()
        self.jobs[vm].quiesce()
        synced = self.jobs[vm].wait_synced(timeout_s)
        return {"synced": synced, "t_enter": t_enter, "t_real": time.monotonic()}

    def complete_mirror(self, vm: str) -> dict:
        """Verify the destination disk block for block; when it matches, the guest's
        I/O goes to it from now on. Returns the job's figures."""
        job = self.jobs.pop(vm)
        job.finish()
        bad = job.verify()
        out = self._figures(job) | {"verified": len(bad) == 0, "mismatched_runs": bad[:20].tolist(),
                                    "actively_synced": job.ready() and job.buffer.fill == 0}
        runner = self.runners.get(vm)
        if len(bad) == 0:
            self.disks[vm] = job.dst
            if runner is not None:
                runner.retarget(job.dst, job.dst_dev)
            job.src.close()
        else:
            job.dst.unlink()
            if runner is not None:
                runner.write = job.src.pwrite
        if runner is not None:
            runner.resume()
        return out

    def cancel_mirror(self, vm: str) -> dict:
        """Stop the copy, remove the destination's partial disk; the guest goes on with its source disk."""
        job = self.jobs.pop(vm, None)
        if job is None:
            return {}
        job.cancel()
        runner = self.runners.get(vm)
        if runner is not None:
            runner.write = job.src.pwrite
            runner.resume()
        return self._figures(job) | {"destination_removed": not os.path.exists(job.dst.path)}

    def resume_workload(self, vm: str) -> None:
        if vm in self.runners:
            self.runners[vm].resume()

    def digests(self, vm: str) -> np.ndarray:
        return self.disks[vm].digests()

    def _figures(self, job: MirrorJob) -> dict:
        s = job.stats
        lat = _mean_ms(s.write_latency_s)
        return {"copied_bytes": s.copied_bytes, "mirrored_bytes": s.mirrored_bytes,
                "mirrored_writes": s.mirrored_writes, "guest_writes": s.guest_writes,
                "copy_time_s": s.copy_done_t, "mode_s": dict(s.mode_s), "switches": list(s.switches),
                "write_latency_ms": lat, "buffer_high_water": job.buffer.high_water, "len": job.length,
                "error": job.error, "passes": list(getattr(job, "passes", [])),
                "batches_corrupted": s.batches_corrupted, "batches_resent": s.batches_resent,
                "saturation": job.saturation(),
                "overrun_real_s": {"read": job.read_behind.s, "send": job.send_behind.s, "write": job.write_overrun_s}}

    def close(self) -> None:
        for runner in self.runners.values():
            runner.stop()
        for job in self.jobs.values():
            job.cancel()
        for disk in self.disks.values():
            disk.unlink()


def _ask_links(links: list):
    """`LinkGate`'s question to the links (LinkAgent, connection id): the bytes asked are shared
    among the links up in proportion to their rates (a withdrawal goes to all); down when all
    are down; the rate is their sum; the bytes granted, the sum of theirs."""
    rates = [1.0] * len(links)

    def ask(nbytes: int, need: int = 0, wait_s: float = 0.0) -> tuple[bool, float | None, int]:
        weights = rates if sum(rates) else [1.0] * len(rates)  # all down: asks wait on all of them
        share = [round(nbytes * w / sum(weights)) for w in weights]
        if nbytes < 0:  # a withdrawal: every link's asks, the unused grant off the first's count
            share = [nbytes] + [-1] * (len(links) - 1)
        needs = [round(need * w / sum(weights)) for w in weights]
        refs = [agent.carry_disk.remote(conn, n, k, wait_s) for (agent, conn), n, k in zip(links, share, needs)]
        try:
            got = ray.get(refs, timeout=10)
        except Exception:  # noqa: BLE001 - a link's actor is gone (tear-down): keep the last state
            return False, None, 0
        rates[:] = [0.0 if down else rate for down, rate, _ in got]
        return all(down for down, _, _ in got), (sum(rates) or None), sum(g for _, _, g in got)
    return ask


def _mean_ms(latency: dict) -> dict:
    """Mean guest write latency by mirror mode, emulated ms, from (count, total seconds)."""
    return {mode: (total / count * 1000 if count else 0.0) for mode, (count, total) in latency.items()}

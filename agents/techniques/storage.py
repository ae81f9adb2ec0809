"""Unified memory and storage migration (vSphere 5.1 vMotion): the `storage`
technique.

Three phases, as the seed's architecture section and Figures 4 and 5 have
them:

1. disk copy: the source datastore's DiskAgent bulk-copies the VM's disk to
   the target datastore region by region while an I/O mirror sends the
   guest's writes after it (agents/datapath/mirror.py), over the data path
   the control plane chose (cluster/storage_plan.py: array offload, the
   source host's storage interface, or the migration network);
2. memory copy: iterative pre-copy, exactly the `precopy` technique
   (agents/techniques/precopy.py); the mirror goes on meanwhile;
3. switch-over: the VM stops; its disk I/O is held and the switch-over waits
   until the mirror is in sync (nothing left in the transmit buffer); the
   rest of memory and the device state go; the destination disk is verified
   block for block against the source (mmh3 digests) and the guest's I/O
   moves to it.

A cancel at any point stops the copy, removes the destination's partial
disk, and leaves the VM on its source with its disk as the guest wrote it.
So does a fault or an error: during the disk copy the migration thread
checks, at each look at the job, for an injected crash, a closed connection
(the destination host is gone) and a link down for longer than
`tcp_user_timeout_ms`, and raises at once; whatever ended `run()`, the host
calls `cleanup()`, which cancels the mirror (the guest's writes go to the
source only again) and stops the progress watcher.

Events, besides pre-copy's: `disk-copy` phase, `disk-progress` (QEMU's
offset and len, ready and actively synced, the mirror mode, the buffer fill,
the bytes bulk-copied and mirrored and the writes mirrored so far, the
guest's disk IOPS in the interval, its requests and bytes read and written
so far, and its mean write latency in each mode so far), `mirror-mode` (each
switch between background and write-blocking), `disk-copy-done`,
`disk-synced` (inside the downtime), `disk-verified`.
"""
from __future__ import annotations

import threading
import time
from typing import ClassVar

import ray

from agents.faults import ConnectionLost
from agents.guest.disk import measured_rates
from agents.techniques.precopy import PrecopyMigration

MIB = 1 << 20
POLL_EMULATED_S = 0.25  # how often the mirror's progress is recorded
SYNC_TIMEOUT_EMULATED_S = 600  # the switch-over gives up when the mirror cannot get in sync


class StorageMigration(PrecopyMigration):
    """Disk copy with I/O mirroring, then pre-copy of memory, then switch-over
    once the mirror is in sync. `ctx.destination["disk"]`: the disk move (see
    cluster/build.py `disk_moves`), or absent when the disk stays put."""

    name: ClassVar[str] = "storage"

    @classmethod
    def from_options(cls, ctx, o) -> StorageMigration:
        m = super().from_options(ctx, o)
        m.disk = ctx.destination.get("disk")
        m.disk_report: dict = {}
        m._marks: dict[str, float] = {}
        m._watch_stop = threading.Event()
        m._watcher: threading.Thread | None = None
        m._mirror_open = False  # started, and neither completed nor cancelled
        m._user_timeout_s = getattr(o, "tcp_user_timeout_ms", 30_000) / 1000 * m.dilation
        m._switches_seen = 0
        m._disk_synced_at = 0.0  # when sync_disk returned (real monotonic s; 0: not yet)
        if m.disk is not None:
            m.guest = _HoldsDiskToo(m.guest, m)
        return m

    # --- phases -------------------------------------------------------------------
    def run(self):
        if self.disk is not None:
            self._marks["start"] = self.result.started_at = self.job_started_at = time.monotonic()
            if not self._disk_copy():
                return self._cancel()
        return super().run()

    def _disk_copy(self) -> bool:
        """Phase 1: start the mirror job and wait for its bulk copy; False when cancelled."""
        d = self.disk
        self._enter("disk-copy")
        if self.abort_requested:
            return False
        ray.get(d["agent"].start_mirror.remote(d["vm"], d["target_dir"], d["target_figures"], d["path"],
                                               d["region_bytes"], d["buffer_bytes"], d["copy_mode"],
                                               d["window_s"], d.get("chunk_bytes", 0), d.get("links") or None))
        self._mirror_open = True
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="disk-watch")
        self._watcher.start()
        while not self.abort_requested:
            self._check_faults()
            st = ray.get(d["agent"].mirror_status.remote(d["vm"]))
            self._marks["job_t0"] = st["t0"]
            if st["error"]:
                raise RuntimeError(f"disk mirror failed: {st['error']}")
            if st["link_down_s"] > self._user_timeout_s:
                raise ConnectionLost(f"the disk copy's link stayed down longer than tcp_user_timeout_ms "
                                     f"({self._user_timeout_s / self.dilation * 1000:g} ms)")
            if st["ready"]:
                self._marks["copy_done"] = time.monotonic()
                self.ctx.record("disk-copy-done", copy_time_s=st["copy_done_t"],
                                bytes=st["copied_bytes"] / self.scale)
                return True
            time.sleep(min(0.05, POLL_EMULATED_S * self.dilation))
        return False

    def _check_faults(self) -> None:
        """Raise what would end a memory copy: an injected crash, a connection the destination closed."""
        crash = getattr(self.sink, "crash", None)
        if crash is not None:
            raise crash
        for conn in getattr(self.sink, "connections", []):
            if conn.failure is not None:
                raise conn.failure

    def _watch(self) -> None:
        """Record the mirror's progress and mode switches until the job ends."""
        d = self.disk
        last = time.monotonic()
        while not self._watch_stop.wait(POLL_EMULATED_S * self.dilation):
            now = time.monotonic()
            try:
                st, rates, io = ray.get([d["agent"].mirror_status.remote(d["vm"]),
                                         d["agent"].io_rates.remote(d["vm"], [last, now]),
                                         d["agent"].io_counts.remote(d["vm"])])
            except Exception:  # noqa: BLE001 - the job was completed or cancelled meanwhile
                return
            last = now
            self._record_switches(st["switches"], st["t0"])
            self.ctx.record("disk-progress", offset=st["offset"] / self.scale, len=st["len"] / self.scale,
                            mode=st["mode"], buffer_fill=st["buffer_fill"] / self.scale, ready=st["ready"],
                            guest_iops=rates[0][0], write_latency_ms=st["write_latency_ms"],
                            actively_synced=st["actively_synced"], copied_bytes=st["copied_bytes"] / self.scale,
                            mirrored_bytes=st["mirrored_bytes"] / self.scale,
                            mirrored_writes=st["mirrored_writes"] / self.scale, guest_io=io)

    def _record_switches(self, switches: list, t0: float) -> None:
        for t, mode, fill in switches[self._switches_seen:]:
            self.ctx.events.append({"t_real": t0 + t * self.dilation, "event": "mirror-mode", "mode": mode,
                                    "buffer_fill": fill / self.scale})
        self._switches_seen = len(switches)

    def sync_disk(self) -> None:
        """At switch-over, the VM stopped: wait for the mirror to be in sync."""
        d = self.disk
        t_call = time.monotonic()
        got = ray.get(d["agent"].sync_for_switchover.remote(d["vm"], SYNC_TIMEOUT_EMULATED_S * self.dilation))
        self._disk_synced_at = time.monotonic()  # the memory's stop-and-copy goes on from here (its hops excluded)
        self._control_hop(t_call, self._disk_synced_at, busy_real_s=got["t_real"] - got["t_enter"])
        self._watch_stop.set()
        self.ctx.record("disk-synced", t_real=got["t_real"], synced=got["synced"])
        if not got["synced"]:
            self.abort("failed", "the disk mirror did not get in sync at switch-over")

    def _stopped_at(self, paused_at: float) -> float:
        """The memory's stop-and-copy begins once the mirror's last writes are in (sync_disk)."""
        return max(paused_at, self._disk_synced_at)

    def switch_over(self, todo):
        r = super().switch_over(todo)
        if self.disk is not None and r.status == "completed":
            self._complete_disk(r)
        return r

    def _complete_disk(self, r) -> None:
        d = self.disk
        self._mirror_open = False
        fig = ray.get(d["agent"].complete_mirror.remote(d["vm"]))
        self._record_switches(fig["switches"], self._marks["job_t0"])
        self.ctx.record("disk-verified", verified=fig["verified"], mismatched_runs=len(fig["mismatched_runs"]))
        self.disk_report = self._disk_figures(fig)
        if not fig["verified"]:
            r.status, r.stop_reason = "failed", f"disk verification failed: {len(fig['mismatched_runs'])}+ runs differ"

    def _cancel(self, paused: bool = False):
        self.cleanup()
        return super()._cancel(paused)

    def cleanup(self) -> None:
        """Whatever ended the migration (a cancel, a fault, an error): stop the progress watcher;
        if the mirror still runs, cancel it: the destination's partial disk is removed and the
        guest's writes go to its source disk only. Idempotent; a no-op after a completed switch-over."""
        if self.disk is None:
            return
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        if not self._mirror_open:
            return
        self._mirror_open = False
        fig = ray.get(self.disk["agent"].cancel_mirror.remote(self.disk["vm"]))
        if fig:
            self.disk_report = self._disk_figures(fig) | {"destination_removed": fig["destination_removed"]}

    # --- figures --------------------------------------------------------------------
    def _disk_figures(self, fig: dict) -> dict:
        d, scale = self.disk, self.scale
        sent = (fig["copied_bytes"] + fig["mirrored_bytes"]) / scale
        out = {"source_datastore": d["source"], "target_datastore": d["target"], "path": d["path"]["kind"],
               "paths_allowed": d["allowed"], "disk_bytes": d["disk_bytes"], "bytes_sent": sent,
               "network_bytes": sent if d["path"]["kind"] == "network" else 0.0,
               "copy_time_s": fig["copy_time_s"],
               "mirror": {"copy_mode": d["copy_mode"], "mirrored_bytes": fig["mirrored_bytes"] / scale,
                          "mirrored_writes": fig["mirrored_writes"] / scale,
                          "guest_writes": fig["guest_writes"] / scale,
                          "job_len_bytes": fig["len"] / scale, "mode_s": fig["mode_s"],
                          "switches": [{"t_s": t, "mode": m, "buffer_fill_bytes": f / scale}
                                       for t, m, f in fig["switches"]],
                          "write_latency_ms": fig["write_latency_ms"],
                          "buffer_bytes": d["buffer_bytes"] / scale,
                          "buffer_high_water_bytes": fig["buffer_high_water"] / scale},
               "batches_corrupted": fig.get("batches_corrupted", 0), "batches_resent": fig.get("batches_resent", 0),
               # Share of the disk job's real time its slowest thread ran behind its schedule (mirror.py Behind).
               "saturation": fig.get("saturation", 0.0), "overrun_real_s": fig.get("overrun_real_s", {})}
        if "verified" in fig:
            out |= {"verified": fig["verified"], "actively_synced": fig["actively_synced"]}
        out["guest_iops"] = self._io_figures()
        return out

    def _io_figures(self) -> dict:
        """The guest's disk IOPS (emulated) before the migration, during the disk copy and the memory
        copy; a window with too few real requests for a rate is null, its reason under `not_measured`."""
        mk = self._marks
        if "start" not in mk:
            return {}
        copy_done = mk.get("copy_done", mk["start"])
        # A policy's force pauses the VM during the disk copy: then no memory-copy window at all.
        marks = [None, mk["start"], copy_done, max(copy_done, self.result.paused_at or time.monotonic())]
        rates = ray.get(self.disk["agent"].io_rates.remote(self.disk["vm"], marks))
        return measured_rates(("before", "disk_copy", "memory_copy"), rates)

    def report(self) -> dict:
        return super().report() | ({"disk": self.disk_report} if self.disk_report else {})


class _HoldsDiskToo:
    """The guest control, but stopping the VM also holds its disk I/O and waits
    for the mirror to be in sync; resuming it on the source resumes its disk I/O."""

    def __init__(self, inner, migration: StorageMigration) -> None:
        self._inner, self._m = inner, migration

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def pause(self) -> float:
        d = self._m.disk
        ray.get(d["agent"].pause_workload.remote(d["vm"]))  # before the vCPUs: no disk I/O completes in the downtime
        t = self._inner.pause()
        self._m.sync_disk()
        return t

    def resume(self) -> float:
        d = self._m.disk
        ray.get(d["agent"].resume_workload.remote(d["vm"]))
        return self._inner.resume()


class HoldsSharedDisk:
    """The guest control of a VM whose disk stays where it is (shared storage both hosts
    reach) and does I/O: the VM's disk I/O stops with its vCPUs and goes on when it runs
    again (on its source after a cancel, on the destination after post-copy's switch, or
    when the control plane resumes it after switch-over: `resume_shared_disk`). Its DiskAgent
    holds the I/O before the vCPUs stop, so none completes within the downtime."""

    def __init__(self, inner, agent, vm: str) -> None:
        self._inner, self._agent, self._vm = inner, agent, vm

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def pause(self) -> float:
        ray.get(self._agent.pause_workload.remote(self._vm))
        return self._inner.pause()

    def resume(self) -> float:
        t = self._inner.resume()
        self._agent.resume_workload.remote(self._vm)
        return t

    def resume_async(self) -> None:
        self._inner.resume_async()
        self._agent.resume_workload.remote(self._vm)

    def resume_on_destination(self, image_path: str, missing, return_path: str = "") -> float:
        t = self._inner.resume_on_destination(image_path, missing, return_path)
        self._agent.resume_workload.remote(self._vm)
        return t


def resume_shared_disk(destination: dict) -> None:
    """After switch-over (the guest runs on the destination): a held shared disk's I/O goes on."""
    io = destination.get("disk_io")
    if io is not None:
        ray.get(io["agent"].resume_workload.remote(io["vm"]), timeout=60)


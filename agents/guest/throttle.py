"""The guest's side of convergence control: how much of the time its vCPUs run.

The migration sets two things in the shared dirty log (agents/guest/dirty_log.py),
as QEMU's migration thread does through cpu_throttle_set and
qmp_set_vcpu_dirty_limit:

- a CPU throttle of p percent: every vCPU runs 1 - p/100 of the time
  (system/cpu-throttle.c: a 10 ms timeslice, then a sleep of p/(1-p) of one);
  SDPS injects its delays the same way;
- a dirty-rate quota per vCPU with a period: every period the guest measures
  each vCPU's dirty rate and adjusts that vCPU's sleep as QEMU's dirty-limit
  thread does (system/dirtylimit.c, `dirty_limit_step`).

Emulated as shares, not literal sleeps: a tick of dt gives the workload
dt times the running share, so its progress and its writes slow by the
injected share. The workload's operations are spread evenly over the vCPUs;
a vCPU's dirty rate counts the bytes of the pages it writes (4 KiB each).
"""
from __future__ import annotations

import numpy as np

from agents.techniques.convergence import dirty_limit_step, running_share, sleep_ratio_pct

MIB = 1 << 20
DEFAULT_PERIOD_S = 1.0  # QEMU measures vCPU dirty rates every second unless told otherwise


class VcpuThrottle:
    def __init__(self, vcpus: int) -> None:
        self.n = max(1, vcpus)
        self.sleep = np.zeros(self.n)  # dirty-limit sleep per ring-full run (S/T), per vCPU
        self.rates = np.zeros(self.n)  # each vCPU's dirty rate over the last period, MiB/s
        self._written = np.zeros(self.n)  # emulated bytes written in the current period
        self._elapsed = 0.0
        self.cpu_pct = 0.0
        self.quota = 0.0  # bytes/s per vCPU; 0: no dirty limit

    def shares(self, log) -> np.ndarray:
        """Each vCPU's running share for the next tick, read from the log's control fields."""
        self.cpu_pct = log.cpu_throttle
        quota, _ = log.dirty_limit
        if quota <= 0 and self.quota > 0:
            self.sleep[:] = 0.0  # the limit was lifted
        self.quota = quota
        return running_share(self.cpu_pct) / (1.0 + self.sleep)

    def count(self, shares: np.ndarray, written_bytes: float, dt: float, log) -> None:
        """Account a tick's writes to the vCPUs that did them; every period, re-aim the dirty limit."""
        total = float(shares.sum())
        if total > 0:
            self._written += written_bytes * shares / total
        self._elapsed += dt
        quota, period = log.dirty_limit
        period = period if quota > 0 and period > 0 else DEFAULT_PERIOD_S
        if self._elapsed < period:
            return
        self.rates = self._written / self._elapsed / MIB
        self._written[:] = 0.0
        self._elapsed = 0.0
        if quota > 0:
            self.sleep = np.array([dirty_limit_step(s, quota / MIB, r) for s, r in zip(self.sleep, self.rates)])

    def status(self) -> dict:
        """What a timeline sample shows of the throttle."""
        out = {"throttle_pct": self.cpu_pct, "vcpu_dirty_mbytes_s": [round(float(r), 3) for r in self.rates]}
        if self.quota > 0:
            out["vcpu_dirty_limit_mbytes_s"] = self.quota / MIB
            out["vcpu_sleep_pct"] = [round(sleep_ratio_pct(s), 2) for s in self.sleep]
        return out

    @property
    def active(self) -> bool:
        return self.cpu_pct > 0 or self.quota > 0

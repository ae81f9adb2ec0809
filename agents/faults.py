"""Faults on the agents' side: what a migration thread meets, and how it ends.

The control plane injects faults (cluster/faults.py); here is what they look
like from a source host:

- a connection that gives up (`ConnectionLost`, agents/datapath/sender.py):
  no acknowledgement within `tcp_user_timeout_ms` (Linux's TCP_USER_TIMEOUT:
  how long sent data may stay unacknowledged before the connection is
  closed), or the destination's end closed under it (its host is gone);
- a crash of the migration thread itself (`MigrationThreadCrash`, raised in
  the thread by the pipeline once injected);
- after a split migration, a paging connection that gives up (`VMLost`,
  raised in the guest by agents/guest/split_memory.py): the VM is lost.

Before a post-copy switch either ends the migration "aborted": the VM keeps
running on its source, whose memory the migration only ever read. After it,
a lost connection pauses post-copy (agents/techniques/postcopy.py recovers
it); a crash loses the VM, since neither side holds all of it.

`Watchdog` is the liveness check every wait on a connection needs: it fails
a connection whose batches wait past the timeout, so no thread waits forever.
"""
from __future__ import annotations

import threading
import time

from agents.datapath.sender import ConnectionLost

__all__ = ["ENDS_MIGRATION", "ConnectionLost", "MigrationThreadCrash", "VMLost", "Watchdog"]


class MigrationThreadCrash(RuntimeError):
    """The source's migration thread crashed (an injected fault)."""


class VMLost(RuntimeError):
    """The running VM cannot go on: pages it needs are out of reach for good (after a split
    migration, its paging connection to a memory server gave up). Its vCPUs stop where they are."""


MIN_REAL_S = 1.0
ENDS_MIGRATION = (ConnectionLost, MigrationThreadCrash)  # faults a technique does not handle itself


class Watchdog:
    """Fails any of `senders` (agents.datapath.sender.PageSender) whose batches have
    waited `timeout_s` real seconds without an acknowledgement, until `done` is set.
    `timeout_ms` is the emulated setting, for the message."""

    def __init__(self, senders: list, timeout_s: float, timeout_ms: float, done: threading.Event) -> None:
        # Never under a real second: this machine's own scheduling hiccups are not a dead link.
        self.senders, self.timeout_s, self.timeout_ms, self.done = senders, max(MIN_REAL_S, timeout_s), timeout_ms, done
        self.fired = 0
        threading.Thread(target=self._watch, daemon=True, name="watchdog").start()

    def _watch(self) -> None:
        period = min(0.05, self.timeout_s / 4)
        while not self.done.wait(period):
            for s in self.senders:
                if s.failure is None and s.stalled_s() > self.timeout_s:
                    self.fired += 1
                    s.fail(ConnectionLost(f"no acknowledgement for {self.timeout_ms:g} ms (tcp_user_timeout_ms): "
                                          f"the link is down or the destination is gone"))

    @staticmethod
    def wait_for(predicate, timeout_s: float, step_s: float = 0.01) -> bool:
        """Poll `predicate` until true or `timeout_s` passed; True if it came true."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(step_s)
        return True

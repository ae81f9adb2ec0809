"""Reusing an actor's process for the next run of a sweep or a reproduction.

Starting an actor's process costs 0.4-1.6 s on a 2-core machine (Ray's
worker imports itself, then the agent's modules), and a run has five or
more: the larger part of a short run's set-up. Runs of one sweep ask for
the same hosts, links and guests, so the driver keeps them
(cluster/actor_pool.py) and each agent is built afresh in its old process.

An agent is reused only when nothing of its last run lives on in the
process: after its `close()`, every thread the run started has ended
(threads Ray had started before the agent was built, and Ray's own
executor threads, are not the run's); `retire` then drops every
attribute, so no region, socket or counter survives the run (its shared
memory is unmapped at once), and `renew` constructs the agent again.
An agent whose threads do not end in time (a vCPU blocked behind a dead
link, a stuck migration thread) is not reused: the driver kills it, as
it kills every actor without a pool.
"""
from __future__ import annotations

import gc
import os
import threading
import time


def _run_threads(baseline: frozenset) -> list[threading.Thread]:
    """Live threads started by Python code since `baseline` was taken (Ray's executor
    threads show up as dummy threads and are not counted)."""
    return [t for t in threading.enumerate()
            if t.ident not in baseline and t.is_alive() and not isinstance(t, threading._DummyThread)
            and t is not threading.main_thread()]


class Reusable:
    """Mixin of an actor whose process can serve another run (see the module docstring)."""

    _reuse_baseline: frozenset = frozenset()

    def note_threads(self) -> None:
        """Call first in `__init__`: the threads alive before the agent existed (once per process)."""
        if "_reuse_baseline" not in self.__dict__:
            self._reuse_baseline = frozenset(t.ident for t in threading.enumerate())

    def pid(self) -> int:
        return os.getpid()

    def leftover_threads(self, wait_s: float = 2.0) -> list[str]:
        """The names of the run's threads still alive after waiting up to `wait_s` real seconds."""
        deadline = time.monotonic() + wait_s
        while (left := _run_threads(self._reuse_baseline)) and time.monotonic() < deadline:
            time.sleep(0.01)
        return [t.name for t in left]

    def retire(self, wait_s: float = 5.0) -> list[str]:
        """After `close()`: once the run's threads have ended, drop every attribute, so the
        run's memory (images, rings, sockets) is freed now, not when the process is next used.
        Returns the threads still alive ([]: retired, the process may serve another run)."""
        left = self.leftover_threads(wait_s)
        if not left:
            self._forget()
        return left

    def renew(self, *args, **kwargs) -> bool:
        """Build the agent afresh in this process with the new run's arguments. False (and
        nothing changed) when a thread of the last run is still alive: the caller kills it."""
        if self.leftover_threads(wait_s=0.5):  # `retire` waited for them at the last tear-down
            return False
        self._forget()
        self.__init__(*args, **kwargs)
        return True

    def _forget(self) -> None:
        baseline = self._reuse_baseline
        self.__dict__.clear()
        self._reuse_baseline = baseline
        gc.collect()  # mapped regions held in reference cycles go now, too

"""Charged CPU on an emulated schedule (agents/cpu.py CoreClock): a thread that starts late
makes it up from its charges, and only work that really overruns its charge is counted.

Real sleeps, in units of 20 ms so that a loaded machine's wake-ups (p90 1.5 ms measured)
stay well inside the margins."""
from __future__ import annotations

import time

from agents.cpu import CoreClock, CorePool

UNIT = 0.020
WORKS = 5


def _run(late_s: float, work_s: float, carried: bool) -> tuple[float, CorePool]:
    """WORKS pieces of work charged UNIT each, each input ready when the last one ended on the
    schedule, but the thread getting to it `late_s` later; each really takes `work_s`."""
    pool, clock = CorePool(2), CoreClock()
    t0 = time.monotonic()
    for _ in range(WORKS):
        ready = clock.t if clock.t else time.monotonic()
        time.sleep(late_s)  # a late wake-up
        clock.busy, clock.not_before = carried, ready
        with pool.core("send", clock if carried else None) as core:
            time.sleep(work_s)
            core.charge(UNIT)
        if not carried:
            clock.t = time.monotonic()
    return time.monotonic() - t0, pool


def test_late_starts_are_made_up_by_the_charges_and_not_counted():
    real, pool = _run(UNIT / 2, 0.0, carried=True)
    u = pool.usage()
    assert u["charged_s"] == WORKS * UNIT
    assert real < WORKS * UNIT * 1.25 + UNIT / 2  # the schedule: late starts cost nothing in all
    assert u["held_s"] - u["charged_s"] < 0.25 * u["charged_s"]


def test_without_a_schedule_every_late_start_stretches_the_run():
    real, _ = _run(UNIT / 2, 0.0, carried=False)
    assert real > WORKS * UNIT * 1.4


def test_work_longer_than_its_charge_is_counted():
    _, pool = _run(0.0, UNIT * 2, carried=True)
    u = pool.usage()
    assert u["held_s"] - u["charged_s"] > 0.6 * u["charged_s"]

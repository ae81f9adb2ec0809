"""Actors kept between the runs of one sweep or reproduction.

Inside `reusing_actors()` (a sweep's or a reproduction's block of runs on
one embedded Ray), a run's tear-down closes its host, link and guest
agents as always, but keeps each one whose process holds nothing of the
run any more (agents/actors/reuse.py decides) instead of killing it; the
next run's set-up takes a kept actor of the same class and name and builds
its agent afresh there (`renew`), instead of starting a process. Kept
actors the next run does not ask for are killed once its slice is built,
so at most one run's worth of idle processes is kept. Leaving the block
kills whatever is left. Only on one machine: with `--address` every run
makes its own actors. LIVEMIG_REUSE_ACTORS=0 in the environment turns
reuse off (every run starts its own processes, as before).
"""
from __future__ import annotations

import contextlib
import os

_active: "ActorPool | None" = None


class ActorPool:
    """Idle actors by (class name, actor name)."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, str], list] = {}
        self.reused = 0  # actors built afresh in a kept process, over the block
        self.started = 0  # actors whose process had to start

    def take(self, key: tuple[str, str]):
        """A kept actor for `key`, or None."""
        kept = self.idle.get(key)
        return kept.pop() if kept else None

    def put(self, key: tuple[str, str], actor) -> None:
        self.idle.setdefault(key, []).append(actor)

    def kill_idle(self) -> None:
        """Kill every kept actor (none is wanted any more); returns once their names are free."""
        for (_, name), actors in self.idle.items():
            for a in actors:
                _kill_until_gone(a, name)
        self.idle.clear()


def active() -> ActorPool | None:
    """The pool of the block of runs under way, if any."""
    return _active


@contextlib.contextmanager
def reusing_actors():
    """Runs inside this block keep and reuse their actors (see the module docstring)."""
    global _active
    if os.environ.get("LIVEMIG_REUSE_ACTORS", "1") == "0":
        yield None
        return
    outer, _active = _active, ActorPool()
    try:
        yield _active
    finally:
        pool, _active = _active, outer
        pool.kill_idle()


def new_or_kept(cluster, cls, name: str, args: tuple, options: dict | None = None):
    """Actor `name` of class `cls` (a Ray actor class of a `Reusable` agent) built with `args`:
    a kept one renewed, when a pool is active, the run is on one machine and no placement is
    asked for; otherwise a new one. Either way the cluster tracks it for tear-down."""
    import ray
    pool = active()
    options = options or {}
    key = (cls.__ray_metadata__.class_name, name)
    if pool is None or cluster.opts.address or options:
        return cluster.track(cls.options(name=name, **options).remote(*args))
    actor = pool.take(key)
    if actor is not None:
        try:
            renewed = ray.get(actor.renew.remote(*args), timeout=30)
        except Exception:  # noqa: BLE001 - a dead kept actor: start a new one
            renewed = False
        if renewed:
            pool.reused += 1
            return cluster.track(actor, key)
        _kill_until_gone(actor, name)
    pool.started += 1
    return cluster.track(cls.options(name=name).remote(*args), key)


def _kill_until_gone(actor, name: str, wait_s: float = 10.0) -> None:
    """Kill `actor` and wait until its name is free for a new one."""
    import time

    import ray
    with contextlib.suppress(Exception):
        ray.kill(actor)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name)
        except ValueError:
            return
        time.sleep(0.02)


def keep(cluster, candidates: list[tuple[tuple[str, str], object]], wait_s: float = 10.0) -> set[int]:
    """After the run's agents were closed: put in the pool each candidate whose process holds
    nothing of the run (its threads all ended); returns the ids of the actors kept."""
    import ray
    pool = active()
    if pool is None or not candidates:
        return set()
    refs = []
    for key, actor in candidates:
        try:
            refs.append((key, actor, actor.retire.remote()))
        except Exception:  # noqa: BLE001 - a dead actor is killed with the rest
            pass
    ray.wait([r for _, _, r in refs], num_returns=len(refs), timeout=wait_s)
    kept = set()
    for key, actor, ref in refs:
        try:
            left = ray.get(ref, timeout=0)
        except Exception:  # noqa: BLE001 - not answered in time, or dead: not reused
            continue
        if not left:
            pool.put(key, actor)
            kept.add(id(actor))
    return kept

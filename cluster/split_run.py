"""A split migration's part of a run (S-memV, agents/techniques/split.py).

Before it starts: a memory server on every sub-host (one that refuses to
start fails the migration; the VM stays on its source). When it ends: each
destination must hold exactly the source's pages the split gave it (page
for page, mmh3), the sub-hosts' pages go into their memory servers' page
sub-tables, and every page must be on exactly one host; then the VM resumes
on the main host with remote paging (agents/guest/split_memory.py). A
failed or cancelled one discards every copy and closes the servers.
"""
from __future__ import annotations

import os
import time
from contextlib import suppress

import numpy as np

from cluster.scenario import GIB

PAGE = 4096


def destination_fields(sl, m) -> dict:
    """What the technique needs to know of its hosts: their memory (GiB, emulated)."""
    return {"hosts_gib": [h.memory_gib for h in m.plan.destinations],
            "seed": sl.scenario.emulation.seed + m.index}


def open_memory_servers(sl, m, refuse: bool = False) -> None:
    """A memory server per sub-host, sized to its memory; raises if one cannot start."""
    import ray
    npages = sl.npages[m.vm_index]
    ray.get([sl.hosts[h.name].open_memory_server.remote(
        m.index, npages, min(npages, int(h.memory_gib * GIB / PAGE * sl.scale.memory_scale) + 1), refuse)
        for h in m.plan.destinations[1:]])


def _keys(sl, m) -> list[tuple[object, str]]:
    return [(sl.hosts[h.name], sl.copy_key(m.vm_index, m.index, d)) for d, h in enumerate(m.plan.destinations)]


def discard(sl, m, dead: set[str] = frozenset()) -> None:
    """Drop every destination's copy and the memory servers (the VM stays on its source);
    a host in `dead` (killed by a fault) answers nothing: its copy's files are removed here."""
    import ray
    alive = [(d, h) for d, h in enumerate(m.plan.destinations) if h.name not in dead]
    keys = _keys(sl, m)
    ray.get([keys[d][0].release_image.remote(keys[d][1]) for d, _ in alive])
    ray.get([sl.hosts[h.name].close_memory_server.remote(m.index) for d, h in alive if d > 0])
    for d, h in enumerate(m.plan.destinations):
        if h.name in dead:
            for suffix in ("", "-log", "-recv", "-acc"):
                with suppress(FileNotFoundError):
                    os.unlink(sl.paths[keys[d][1]] + suffix)


def paging_from(sl, m) -> bool:
    """Does the VM of split migration `m` run on its main host with remote paging now?"""
    return (m.status == "completed" and m.verified and not m.vm_lost and "split" in m.report
            and sl.location[m.vm_index] == (m.plan.destinations[0].name, sl.copy_key(m.vm_index, m.index)))


def stop_for_loss(sl, m, host: str) -> int:
    """Stop the VM of split migration `m` (between two ticks: no fault half done) and
    count the real pages sub-host `host`'s memory server holds for it."""
    import ray
    from cluster.faults import ACTOR_CALL_S
    guest = sl.guests[m.vm_index]
    ray.get(guest.pause.remote(), timeout=ACTOR_CALL_S)
    table = ray.get(guest.split_where.remote(), timeout=ACTOR_CALL_S)
    d = [h.name for h in m.plan.destinations].index(host)
    return int(np.count_nonzero(table == d)) if table is not None else 0


def memory_server_lost(orch, m, host: str, real_pages: int, now: float) -> None:
    """Split migration `m`'s VM lost the `real_pages` a killed memory server held: it stays
    stopped on its main host and is reported lost, with its pages (emulated) lost."""
    from cluster.orchestrate import LOST
    sl = orch.sl
    scale = sl.scale.memory_scale
    m.vm_lost = True
    m.lost = {"reason": f"the memory server on sub-host \"{host}\" was killed after the split migration: "
                        f"the VM's pages there are gone and it cannot go on (S-memV has no fault tolerance)",
              "host": host, "pages_lost": real_pages / scale, "pages_total": sl.npages[m.vm_index] / scale}
    sl.location[m.vm_index] = (LOST, sl.copy_key(m.vm_index, m.index))
    orch.tl.event(now, "vm-lost", vm=m.vm, migration=m.index, reason=m.lost["reason"], host=host,
                  pages_lost=m.lost["pages_lost"])


def check_paging_lost(orch, vm_index: int, progress: dict, now: float) -> None:
    """The guest's progress (agents/actors/guest.py) says its paging connection to a memory
    server gave up (agents/guest/split_memory.py): the VM is stopped on its main host for
    good and reported lost, with the pages each host holds. Once per VM."""
    from cluster.orchestrate import LOST
    lost = (progress.get("remote_paging") or {}).get("lost")
    m = next((m for m in orch.migs if m.vm_index == vm_index and paging_from(orch.sl, m)), None) if lost else None
    if m is None:
        return
    m.vm_lost, m.lost = True, lost
    orch.sl.location[vm_index] = (LOST, orch.sl.copy_key(vm_index, m.index))
    orch.tl.event(now, "vm-lost", vm=m.vm, migration=m.index, reason=lost["reason"], host=lost["host"],
                  pages_on_host=lost["pages_on_host"])


def paging_over(sl, migs, link_index: int) -> list:
    """Split migrations whose VM runs on its main host with remote paging over link `link_index`."""
    return [m for m in migs if paging_from(sl, m) and link_index in
            {sl.topo.paging_link(m.index, d).index for d in range(1, len(m.plan.destinations))}]


def verify(sl, m, src, src_key: str, table: np.ndarray) -> list[int]:
    """Pages whose copy on their host differs from the source's."""
    import ray
    from agents.verify import mismatched
    bad: list[int] = []
    for d, (host, key) in enumerate(_keys(sl, m)):
        pages = np.flatnonzero(table == d)
        if len(pages):
            a, b = ray.get([src.page_digests.remote(src_key, pages), host.page_digests.remote(key, pages)])
            bad += pages[mismatched(a, b)].tolist()
    return bad


def placement_problems(table: np.ndarray, holds: list[np.ndarray]) -> int:
    """Pages not on exactly one host: the main host's (table == 0) plus each memory server's."""
    where = (table == 0).astype(np.int64)
    for h in holds:
        where += h
    return int(np.count_nonzero(where != 1))


def server_holds(sl, m) -> list[np.ndarray]:
    import ray
    n = sl.npages[m.vm_index]
    packed = ray.get([sl.hosts[h.name].memory_server_holds.remote(m.index) for h in m.plan.destinations[1:]])
    return [np.unpackbits(p, count=n).astype(bool) for p in packed]


def finish(orch, m, src, src_key: str) -> float:
    """Verify, load the memory servers and resume the VM on the main host with
    remote paging; or discard everything. Returns when the guest resumed (real)."""
    import ray
    sl = orch.sl
    guest = sl.guests[m.vm_index]
    m.src_key = src_key
    killed = sorted({h.name for h in m.plan.destinations} & orch.faults.dead_hosts)
    if killed and m.status == "completed":  # killed during the switch-over: the VM has not left its source
        m.status, m.reason = "aborted", f"host {killed[0]} was killed during the switch-over"
    table = ray.get(src.split_table.remote(m.index)) if m.status == "completed" else None
    if table is not None:
        m.phase = "verifying"
        m.mismatched = verify(sl, m, src, src_key, table)
        m.verified = not m.mismatched and not m.receiver["errors"]
    if m.verified:
        keys = _keys(sl, m)
        ray.get([host.load_memory_server.remote(m.index, key, np.flatnonzero(table == d))
                 for d, (host, key) in enumerate(keys) if d > 0])
        m.misplaced = placement_problems(table, server_holds(sl, m))
        m.verified = m.misplaced == 0
    orch.tl.event(time.monotonic(), "verification", vm=m.vm, migration=m.index, verified=m.verified,
                  mismatched_pages=len(m.mismatched), misplaced_pages=m.misplaced)
    if not m.verified:
        if m.status == "completed":
            m.status = "failed"
            m.reason = (f"verification failed: {len(m.mismatched)} page(s) differ" if m.mismatched else
                        f"verification failed: {m.misplaced} page(s) not on exactly one host"
                        if m.misplaced else f"destination could not restore: {m.receiver['errors'][0]}")
        discard(sl, m, orch.faults.dead_hosts)
        orch.tl.event(time.monotonic(), "stays-on-source", vm=m.vm, migration=m.index, host=m.plan.source.name,
                      status=m.status, reason=m.reason)
        return ray.get(guest.resume.remote())
    main_key = sl.copy_key(m.vm_index, m.index)
    o, scale = m.plan.options, sl.scale
    from agents.faults import MIN_REAL_S
    from agents.techniques.split import capacities, real_chunk_pages
    chunk = real_chunk_pages(o.chunk_pages, scale.memory_scale)
    split = {"page_host": table, "history": ray.get(src.split_history.remote(m.index)), "chunk_pages": chunk,
             "capacity": capacities(destination_fields(sl, m)["hosts_gib"], o.device_state_kib * 1024, chunk,
                                    scale.memory_scale)[0],
             "policy": o.split_policy, "migration": m.index,
             "servers": {d: sl.hosts[h.name] for d, h in enumerate(m.plan.destinations) if d > 0},
             "links": paging_links(sl, m),
             "collect_s": scale.real_seconds(o.history_collect_ms / 1000), "age_every": o.history_age_collections,
             "seed": sl.scenario.emulation.seed + m.index, "hosts": [h.name for h in m.plan.destinations],
             # The paging connections give up as the migration's do (agents/faults.py Watchdog).
             "timeout_ms": o.tcp_user_timeout_ms,
             "timeout_s": max(MIN_REAL_S, scale.real_seconds(o.tcp_user_timeout_ms / 1000))}
    resumed = ray.get(guest.resume_on.remote(sl.paths[main_key], None, split))
    sl.location[m.vm_index] = (m.plan.destinations[0].name, main_key)
    orch.tl.event(resumed, "switched-over", vm=m.vm, migration=m.index, host=m.plan.destinations[0].name,
                  verified=True, split=True)
    return resumed


def paging_links(sl, m) -> dict:
    """Sub-host number -> (the LinkAgent between it and the main host, whether page-ins,
    from the sub-host to the main host, cross it the way it is listed)."""
    out = {}
    for d, sub in enumerate(m.plan.destinations[1:], 1):
        lp = sl.topo.paging_link(m.index, d)
        out[d] = (sl.links[lp.index], lp.source == sub.name)
    return out


def observe_after_s(scenario) -> float:
    """Emulated seconds the run goes on after the last switch-over for the remote paging of
    split and swap-assisted migrations (0 without one: the option is every technique's, but
    only theirs page; the others keep to `[emulation] after_s`)."""
    from cluster.build import splits, swaps
    return max((mp.options.observe_after_s or 0.0 for mp in scenario.migration_plans() if splits(mp) or swaps(mp)),
               default=0.0)


RECOVERED = 0.9  # throughput back to this share of the rate before the migration


def throughput_after(samples: list, t_resumed: float, dilation: float, window_s: float) -> list[tuple[float, float]]:
    """(emulated s since the resume, ops per emulated s) in windows of `window_s` emulated seconds."""
    pts = np.array([(t, o) for t, o in samples if t >= t_resumed], dtype=np.float64).reshape(-1, 2)
    if len(pts) < 2:
        return []
    edges = np.arange(t_resumed, pts[-1, 0] + 1e-9, window_s * dilation)
    ops = np.interp(edges, pts[:, 0], pts[:, 1])
    rates = np.diff(ops) / window_s
    return [(round(float((e - t_resumed) / dilation), 3), float(r)) for e, r in zip(edges[:-1], rates)]


def recovery_s(series: list[tuple[float, float]], before: float | None) -> float | None:
    """Emulated seconds after the resume until the throughput is back to RECOVERED x before
    and stays there for the rest of the series (None: it never is)."""
    if not before or not series:
        return None
    ok = [r >= RECOVERED * before for _, r in series]
    for k in range(len(ok)):
        if all(ok[k:]):
            return series[k][0]
    return None


def figures(m, samples: list, dilation: float) -> dict:
    """result.json's `split` (the split made, remote paging after it) or `swap`
    (the destination's paging during and after), with the application's recovery."""
    window = 0.5
    series = throughput_after(samples, m.guest_resumed_at, dilation, window) if m.guest_resumed_at else []
    before = None
    if samples and m.t_start:
        from cluster.collect import _rate
        before = _rate(samples, m.t_start - dilation, m.t_start, dilation)
    after = {"throughput_after": {"window_s": window, "ops_per_s": series},
             "ops_per_s_before": before, "recovery_s": recovery_s(series, before)}
    if "split" not in m.report:
        return {"paging": m.split} | after
    return {**m.report["split"], "misplaced_pages": m.misplaced, "remote_paging": m.split} | after


def placement_now(sl, m, src_key: str) -> tuple[int, int]:
    """(pages not on exactly one host, pages lost) now, with remote paging
    under way. The guest is paused between ticks (no fault half done) while
    the main host's table and the memory servers' sub-tables are read; a
    page is lost when the guest has not written it since the switch-over
    and yet its copy, on whichever host holds it, differs from the source's
    image (which the migration left as it was at the switch-over)."""
    import ray
    from agents.verify import mismatched
    from ray.exceptions import GetTimeoutError

    from cluster.faults import ACTOR_CALL_S
    guest = sl.guests[m.vm_index]
    try:  # a vCPU blocked on a page behind a dead link never reaches a tick: nothing to read then
        ray.get(guest.pause.remote(), timeout=ACTOR_CALL_S)
    except GetTimeoutError:
        return -1, -1
    try:
        table = ray.get(guest.split_where.remote(), timeout=ACTOR_CALL_S)
        if table is None:
            return -1, -1
        misplaced = placement_problems(table, server_holds(sl, m))
        written = ray.get(guest.written_on_destination.remote())
        untouched = np.ones(len(table), dtype=bool)
        untouched[written] = False
        src = sl.hosts[m.plan.source.name]
        lost = 0
        for d, (host, key) in enumerate(_keys(sl, m)):
            pages = np.flatnonzero((table == d) & untouched)
            if not len(pages):
                continue
            theirs = host.page_digests.remote(key, pages) if d == 0 else host.memory_server_digests.remote(m.index, pages)
            lost += len(mismatched(*ray.get([src.page_digests.remote(src_key, pages), theirs])))
        return misplaced, lost
    finally:
        ray.get(guest.resume.remote())

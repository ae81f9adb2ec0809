"""The analytic models of split migration (S-memV) and its swap-assisted baseline.

`split` (agents/techniques/split.py) is pre-copy whose pages go to several
hosts at once. Its links share the source's NIC (the emulator paces them
together, work-conserving), so the pass rate is what max-min fair sharing
gives the links together (cluster/predict.py `link_rate`), and pre-copy's
model (cluster/predict.py) runs on it unchanged. The stop-and-copy also
sends the main host the network page table and its pages' access history,
a byte per page each (S-memV §IV-A): added to the state. Remote paging
after it depends on how the workload's accesses meet the split: not
modelled here (the run reports it).

`swap` (agents/techniques/swap.py) is pre-copy to a destination with room
for C = swap_resident_share x P pages of the VM's P. Pages arrive in page
order; a zero page never written takes no memory (QEMU leaves it
unmapped), so the N = (1 - zero) x P pages with contents fill the room,
and each of the O = N - C after it pushes the least recently used one out
to the swap device: writes in clusters of 256 pages (SWAPFILE_CLUSTER),
one access per cluster plus the bytes at the write rate (agents/split/swap.py
`SwapDevice`). The receiver takes a batch, restores it and waits for the
page-outs it caused before it acknowledges it (the destination's receiving
thread in direct reclaim); in the emulator that wait and the network's time
add up rather than overlap (measured: the sum is within 5% of the runs of
tiny-swap and of the 12 GB idle VM on an SSD, the overlap 20-24% short), so
time = T + D, with T the pass's network time and D the device's. Re-sent
pages that were swapped out (a writing guest's) are read back first: not
modelled. No Ray, no threads.
"""
from __future__ import annotations

import math

from agents.split.swap import DEVICES, PAGE, SWAP_CLUSTER
from cluster.scenario import GIB, MigrationPlan, Scenario

NOT_MODELLED_SPLIT = "split: remote paging after the switch-over (faults depend on the workload meeting the split)"
NOT_MODELLED_SWAP = "swap: pages re-sent while swapped out (read back first) and paging after the switch-over"


def predict_split(scenario: Scenario, mp: MigrationPlan, base: dict) -> dict:
    """`base`: pre-copy's prediction at the links' shared rate; adds the network page table
    and the history to the stop-and-copy (emulated bytes and seconds)."""
    from cluster.predict import migration_rates
    pages = mp.vm.memory_gib * GIB / PAGE
    _, switch_rate = migration_rates(scenario, mp)
    extra = pages + main_pages(mp)  # a byte per page of the table, a byte per page of the main host's history
    extra_s = extra / switch_rate
    return base | {"downtime_ms": base["downtime_ms"] + extra_s * 1000,
                   "total_time_s": base["total_time_s"] + extra_s,
                   "downtime_bytes_sent": base["downtime_bytes_sent"] + extra,
                   "not_modelled": base.get("not_modelled", []) + [NOT_MODELLED_SPLIT]}


def main_pages(mp: MigrationPlan) -> float:
    """Pages the main host takes: as many whole chunks as its memory holds past the device state."""
    o, main = mp.options, mp.destinations[0]
    chunk = o.chunk_pages * PAGE
    chunks = max(0, math.floor((main.memory_gib * GIB - o.device_state_kib * 1024) / chunk))
    return min(mp.vm.memory_gib * GIB / PAGE, chunks * o.chunk_pages)


def swap_overflow(mp: MigrationPlan) -> tuple[float, float, float]:
    """(pages with contents N, room C, pages swapped out O) of the first pass."""
    pages = mp.vm.memory_gib * GIB / PAGE
    has_contents = (1 - mp.vm.content.zero) * pages
    room = mp.options.swap_resident_share * pages
    return has_contents, room, max(0.0, has_contents - room)


def device_write_s(device: str, pages: float) -> float:
    """Emulated seconds the swap device takes to write `pages` in swap clusters."""
    d = DEVICES[device]
    return math.ceil(pages / SWAP_CLUSTER) * d.access_s + pages * PAGE / d.write_bytes_s if pages > 0 else 0.0


def predict_swap(scenario: Scenario, mp: MigrationPlan, base: dict) -> dict:
    """`base`: pre-copy's prediction to an ideal destination; the first pass's overflow
    costs the swap device's time on top of the network's."""
    _, room, over = swap_overflow(mp)
    device_s = device_write_s(mp.options.swap_device, over)
    slower = device_s  # after the network's time, not overlapping it (see above)
    return base | {"total_time_s": base["total_time_s"] + slower,
                   "swap": {"device": mp.options.swap_device, "swapped_out_pages": over,
                            "device_busy_s": device_s, "resident_pages": room},
                   "avg_throughput_mbytes_s": base["memory_bytes_sent"] / (base["total_time_s"] + slower) / (1 << 20),
                   "not_modelled": base.get("not_modelled", []) + [NOT_MODELLED_SWAP]}

"""Memory splitting: which chunks go to the main host, which to the sub-hosts (§IV-C, §V-D).

LRU split without sorting (the paper's method): a histogram of the 8-bit
chunk-history values (256 bins) is summed from the highest value down until
the sum reaches the number of chunks the main host can hold; the value
where it does is the threshold. Chunks above the threshold go to the main
host; chunks at the threshold fill what room is left, in chunk order;
chunks below go to the sub-hosts. This gives exactly the chunks a stable
sort by descending history would put first (tests/test_split_core.py checks
it property-based), in two passes over the chunk array instead of a sort.

Random split (the paper's comparison in §V-D): the main host's chunks drawn
uniformly without replacement.

Then the chunks that are not the main host's fill the sub-hosts in chunk
order up to each one's capacity: host 0 is the main host, hosts 1..k the
sub-hosts, as in the network page table (paging.py).
"""
from __future__ import annotations

import numpy as np

MAIN = 0  # host id of the main host in chunk and page tables; sub-hosts are 1..k
HISTORY_VALUES = 256


def histogram_threshold(chunk_history: np.ndarray, capacity: int) -> tuple[int, int]:
    """(threshold, how many chunks at the threshold go to the main host).

    `chunk_history`: uint8 (nchunks,); `capacity`: chunks the main host holds
    (>= 0). When every chunk fits, the threshold is 0 and all chunks at 0 go.
    """
    counts = np.bincount(chunk_history, minlength=HISTORY_VALUES)
    above = np.cumsum(counts[::-1])[::-1]  # above[v]: chunks with a history >= v
    reached = np.flatnonzero(above >= capacity)
    t = int(reached[-1]) if reached.size else 0  # the highest value where the sum reaches the capacity
    strictly_above = int(above[t + 1]) if t + 1 < HISTORY_VALUES else 0
    return t, min(int(counts[t]), capacity - strictly_above)


def lru_split(chunk_history: np.ndarray, capacity: int) -> np.ndarray:
    """Bool (nchunks,): True for the chunks sent to the main host (at most `capacity`)."""
    t, take = histogram_threshold(chunk_history, capacity)
    at = chunk_history == t
    return (chunk_history > t) | (at & (np.cumsum(at) <= take))


def random_split(nchunks: int, capacity: int, rng: np.random.Generator) -> np.ndarray:
    """Bool (nchunks,): `min(capacity, nchunks)` chunks drawn uniformly for the main host."""
    main = np.zeros(nchunks, dtype=bool)
    main[rng.choice(nchunks, size=min(capacity, nchunks), replace=False)] = True
    return main


def assign_hosts(main: np.ndarray, sub_capacities: list[int]) -> np.ndarray:
    """Host id per chunk (uint8 (nchunks,)): 0 where `main`, else the sub-hosts
    1..k filled in chunk order up to `sub_capacities[i]` chunks each.
    Errors: ValueError when the sub-hosts cannot hold the rest."""
    rest = np.flatnonzero(~main)
    bounds = np.cumsum(sub_capacities, dtype=np.int64)
    if rest.size > (bounds[-1] if len(sub_capacities) else 0):
        raise ValueError(f"{rest.size} chunks left for the sub-hosts, which hold {int(bounds[-1]) if len(bounds) else 0}")
    host = np.zeros(main.shape[0], dtype=np.uint8)
    host[rest] = 1 + np.searchsorted(bounds, np.arange(rest.size), side="right")
    return host


def page_hosts(chunk_host: np.ndarray, chunk_pages: int, npages: int) -> np.ndarray:
    """Host id per page (uint8 (npages,)) from the host of its chunk."""
    return np.repeat(chunk_host, chunk_pages)[:npages]

"""NIC pairing: decides which source NIC talks to which destination NIC, and how
migration traffic is spread over the resulting connections.

This follows the vSphere 5.1 vMotion multi-NIC rule: NICs are paired by link
speed, several slower NICs are paired with one faster NIC as needed to fill it,
and each pair carries one connection. The links (LinkAgent) are then shaped to
the bandwidth of their pair, and `balance` splits the bytes to send among them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["Nic", "NicPair", "pair_nics", "balance"]

# Capacity left on a NIC below this (Gbit/s) counts as full. Without it, float
# residue such as 10 - 3*3.3333 would open a useless near-zero connection.
_EPSILON_GBPS = 1e-9


@dataclass(frozen=True)
class Nic:
    """A migration NIC of a host: its name and its link speed in Gbit/s."""

    name: str
    speed_gbps: float


@dataclass(frozen=True)
class NicPair:
    """One connection between a source NIC and a destination NIC.

    `bandwidth_gbps` is the rate the connection can carry: the slower of the two
    link speeds, capped by what is left of a NIC already shared with earlier
    pairs (so the pairs on one NIC never add up to more than its speed).
    """

    source: str
    dest: str
    bandwidth_gbps: float


def _as_nics(nics: Iterable[Nic | tuple[str, float]], side: str) -> list[Nic]:
    """Accept `Nic`s, (name, speed) tuples or any object with name/speed_gbps."""
    out: list[Nic] = []
    for item in nics:
        if isinstance(item, Nic):
            nic = item
        elif isinstance(item, tuple) and len(item) == 2:
            nic = Nic(str(item[0]), float(item[1]))
        elif hasattr(item, "name") and hasattr(item, "speed_gbps"):
            nic = Nic(str(item.name), float(item.speed_gbps))
        else:
            raise ValueError(
                f"{side} NIC {item!r} is not a Nic, a (name, speed_gbps) tuple "
                "or an object with name and speed_gbps"
            )
        # `not >` also rejects NaN.
        if not nic.speed_gbps > 0 or nic.speed_gbps == float("inf"):
            raise ValueError(
                f"{side} NIC {nic.name!r} has speed {nic.speed_gbps} Gbit/s; "
                "it must be a positive, finite number"
            )
        out.append(nic)
    names = [n.name for n in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{side} NIC names must be unique; repeated: {', '.join(dupes)}")
    return out


def pair_nics(
    source_nics: Sequence[Nic | tuple[str, float]],
    dest_nics: Sequence[Nic | tuple[str, float]],
) -> list[NicPair]:
    """Pair source and destination NICs by link speed, one connection per pair.

    Both sides are taken fastest first (ties keep their input order, so the
    result is deterministic). The fastest source NIC with capacity left is paired
    with the fastest destination NIC with capacity left; the pair carries the
    smaller of their remaining capacities, and the NIC that still has capacity
    goes on to the next NIC of the other side. Pairing stops when one side is
    full. Hence two 10GbE NICs against one 10GbE and two 1GbE NICs give three
    connections: 10<->10, 10<->1, 10<->1 (the vMotion 5.1 example). Since every
    NIC can reach every NIC on the other side, the total bandwidth is the
    smaller of the two sides' totals: no capacity is left idle on both ends.

    Raises ValueError if either side has no NIC, a speed is not positive, or a
    name repeats within a side.
    """
    src = _as_nics(source_nics, "source")
    dst = _as_nics(dest_nics, "destination")
    if not src or not dst:
        empty = "source" if not src else "destination"
        other = len(dst) if not src else len(src)
        raise ValueError(
            f"cannot pair migration NICs: the {empty} host has no migration NIC "
            f"(the other host has {other}); give each host at least one"
        )

    # sorted() is stable, so equal speeds keep the order the user gave.
    src = sorted(src, key=lambda n: -n.speed_gbps)
    dst = sorted(dst, key=lambda n: -n.speed_gbps)
    src_left = [n.speed_gbps for n in src]
    dst_left = [n.speed_gbps for n in dst]

    pairs: list[NicPair] = []
    i = j = 0
    while i < len(src) and j < len(dst):
        bw = min(src_left[i], dst_left[j])
        pairs.append(NicPair(src[i].name, dst[j].name, bw))
        src_left[i] -= bw
        dst_left[j] -= bw
        # Move past whichever NIC (or both) is now full.
        if src_left[i] <= _EPSILON_GBPS:
            i += 1
        if dst_left[j] <= _EPSILON_GBPS:
            j += 1
    return pairs


def balance(pairs: Sequence[NicPair], total_bytes: int) -> list[int]:
    """Split `total_bytes` over the connections in proportion to their bandwidth.

    Returns one byte count per pair, in the order of `pairs`, summing exactly to
    `total_bytes`. Shares are computed with exact fractions and rounded by the
    largest-remainder method (ties go to the earlier pair), so the result is
    deterministic and no byte is lost or duplicated.
    """
    if not pairs:
        raise ValueError("cannot balance traffic over zero connections")
    if isinstance(total_bytes, bool) or not isinstance(total_bytes, int) or total_bytes < 0:
        raise ValueError(f"total_bytes must be a non-negative integer, got {total_bytes!r}")
    weights = [Fraction(p.bandwidth_gbps) for p in pairs]
    if any(not w > 0 for w in weights):
        raise ValueError("every connection must have a positive bandwidth_gbps")
    total_weight = sum(weights)
    quotas = [total_bytes * w / total_weight for w in weights]
    shares = [int(q) for q in quotas]  # floor: quotas are non-negative
    leftover = total_bytes - sum(shares)
    # Hand the leftover bytes, one each, to the largest fractional remainders.
    order = sorted(range(len(pairs)), key=lambda k: (-(quotas[k] - shares[k]), k))
    for k in order[:leftover]:
        shares[k] += 1
    return shares

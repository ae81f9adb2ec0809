"""`livemig bench capacity SCENARIO`: how far this machine carries a scenario faithfully.

A run is faithful while its `fidelity.saturation` stays under 0.05
(cluster/collect.py): the real work fits inside the CPU it is charged. This
finds, by a few runs of the scenario in one Ray, the boundary of that region
along one knob at a time:

- the smallest `dilation` at which the scenario runs unsaturated;
- at dilation 1, the largest `memory_scale` (real bytes per emulated byte,
  so the largest real image) and the largest link speed (every NIC of the
  scenario set to it) that run unsaturated.

Each search doubles (or halves) the knob until the run changes side, then
bisects geometrically between the last two values for `steps` more runs.
Saturation is monotone in each knob only roughly (the machine is shared and
noisy), so a boundary is good to about one bisection step. Each run also
reports its real byte rate: the guest bytes it moved per real second,
`memory_bytes_sent x memory_scale / (total_time_s x dilation)`.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from typing import Callable

from cluster.sweep import apply

UNSATURATED = 0.05
MAX_DOUBLINGS = 8


@dataclass
class Probe:
    """One run of the scenario at one setting."""
    value: float
    saturation: float
    real_mb_s: float  # real guest bytes moved per real second, 1e6 bytes
    total_time_s: float  # emulated
    verified: bool

    @property
    def ok(self) -> bool:
        return self.verified and self.saturation < UNSATURATED


def real_mb_s(result: dict) -> float:
    """Real guest bytes per real second of a run's migration (1e6 bytes/s)."""
    emu = result["emulation"]
    real_s = result["total_time_s"] * emu["dilation"]
    return result["memory_bytes_sent"] * emu["memory_scale"] / real_s / 1e6 if real_s > 0 else 0.0


def probe_of(value: float, result: dict) -> Probe:
    return Probe(value, result["emulation"]["fidelity"]["saturation"], real_mb_s(result),
                 result["total_time_s"], bool(result.get("verified")))


# Knob -> (the dotted paths it sets, whether a larger value is harder for the machine).
KNOBS = {
    "dilation": (("emulation.dilation",), False),
    "memory_scale": (("emulation.memory_scale",), True),
    "link_gbps": (("hosts.*.nics.*.speed_gbps",), True),
}


def setting(data: dict, knob: str, value: float, dilation: float | None = None) -> dict:
    """The scenario tables with `knob` set to `value` (and the dilation pinned, when given)."""
    paths, _ = KNOBS[knob]
    out = data
    for p in paths:
        out = apply(out, p, value)
    if knob == "link_gbps":  # a link's own bandwidth would cap the NICs' new speed
        for link in out.get("network", {}).get("links", []):
            link.pop("bandwidth_gbps", None)
    if dilation is not None and knob != "dilation":
        out = apply(out, "emulation.dilation", dilation)
    return out


def boundary(run: Callable[[float], Probe], start: float, harder_up: bool, steps: int = 3,
             lowest: float = 0.0, highest: float = math.inf) -> tuple[Probe | None, list[Probe]]:
    """The most demanding value of a knob that still runs unsaturated (None: none tried did), and
    every probe made, in order. From `start`, the value doubles towards more demanding while runs
    stay unsaturated (or halves towards less demanding while they saturate), at most
    MAX_DOUBLINGS times, then `steps` geometric bisections narrow the boundary.

    `harder_up`: a larger value asks more of the machine (link speed, memory_scale); otherwise a
    smaller one does (dilation). Values stay within [lowest, highest]."""
    harder = (lambda v: v * 2) if harder_up else (lambda v: v / 2)
    easier = (lambda v: v / 2) if harder_up else (lambda v: v * 2)
    clamp = lambda v: min(highest, max(lowest, v))  # noqa: E731
    probes = [run(start)]
    step = harder if probes[0].ok else easier
    for _ in range(MAX_DOUBLINGS):
        v = clamp(step(probes[-1].value))
        if v == probes[-1].value or probes[-1].ok != probes[0].ok:
            break
        probes.append(run(v))
    good = [p for p in probes if p.ok]
    bad = [p for p in probes if not p.ok]
    if not good or not bad:  # the knob's range ended before the side changed
        return _most_demanding(good, harder_up), probes
    g, b = _most_demanding(good, harder_up), _least_demanding(bad, harder_up)
    for _ in range(steps):
        mid = math.sqrt(g.value * b.value)
        p = run(mid)
        probes.append(p)
        if p.ok:
            g = p
        else:
            b = p
    return g, probes


def _most_demanding(probes: list[Probe], harder_up: bool) -> Probe | None:
    if not probes:
        return None
    return max(probes, key=lambda p: p.value) if harder_up else min(probes, key=lambda p: p.value)


def _least_demanding(probes: list[Probe], harder_up: bool) -> Probe:
    return min(probes, key=lambda p: p.value) if harder_up else max(probes, key=lambda p: p.value)


def capacity(text: str, path: str, run_result: Callable, knobs=("dilation", "memory_scale", "link_gbps"),
             steps: int = 3, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Every boundary of scenario `text` (file `path`); `run_result(scenario)` runs one and returns result.json's dict."""
    from cluster.scenario import MAX_DILATION, MAX_GBPS, MIN_GBPS, scenario_from_data

    data = tomllib.loads(text)
    base = scenario_from_data(data, path)
    out: dict = {"bench": "capacity", "scenario": path, "unsaturated_below": UNSATURATED, "knobs": {}}
    starts = {"dilation": base.emulation.dilation, "memory_scale": base.emulation.memory_scale,
              "link_gbps": max(n.speed_gbps for h in base.hosts for n in h.nics)}
    limits = {"dilation": (1e-3, MAX_DILATION), "memory_scale": (1e-6, 1.0), "link_gbps": (MIN_GBPS, MAX_GBPS)}
    for knob in knobs:
        _, harder_up = KNOBS[knob]

        def run(value: float, knob=knob) -> Probe:
            sc = scenario_from_data(setting(data, knob, value, None if knob == "dilation" else 1.0), path)
            p = probe_of(value, run_result(sc))
            progress(f"{knob} = {value:.6g}: saturation {p.saturation:.3f}, {p.real_mb_s:.1f} MB/s real, "
                     f"{'verified' if p.verified else 'NOT verified'}")
            return p

        best, probes = boundary(run, starts[knob], harder_up, steps, *limits[knob])
        out["knobs"][knob] = ({} if knob == "dilation" else {"at_dilation": 1.0}) | {
            "best": None if best is None else vars(best) | {"ok": best.ok},
            "probes": [vars(p) | {"ok": p.ok} for p in probes],
        }
    return out

"""Scaling: how a scenario in physical units maps onto this machine.

Two knobs (see DESIGN.md): `memory_scale` is real bytes per emulated byte,
`dilation` is real seconds per emulated second. Every rate in bytes or pages
scales with memory_scale / dilation; every duration with dilation. This
module does that arithmetic for the control plane; the actors are handed the
two knobs and turn per-page CPU costs into real seconds themselves
(`HostAgent._real_s`).
"""
from __future__ import annotations

from dataclasses import dataclass

from cluster.scenario import GIB, PAGE_SIZE, Scenario, Vm


@dataclass(frozen=True)
class Scale:
    memory_scale: float
    dilation: float

    def real_pages(self, emulated_bytes: float) -> int:
        return max(16, int(round(emulated_bytes * self.memory_scale / PAGE_SIZE)))

    def real_rate(self, emulated_per_s: float) -> float:
        """A rate in bytes/s or pages/s, emulated -> real."""
        return emulated_per_s * self.memory_scale / self.dilation

    def real_seconds(self, emulated_s: float) -> float:
        return emulated_s * self.dilation

    def emulated_seconds(self, real_s: float) -> float:
        return real_s / self.dilation


def scale_of(scenario: Scenario, dilation: float | None = None) -> Scale:
    return Scale(scenario.emulation.memory_scale, dilation or scenario.emulation.dilation)


def vm_real_pages(scale: Scale, vm: Vm) -> int:
    return scale.real_pages(vm.memory_gib * GIB)


def gbps_to_bytes_s(gbps: float) -> float:
    return gbps * 1e9 / 8

"""Scaling: how a scenario in physical units maps onto this machine.

Two knobs (see DESIGN.md): `memory_scale` is real bytes per emulated byte,
`dilation` is real seconds per emulated second. Every rate in bytes or pages
scales with memory_scale / dilation; every duration with dilation. This
module is the only place that does that arithmetic.
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

    def emulated_bytes(self, real_bytes: float) -> float:
        return real_bytes / self.memory_scale

    def emulated_pages(self, real_pages: float) -> float:
        return real_pages / self.memory_scale

    def real_rate(self, emulated_per_s: float) -> float:
        """A rate in bytes/s or pages/s, emulated -> real."""
        return emulated_per_s * self.memory_scale / self.dilation

    def real_seconds(self, emulated_s: float) -> float:
        return emulated_s * self.dilation

    def emulated_seconds(self, real_s: float) -> float:
        return real_s / self.dilation

    def real_cpu_seconds(self, ns_per_emulated_page: float, real_pages: int) -> float:
        """Real time an emulated core is busy for `real_pages` at the given cost.

        Each real page stands for 1/memory_scale emulated pages, and an
        emulated CPU-second lasts `dilation` real seconds.
        """
        return ns_per_emulated_page * 1e-9 * real_pages / self.memory_scale * self.dilation


def scale_of(scenario: Scenario, dilation: float | None = None) -> Scale:
    return Scale(scenario.emulation.memory_scale, dilation or scenario.emulation.dilation)


def vm_real_pages(scale: Scale, vm: Vm) -> int:
    return scale.real_pages(vm.memory_gib * GIB)


def gbps_to_bytes_s(gbps: float) -> float:
    return gbps * 1e9 / 8

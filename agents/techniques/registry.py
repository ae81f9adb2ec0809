"""The technique registry: every migration technique by name.

A `TechniqueSpec` says what a technique is called, what it does in one line,
which options it declares (agents/techniques/options.py) and where its code
lives ("module:Class"). The code is imported only by `spec.load()`, so the
scenario schema, validation and `livemig techniques` can read the registry
without importing Ray or the data path.

Adding a technique: write its module under agents/techniques/ and add a
`TechniqueSpec` to `_BUILTIN` below.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from agents.techniques.options import (
    BLOCK_DIRTY,
    COMMON,
    COMPRESSION,
    CONVERGENCE,
    PIPELINE,
    POLICY,
    POSTCOPY,
    PRECOPY,
    SPLIT,
    SWAP,
    STORAGE,
    Option,
)


@dataclass(frozen=True)
class TechniqueSpec:
    name: str
    summary: str
    options: tuple[Option, ...]
    factory: str  # "package.module:Class", imported lazily by load()

    def option(self, name: str) -> Option:
        for opt in self.options:
            if opt.name == name:
                return opt
        raise KeyError(f"technique {self.name!r} has no option {name!r}; its options: {', '.join(self.option_names())}")

    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def load(self) -> type:
        """Import and return the technique's class."""
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)

    def describe(self) -> dict:
        """A JSON-ready description (for `livemig techniques --json`)."""
        return {"name": self.name, "summary": self.summary, "factory": self.factory,
                "options": [o.describe() for o in self.options]}


_REGISTRY: dict[str, TechniqueSpec] = {}


def register(spec: TechniqueSpec) -> TechniqueSpec:
    """Add a technique; a name may be registered once (again only with the same spec)."""
    names = [o.name for o in spec.options]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"technique {spec.name!r} declares {', '.join(repeated)} more than once")
    known = _REGISTRY.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"technique {spec.name!r} is already registered (factory {known.factory})")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> TechniqueSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown technique {name!r}; known: {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def all_specs() -> tuple[TechniqueSpec, ...]:
    return tuple(_REGISTRY.values())


_BUILTIN = (
    TechniqueSpec(
        name="precopy",
        summary="Iterative pre-copy, image-oriented or time-sliced, with PMigrate's parallel pipeline "
                "when consumers > 1 and convergence control (auto-converge, dirty-limit, SDPS)",
        options=COMMON + PRECOPY + PIPELINE + COMPRESSION + CONVERGENCE + POLICY,
        factory="agents.techniques.precopy:PrecopyMigration",
    ),
    TechniqueSpec(
        name="postcopy",
        summary="Post-copy (QEMU's postcopy-ram), pure or after pre-copy rounds: the guest resumes on the "
                "destination at once, faults pull missing pages over the return path while the rest is "
                "pushed, with adaptive pre-paging (Hines and Gopalan)",
        options=COMMON + PRECOPY + PIPELINE + POSTCOPY + POLICY,
        factory="agents.techniques.postcopy:PostcopyMigration",
    ),
    TechniqueSpec(
        name="split",
        summary="S-memV split migration: the LRU share of memory to a main host, the rest straight to memory "
                "servers on sub-hosts in parallel; remote paging after the switch-over",
        options=COMMON + PRECOPY + PIPELINE + SPLIT,
        factory="agents.techniques.split:SplitMigration",
    ),
    TechniqueSpec(
        name="swap",
        summary="Swap-assisted migration (S-memV's baseline): pre-copy to a destination with only part of the "
                "VM's memory free, paging LRU pages to an SSD or HDD during and after the migration",
        options=COMMON + PRECOPY + PIPELINE + SWAP,
        factory="agents.techniques.swap:SwapMigration",
    ),
    TechniqueSpec(
        name="storage",
        summary="Unified memory and storage migration (vSphere 5.1 vMotion): the disk's bulk copy with I/O "
                "mirroring (asynchronous, falling back to synchronous) over the cheapest data path, then memory "
                "pre-copy, then a switch-over that waits for the mirror to be in sync",
        options=COMMON + PRECOPY + PIPELINE + COMPRESSION + CONVERGENCE + POLICY + STORAGE,
        factory="agents.techniques.storage:StorageMigration",
    ),
    TechniqueSpec(
        name="block-dirty",
        summary="Disk dirty-bitmap migration with memory pre-copy (PMigrate-KVM, QEMU's old block migration): "
                "the whole disk, then the chunks dirtied since, pass after pass, the last pass in the downtime",
        options=COMMON + PRECOPY + PIPELINE + COMPRESSION + CONVERGENCE + POLICY
        + tuple(o for o in STORAGE if o.name in ("target_datastore", "disk_path", "mirror_buffer_mib")) + BLOCK_DIRTY,
        factory="agents.techniques.block_dirty:BlockDirtyMigration",
    ),
)

for _spec in _BUILTIN:
    register(_spec)

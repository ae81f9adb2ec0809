"""Disk dirty-bitmap migration with memory pre-copy (PMigrate-KVM §5; QEMU's
old block migration): the `block-dirty` technique.

The same three phases as the `storage` technique (agents/techniques/storage.py)
with the disk moved the other way: no I/O mirror; the guest's writes set
bits in a dirty bitmap of chunks, and a disk producer sends the whole disk
(the bulk pass), then the chunks dirtied since, pass after pass, while
memory pre-copy runs; at switch-over, the VM stopped, a final pass sends
every chunk still dirty, inside the downtime (agents/datapath/block_dirty.py).
The disk producer is pipelined with the sending and a disk writer at the
destination, as PMigrate's Figure 2 has it; the destination disk is
verified block for block at switch-over.

Its report's `disk.passes` lists every pass (chunks, bytes, duration) and
`disk.downtime_bytes` what the final pass sent while the VM was stopped.
"""
from __future__ import annotations

from typing import ClassVar

from agents.techniques.storage import StorageMigration


class BlockDirtyMigration(StorageMigration):
    """`StorageMigration` whose disk job is a `DirtyBitmapJob` (the disk move's `chunk_bytes` > 0)."""

    name: ClassVar[str] = "block-dirty"

    def _disk_figures(self, fig: dict) -> dict:
        out = super()._disk_figures(fig)
        passes = [p | {"bytes": p["bytes"] / self.scale} for p in fig.get("passes", [])]
        out.pop("mirror", None)
        return out | {"passes": passes, "downtime_bytes": sum(p["bytes"] for p in passes if p["final"])}

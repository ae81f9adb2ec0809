"""The analytic storage model: what the emulator should find for the disk
copy of the `storage` technique (agents/techniques/storage.py).

The bulk copy reads the allocated part of the disk sequentially from the
source datastore and writes it to the target datastore over the data path
(cluster/storage_plan.py). Its rate is the lowest of:
- what the source datastore has left after the guest's own I/O (the guest's
  requests occupy it for their service times, agents/datapath/datastore.py);
- the data path's rate, less the mirrored writes;
- the target datastore's write bandwidth, less the mirrored writes.
A guest write is mirrored when it lands behind the copy's cursor: for
requests spread over the disk, half of them on average during the copy,
all of them after it (during the memory copy).

Two floors keep an overloaded case finite, as the emulator behaves: a guest
asking more of the source datastore than it serves is slowed by the copy's
requests queued before its own (the copy keeps at least half the device);
mirrored writes faster than the data path make the mirror synchronous, which
slows the guest, and the copy still gets a tenth of the path.
"""
from __future__ import annotations

from agents.datapath.datastore import DatastoreModel
from agents.guest.disk import DiskWorkload
from cluster.storage_plan import disk_move


def predict_disk(scenario, mp, memory_phase_s: float) -> dict | None:
    """Disk figures of migration plan `mp` (physical units), or None when its disk stays."""
    mv = disk_move(scenario, mp)
    if mv is None:
        return None
    src, dst = DatastoreModel(**mv.source.model_figures()), DatastoreModel(**mv.target.model_figures())
    w = DiskWorkload(**mp.vm.disk_workload.figures())
    random = w.pattern == "random"
    guest_busy = (w.read_iops * src.service_s(False, 1, w.read_kib * 1024, random)
                  + w.write_iops * src.service_s(True, 1, w.write_kib * 1024, random))
    write_bw = w.write_mbytes_s() * 1e6
    allocated = mv.disk_bytes * mp.vm.disk_used_fraction
    drain = min(mv.rate_bytes_s, dst.write_mbytes_s * 1e6)
    rate = min(max(0.5, 1.0 - guest_busy) * src.read_mbytes_s * 1e6, max(0.1 * drain, drain - write_bw / 2))
    copy_s = allocated / rate
    mirrored = min(write_bw, drain) * (copy_s / 2 + memory_phase_s)
    return {"path": mv.path, "copy_time_s": copy_s, "copy_rate_bytes_s": rate, "bytes_sent": allocated + mirrored,
            "mirrored_bytes": mirrored, "network_bytes": allocated + mirrored if mv.path == "network" else 0.0}

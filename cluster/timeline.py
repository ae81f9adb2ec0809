"""The timeline: a run's record, the one source of its figures.

Every run writes `timeline.jsonl` next to result.json: one JSON record per
line, in emulated seconds from the start of the run (the guests' start; the
migrations begin after the warm-up). Two kinds of records:

- samples, one per entity per interval (default 100 emulated ms, but at
  least 100 real ms: at a dilation below 1 the records are coarser) and one
  last one when a migration ends: `{"t", "kind": "migration", "vm", ...}`
  (phase, iteration, remaining, bytes and pages transferred in the interval
  by encoding, transfer rate, dirty-pages-rate, expected-downtime),
  `"kind": "link"` (throughput, capacity, and the interval's migration and
  background bytes), `"kind": "host"` (emulated cores busy by stage, and the
  interval's emulated CPU seconds by stage), `"kind": "guest"` (operations per
  second, and the interval's operations; after a split migration,
  `remote_paging`: its figures so far, faults, pages and bytes in and out,
  the fault latency histogram);
- events, `{"t", "kind": "event", "vm", "event", ...}`: phases, each
  iteration's figures (QEMU's query-migrate names), the downtime
  checkpoints, verification, switch-over, cancellation, scheduled events;
  a storage migration's `disk-progress` (the mirror job so far) and
  `mirror-mode` switches, a split migration's `split` (pages per host, in
  the order of `migration-start`'s `destinations`).

result.json's figures (cluster/collect.py) and the Prometheus exporter
(cluster/metrics.py) are both computed from these records.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

class Timeline:
    def __init__(self, t0_real: float, dilation: float, path: Path | None = None,
                 listeners: list[Callable[[dict], None]] | None = None) -> None:
        self.t0, self.dilation = t0_real, dilation
        self.records: list[dict] = []
        self.listeners = listeners or []
        self._path = path
        self._file = open(path, "w") if path else None

    def t(self, t_real: float) -> float:
        """Emulated seconds since the start of the run."""
        return (t_real - self.t0) / self.dilation

    def add(self, record: dict) -> dict:
        record = {k: _finite(v) for k, v in record.items()}
        self.records.append(record)
        if self._file:
            self._file.write(json.dumps(record) + "\n")
        for listen in self.listeners:
            listen(record)
        return record

    def event(self, t_real: float, event: str, **fields) -> dict:
        return self.add({"t": self.t(t_real), "kind": "event", "event": event, **fields})

    def sample(self, kind: str, t_real: float, **fields) -> dict:
        return self.add({"t": self.t(t_real), "kind": kind, **fields})

    def of(self, kind: str, **match) -> list[dict]:
        return [r for r in self.records if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]

    def events(self, vm: str, event: str | None = None) -> list[dict]:
        return [r for r in self.records if r["kind"] == "event" and r.get("vm") == vm
                and (event is None or r["event"] == event)]

    def close(self) -> None:
        """Rewrite the file in time order: during the run, records are written as the
        driver learns them, and a technique's events reach it a little after they happen."""
        if self._file:
            self._file.close()
            self._file = None
            ordered = sorted(self.records, key=lambda r: r["t"])
            self._path.write_text("".join(json.dumps(r) + "\n" for r in ordered))


def _finite(v):
    """JSON has no infinity: an unbounded figure is recorded as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v

"""`livemig reproduce convergence`: the convergence-control study side by side.

Two experiments of the convergence issue, from `scenarios/convergence/`:

- the memcached-like VM that does not converge on its own, migrated six ways
  (forced stop-and-copy, SDPS, auto-converge, dirty-limit, post-copy, hybrid):
  one row each with migration time, downtime, bytes sent, the application's
  degradation and non-response time, post-copy faults, and when convergence
  control kicked in. Checked: every run verifies, and every method other than
  forced stop-and-copy stops the VM for less than a fifth of its downtime.
- the SolidDB-like VM of the vMotion seed's Figure 6 over one and two 10 GbE
  NICs. Checked: SDPS kicks in on one NIC and not on two, and two NICs take
  the seed's 30% less time, within 10 points (the seed reads it off a bar chart).
"""
from __future__ import annotations

from pathlib import Path

from cluster.tables import saturation_cell, saturation_of

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios" / "convergence"

METHODS = (("forced stop-and-copy", "memcached-stop-and-copy.toml"), ("SDPS", "memcached-sdps.toml"),
           ("auto-converge", "memcached-auto-converge.toml"), ("dirty-limit", "memcached-dirty-limit.toml"),
           ("post-copy", "memcached-postcopy.toml"), ("hybrid (1 pre-copy round)", "memcached-hybrid.toml"))
NICS = (("one 10 GbE NIC", "soliddb-64clients-1nic.toml"), ("two 10 GbE NICs", "soliddb-64clients-2nic.toml"))
SEED_TWO_NIC_REDUCTION = 0.30  # vMotion seed, Figure 6: "using two NICs reduced the memory copy duration by 30%"


def row(label: str, result: dict) -> dict:
    """One method's figures (emulated units) from its result.json."""
    v = result["vms"][0]
    conv, post = v.get("convergence") or {}, v.get("postcopy") or {}
    return {"method": label, "verified": result["verified"], "total_time_s": v["total_time_s"],
            "downtime_ms": v["downtime_ms"], "memory_bytes_sent": v["memory_bytes_sent"],
            "degradation": v["app"].get("degradation"), "non_response_s": v["app"].get("non_response_s"),
            "faults": post.get("faults"), "kicked_in_after_s": conv.get("kicked_in_after_s"),
            "saturation": saturation_of(result)}


def checks(methods: list[dict], nics: list[dict]) -> list[tuple[str, bool]]:
    """(what is checked, whether it holds) for the study's claims."""
    forced = methods[0]["downtime_ms"]
    out = [("every run verified", all(r["verified"] for r in methods + nics))]
    out += [(f"{r['method']}: downtime under a fifth of forced stop-and-copy's", r["downtime_ms"] < forced / 5)
            for r in methods[1:]]
    one, two = nics
    out.append(("SDPS kicks in on one NIC", one["kicked_in_after_s"] is not None))
    out.append(("SDPS does not kick in on two NICs", two["kicked_in_after_s"] is None))
    reduction = 1 - two["total_time_s"] / one["total_time_s"]
    out.append((f"two NICs take {reduction:.0%} less time (seed: 30%, within 10 points)",
                abs(reduction - SEED_TWO_NIC_REDUCTION) <= 0.10))
    return out


def run(out_dir: Path, progress=print) -> dict:
    """Run both experiments in one Ray; returns {methods, nics, checks}."""
    from cluster.reproduce import one_ray, run_kept

    def go(label: str, name: str) -> dict:
        return row(label, run_kept(SCENARIOS / name, out_dir, progress))

    with one_ray():
        methods = [go(label, name) for label, name in METHODS]
        nics = [go(label, name) for label, name in NICS]
    return {"methods": methods, "nics": nics,
            "checks": [{"check": c, "holds": ok} for c, ok in checks(methods, nics)]}


def markdown(report: dict) -> str:
    """The two tables and the checks, as Markdown."""
    f = lambda v, fmt: "–" if v is None else format(v, fmt)  # noqa: E731
    lines = ["| method | migration time | downtime | memory sent | app degradation | non-response | faults "
             "| kicked in after | saturation |", "|" + " --- |" * 9]
    for r in report["methods"] + report["nics"]:
        lines.append(f"| {r['method']} | {r['total_time_s']:.1f} s | {r['downtime_ms']:.0f} ms "
                     f"| {r['memory_bytes_sent'] / 1e9:.1f} GB | {f(r['degradation'], '.1%')} "
                     f"| {f(r['non_response_s'], '.2f')} s | {f(r['faults'], ',.0f')} "
                     f"| {f(r['kicked_in_after_s'], '.1f')}{'' if r['kicked_in_after_s'] is None else ' s'} "
                     f"| {saturation_cell(r.get('saturation'))} |")
    lines.append("")
    lines += [f"- {'✓' if c['holds'] else '✗'} {c['check']}" for c in report["checks"]]
    return "\n".join(lines)

"""Pictures of the Grafana dashboards without a Grafana: a real Prometheus scrapes a real run,
then every panel's PromQL (the committed grafana/dashboards/*.json) is run as a range query and
drawn with matplotlib, one PNG per dashboard, panels titled as in Grafana.

No Grafana server is installable here, so the pictures are honest about what they are: the
panels' queries against Prometheus, drawn with matplotlib; Grafana shows the same queries.

`python -m cluster.dashboard_pictures --out docs` (or `make dashboard-pictures`) runs
tests/data/families.toml (overview, pipeline, compression, convergence and post-copy) and
tests/data/storage-split.toml (storage, split), each with `--metrics-port` and `--linger`.
The Prometheus server is Debian's `prometheus` (apt-get install prometheus).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from cluster import dashboards

ROOT = Path(__file__).resolve().parent.parent
# Which run fills which dashboards (tests/test_grafana.py checks every dashboard is in one).
RUNS = {"families.toml": ["overview", "pipeline", "compression", "convergence-postcopy"],
        "storage-split.toml": ["storage", "split"]}
SCRAPE_S = 0.2
STEP_S = 0.5
LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
CAPTION = "Each panel's PromQL, as committed in grafana/dashboards/{name}.json, run against a real Prometheus " \
          "that scraped `livemig run {scenario}`; drawn with matplotlib (Grafana shows the same queries)."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prometheus(workdir: Path, exporter: int, prom: int, binary: str | None = None,
                     config: str | None = None) -> subprocess.Popen:
    """Debian's Prometheus scraping the exporter on `exporter` every 200 ms (or as `config`, a
    prometheus.yml, says), its API on `prom`; its configuration and data under `workdir`.
    Raises FileNotFoundError when it is not installed."""
    binary = binary or shutil.which("prometheus")
    if not binary:
        raise FileNotFoundError("the Prometheus server is not installed (apt-get install prometheus)")
    (workdir / "prometheus.yml").write_text(config or (
        f"global:\n  scrape_interval: {SCRAPE_S * 1000:g}ms\n  scrape_timeout: 150ms\n"
        f"scrape_configs:\n  - job_name: livemig\n    static_configs:\n      - targets: ['127.0.0.1:{exporter}']\n"))
    return subprocess.Popen([binary, f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{prom}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def query_range(prom: int, expr: str, start: float, end: float, step: float = STEP_S) -> list:
    """Prometheus's range query: [{"metric": labels, "values": [[t, "v"], ...]}, ...]."""
    url = f"http://127.0.0.1:{prom}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": step})
    body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def wait_ready(prom: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{prom}/-/ready", timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"Prometheus on port {prom} not ready after {timeout_s:g} s")


def scraped_run(scenario: Path, workdir: Path, livemig: str, linger_s: float = 3) -> tuple[int, float, float,
                                                                                           subprocess.Popen]:
    """Run `scenario` with a Prometheus scraping it; (Prometheus port, start, end, its process).
    The caller stops the process."""
    exporter, prom = free_port(), free_port()
    server = start_prometheus(workdir, exporter, prom)
    try:
        wait_ready(prom)
        start = time.time()
        run = subprocess.run([livemig, "run", str(scenario), "--quiet", "--out", str(workdir / "out"),
                              "--metrics-port", str(exporter), "--linger", str(linger_s)],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            raise RuntimeError(f"livemig run {scenario} failed: {run.stderr.strip()[-500:]}")
        return prom, start, time.time(), server
    except BaseException:
        server.terminate()
        server.wait(10)
        raise


def legend(fmt: str, labels: dict) -> str:
    """Grafana's legend format: `{{label}}` replaced by the series' label value."""
    return LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt).strip() or "value"


def panel_series(prom: int, panel: dict, start: float, end: float) -> list[tuple[str, list, list]]:
    """(legend, seconds since start, values) of every series of every target of a panel."""
    out = []
    for t in panel.get("targets", []):
        for s in query_range(prom, t["expr"].replace("$vm", ".*"), start, end):
            pts = [(float(ts) - start, float(v)) for ts, v in s["values"] if math.isfinite(float(v))]
            if pts:
                out.append((legend(t.get("legendFormat", ""), s["metric"]), *map(list, zip(*pts))))
    return out


def draw(model: dict, series: list[list], path: Path, caption: str) -> Path:
    """One PNG: a grid of the dashboard's panels, each drawn by its kind (lines for time series
    and state, the last values for stat and bar panels)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = model["panels"]
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows + 0.8), squeeze=False)
    for ax, p, ss in zip(axes.flat, panels, series):
        _draw_panel(ax, p, ss)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(model["title"], fontsize=15, fontweight="bold")
    fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=9, style="italic", wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def _draw_panel(ax, p: dict, ss: list) -> None:
    unit = (p.get("fieldConfig") or {}).get("defaults", {}).get("unit", "")
    ax.set_title(p["title"] + (f"  [{unit}]" if unit and unit != "none" else ""), fontsize=10)
    if not ss:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="red")
        return
    if p["type"] in ("stat", "bargauge"):
        names, last = [s[0] for s in ss][:12], [s[2][-1] for s in ss][:12]
        ax.barh(range(len(last)), last, color="#5794f2")
        ax.set_yticks(range(len(last)), names, fontsize=7)
        for i, v in enumerate(last):
            ax.text(v, i, f" {v:.4g}", va="center", fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("last value", fontsize=8)
        return
    ax.set_xlabel("real seconds since the run started", fontsize=8)
    ax.tick_params(labelsize=7)
    if p["type"] == "state-timeline":  # a row per state; a bar where its query returns a sample
        for i, (name, ts, _) in enumerate(ss[:16]):
            ax.broken_barh([(t, STEP_S) for t in ts], (i - 0.4, 0.8), color=f"C{i % 10}")
        ax.set_yticks(range(min(len(ss), 16)), [s[0] for s in ss[:16]], fontsize=7)
        ax.invert_yaxis()
        return
    for name, ts, vs in ss[:12]:
        ax.plot(ts, vs, label=name, linewidth=1.2)
    ax.legend(fontsize=6, loc="best")


def pictures(out: Path, livemig: str | None = None) -> list[Path]:
    """Every dashboard's picture under `out` (dashboard-<name>.png)."""
    livemig = livemig or str(Path(sys.executable).with_name("livemig"))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for scenario, names in RUNS.items():
        with tempfile.TemporaryDirectory(prefix="livemig-pictures-") as tmp:
            prom, start, end, server = scraped_run(ROOT / "tests" / "data" / scenario, Path(tmp), livemig)
            try:
                for name in names:
                    model = json.loads((dashboards.OUT / f"{name}.json").read_text())
                    series = [panel_series(prom, p, start, end) for p in model["panels"]]
                    caption = CAPTION.format(name=name, scenario=f"tests/data/{scenario}")
                    paths.append(draw(model, series, out / f"dashboard-{name}.png", caption))
            finally:
                server.terminate()
                server.wait(10)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args(argv)
    try:
        for p in pictures(args.out):
            print(p)
    except FileNotFoundError as exc:
        print(f"dashboard pictures: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

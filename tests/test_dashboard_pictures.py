"""The dashboards' pictures (cluster/dashboard_pictures.py): Grafana's legend format, and one PNG
per dashboard with a cell per panel. The end-to-end run against a real Prometheus is
`make dashboard-pictures`; every panel's query is checked against one in tests/test_grafana.py."""
import math

import matplotlib.image

from cluster import dashboard_pictures as pics
from cluster import dashboards


def test_legend_is_grafanas_format():
    assert pics.legend("{{vm}} {{ direction }}", {"vm": "db", "direction": "in"}) == "db in"
    assert pics.legend("{{host}}", {}) == "value"


def test_one_png_per_dashboard_with_a_cell_per_panel(tmp_path):
    model = dashboards.build("storage")
    n = len(model["panels"])
    ts = [0.0, 0.5, 1.0]
    series = [[("db x", ts, [1.0, 2.0, 3.0])] if i % 2 else [] for i in range(n)]  # every other one empty
    path = pics.draw(model, series, tmp_path / "d.png", "caption")
    img = matplotlib.image.imread(path)
    rows = math.ceil(n / 3)
    assert img.shape[0] == round((3.2 * rows + 0.8) * 72) and img.shape[1] == 18 * 72
    assert img.std() > 0  # not a blank canvas


def test_runs_cover_every_dashboard_once():
    names = [n for ns in pics.RUNS.values() for n in ns]
    assert sorted(names) == sorted(dashboards.DASHBOARDS)

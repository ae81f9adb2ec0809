"""`livemig run --dashboard`: the Ray dashboard's address is printed, and its HTTP API lists
the run's actors by role while the run goes (with Ray's token; without it, refused)."""
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import LIVEMIG, ROOT, scenario_text
from tests.test_metrics import _free_port

ROLES = ("source:", "destination:", "link:", "guest:")


def _actors(url: str, token: str | None) -> list[str]:
    req = urllib.request.Request(f"{url}/api/v0/actors?limit=200&detail=false")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    body = json.loads(urllib.request.urlopen(req, timeout=5).read())
    return [a.get("name") or "" for a in body["data"]["result"]["result"]]


def _token() -> str:
    return os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").read_text().strip()


def test_the_dashboard_lists_the_actors_by_role(tmp_path):
    f = tmp_path / "s.toml"
    writer = '{ kind = "uniform", dirty_pages_per_s = 4000, working_set_gib = 0.125 }'
    f.write_text(scenario_text("dash", memory_gib=0.5, workload=writer, gbps=1, dilation=2))
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        run = subprocess.Popen([LIVEMIG, "run", str(f), "--out", str(tmp_path / "out"), "--quiet", "--dashboard",
                                "--dashboard-port", str(_free_port())], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=err)
    try:
        url, names, refused = None, [], None
        deadline = time.monotonic() + 120
        while run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            m = url or re.search(r"Ray dashboard: (http://127\.0\.0\.1:\d+) .*token: ~/.ray/auth_token",
                                 log.read_text())
            url = url or (m.group(1) if m else None)
            if not url:
                continue
            try:
                names = _actors(url, _token())
                if refused is None:
                    try:
                        _actors(url, None)
                        refused = False
                    except urllib.error.HTTPError as exc:
                        refused = exc.code in (401, 403)
            except (OSError, KeyError, ValueError):
                continue
            if all(any(n.startswith(r) for n in names) for r in ROLES):
                break
        assert url, log.read_text()
        assert all(any(n.startswith(r) for n in names) for r in ROLES), names
        assert refused, "the dashboard answered without Ray's token"
        assert run.poll() is None, "the run ended before its actors were seen"
    finally:  # seen while it ran: no need to wait for the migration's end (SIGTERM tears it down cleanly)
        if run.poll() is None:
            run.terminate()
            run.wait(30)

"""Headless Chromium for the report tests: open a page with the network cut off and
say what loaded (Debian's `chromium`; LIVEMIG_REQUIRE_CHROMIUM makes its absence a failure)."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("LIVEMIG_REQUIRE_CHROMIUM"),
    reason="Chromium is not installed (apt-get install chromium)")

# Collects every error (script errors and resources that fail to load, captured on the
# way down) and, once the page has loaded, each image's state, into a <pre> that
# --dump-dom then prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || 'error').slice(0, 120));
}, true);
window.addEventListener('load', function () {
  var p = document.createElement('pre');
  p.id = 'livemig-probe';
  p.textContent = JSON.stringify({errors: window.__errors, images: [].map.call(document.images, function (i) {
    return {complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}; })});
  document.body.appendChild(p);
});
</script>"""


def open_page(page: Path, tmp: Path) -> dict:
    """{errors, images: [{complete, width, height}]} of the page as headless Chromium loads it
    with every host name unresolvable (so anything fetched from a network fails)."""
    assert CHROMIUM, "LIVEMIG_REQUIRE_CHROMIUM is set but chromium is not installed"
    probed = tmp / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={tmp / 'chromium-profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
                        "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="livemig-probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"the page did not finish loading: rc {r.returncode}, {r.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def external_references(page: Path) -> list[str]:
    """Every src, href or CSS url() in the page that is not inline data."""
    text = page.read_text()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text) + re.findall(r"url\(([^)]*)\)", text)
    return [r for r in refs if not r.startswith("data:") and not r.startswith("#")]

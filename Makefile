# The two commands of the README: `make demo` and `make test`. Each sets itself up.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench docs dashboards dashboard-pictures clean

$(STAMP): pyproject.toml setup.py $(wildcard agents/*/*.c)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/livemig run scenarios/quickstart.toml --out runs/quickstart

test: $(STAMP)
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) || \
	  echo "note: the Prometheus server is not installed; its test will be skipped"; }
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "note: Chromium is not installed; the report's browser test will be skipped"; }
	$(PY) -m pytest -q

# The slow tests: reproductions of the papers, the invariance matrix, kill and clean-up cases.
test-slow: $(STAMP)
	$(PY) -m pytest -q -s -m slow

bench: $(STAMP)
	$(VENV)/bin/livemig bench pipeline
	$(VENV)/bin/livemig bench link

# The report pictures under docs/ (README): a pre-copy of several iterations (at dilation 1,
# twice the scenario's, so that a busy machine does not saturate it), then its report's PNG files.
docs: $(STAMP)
	$(VENV)/bin/livemig run scenarios/uniform-1gbe.toml --out runs/docs/uniform-1gbe --quiet --dilation 1
	$(VENV)/bin/livemig report runs/docs/uniform-1gbe --out runs/docs/report.html
	mkdir -p docs
	for p in guest iterations dirty-vs-transfer links cpu; do \
	  cp runs/docs/report-$$p.png docs/report-$$p.png; done

# The Grafana dashboards' JSON from their code (cluster/dashboards.py).
dashboards: $(STAMP)
	$(PY) -m cluster.dashboards

# The dashboards' panels under docs/ (README), without a Grafana: a real Prometheus (Debian's
# `prometheus`) scrapes two real runs, each panel's committed PromQL runs as a range query and
# matplotlib draws it (cluster/dashboard_pictures.py): docs/dashboard-<name>.png.
dashboard-pictures: $(STAMP)
	$(PY) -m cluster.dashboard_pictures --out docs

clean:
	rm -rf $(VENV) runs build *.egg-info

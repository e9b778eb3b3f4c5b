# Coffer: `make run` starts everything; `make test` runs the whole suite; `make bench` the benchmarks.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench soak lint e2e-deps dav-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/coffer-server run

# Playwright drives Debian's chromium (its own browser download cannot work offline);
# the accessibility tests inject axe-core, fetched from the npm registry and checked.
e2e-deps: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@$(PY) -m e2e.axe >/dev/null

# Clients nobody here wrote, which tests/test_dav.py runs against /dav/ and the Nextcloud
# paths: the litmus compliance suite, rclone, the Nextcloud desktop client's nextcloudcmd.
dav-deps:
	@command -v litmus >/dev/null 2>&1 && command -v rclone >/dev/null 2>&1 \
	  && command -v nextcloudcmd >/dev/null 2>&1 && command -v mount.davfs >/dev/null 2>&1 || { \
	  echo "installing Debian litmus, rclone, nextcloud-desktop-cmd and davfs2 for the WebDAV tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    litmus rclone nextcloud-desktop-cmd davfs2 >/dev/null; }

test: $(STAMP) e2e-deps dav-deps
	$(VENV)/bin/ruff check app ui jobs client tests bench e2e conftest.py
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) bench/transfer.py
	$(PY) bench/events.py
	$(PY) bench/sync.py
	$(PY) bench/sync.py --workload tree
	$(PY) bench/batch.py
	$(PY) bench/dav.py
	$(PY) bench/search.py
	$(PY) bench/thumbnails.py
	$(PY) bench/s3_commit.py

# Load, soak and faults (bench/soak.py): 200 simulated devices against 3 web instances and
# 2 workers for 3 minutes, a web instance and a worker killed and Redis stopped meanwhile.
# Not part of `make test`; its figures go into the README.
SOAK_STAMP := $(VENV)/.soak-installed
$(SOAK_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(SOAK_STAMP)

soak: $(SOAK_STAMP)
	$(PY) bench/soak.py

lint: $(STAMP)
	$(VENV)/bin/ruff check app ui jobs client tests bench e2e conftest.py
	$(VENV)/bin/ruff format --check app ui jobs client tests bench e2e conftest.py

clean:
	rm -rf $(VENV) *.egg-info

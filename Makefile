# Coffer: `make run` starts everything; `make test` runs the whole suite; `make bench` the benchmarks.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-replset bench soak lint e2e-deps dav-deps clean

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
	$(MAKE) test-replset

# The API, batch, events, sharing, authorization and fault tests again on a replica set with
# MongoDB's own semantics (real ObjectId equality, transactions, millisecond datetimes):
# SecantusDB from the test extra, or a `mongod` on PATH, or MONGODB_URL if set. About 4 min.
# Left out there: the 1,000 one-by-one uploads before the folder-move crash (90 s on
# SecantusDB; the move's recovery queries run in test_query_plans.py on the same server).
REPLSET_TESTS := tests/test_files.py tests/test_batch.py tests/test_events.py \
  tests/test_sharing.py tests/test_authz.py tests/test_faults.py tests/test_feed_races.py
test-replset: $(STAMP)
	COFFER_TEST_MONGO=replset $(VENV)/bin/pytest -q $(REPLSET_TESTS) \
	  --deselect tests/test_faults.py::test_kill9_web_mid_move_of_a_folder_of_1000_files

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
